"""The pieces of the warm process that need no process of their own: the key that decides which
warm process may serve a command, the message framing with file descriptors, the private socket
folder, and the budget clock of a command run in a fork."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from flows.train_cli import process_started_at
from flows.warm_client import start_time
from flows.warm_protocol import (
    ensure_private_dir,
    home_tag,
    receive_message,
    send_message,
    socket_path,
    warm_enabled,
    warm_key,
)
from flows.warm_server import STARTED_AT_VARIABLE


def test_the_key_follows_the_home_and_the_variables_read_at_import(tmp_path: Path) -> None:
    base = {"SEGFLOW_HOME": str(tmp_path / "a"), "PATH": "/usr/bin"}
    assert warm_key(base) == warm_key({**base, "PATH": "/bin", "AWS_ACCESS_KEY_ID": "x"})
    assert warm_key(base) != warm_key({**base, "OMP_NUM_THREADS": "1"})
    assert warm_key(base) != warm_key({**base, "PREFECT_LOGGING_LEVEL": "DEBUG"})
    other_home = {**base, "SEGFLOW_HOME": str(tmp_path / "b")}
    assert warm_key(base) != warm_key(other_home)
    assert home_tag(base) != home_tag(other_home)
    assert socket_path(warm_key(base), base).name.startswith(f"{home_tag(base)}-")
    relative = {"PATH": "/usr/bin"}  # the default ./.segflow: one per working folder
    assert home_tag(relative) == home_tag({"SEGFLOW_HOME": str(Path.cwd() / ".segflow")})


def test_warm_processes_can_be_turned_off() -> None:
    assert warm_enabled({}) is (os.uname().sysname == "Linux")
    assert not warm_enabled({"SEGFLOW_WARM": "0"})
    assert not warm_enabled({"SEGFLOW_WARM": "off"})


def test_a_message_carries_its_file_descriptors(tmp_path: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    target = tmp_path / "out.txt"
    with left, right, open(target, "w") as stream:
        send_message(
            left, {"argv": ["segflow", "ingest"], "env": {"A": "é" * 5000}}, [stream.fileno()]
        )
        message, fds = receive_message(right, max_fds=3)
        assert message == {"argv": ["segflow", "ingest"], "env": {"A": "é" * 5000}}
        [fd] = fds
        os.write(fd, b"written through the passed descriptor")
        os.close(fd)
        left.close()
        assert receive_message(right) == (None, [])  # the peer is gone
    assert target.read_text() == "written through the passed descriptor"


def test_a_malformed_message_is_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        left.sendall(b"\x00\x00\x00\x04[1]x")
        with pytest.raises(ValueError):
            receive_message(right)


def test_the_socket_folder_must_be_private(tmp_path: Path) -> None:
    private = tmp_path / "private"
    ensure_private_dir(private)
    assert private.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(PermissionError):
        ensure_private_dir(shared)


def test_the_budget_counts_from_the_users_command_not_from_the_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert abs(start_time() - process_started_at()) < 2.0  # this process, read two ways
    monkeypatch.setenv(STARTED_AT_VARIABLE, f"{os.getpid()}:{time.time() - 100:.3f}")
    assert time.time() - process_started_at() == pytest.approx(100, abs=2)
    monkeypatch.setenv(STARTED_AT_VARIABLE, f"{os.getpid() + 1}:1.0")  # inherited by a child
    assert process_started_at() > 1.0
