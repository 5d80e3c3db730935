"""MLflow tracking for training: one run per training, under an experiment named after the dataset.

Where things go:

- The tracking URI is ``get_settings().tracking_uri``: ``MLFLOW_TRACKING_URI`` when set, else
  the sqlite file ``<SEGFLOW_HOME>/mlflow.db`` (an absolute URI, four slashes).
- A database backend has no artifact store of its own, and MLflow's fallback is ``./mlruns`` in
  the *current directory*. So every experiment segflow creates on a local backend (sqlite or any
  other database, or a file store) gets ``artifact_location = <SEGFLOW_HOME>/mlartifacts/<name>``
  (``get_settings().artifacts_dir``); runs and logged models of that experiment write there. On
  an ``http(s)``/``databricks`` tracking server the server decides (its ``--artifacts-destination``).

What a training run holds: the plan and spec as flattened params (``plan.patch_size`` →
``"96,96,96"``) plus ``plan.json``/``model_spec.json``, the manifest as a dataset input, metrics
per epoch, system metrics (psutil), ``curves.png`` and ``overlays/<case>.png``.

Never log credentials: every param or tag key containing ``password``, ``secret``, ``token`` or
``key`` (any case) is dropped, with a warning that names the key but not the value.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from data_contracts import DatasetManifest, ModelSpec, TrainingPlan, UsageError, get_settings
from pipelines.redaction import redact

__all__ = [
    "CREDENTIAL_WORDS",
    "MAX_PARAM_LENGTH",
    "TRUNCATION_MARKER",
    "configure_mlflow",
    "drop_credentials",
    "experiment_for",
    "flatten_params",
    "log_epoch_metrics",
    "log_manifest_input",
    "log_overlays",
    "log_plan_and_spec",
    "log_training_curves",
    "manifest_frame",
    "training_run",
]

logger = logging.getLogger(__name__)

CREDENTIAL_WORDS = ("password", "secret", "token", "key")
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3
TRUNCATION_MARKER = "...[truncated]"
_REMOTE_SCHEMES = {"http", "https", "databricks"}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def configure_mlflow() -> str:
    """Point MLflow at segflow's tracking URI (creating the local folders it needs).

    Returns:
        The tracking URI in force.
    """
    settings = get_settings()
    uri = settings.tracking_uri
    if _is_local_backend(uri):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def _is_local_backend(uri: str) -> bool:
    return urlparse(uri).scheme not in _REMOTE_SCHEMES


def experiment_for(dataset_name: str) -> str:
    """Get or create the experiment named after a dataset (restoring it if it was deleted).

    On a local backend the experiment's artifacts go to ``<artifacts_dir>/<dataset name>``
    (unsafe characters replaced by ``_``), never to the current directory.

    Args:
        dataset_name: the manifest's (or plan's) dataset name.

    Returns:
        The experiment id.
    """
    configure_mlflow()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(dataset_name)
    if experiment is None:
        location = None
        if _is_local_backend(mlflow.get_tracking_uri()):
            folder = _UNSAFE_NAME.sub("_", dataset_name).strip("._") or "experiment"
            location = (get_settings().artifacts_dir / folder).as_uri()
        try:
            return client.create_experiment(dataset_name, artifact_location=location)
        except MlflowException as error:  # created meanwhile by another process
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(dataset_name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        client.restore_experiment(experiment.experiment_id)
    return str(experiment.experiment_id)


@contextlib.contextmanager
def training_run(
    dataset_name: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = True,
) -> Iterator[mlflow.ActiveRun]:
    """Start an MLflow run for one training, in the dataset's experiment.

    Nested under the active run when there is one (k-fold parent runs). The run ends FAILED when
    the block raises, KILLED on ``KeyboardInterrupt``.

    Args:
        dataset_name: names the experiment.
        run_name: the run's name (MLflow picks one when ``None``).
        tags: run tags (credential-like keys dropped).
        system_metrics: sample CPU/memory (and GPU with pynvml) when psutil is importable.

    Yields:
        The active run.
    """
    experiment_id = experiment_for(dataset_name)
    with_system = system_metrics and importlib.util.find_spec("psutil") is not None
    clean_tags = {
        key: redact(str(value)) for key, value in drop_credentials(dict(tags or {})).items()
    }
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags=clean_tags,
        nested=mlflow.active_run() is not None,
        log_system_metrics=with_system,
    ) as run:
        yield run


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested JSON-like values into MLflow params (strings).

    Nested mappings join keys with ``.``; sequences of scalars become comma-joined strings
    (``(96, 96, 96)`` → ``"96,96,96"``); sequences holding mappings or sequences are indexed
    (``normalization.0.scheme``). Values longer than :data:`MAX_PARAM_LENGTH` are cut and end
    with :data:`TRUNCATION_MARKER`. Credential-like keys are *not* removed here: see
    :func:`drop_credentials`.

    Args:
        values: the mapping to flatten.
        prefix: prepended to every key (with a ``.``).

    Returns:
        Flat ``{key: value}`` strings.
    """
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        elif isinstance(value, list | tuple) and any(
            isinstance(item, Mapping | list | tuple) for item in value
        ):
            flat.update(flatten_params({str(i): item for i, item in enumerate(value)}, name))
        elif isinstance(value, list | tuple):
            flat[name] = _truncate(",".join(str(item) for item in value))
        else:
            flat[name] = _truncate(str(value))
    return flat


