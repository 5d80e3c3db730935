"""Loss identities, the ignore value, sums by name, 2D and 3D, binary and multiclass."""

from __future__ import annotations

import pytest
import torch

from data_contracts import LossError, ModelError
from seg_models import available_losses, build_loss

IGNORE = 255
ALL_LOSSES = [*available_losses()]
NEEDS = {"weighted_ce": {"weight": [0.3, 1.0, 2.0]}}
BINARY_NEEDS = {"weighted_ce": {"weight": [0.3, 2.0]}}


def _options(name: str, classes: int) -> dict:
    return (BINARY_NEEDS if classes == 1 else NEEDS).get(name, {})


def _data(
    classes: int, spatial: tuple[int, ...], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, *spatial, generator=gen)
    target = torch.randint(0, max(classes, 2), (2, *spatial), generator=gen)
    return logits, target


MODES = [
    pytest.param(1, (12, 10), id="binary-2d"),
    pytest.param(3, (12, 10), id="multiclass-2d"),
    pytest.param(1, (6, 8, 5), id="binary-3d"),
    pytest.param(3, (6, 8, 5), id="multiclass-3d"),
]


@pytest.mark.parametrize(("classes", "spatial"), MODES)
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_every_loss_runs_with_finite_gradients(name: str, classes: int, spatial) -> None:
    logits, target = _data(classes, spatial)
    logits.requires_grad_(True)
    loss = build_loss(name, **_options(name, classes))(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    same = build_loss(name, **_options(name, classes))(logits, target[:, None])
    torch.testing.assert_close(same, loss)  # (B, 1, *S) and (B, *S) targets agree


@pytest.mark.parametrize(("classes", "spatial"), MODES)
def test_focal_with_gamma_zero_is_cross_entropy(classes: int, spatial) -> None:
    logits, target = _data(classes, spatial)
    focal = build_loss("focal", gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, build_loss("bce")(logits, target))
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
        if classes == 1
        else torch.nn.functional.cross_entropy(logits, target)
    )
    torch.testing.assert_close(focal, expected)


def _perfect_and_disjoint(classes: int, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if classes == 1:
        signed = target[:, None].float() * 2 - 1
        return 50 * signed, -50 * signed
    onehot = torch.nn.functional.one_hot(target, classes).movedim(-1, 1).float()
    return 50 * onehot, 50 * onehot.roll(1, dims=1)


@pytest.mark.parametrize(("classes", "spatial"), MODES)
def test_dice_of_perfect_is_zero_and_of_disjoint_is_one(classes: int, spatial) -> None:
    _, target = _data(classes, spatial)
    perfect, disjoint = _perfect_and_disjoint(classes, target)
    dice = build_loss("dice")
    assert dice(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    assert dice(disjoint, target).item() == pytest.approx(1.0, abs=1e-5)


def test_foreground_region_adds_the_dice_of_every_class_but_0_as_one() -> None:
    """A prediction right about the region but wrong about its sub-classes scores better."""
    target = torch.zeros((1, 8, 8), dtype=torch.int64)
    target[0, 2:6, 2:6] = 1
    target[0, 3:5, 3:5] = 2
    swapped = torch.where(target > 0, 3 - target, target)
    logits = 50 * torch.nn.functional.one_hot(swapped, 3).movedim(-1, 1).float()
    plain = build_loss("dice")(logits, target).item()
    region = build_loss("dice", foreground_region=True)(logits, target).item()
    # classes: background right, 1 and 2 wrong (loss 1 each); the region right (loss 0)
    assert plain == pytest.approx(2 / 3, abs=1e-4) and region == pytest.approx(2 / 4, abs=1e-4)
    two_classes = logits[:, :2], target.clamp(max=1)
    assert build_loss("dice", foreground_region=True)(*two_classes).item() == pytest.approx(
        build_loss("dice")(*two_classes).item()
    )
    ignored = torch.where(target == 0, IGNORE, target)
    with_ignore = build_loss("dice", foreground_region=True, ignore_index=IGNORE)
    assert torch.isfinite(with_ignore(logits, ignored))


@pytest.mark.parametrize(("classes", "spatial"), MODES)
def test_log_cosh_dice_is_log_cosh_of_dice(classes: int, spatial) -> None:
    logits, target = _data(classes, spatial)
    dice = build_loss("dice")(logits, target)
    torch.testing.assert_close(build_loss("log_cosh_dice")(logits, target), dice.cosh().log())


@pytest.mark.parametrize(("classes", "spatial"), MODES)
@pytest.mark.parametrize("beta", [0.3, 0.5, 0.8])
def test_combo_at_extreme_weights_equals_its_parts(classes: int, spatial, beta: float) -> None:
    logits, target = _data(classes, spatial)
    weight = [1 - beta] + [beta] * (max(classes, 2) - 1)
    ce_part = build_loss("weighted_ce", weight=weight)(logits, target)
    torch.testing.assert_close(build_loss("combo", alpha=1.0, beta=beta)(logits, target), ce_part)
    dice_part = build_loss("dice")(logits, target)
    torch.testing.assert_close(build_loss("combo", alpha=0.0, beta=beta)(logits, target), dice_part)
    if beta == 0.5 and classes == 1:
        torch.testing.assert_close(ce_part, 0.5 * build_loss("bce")(logits, target))


@pytest.mark.parametrize(("classes", "spatial"), MODES)
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_ignored_pixels_change_nothing(name: str, classes: int, spatial) -> None:
    logits, target = _data(classes, spatial)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, -3:] = True  # the last three rows, every batch item
    ignored[0, 0, 0] = True  # and a single scattered pixel
    target = target.masked_fill(ignored, IGNORE)
    loss = build_loss(name, ignore_index=IGNORE, **_options(name, classes))
    logits.requires_grad_(True)
    base = loss(logits, target)
    base.backward()
    mask = ignored[:, None].expand_as(logits)
    assert (logits.grad[mask] == 0).all()
    changed = torch.where(mask, 100 * torch.randn_like(logits), logits.detach())
    torch.testing.assert_close(loss(changed, target), base.detach())


@pytest.mark.parametrize(("classes", "spatial"), MODES)
@pytest.mark.parametrize("name", [n for n in ALL_LOSSES if n != "hausdorff_dt"])
def test_ignored_pixels_leave_the_means(name: str, classes: int, spatial) -> None:
    # Ignoring a block must give the loss of the image cropped to the rest: ignored pixels are
    # out of the sums and of the counts, not zeros that dilute a mean. (Distance maps of the
    # Hausdorff loss see the ignored block as background, so a crop differs there.)
    logits, target = _data(classes, spatial)
    cut = spatial[0] - 4
    target_ignored = target.clone()
    target_ignored[:, cut:] = IGNORE
    options = _options(name, classes)
    with_ignore = build_loss(name, ignore_index=IGNORE, **options)(logits, target_ignored)
    cropped = build_loss(name, **options)(logits[:, :, :cut], target[:, :cut])
    torch.testing.assert_close(with_ignore, cropped)


def test_all_pixels_ignored_gives_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 4, 4)
    target = torch.full((1, 4, 4), IGNORE)
    for name in ("ce", "focal", "balanced_ce", "exp_log", "shape_aware"):
        assert build_loss(name, ignore_index=IGNORE)(logits, target).item() == 0.0


