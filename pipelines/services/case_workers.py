"""Segment cases in worker processes, so that a native crash fails one file, not the batch.

GDAL, torch and scikit-image run native code: a segfault, an abort or the kernel's OOM killer
takes down the process it happens in. :class:`CaseWorkers` runs each case in one of a few
long-lived worker processes (`pebble`'s process pool, which replaces a worker that dies and
fails only the case it was running, with :class:`CaseCrashed`). The batch records that case as
``crashed`` and goes on.

Workers are forked from a *forkserver* that imported the inference stack once, so starting
one costs milliseconds, not the seconds of importing torch again; each loads the model once
(from a local folder, made ready for inference) and keeps it for every case it runs. They die
with their parent (``PR_SET_PDEATHSIG``), ignore Ctrl-C (the parent decides how to stop) and
see the parent's stop request at their next batch of windows (:mod:`pipelines.interrupts`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from pebble import ProcessExpired, ProcessPool

from data_contracts import InferenceOptions, ModelError, SegflowError
from pipelines.infer.inputs import InferenceInput
from pipelines.infer.loaded_model import LoadedModel, ModelCard
from pipelines.infer.run import CaseResult, remove_case_outputs, segment_case
from pipelines.interrupts import (
    StopRequested,
    stop_reason,
    stop_requested,
    watch_event,
)
from pipelines.redaction import redact
from pipelines.services.model_loading import export_model, load_model, local_model_path
from pipelines.services.process_guard import process_exists, set_parent_death_signal

__all__ = [
    "CaseCrashed",
    "CaseWorkers",
    "ModelFolder",
    "WorkerSettings",
    "adopt_inherited_forkserver",
    "default_worker_count",
    "describe_exit",
    "launch_forkserver",
    "start_forkserver_early",
]

logger = logging.getLogger(__name__)

# Imported once by the forkserver, so that forked workers start with them loaded.
#: What the forkserver imports once, so that no worker imports it per batch (each kind's
#: reading, windowing, post-processing and writing: ~90 modules, a second on 2 cores).
_PRELOAD = [
    "pipelines.infer.run",
    "pipelines.services.model_loading",
    "pipelines.kinds.volume",
    "pipelines.kinds.raster",
    "pipelines.kinds.image2d",
    "pipelines.infer.stream",
    "pipelines.infer.strips",
    "pipelines.infer.raster",
    "pipelines.infer.in_memory",
    "pipelines.infer.confidence",
    "pipelines.infer.polygons",
    "pipelines.postprocess.polygons",
    "pipelines.write.geotiff",
]
_STOP_GRACE_SECONDS = 3.0
_REGISTRY_SCHEMES = ("models", "runs")  # where load_model downloads models from
_POLL_SECONDS = 0.2


class CaseCrashed(SegflowError):
    """The worker process segmenting a case died (a signal or an exit without a result).

    Attributes:
        cause: ``"SIGSEGV (signal 11)"``, ``"exit status 1"``…
    """

    default_hint = (
        "the file made native code crash (a damaged file, or memory exhausted); it is retried "
        "once, then quarantined: see the ledger, or pass --retry-crashed to try it again"
    )

    def __init__(
        self, reason: str, *, path: str | Path | None = None, hint: str | None = None
    ) -> None:
        super().__init__(reason, path=path, hint=hint)
        self.cause = reason


def describe_exit(exitcode: int | None) -> str:
    """``-11`` → ``"SIGSEGV (signal 11)"``; ``1`` → ``"exit status 1"``."""
    if exitcode is None:
        return "an unknown cause"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal"
        return f"{name} (signal {-exitcode})"
    return f"exit status {exitcode}"


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker needs to segment cases, sent once when it starts.

    Attributes:
        model_folder: a local model folder (from ``export_model`` or a local model path).
        model_uri: the parent's model URI; with ``model_name`` and ``model_version``, the
            identity that lineage records.
        device: where the workers load it (``None``: the default device).
        out_dir: the output folder.
        options: the batch's inference options.
        torch_threads: intra-op threads of each worker.
        environment: the parent's environment when the batch started (the forkserver that
            forks workers may be older than the parent's last change, e.g. model plugins).
    """

    model_folder: str
    model_uri: str
    model_name: str | None
    model_version: str | None
    device: str | None
    out_dir: str
    options: InferenceOptions
    torch_threads: int = 1
    environment: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        model: LoadedModel | ModelCard,
        model_folder: str | Path,
        out_dir: str | Path,
        options: InferenceOptions,
        torch_threads: int,
    ) -> WorkerSettings:
        """Settings for workers that segment with ``model`` (loaded from ``model_folder``; its
        card is enough: the workers load the weights, on ``options.device`` or the default)."""
        device = model.device if isinstance(model, LoadedModel) else options.device
        return cls(
            str(model_folder),
            model.uri,
            model.name,
            model.version,
            device,
            str(out_dir),
            options,
            torch_threads,
            tuple(sorted(os.environ.items())),
        )


