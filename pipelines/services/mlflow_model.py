"""segflow's MLflow model, logged as "models from code": this file is the model.

:func:`pipelines.services.model_registry.log_segmentation_model` passes this file's path to
``mlflow.pyfunc.log_model(python_model=...)``; MLflow copies it into the model folder and, on
``mlflow.pyfunc.load_model``, runs it and calls :meth:`SegflowModel.load_context`. No Python
object is pickled: the model's artifacts are

- ``weights.pt``: the network's ``state_dict`` (loaded with ``weights_only=True``),
- ``model_spec.json`` and ``plan.json``: the :class:`~data_contracts.ModelSpec` and
  :class:`~data_contracts.TrainingPlan`,
- ``classes.json``: ``class_names``, ``channel_names`` and the pre/post-processing config.

``seg_models`` and ``data_contracts`` are imported from the installed segflow package (the
model's ``pip_requirements`` pin it), so the model carries no ``code_paths``.

segflow's own inference does not run this file from the model folder: it builds the installed
:class:`SegflowModel` with :meth:`SegflowModel.from_artifacts` and drives :attr:`network` with
sliding windows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import torch
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from pydantic import ValidationError
from torch import nn

import seg_models
from data_contracts import ModelError, ModelSpec, TrainingPlan

__all__ = ["ARTIFACT_FILES", "SegflowModel", "paint_instances"]

_ContractT = TypeVar("_ContractT", ModelSpec, TrainingPlan)

#: The artifacts that describe a model (all but its weights).
DESCRIPTION_ARTIFACTS = ("model_spec", "plan", "classes")

ARTIFACT_FILES = {
    "weights": "weights.pt",
    "model_spec": "model_spec.json",
    "plan": "plan.json",
    "classes": "classes.json",
}


class SegflowModel(PythonModel):
    """A segflow network with its spec, plan, class/channel names and processing config.

    Attributes:
        network: the ``nn.Module`` in eval mode on the CPU (``None`` before loading).
        spec: the model spec it was built from.
        plan: the training plan (normalisation, patch size, spacing, class values).
        class_names: one name per output class.
        channel_names: one name per input channel (modality or band).
        processing: pre/post-processing config (JSON values).
    """

    def __init__(self) -> None:
        self.network: nn.Module | None = None
        self.spec: ModelSpec | None = None
        self.plan: TrainingPlan | None = None
        self.class_names: tuple[str, ...] = ()
        self.channel_names: tuple[str, ...] = ()
        self.processing: dict[str, Any] = {}

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str | Path]) -> SegflowModel:
        """Build a loaded model from artifact name → local path (keys of :data:`ARTIFACT_FILES`)."""
        model = cls()
        model.load_artifacts(artifacts)
        return model

    def load_context(self, context: PythonModelContext) -> None:
        """Called by MLflow on load: read the artifacts the model was logged with."""
        self.load_artifacts(context.artifacts)

    def load_artifacts(self, artifacts: Mapping[str, str | Path]) -> None:
        """Read the JSON files, build the network and load its weights (tensors only).

        Raises:
            ModelError: an artifact is missing, invalid, or the weights do not fit the spec.
        """
        missing = sorted(set(ARTIFACT_FILES) - set(artifacts))
        if missing:
            raise ModelError(
                f"the model lacks the artifacts {missing}",
                hint="log it with pipelines.services.model_registry.log_segmentation_model",
            )
        self.read_description(artifacts)
        if self.spec is not None:
            self.network = _load_network(self.spec, Path(artifacts["weights"]))

    def read_description(self, artifacts: Mapping[str, str | Path]) -> None:
        """Read the JSON files only (spec, plan, names, processing): no network, no weights.

        Raises:
            ModelError: a file is missing or invalid.
        """
        self.spec = _read_contract(ModelSpec, artifacts["model_spec"])
        self.plan = _read_contract(TrainingPlan, artifacts["plan"])
        classes_path = Path(artifacts["classes"])
        try:
            classes = json.loads(classes_path.read_text(encoding="utf-8"))
            self.class_names = tuple(str(name) for name in classes["class_names"])
            self.channel_names = tuple(str(name) for name in classes["channel_names"])
            self.processing = dict(classes.get("processing") or {})
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelError(f"is not a valid classes file ({error})", path=classes_path) from error

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Class probabilities for an already preprocessed batch.

        Args:
            context: MLflow's context (unused after loading).
            model_input: float32 ``(B, C, *spatial)``, normalised as ``plan.normalization`` says.
                A dict ``{"image": array}`` (or with one value) is accepted too; the annotation
                says ``np.ndarray`` only because MLflow warns about union annotations.
            params: unused.

        Returns:
            Semantic models: float32 ``(B, K, *spatial)`` (sigmoid for a binary head, softmax
            otherwise). Instance models: int32 ``(B, 1, H, W)`` instance ids (0 background),
            see :func:`paint_instances`.

        Raises:
            ModelError: the model is not loaded, or the input does not fit its spec.
        """
        if self.network is None or self.spec is None:
            raise ModelError("the model has no network loaded", hint="load it with load_context")
        batch = torch.from_numpy(np.ascontiguousarray(_as_array(model_input), dtype=np.float32))
        if self.spec.task == "instance":
            score_threshold = float(self.processing.get("score_threshold", 0.5))
            detections = seg_models.predict_instances(
                self.network, batch, self.spec, min_score=score_threshold
            )
            return np.stack(
                [
                    paint_instances(
                        found,
                        tuple(batch.shape[2:]),
                        score_threshold=score_threshold,
                        mask_threshold=float(self.processing.get("mask_threshold", 0.5)),
                    )[None]
                    for found in detections
                ]
            )
        return seg_models.predict(self.network, batch, self.spec).numpy().astype(np.float32)