def _truncate(text: str) -> str:
    if len(text) <= MAX_PARAM_LENGTH:
        return text
    return text[: MAX_PARAM_LENGTH - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def drop_credentials(values: Mapping[str, Any]) -> dict[str, Any]:
    """Remove every key that contains a word of :data:`CREDENTIAL_WORDS` (case-insensitive).

    Args:
        values: flat or nested mapping (only top-level keys are checked; flatten first).

    Returns:
        A copy without the credential-like keys (their names are logged as a warning).
    """
    dropped = [key for key in values if any(word in key.lower() for word in CREDENTIAL_WORDS)]
    if dropped:
        logger.warning("not logging credential-like keys to MLflow: %s", ", ".join(dropped))
    return {key: value for key, value in values.items() if key not in dropped}


def log_plan_and_spec(
    plan: TrainingPlan, spec: ModelSpec, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Log the plan and spec as flattened params and as ``plan.json``/``model_spec.json``.

    Credential-like keys are dropped from the params (:func:`drop_credentials`); the JSON files
    are the contracts verbatim (the model must be rebuilt from them), so keep secrets out of
    ``spec.options``. MLflow params are immutable: logging a different value for a key already
    logged in the same run raises ``MlflowException``.

    Args:
        plan: the training plan (params ``plan.*``).
        spec: the model spec (params ``spec.*``).
        extra: more params (e.g. ``{"train": {"max_epochs": 50}}``), flattened as given.

    Returns:
        The params that were logged (credential-like keys removed, passwords in URLs masked).
    """
    params = flatten_params(
        {
            "plan": plan.model_dump(mode="json"),
            "spec": spec.model_dump(mode="json"),
            **dict(extra or {}),
        }
    )
    params = {key: redact(value) for key, value in drop_credentials(params).items()}
    mlflow.log_params(params)
    mlflow.log_text(plan.model_dump_json(indent=2), "plan.json")
    mlflow.log_text(spec.model_dump_json(indent=2), "model_spec.json")
    return params


def manifest_frame(manifest: DatasetManifest) -> pd.DataFrame:
    """One row per case: id, kind, channel paths and hashes, label path and hash.

    Several channel files of one case are joined with ``;`` in file order.
    """
    rows = [
        {
            "case_id": case.case_id,
            "kind": case.kind,
            "channels": ";".join(record.path for record in case.channels),
            "channel_sha256": ";".join(record.sha256 for record in case.channels),
            "label": case.label.path if case.label else "",
            "label_sha256": case.label.sha256 if case.label else "",
        }
        for case in manifest.cases
    ]
    columns = ["case_id", "kind", "channels", "channel_sha256", "label", "label_sha256"]
    return pd.DataFrame(rows, columns=columns)


def log_manifest_input(manifest: DatasetManifest, *, context: str = "training") -> PandasDataset:
    """Log the manifest as the run's dataset input (its digest changes when any file does).

    Args:
        manifest: the dataset trained on.
        context: the input's role (``training``, ``validation``, ``evaluation``).

    Returns:
        The ``mlflow.data`` pandas dataset that was logged.
    """
    with warnings.catch_warnings():
        # MLflow registers its local-path source twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
        dataset = from_pandas(manifest_frame(manifest), source=manifest.source, name=manifest.name)
    mlflow.log_input(dataset, context=context)
    return dataset


def log_epoch_metrics(metrics: Mapping[str, float], epoch: int) -> None:
    """Log one epoch's metrics (e.g. ``train_loss``, ``val_dice``) at step ``epoch``."""
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=epoch)


def log_training_curves(
    history: Mapping[str, Sequence[float]], artifact_file: str = "curves.png"
) -> None:
    """Plot every metric against the epoch and log the PNG (losses and scores in two panels).

    Args:
        history: metric name → one value per epoch (epoch 0 first).
        artifact_file: artifact path of the PNG.
    """
    if not history:
        logger.warning("no training history to plot: %s not logged", artifact_file)
        return
    losses = {name: values for name, values in history.items() if "loss" in name.lower()}
    scores = {name: values for name, values in history.items() if name not in losses}
    panels = [(title, group) for title, group in (("loss", losses), ("score", scores)) if group]
    figure = Figure(figsize=(5.5 * len(panels), 4), dpi=100, layout="constrained")
    for axes, (title, group) in zip(
        figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        for name, values in group.items():
            axes.plot(
                range(len(values)), values, marker="o" if len(values) < 30 else None, label=name
            )
        axes.set(xlabel="epoch", ylabel=title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    mlflow.log_figure(figure, artifact_file)


def _label_colormap() -> Colormap:
    # Fixed colours: 0 black, then tab20; values wrap modulo 20, negatives (ignore) are grey.
    colours = [(0.0, 0.0, 0.0, 1.0), *colormaps["tab20"](np.arange(19))]
    return ListedColormap(colours, name="segflow_labels").with_extremes(bad=(0.5, 0.5, 0.5))


def _label_display(label: np.ndarray) -> np.ma.MaskedArray:
    values = np.asarray(label).astype(np.int64)
    return np.ma.masked_array(np.mod(values, 20), mask=values < 0)


def log_overlays(
    images: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], folder: str = "overlays"
) -> list[str]:
    """Log one PNG per validation case: image | truth | prediction, side by side.

    Args:
        images: ``(case name, image, truth, prediction)``; each array ``(H, W)`` (for volumes
            the caller passes one slice). Labels are class indices; negative values (ignore)
            are drawn grey.
        folder: artifact folder.

    Returns:
        The artifact paths logged.

    Raises:
        UsageError: an array is not 2D, or the three shapes differ.
    """
    cmap, logged = _label_colormap(), []
    for name, image, truth, prediction in images:
        shapes = [np.shape(array) for array in (image, truth, prediction)]
        if len(shapes[0]) != 2 or len(set(shapes)) != 1:
            raise UsageError(
                f"overlay {name!r}: image, truth and prediction must be equal 2D arrays, got "
                f"shapes {shapes}",
                hint="pass (H, W) arrays; for a volume pass one slice of each",
            )
        pixels = np.asarray(image, dtype=np.float64)
        finite = pixels[np.isfinite(pixels)]
        low, high = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        figure = Figure(figsize=(9, 3.3), dpi=100, layout="constrained")
        axes = figure.subplots(1, 3)
        axes[0].imshow(pixels, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
        for ax, label in zip(axes[1:], (truth, prediction), strict=True):
            ax.imshow(_label_display(label), cmap=cmap, vmin=0, vmax=19, interpolation="nearest")
        for ax, title in zip(axes, ("image", "truth", "prediction"), strict=True):
            ax.set_title(title)
            ax.set_axis_off()
        figure.suptitle(name)
        path = f"{folder}/{_UNSAFE_NAME.sub('_', name) or 'case'}.png"
        mlflow.log_figure(figure, path)
        logged.append(path)
    return logged
