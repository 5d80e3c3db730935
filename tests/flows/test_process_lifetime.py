"""Nothing outlives segflow: on every way out of a command — normal end, an exception, SIGINT,
SIGTERM, a segfault, SIGKILL — its temporary Prefect API server and every other descendant are
gone within 5 s, and a caller's captured pipes reach end-of-file.

Each command runs as the installed ``segflow`` with a unique ``SEGFLOW_TEST_MARKER`` in its
environment. Children inherit it, so scanning ``/proc/*/environ`` finds every descendant, also
after it was re-parented to PID 1. stdout and stderr are pipes read by two threads: the threads
end only when every process holding the pipes' write ends is gone.

The signals are sent while the temporary API starts (~2 s each, by default) and, marked slow,
while a flow runs on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="parent-death signals and /proc are Linux's"
)

SEGFLOW = Path(sys.executable).with_name("segflow")
MARKER = "SEGFLOW_TEST_MARKER"
GRACE_S = 5.0  # the requirement: every descendant gone within 5 s of segflow's end
FLOW_STARTED = "Beginning flow run"


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment holds ``marker``: pid → command line."""
    entry = f"{MARKER}={marker}".encode()
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # zombies, and processes gone meanwhile, have nothing to read
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0"):
            found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def api_servers(marker: str) -> dict[int, str]:
    """The marked uvicorn processes (a temporary Prefect API)."""
    return {pid: cmd for pid, cmd in marked_processes(marker).items() if "uvicorn" in cmd}


def listening_addresses(pids: Iterable[int]) -> set[str]:
    """The IP addresses on which the processes ``pids`` listen (TCP)."""
    import psutil

    return {
        connection.laddr.ip
        for pid in pids
        for connection in psutil.Process(pid).net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN
    }


def assert_nothing_left(marker: str, within: float = GRACE_S) -> None:
    """Every marked process ends within ``within`` seconds (leftovers are killed, then fail)."""
    deadline = time.monotonic() + within
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still alive {within:g} s after segflow ended: {left}"


class Command:
    """A command whose stdout and stderr are pipes, each read to its end by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        streams = (self.process.stdout, self.process.stderr)
        self._readers = [
            threading.Thread(target=self._read, args=(s,), daemon=True) for s in streams
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            with self._lock:
                self._lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, ready: Callable[[], object], timeout: float, what: str) -> None:
        """Wait until ``ready()`` is true; fail (with the output so far) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                pytest.fail(
                    f"segflow ended ({self.process.returncode}) before {what}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"no {what} after {timeout:g} s:\n{self.output}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> int:
        """Wait for the exit and for both pipes' end-of-file; return the exit status."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"segflow still running after {timeout:g} s:\n{self.output}")
        for reader in self._readers:
            reader.join(GRACE_S)
        open_pipes = [reader for reader in self._readers if reader.is_alive()]
        assert not open_pipes, f"the caller's pipes stayed open after segflow ended ({code})"
        return code


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique marker; whatever still carries it after the test is killed."""
    value = uuid.uuid4().hex
    yield value
    for pid in marked_processes(value):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(marker: str, tmp_path: Path) -> dict[str, str]:
    """segflow's environment: its own SEGFLOW_HOME, no Prefect API configured, the marker, a
    temporary API per command (the shared one, meant to outlive commands, has its own tests in
    ``test_shared_api.py``), no warm process (``test_warm_process.py``), and the verbose
    console, whose flow lines tell when a flow runs."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEGFLOW_"))}
    variables.update(
        {
            "SEGFLOW_HOME": str(tmp_path / "home"),
            MARKER: marker,
            "SEGFLOW_API": "per-command",
            "SEGFLOW_CONSOLE": "verbose",
            "SEGFLOW_WARM": "0",  # the process tree of a command run on its own
        }
    )
    return variables


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PREFECT_HOME for the module's flow runs: its database is created (migrated) once."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def warm_env(env: dict[str, str], prefect_home: Path) -> dict[str, str]:
    """:func:`env` with the module's PREFECT_HOME (a temporary API starts ~5 s sooner)."""
    return {**env, "PREFECT_HOME": str(prefect_home)}


def _volumes(folder: Path, count: int, side: int) -> Path:
    """``count`` distinct NIfTI volumes ``side``³ in ``folder/images`` (a flat dataset)."""
    images = folder / "images"
    images.mkdir(parents=True)
    for index in range(count):
        data = np.zeros((side, side, side), dtype=np.uint16)
        data.flat[index % data.size] = 1 + index // data.size
        nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), images / f"c{index:04d}.nii")
    return folder


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three volumes: ingested in well under a second once the API answers."""
    return _volumes(tmp_path_factory.mktemp("small"), 3, 16)


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2500 tiny volumes: ingesting them keeps the flow running for several seconds."""
    return _volumes(tmp_path_factory.mktemp("long"), 2500, 6)


