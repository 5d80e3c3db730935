"""The shared local Prefect API: the first command starts it, the next reuse it, flows run on it,
it exits when idle or at ``segflow server stop``, and it never holds a caller's pipes.

Each test runs the installed ``segflow`` with its own ``SEGFLOW_HOME`` and a unique marker in the
environment, so every process it leaves behind is found (and killed at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

SEGFLOW = Path(sys.executable).with_name("segflow")
MARKER = "SEGFLOW_TEST_MARKER"


def marked(marker: str) -> dict[int, str]:
    """Live processes carrying ``marker`` in their environment: pid → command line."""
    entry = f"{MARKER}={marker}".encode()
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if entry in (proc / "environ").read_bytes().split(b"\0"):
                status = (proc / "stat").read_text().split()[2]
                if status != "Z":
                    found[int(proc.name)] = (
                        (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    )
        except OSError:
            continue
    return found


def servers(home: str) -> list[int]:
    """Live shared-API servers of ``home``: they run with a minimal environment of their own
    (no marker, no SEGFLOW_HOME), so they are found by their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            zombie = (proc / "stat").read_text().split()[2] == "Z"
        except OSError:
            continue
        if (
            not zombie
            and b"flows.api_server" in cmdline
            and any(part.startswith(f"{home}/server/".encode()) for part in cmdline)
        ):
            found.append(int(proc.name))
    return found


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A shared-API environment of its own; whatever it leaves running is killed afterwards."""
    marker = uuid.uuid4().hex
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEGFLOW_"))}
    # The warm process has tests of its own (test_warm_process.py): these look at the API alone.
    variables.update({"SEGFLOW_HOME": str(tmp_path / "home"), MARKER: marker, "SEGFLOW_WARM": "0"})
    yield variables
    for pid in [*marked(marker), *servers(variables["SEGFLOW_HOME"])]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def segflow(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SEGFLOW), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def state(env: dict[str, str]) -> dict[str, object]:
    return dict(json.loads((Path(env["SEGFLOW_HOME"]) / "server" / "state.json").read_text()))


def volumes(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        data = np.zeros((8, 8, 8), dtype=np.uint16)
        data.flat[index] = 1
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), folder / f"c{index}.nii")
    return folder


def flow_run_count(url: str) -> int:
    request = urllib.request.Request(
        f"{url}/flow_runs/count", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.loads(response.read()))


def wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            not Path(f"/proc/{pid}").exists()
            or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        ):
            return True
        time.sleep(0.2)
    return False


def test_commands_share_one_server_their_flows_run_on(env: dict[str, str], tmp_path: Path) -> None:
    source = volumes(tmp_path / "images", 3)
    first = segflow("ingest", str(source), "--out", str(tmp_path / "a.json"), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    started = state(env)
    second = segflow("ingest", str(source), "--out", str(tmp_path / "b.json"), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert state(env)["pid"] == started["pid"]
    assert servers(env["SEGFLOW_HOME"]) == [started["pid"]]
    assert not marked(env[MARKER])  # the server takes none of the command's environment
    assert flow_run_count(str(started["url"])) == 2  # both ingests ran as Prefect flows there
    status = segflow("server", "status", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["url"] == started["url"]

    stopped = segflow("server", "stop", env=env)
    assert stopped.returncode == 0 and str(started["pid"]) in stopped.stdout
    assert wait_until_gone(int(str(started["pid"])), 15)
    assert segflow("server", "status", env=env).returncode == 1
    assert not marked(env[MARKER])


def test_the_server_exits_by_itself_when_unused(env: dict[str, str]) -> None:
    env = {**env, "SEGFLOW_API_IDLE_MINUTES": "0.05"}  # 3 s
    assert segflow("server", "start", env=env).returncode == 0
    pid = int(str(state(env)["pid"]))
    assert wait_until_gone(pid, 30), "the idle server did not exit"
    assert not (Path(env["SEGFLOW_HOME"]) / "server" / "state.json").exists()
    assert not marked(env[MARKER])


def test_a_server_of_another_version_is_replaced(env: dict[str, str]) -> None:
    assert segflow("server", "start", env=env).returncode == 0
    old = state(env)
    path = Path(env["SEGFLOW_HOME"]) / "server" / "state.json"
    path.write_text(json.dumps({**old, "version": "segflow 0.0.1; prefect 3.0.0; /old/python"}))
    assert segflow("server", "start", env=env).returncode == 0
    assert state(env)["pid"] != old["pid"]
    assert wait_until_gone(int(str(old["pid"])), 15), "the unused old server was not stopped"
    assert servers(env["SEGFLOW_HOME"]) == [state(env)["pid"]]


def test_commands_started_together_start_one_server(env: dict[str, str]) -> None:
    command = [str(SEGFLOW), "server", "start"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=240)[0].decode() for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    assert len(servers(env["SEGFLOW_HOME"])) == 1
    assert len({line.split()[3] for line in outputs}) == 1  # "Prefect API at <url> …"


def test_a_killed_command_leaves_only_the_server_and_frees_the_pipes(
    env: dict[str, str], tmp_path: Path
) -> None:
    source = volumes(tmp_path / "images", 200)
    command = subprocess.Popen(
        [str(SEGFLOW), "ingest", str(source), "--out", str(tmp_path / "m.json")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while not (Path(env["SEGFLOW_HOME"]) / "server" / "state.json").exists():
        assert time.monotonic() < deadline and command.poll() is None
        time.sleep(0.1)
    command.send_signal(signal.SIGKILL)
    command.communicate(timeout=10)  # end-of-file on the pipes: the server does not hold them
    time.sleep(1)
    assert not marked(env[MARKER])  # the command and every child of it are gone
    assert servers(env["SEGFLOW_HOME"]) == [state(env)["pid"]]  # only the shared server stays
    assert segflow("server", "stop", env=env).returncode == 0
    deadline = time.monotonic() + 15
    while servers(env["SEGFLOW_HOME"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not servers(env["SEGFLOW_HOME"])


def test_the_server_takes_no_credentials_or_settings_of_the_command() -> None:
    from flows.shared_api import server_environment

    kept = server_environment(
        {
            "PATH": "/usr/bin",
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "PREFECT_HOME": "/h/prefect",
            "SEGFLOW_HOME": "/h",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "MLFLOW_TRACKING_URI": "postgresql://u:p@db/mlflow",
        }
    )
    assert kept == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "PREFECT_HOME": "/h/prefect",
    }
