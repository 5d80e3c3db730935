"""Load segflow models back from MLflow (registry aliases and versions, runs, local folders).

:func:`load_model` never runs code stored with a model: it reads the MLmodel file, refuses
anything that is not models-from-code, and builds the installed
:class:`~pipelines.services.mlflow_model.SegflowModel` from the artifacts (tensors and JSON only).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from data_contracts import ModelError, OutputError
from pipelines.infer.loaded_model import LoadedModel, ModelCard, prepare_for_inference
from pipelines.redaction import redact
from pipelines.services.mlflow_model import DESCRIPTION_ARTIFACTS, SegflowModel
from pipelines.services.tracking import configure_mlflow

logger = logging.getLogger(__name__)


def local_model_path(uri: str) -> Path | None:
    """The local folder ``uri`` names, or ``None`` for a URI (``models:/``, ``runs:/``, ``s3://``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if len(parsed.scheme) > 1:  # one letter is a Windows drive
        return None
    return Path(uri).expanduser()


_REGISTRY_SCHEMES = ("models", "runs")


def _require_registry_uri(uri: str) -> None:
    """Refuse URIs that would download a model from anywhere but the configured tracking
    server or registry (``http://``, ``s3://``, ``gs://``…)."""
    if urlparse(uri).scheme not in _REGISTRY_SCHEMES:
        raise ModelError(
            "is neither a registry URI (models:/, runs:/) nor a local folder; segflow loads "
            "models only from the configured MLflow registry or an explicit local path",
            path=uri,
            hint="register the model (or `segflow export` it to a folder) and pass that",
        )


def _resolve(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` → ``models:/NAME/VERSION`` (pinned), with the name and version."""
    if not uri.startswith("models:/"):
        return uri, None, None
    target = uri.removeprefix("models:/").strip("/")
    client = mlflow.MlflowClient()
    if "@" in target:
        name, alias = target.rsplit("@", 1)
        found = _lookup(client, name, lambda: client.get_model_version_by_alias(name, alias))
    elif "/" in target:
        name, number = target.rsplit("/", 1)
        found = _lookup(client, name, lambda: client.get_model_version(name, number))
    else:  # a logged model id (models:/m-...), not a registry entry
        return uri, None, None
    return f"models:/{name}/{found.version}", name, str(found.version)


def resolve_model_uri(uri: str | Path) -> str:
    """Pin a model URI: ``models:/NAME@alias`` → ``models:/NAME/VERSION`` (others unchanged).

    A batch resolves its alias once, so that moving ``champion`` mid-batch does not mix models.

    Raises:
        ModelError: unknown name, alias or version (the hint lists those available).
    """
    text = str(uri)
    if not text.startswith("models:/"):
        return text
    configure_mlflow()
    return _resolve(text)[0]


def _lookup(client: mlflow.MlflowClient, name: str, get: Callable[[], Any]) -> Any:
    try:
        return get()
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ModelError(
                f"cannot be looked up in the MLflow registry ({redact(error.message)[:300]})",
                path=f"models:/{name}",
                hint="check that the MLflow tracking server (MLFLOW_TRACKING_URI) is running "
                "and reachable",
            ) from error
        raise ModelError(
            f"no registered model matches ({error.message})",
            path=f"models:/{name}",
            hint=_available(client, name),
        ) from error


def _available(client: mlflow.MlflowClient, name: str) -> str:
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(model.name for model in client.search_registered_models(max_results=50))
        return f"registered models: {', '.join(names) or 'none'}"
    aliases = ", ".join(f"@{alias} → v{v}" for alias, v in sorted(registered.aliases.items()))
    versions = sorted(
        (int(v.version) for v in client.search_model_versions(f"name='{name}'")), reverse=True
    )
    return (
        f"use one of the aliases {aliases or '(none)'} or versions "
        f"{', '.join(map(str, versions)) or '(none)'} of {name!r}"
    )


def _from_folder(folder: Path) -> SegflowModel:
    if not (folder / "MLmodel").is_file():
        raise ModelError(
            "is not an MLflow model folder (no MLmodel file)",
            path=folder,
            hint="pass a models:/ or runs:/ URI, or a folder from export_model",
        )
    flavor = Model.load(str(folder)).flavors.get("python_function", {})
    if not flavor.get("model_code_path"):
        raise ModelError(
            "was not logged as models-from-code; segflow does not unpickle models",
            path=folder,
            hint="log it with pipelines.services.model_registry.log_segmentation_model",
        )
    artifacts = {key: folder / entry["path"] for key, entry in flavor.get("artifacts", {}).items()}
    return SegflowModel.from_artifacts(artifacts)


def load_model(uri: str | Path, *, device: str | None = None) -> LoadedModel:
    """Load a segflow model for inference (no code or pickle from the model is executed).

    Args:
        uri: ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``models:/<model id>``,
            ``runs:/<run id>/<name>``, or a local model folder (from :func:`export_model`).
        device: where it will run (default: CUDA when present, else the CPU).

    Returns:
        The network ready for inference on ``device`` (see :func:`prepare_for_inference`),
        with its spec, plan, names and processing config.

    Raises:
        ModelError: unknown name/alias/version (the hint lists those available), a folder
            that is not a segflow model, or any other URI (``http://``, ``s3://``…): models
            come only from the configured registry or an explicit local folder.
    """
    text = str(uri)
    folder = local_model_path(text)
    name = number = None
    with tempfile.TemporaryDirectory(prefix="segflow-load-") as scratch:
        if folder is None:
            _require_registry_uri(text)
            configure_mlflow()
            resolved, name, number = _resolve(text)
            try:
                folder = Path(mlflow.artifacts.download_artifacts(resolved, dst_path=scratch))
            except (MlflowException, OSError) as error:
                raise ModelError(
                    f"cannot be downloaded from MLflow ({redact(str(error))[:300]})",
                    path=resolved,
                    hint="check that the MLflow tracking server (MLFLOW_TRACKING_URI) is "
                    "running and reachable",
                ) from error
        elif not folder.is_dir():
            raise ModelError("does not exist or is not a folder", path=folder)
        else:
            name, number = _registered_meta(folder)
        model = _from_folder(folder)
    if model.network is None or model.spec is None or model.plan is None:
        raise ModelError("loaded without a network", path=text)
    loaded = LoadedModel(
        network=model.network,
        spec=model.spec,
        plan=model.plan,
        class_names=model.class_names,
        channel_names=model.channel_names,
        processing=model.processing,
        name=name,
        version=number,
        uri=text,
    )
    return prepare_for_inference(loaded, device)


def describe_model(uri: str) -> ModelCard | None:
    """The card of a pinned model (``models:/NAME/VERSION``, ``runs:/…``, a folder), read from
    its small files alone: a batch whose ledger says that nothing is left to do never fetches
    or loads the weights.

    Returns:
        The card, or ``None`` when the files cannot be read this way (the caller loads the
        whole model, which reports what is wrong).
    """
    folder = local_model_path(uri)
    try:
        with tempfile.TemporaryDirectory(prefix="segflow-card-") as scratch:
            if folder is not None:
                name, number = _registered_meta(folder)
                fetch: Callable[[str], Path] = lambda relative: folder / relative  # noqa: E731
            else:
                configure_mlflow()
                _, name, number = _resolve(uri)
                if name is None or number is None:
                    return None
                root = mlflow.MlflowClient().get_model_version_download_uri(name, number)
                fetch = partial(_download_one, root.rstrip("/"), scratch)
            flavor = Model.load(str(fetch("MLmodel"))).flavors.get("python_function", {})
            entries = flavor.get("artifacts", {})
            described = SegflowModel()
            described.read_description(
                {key: fetch(entries[key]["path"]) for key in DESCRIPTION_ARTIFACTS}
            )
    except (MlflowException, ModelError, OSError, KeyError, TypeError, ValueError) as error:
        logger.debug("no card for %s (%s): the model is loaded whole", uri, error)
        return None
    if described.spec is None or described.plan is None:
        return None
    return ModelCard(
        spec=described.spec,
        plan=described.plan,
        class_names=described.class_names,
        channel_names=described.channel_names,
        processing=described.processing,
        name=name,
        version=number,
        uri=uri,
    )


def _download_one(root: str, scratch: str, relative: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(f"{root}/{relative}", dst_path=scratch))


def _registered_meta(folder: Path) -> tuple[str | None, str | None]:
    meta = folder / "registered_model_meta"  # written by MLflow when a registry URI is downloaded
    if not meta.is_file():
        return None, None
    values = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
    name, number = values.get("model_name"), values.get("model_version")
    return (str(name) if name else None), (str(number) if number else None)


def export_model(uri: str, destination: str | Path) -> Path:
    """Copy a model (e.g. ``models:/NAME@champion``) to a local folder for offline use.

    The folder is a complete MLflow model (``mlflow.pyfunc.load_model`` works on it) and
    remembers the registry name and version; :func:`load_model` accepts it.

    Args:
        uri: any URI :func:`load_model` accepts.
        destination: a folder that does not exist yet or is empty.

    Returns:
        The folder.

    Raises:
        OutputError: ``destination`` exists and is not an empty folder.
        ModelError: the model cannot be found.
    """
    destination = Path(destination).expanduser().resolve()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise OutputError(
            "exists and is not an empty folder",
            path=destination,
            hint="choose a new folder, or remove this one",
        )
    source = local_model_path(str(uri))
    if source is not None:
        _from_folder(source)  # refuse what load_model would refuse
        shutil.copytree(source, destination, dirs_exist_ok=True)
        return destination
    configure_mlflow()
    resolved, name, _ = _resolve(str(uri))
    destination.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(resolved, dst_path=str(destination)))
    if local != destination:  # some stores nest the folder: flatten it
        for item in local.iterdir():
            shutil.move(str(item), destination / item.name)
        local.rmdir()
    if name is None:  # a run or logged-model URI: a stale registry note must not travel
        (destination / "registered_model_meta").unlink(missing_ok=True)
    _from_folder(destination)
    return destination