def _ingest(source: Path, out: Path, env: dict[str, str]) -> Command:
    return Command([str(SEGFLOW), "ingest", str(source), "--out", str(out)], env)


# --- the temporary API: started lazily, used by the flows, stopped on every way out ----------


def test_normal_end_stops_the_api_the_flow_ran_on(
    small_dataset: Path, warm_env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    run = _ingest(small_dataset, tmp_path / "m.json", warm_env)
    run.wait_for(lambda: api_servers(marker), 60, "temporary API server")
    servers = api_servers(marker)
    assert listening_addresses(servers) == {"127.0.0.1"}
    assert run.finish(timeout=240) == 0, run.output
    assert_nothing_left(marker)
    # segflow's own server (a socket handed over with --fd), not Prefect's launcher, ran the flow
    assert all("--fd" in command and "--port" not in command for command in servers.values())
    assert "Starting temporary server" not in run.output
    assert "View at http" not in run.output  # the server has no UI: no links to it
    assert (Path(warm_env["SEGFLOW_HOME"]) / "logs" / "prefect-api.log").is_file()


def test_an_exception_after_the_api_started(
    small_dataset: Path, warm_env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the manifest cannot be written inside a file")
    run = _ingest(small_dataset, blocker / "m.json", warm_env)  # the flow fails on writing it
    run.wait_for(lambda: FLOW_STARTED in run.output, 120, "flow run")
    assert run.finish(timeout=120) == 1, run.output
    assert "cannot create a file here" in run.output
    assert_nothing_left(marker)


# 8-20 s each on 2 busy cores: the API's start-up, then several seconds of flow. The same signals
# while the API starts (below) take ~2 s each and run by default.
@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGSEGV, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_signal_while_the_flow_runs(
    sig: signal.Signals, long_dataset: Path, warm_env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    run = _ingest(long_dataset, tmp_path / "m.json", warm_env)
    run.wait_for(lambda: FLOW_STARTED in run.output, 120, "flow run")
    assert api_servers(marker)
    run.process.send_signal(sig)
    sent = time.monotonic()
    code = run.finish(timeout=120)
    if sig in (signal.SIGSEGV, signal.SIGKILL):
        assert code == -sig, f"segflow was not killed mid-flow ({code}):\n{run.output}"
    else:  # a stop signal is a clean stop of every command: 130 or 143, within 10 s, said
        assert code == 128 + sig, run.output
        assert time.monotonic() - sent <= 10, run.output
        assert f"interrupted by {sig.name}" in run.output
    assert_nothing_left(marker)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGSEGV, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_signal_while_the_api_starts(
    sig: signal.Signals, small_dataset: Path, env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    run = _ingest(small_dataset, tmp_path / "m.json", env)
    run.wait_for(lambda: api_servers(marker), 60, "temporary API server")
    run.process.send_signal(sig)
    code = run.finish(timeout=60)
    if sig in (signal.SIGSEGV, signal.SIGKILL):
        assert code == -sig
    assert_nothing_left(marker)


def test_a_configured_api_url_starts_no_server(
    small_dataset: Path, env: dict[str, str], marker: str, tmp_path: Path
) -> None:
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # the user's server (here: not answering)
    run = _ingest(small_dataset, tmp_path / "m.json", env)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while run.process.poll() is None and time.monotonic() < deadline:
        seen.update(api_servers(marker))
        time.sleep(0.05)
    assert run.finish(timeout=10) != 0  # it used the URL: nothing answers there
    assert "127.0.0.1:9" in run.output
    assert not seen
    assert not (Path(env["SEGFLOW_HOME"]) / "logs" / "prefect-api.log").exists()


def test_help_starts_no_server(env: dict[str, str], marker: str) -> None:
    for args in (["--help"], ["ingest", "--help"], ["ingest", "/no/such/folder"]):
        run = Command([str(SEGFLOW), *args], env)
        assert run.finish(timeout=60) in (0, 1), run.output
    assert not (Path(env["SEGFLOW_HOME"]) / "logs" / "prefect-api.log").exists()
    assert_nothing_left(marker, within=0)


# --- the helper, and other descendants -------------------------------------------------------


def _python(script: str, env: dict[str, str]) -> Command:
    return Command([sys.executable, "-c", textwrap.dedent(script)], env)


def test_guarded_children_die_with_a_killed_parent(env: dict[str, str], marker: str) -> None:
    run = _python(
        """
        import os, subprocess, sys, threading, time
        from pipelines.services.process_guard import popen_guarded
        # forked from a thread that ends at once: the child must outlive the thread
        spawner = threading.Thread(target=lambda: popen_guarded(["sleep", "120"]))
        spawner.start()
        spawner.join()
        popen_guarded(["sleep", "121"], stdout=sys.stdout)  # the caller's pipe, on purpose
        arm = (
            "import sys, time; from pipelines.services.process_guard import set_parent_death_signal as s; "
            "s(parent_pid=int(sys.argv[1])); print('armed', flush=True); time.sleep(122)"
        )
        subprocess.Popen([sys.executable, "-c", arm, str(os.getpid())])  # sets it itself
        print("ready", flush=True)
        time.sleep(120)
        """,
        env,
    )
    run.wait_for(lambda: "ready" in run.output and "armed" in run.output, 60, "children")
    assert len(marked_processes(marker)) == 4  # sleep 120 outlived the thread that forked it
    run.process.kill()
    assert run.finish(timeout=30) == -signal.SIGKILL
    assert_nothing_left(marker)


def test_stop_process_group_ends_members_that_ignore_sigterm(
    env: dict[str, str], marker: str
) -> None:
    from pipelines.services.process_guard import popen_guarded, stop_process_group

    child = popen_guarded(["sh", "-c", "trap '' TERM; sleep 60 & wait"], env=env)
    deadline = time.monotonic() + 10
    while len(marked_processes(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    stop_process_group(child, timeout=0.5)
    assert time.monotonic() - started < 3
    assert child.returncode == -signal.SIGKILL
    assert_nothing_left(marker, within=1)


def test_dask_worker_processes_die_with_segflow(env: dict[str, str], marker: str) -> None:
    pytest.importorskip("distributed")
    run = _python(
        """
        import time
        from distributed import Client, LocalCluster
        from flows.runners import local_cluster_kwargs
        if __name__ == "__main__":
            cluster = LocalCluster(**local_cluster_kwargs(2, processes=True))
            client = Client(cluster)
            print("ready", client.submit(sum, [1, 2]).result(), flush=True)
            time.sleep(120)
        """,
        env,
    )
    run.wait_for(lambda: "ready 3" in run.output, 120, "Dask cluster")
    assert len(marked_processes(marker)) >= 3  # segflow's stand-in and two worker processes
    run.process.kill()
    assert run.finish(timeout=30) == -signal.SIGKILL
    assert_nothing_left(marker)