_worker: dict[str, Any] = {}  # the state of a worker process (one thread runs its cases)


def _initialize(settings: WorkerSettings, stop: Any) -> None:
    """Runs once in each worker process before its first case."""
    set_parent_death_signal()
    # Ctrl-C reaches the whole process group: the parent decides how to stop. SIGTERM ends a
    # worker at once (the pool's own way to end workers); a stop of the batch arrives through
    # the shared event instead, checked at every batch of windows.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    watch_event(stop)
    if settings.environment:
        os.environ.clear()
        os.environ.update(dict(settings.environment))
    _worker["settings"] = settings
    try:
        import torch

        torch.set_num_threads(settings.torch_threads)
        loaded = load_model(settings.model_folder, device=settings.device)
        _worker["model"] = dataclasses.replace(
            loaded, uri=settings.model_uri, name=settings.model_name, version=settings.model_version
        )
    except BaseException as error:  # reported with every case, not as a dead worker
        _worker["error"] = _transportable(error)


def _transportable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # any pickling failure: send the text instead
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _segment_in_worker(case: InferenceInput) -> CaseResult:
    """The task a worker runs: one case with the worker's model."""
    if "error" in _worker:
        raise _worker["error"]
    settings: WorkerSettings = _worker["settings"]
    try:
        return segment_case(_worker["model"], case, settings.out_dir, settings.options)
    except Exception as error:
        raise _transportable(error) from None


class CaseWorkers:
    """A pool of worker processes that segment one case at a time each.

    Thread-safe: the batch's task threads call :meth:`segment` concurrently, each waiting for
    its own case.

    Args:
        settings: what the workers load and where they write.
        workers: number of worker processes.
    """

    def __init__(self, settings: WorkerSettings, workers: int) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        self._stop = context.Event()
        self._pool = ProcessPool(
            max_workers=max(1, workers),
            initializer=_initialize,
            initargs=(settings, self._stop),
            context=context,
        )
        self.workers = max(1, workers)
        self._out_dir = settings.out_dir

    def segment(self, case: InferenceInput) -> CaseResult:
        """Segment ``case`` in a worker and return its result.

        Raises:
            CaseCrashed: the worker died while segmenting it (it is replaced).
            Exception: the case's own error, as raised in the worker.
        """
        future = self._pool.schedule(_segment_in_worker, args=(case,))
        stop_deadline: float | None = None
        try:
            while True:
                try:
                    return future.result(timeout=_POLL_SECONDS)
                except TimeoutError:
                    if not stop_requested():
                        continue
                    # The worker stops at its next batch of windows; one still starting (or
                    # stuck in native code) is ended after a grace period.
                    self._stop.set()
                    now = time.monotonic()
                    stop_deadline = stop_deadline or now + _STOP_GRACE_SECONDS
                    if now > stop_deadline:
                        future.cancel()  # type: ignore[no-untyped-call]
                        remove_case_outputs(Path(self._out_dir), case.case_id)
                        raise StopRequested(
                            f"stopped by {stop_reason()}; its worker was ended",
                            path=case.channels[0],
                        ) from None
        except ProcessExpired as error:
            cause = describe_exit(error.exitcode)
            if stop_requested():  # ended with the rest of the process group: not a crash
                raise StopRequested(f"stopped by {stop_reason()}", path=case.channels[0]) from None
            raise CaseCrashed(
                f"the worker process segmenting it died of {cause}", path=case.channels[0]
            ) from None
        except CancelledError:
            raise CaseCrashed(
                "was stopped with its worker process", path=case.channels[0]
            ) from None

    def request_stop(self) -> None:
        """Ask every worker to stop its case at the next batch of windows."""
        self._stop.set()

    def close(self, *, stopping: bool = False) -> None:
        """Let the workers finish their cases and end (at once, when ``stopping``)."""
        if stopping:  # every case has returned by now: end the workers without waiting
            self._stop.set()
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool.join()
            return
        self._pool.close()  # type: ignore[no-untyped-call]
        self._pool.join()

    def __enter__(self) -> CaseWorkers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._pool.stop()  # type: ignore[no-untyped-call]
            self._pool.join()
        else:
            self.close()