def test_sums_by_name() -> None:
    logits, target = _data(3, (8, 8))
    dice, focal, ce = (build_loss(n)(logits, target) for n in ("dice", "focal", "ce"))
    torch.testing.assert_close(build_loss("dice+focal")(logits, target), dice + focal)
    torch.testing.assert_close(build_loss("0.5*dice + 2*ce")(logits, target), 0.5 * dice + 2 * ce)
    nested = build_loss("dice+focal", focal={"gamma": 0.0})(logits, target)
    torch.testing.assert_close(nested, dice + ce)
    shared = build_loss("dice+focal", gamma=0.0)(logits, target)  # reaches focal only
    torch.testing.assert_close(shared, dice + ce)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("tversky", {}, "unknown loss"),
        ("dice+", {}, "cannot parse"),
        ("dice*0.5", {}, "cannot parse"),
        ("dice", {"gamma": 2.0}, "no option gamma"),
        ("dice+focal", {"focal": 2.0}, "must be a dict"),
        ("focal", {"focal": {"smooth": 1.0}}, "no option smooth"),
        ("weighted_ce", {}, "needs the option weight"),
        ("combo", {"alpha": 2.0}, "invalid options"),
    ],
)
def test_bad_loss_requests_raise_loss_error(name: str, options: dict, match: str) -> None:
    with pytest.raises(LossError, match=match) as caught:
        build_loss(name, **options)
    assert not isinstance(caught.value, ModelError)
    assert caught.value.hint and caught.value.hint != ModelError.default_hint


@pytest.mark.parametrize(
    ("name", "options", "reason", "hint"),
    [
        ("tversky", {}, "unknown loss 'tversky'", "choose from balanced_ce, ce, combo"),
        (
            "dice",
            {"gamma": 2.0},
            "accepts no option gamma",
            "dice takes batch, foreground_region, include_back",
        ),
        ("weighted_ce", {}, "'weighted_ce' needs the option weight", "weighted_ce takes weight"),
        ("dice+weighted_ce", {}, "needs the option weight", "loss_options:"),
        ("weighted_ce", {"weight": None}, "invalid options for loss", "weighted_ce takes weight"),
    ],
)
def test_loss_errors_name_the_loss_and_hint_at_its_options(
    name: str, options: dict, reason: str, hint: str
) -> None:
    with pytest.raises(LossError) as caught:
        build_loss(name, **options)
    assert reason in caught.value.reason
    assert hint in caught.value.hint
    assert "model name/URI" not in str(caught.value)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (torch.full((2, 8, 8), 3), "0..2"),
        (torch.full((2, 8, 8), 0.5), "integer"),
        (torch.zeros(2, 2, 8, 8), "does not match"),
    ],
)
def test_bad_targets_are_refused(target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_loss("ce")(torch.randn(2, 3, 8, 8), target)


def test_weighted_ce_checks_its_weight_count() -> None:
    with pytest.raises(ValueError, match="weight needs 3"):
        build_loss("weighted_ce", weight=[1.0, 2.0])(*_data(3, (4, 4)))
