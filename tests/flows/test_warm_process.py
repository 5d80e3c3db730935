"""The warm process: the installed ``segflow`` command hands its work to a fork of a process that
imported the stack once; the first command starts it, two at once start one, a killed one is
replaced, help and ``segflow server`` never start one, and a command behaves as it would on its
own (its folder, environment, streams, exit code, Ctrl-C).

Each test runs the installed command with a ``SEGFLOW_HOME`` of its own; every warm process of
that home is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.warm_protocol import ask, home_sockets

pytestmark = [
    pytest.mark.slow,  # each test starts a warm process: seconds of imports
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="Linux only (fork, SCM_RIGHTS)"
    ),
]

SEGFLOW = Path(sys.executable).with_name("segflow")


def warm_pids(env: dict[str, str]) -> list[int]:
    """The warm processes of ``env``'s home that answer."""
    answers = (ask(path, "status") for path in home_sockets(env))
    return sorted(int(answer["pid"]) for answer in answers if answer and not answer["retiring"])


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The user's environment: nothing configured but a home of its own, warm processes on."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEGFLOW_"))}
    variables["SEGFLOW_HOME"] = str(tmp_path / "home")
    yield variables
    for path in home_sockets(variables):
        answer = ask(path, "status")
        if answer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(answer["pid"]), signal.SIGKILL)
        path.unlink(missing_ok=True)
    subprocess.run([str(SEGFLOW), "server", "stop"], env=variables, capture_output=True)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"cell_{index}.png")
    return folder


def segflow(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SEGFLOW), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_two_commands_at_once_start_one_warm_process_that_later_ones_reuse(
    env: dict[str, str], images: Path, tmp_path: Path
) -> None:
    commands = [
        subprocess.Popen(
            [str(SEGFLOW), "ingest", str(images), "--out", str(tmp_path / f"m{index}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    for command in commands:
        stdout, stderr = command.communicate(timeout=300)
        assert command.returncode == 0, stdout + stderr
        assert "Manifest written to" in stdout  # each command's lines on its own stdout
    assert (tmp_path / "m0.json").is_file() and (tmp_path / "m1.json").is_file()
    started = warm_pids(env)
    assert len(started) == 1

    again = segflow("ingest", str(images), "--out", str(tmp_path / "m2.json"), env=env)
    assert again.returncode == 0, again.stderr
    assert warm_pids(env) == started
    status = segflow("server", "status", "--json", env=env)
    assert json.loads(status.stdout)["warm_processes"] == started
    # Like the shared API, it and its forkserver run with none of the commands' settings.
    for pid in [*started, *_children(started[0])]:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [entry for entry in environment if entry.startswith(b"SEGFLOW_")], pid


def test_a_command_keeps_its_folder_environment_streams_and_exit_code(
    env: dict[str, str], images: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    relative = os.path.relpath(images, work)
    done = segflow("--json", "ingest", relative, "--out", "manifest.json", env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout holds the one JSON object, nothing else
    assert summary["valid"] == 3 and (work / "manifest.json").is_file()
    assert str(tmp_path / "home" / "logs") in summary["log"]  # this command's SEGFLOW_HOME

    missing = segflow("ingest", str(tmp_path / "nothing"), "--out", "x.json", env=env, cwd=work)
    alone = segflow(
        "ingest", str(tmp_path / "nothing"), "--out", "x.json", env={**env, "SEGFLOW_WARM": "0"}
    )
    assert missing.returncode == alone.returncode != 0
    assert "nothing" in missing.stderr and missing.stdout.strip() == alone.stdout.strip()
    assert len(warm_pids(env)) == 1


def test_a_killed_warm_process_is_replaced(
    env: dict[str, str], images: Path, tmp_path: Path
) -> None:
    first = segflow("ingest", str(images), "--out", str(tmp_path / "a.json"), env=env)
    assert first.returncode == 0, first.stderr
    [pid] = warm_pids(env)
    os.kill(pid, signal.SIGKILL)
    assert gone(pid, 10)

    second = segflow("ingest", str(images), "--out", str(tmp_path / "b.json"), env=env)
    assert second.returncode == 0, second.stderr
    [replacement] = warm_pids(env)
    assert replacement != pid


def test_help_and_server_commands_never_start_one_and_stop_retires_it(
    env: dict[str, str], images: Path, tmp_path: Path
) -> None:
    for args in (("--help",), ("ingest", "--help"), ("server", "status")):
        segflow(*args, env=env)
    assert warm_pids(env) == []

    assert (
        segflow("ingest", str(images), "--out", str(tmp_path / "a.json"), env=env).returncode == 0
    )
    [pid] = warm_pids(env)
    helped = segflow("segment", "--help", env=env)  # a running one serves help
    assert helped.returncode == 0 and "Usage: segflow segment" in helped.stdout
    stopped = segflow("server", "stop", env=env)
    assert str(pid) in stopped.stdout
    assert gone(pid, 15)


def test_another_import_environment_gets_its_own_process_and_retires_the_old(
    env: dict[str, str], images: Path, tmp_path: Path
) -> None:
    assert (
        segflow("ingest", str(images), "--out", str(tmp_path / "a.json"), env=env).returncode == 0
    )
    [old] = warm_pids(env)
    other = {**env, "OMP_NUM_THREADS": "1"}  # read by the native libraries at import
    assert (
        segflow("ingest", str(images), "--out", str(tmp_path / "b.json"), env=other).returncode == 0
    )
    assert gone(old, 15)  # retired: it had no command running
    assert len(warm_pids(other)) == 1 and old not in warm_pids(other)


def test_ctrl_c_reaches_the_command_and_a_killed_command_stops(
    env: dict[str, str], tmp_path: Path
) -> None:
    """``segflow serve`` runs until stopped: Ctrl-C on the command stops it as it would on its
    own; SIGKILL of the command makes the warm process stop the command's child."""
    runs = []
    for stop in (signal.SIGINT, signal.SIGKILL):
        command = subprocess.Popen(
            [str(SEGFLOW), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        child = _wait_for_child(env, timeout=240)
        time.sleep(3)
        command.send_signal(stop)
        command.wait(timeout=60)
        assert gone(child, 60), f"the command's child outlived {stop.name}"
        runs.append(command.returncode)
    assert runs[0] != 0 and runs[1] == -signal.SIGKILL


def _wait_for_child(env: dict[str, str], timeout: float) -> int:
    """The pid of the warm process's running command, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in warm_pids(env):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            commands = [int(c) for c in children if b"multiprocessing" not in _cmdline(int(c))]
            if commands:
                return commands[0]
        time.sleep(0.2)
    raise AssertionError("no command started in the warm process")


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
