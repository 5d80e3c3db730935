"""A command whose clean stop hangs still ends after its stop deadline, with the signal's exit
code; a clean stop, and signals that are not stops, are left alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform == "win32",
    reason="needs POSIX signals (SIGUSR1, SIGTERM sent to a child) and a pipe as the wakeup fd",
)

DEADLINE_S = 1.0


def _start(handler_body: str, sig: signal.Signals) -> subprocess.Popen[str]:
    """A Python process with the deadline armed and ``handler_body`` handling ``sig``."""
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        from pipelines.interrupts import arm_stop_deadline
        arm_stop_deadline({DEADLINE_S})
        def handler(signum, frame):
            {handler_body}
        signal.signal({int(sig)}, handler)
        print("ready", flush=True)
        time.sleep(60)
        sys.exit(5)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=lambda v: str(v)
)
def test_a_hanging_stop_ends_at_the_deadline(sig: signal.Signals, code: int) -> None:
    process = _start("time.sleep(60)", sig)  # the handler itself never returns
    sent = time.monotonic()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code
    assert DEADLINE_S <= time.monotonic() - sent < DEADLINE_S + 10
    assert f"interrupted by {sig.name}, not stopped {DEADLINE_S:g} s later" in stderr
    assert "in handler" in stderr  # every thread's stack: the main thread hangs in the handler


def test_a_clean_stop_keeps_its_own_exit() -> None:
    process = _start("sys.exit(7)", signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 7 and "exiting now" not in stderr


def test_other_signals_arm_nothing() -> None:
    process = _start("print('usr1', flush=True)", signal.SIGUSR1)
    process.send_signal(signal.SIGUSR1)
    assert process.stdout is not None and process.stdout.readline().strip() == "usr1"
    time.sleep(DEADLINE_S + 1.0)
    assert process.poll() is None  # still sleeping: SIGUSR1 is no stop
    process.kill()
    process.communicate(timeout=30)