def _as_array(model_input: Any) -> np.ndarray:
    if isinstance(model_input, Mapping):
        if "image" in model_input:
            return np.asarray(model_input["image"])
        if len(model_input) == 1:
            return np.asarray(next(iter(model_input.values())))
        raise ModelError(
            f"input dict has keys {sorted(model_input)}",
            hint='pass an array, or a dict {"image": array}',
        )
    return np.asarray(model_input)


def _read_contract(kind: type[_ContractT], path: str | Path) -> _ContractT:
    try:
        return kind.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as error:
        raise ModelError(f"is not a valid {kind.__name__} ({error})", path=path) from error


def _load_network(spec: ModelSpec, weights: Path) -> nn.Module:
    network = seg_models.build_model(spec)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except (OSError, RuntimeError, TypeError, ValueError) as error:
        raise ModelError(
            f"cannot load these weights into {spec.name!r} ({error})",
            path=weights,
            hint="the weights must be the state_dict of the network model_spec.json describes",
        ) from error
    return network.eval()


def paint_instances(
    detections: Mapping[str, torch.Tensor],
    shape: tuple[int, ...],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Turn one image's Mask R-CNN detections into an instance label map.

    Detections scoring below ``score_threshold`` are dropped; each remaining mask is cut at
    ``mask_threshold`` and painted in ascending score order, so where masks overlap the most
    confident detection wins. Ids are 1..N in descending score order.

    Args:
        detections: ``scores`` (N,) and ``masks`` (N, 1, H, W) probabilities.
        shape: ``(H, W)``.
        score_threshold: minimum detection score.
        mask_threshold: mask probability cut.

    Returns:
        int32 ``(H, W)``: 0 background, 1..N instances.
    """
    labels = np.zeros(shape, dtype=np.int32)
    scores = detections["scores"].detach().cpu().numpy()
    masks = detections["masks"].detach().cpu().numpy().reshape(len(scores), *shape)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    for rank in reversed(range(len(order))):
        labels[masks[order[rank]] > mask_threshold] = rank + 1
    return labels


mlflow.models.set_model(SegflowModel())