def start_forkserver_early(*, wait: bool = False) -> None:
    """Start the forkserver, which imports the inference stack (seconds), in the background, so
    that it is ready when the batch's first case needs a worker; ``wait``: until it is ready."""

    def start() -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        probe = context.Process(target=_ready, name="segflow-forkserver-probe")
        probe.start()  # returns once the forkserver has imported its preload and forked
        probe.join()

    global _stop_registered
    if not _stop_registered:
        atexit.register(_stop_forkserver)
        _stop_registered = True
    if wait:
        start()
    else:
        threading.Thread(target=start, name="segflow-forkserver", daemon=True).start()


_stop_registered = False


def launch_forkserver() -> None:
    """Start the forkserver without waiting for its imports and without a thread: for a warm
    process that forks commands (:mod:`flows.warm_server`), whose children adopt it."""
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    forkserver.ensure_running()


def adopt_inherited_forkserver() -> None:
    """In a process forked from the one that launched the forkserver: use that forkserver.

    ``multiprocessing`` checks that its forkserver lives with ``waitpid``, which only its parent
    may call; here that check becomes "the process exists". The forkserver is shared, so this
    process never stops it at exit; one that died is replaced as usual.
    """
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # its state is private: read and reset it by name
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None or pid == os.getpid():
        return
    start_own = server.ensure_running

    def ensure_running() -> None:
        if server._forkserver_pid is not None and process_exists(server._forkserver_pid):
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
            return
        with contextlib.suppress(OSError, TypeError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_pid = server._forkserver_address = None
        server._forkserver_alive_fd = None
        server.ensure_running = start_own
        start_own()

    server.ensure_running = ensure_running
    forkserver.ensure_running = ensure_running
    global _stop_registered
    _stop_registered = True  # the shared forkserver outlives this process


def _stop_forkserver() -> None:
    """At exit, end the forkserver: one still importing its preload (a command that had nothing
    to segment ends first) would notice this process's end only when done, seconds later."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _ready() -> None:
    """The forkserver's first child: its start means the preload is imported."""


def default_worker_count(cases: int, cpu_count: int | None = None) -> int:
    """One worker per core, but never more than there are cases."""
    return max(1, min(cases, cpu_count or os.cpu_count() or 1))


class ModelFolder:
    """A local folder holding the model ``model_uri`` names, for the batch's process and its
    workers to load from: the folder itself for a local model, else a copy exported from the
    registry into ``scratch`` at most once, when first asked for (thread-safe): the registry
    model is downloaded once per batch.

    Args:
        model_uri: a pinned model URI (``models:/NAME/VERSION``, ``runs:/…``) or a folder.
        scratch: a folder that outlives every load from the copy (the batch's).
    """

    def __init__(self, model_uri: str, scratch: str | Path) -> None:
        self.model_uri = model_uri
        self._scratch = Path(scratch)
        self._path: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The folder (exported on first use).

        Raises:
            ModelError: the model cannot be found.
        """
        with self._lock:
            if self._path is None:
                local = local_model_path(self.model_uri)
                self._path = local or self._export()
            return self._path

    def _export(self) -> Path:
        """Export the registry model under :func:`load_model`'s rules: from the registry
        only, and a failed download is a :class:`ModelError`."""
        if urlparse(self.model_uri).scheme not in _REGISTRY_SCHEMES:
            load_model(self.model_uri)  # refuses it, saying why (it never downloads such a URI)
        try:
            return export_model(self.model_uri, self._scratch / "model")
        except (MlflowException, OSError) as error:
            raise ModelError(
                f"cannot be downloaded from MLflow ({redact(str(error))[:300]})",
                path=self.model_uri,
                hint="check that the MLflow tracking server (MLFLOW_TRACKING_URI) is running "
                "and reachable",
            ) from error

    def load(self, device: str | None = None) -> LoadedModel:
        """The model, loaded from :attr:`path` and made ready for inference on ``device``,
        under the identity of :attr:`model_uri` (what lineage and the ledger record); name
        and version come with the exported folder, as :func:`load_model` would give them.

        Raises:
            ModelError: the model cannot be found or loaded.
        """
        return dataclasses.replace(load_model(self.path, device=device), uri=self.model_uri)
