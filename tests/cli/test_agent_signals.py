"""The agent stops cleanly on SIGTERM, SIGINT and SIGHUP: exit 0, a last export, no traceback,
even when the signal arrives while it is still starting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from otlp_receiver import OtlpReceiver
from runner import ROOT

EARLY_S = 0.05


def _agent(receiver: OtlpReceiver) -> subprocess.Popen:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint}
    return subprocess.Popen([sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate", "h200",
                             "--interval", "30"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def _stopped_cleanly(agent: subprocess.Popen) -> str:
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    return err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_while_starting_still_gives_a_last_export(signum: int) -> None:
    with OtlpReceiver() as receiver:
        agent = _agent(receiver)
        time.sleep(EARLY_S)
        # The handlers go in before any heavy import; on a loaded machine the interpreter itself
        # may not have reached them yet, so wait for them (SIGTERM's stands for all three).
        deadline = time.monotonic() + 30
        while not _catches(agent.pid, signal.SIGTERM) and time.monotonic() < deadline:
            time.sleep(0.005)
        agent.send_signal(signum)
        _stopped_cleanly(agent)
        # Stopped before its first cycle, the agent still takes and exports one.
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 1, timeout_s=10)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_signal_while_running_exports_the_state_at_shutdown(signum: int) -> None:
    with OtlpReceiver() as receiver:
        agent = _agent(receiver)
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 1, timeout_s=60)
        agent.send_signal(signum)
        _stopped_cleanly(agent)
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 2, timeout_s=10)


def test_ctrl_c_interrupts_a_snapshot_quietly() -> None:
    snapshot = subprocess.Popen([sys.executable, "-m", "otel_gpu.cli", "snapshot", "--cycles",
                                 "100", "--interval", "30"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # Waiting between real cycles: the host reader has opened /proc/stat by then.
    while time.monotonic() < deadline and "/proc/stat" not in _open_files(snapshot.pid):
        time.sleep(0.05)
    snapshot.send_signal(signal.SIGINT)
    _, err = snapshot.communicate(timeout=60)
    assert snapshot.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def _open_files(pid: int) -> set[str]:
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return found


HEAVY = ("opentelemetry", "grpc", "google.protobuf", "yaml", "pynvml")
_SPY = f"""
import signal, sys
HEAVY = {HEAVY!r}
first = []

class Spy:
    def find_spec(self, name, path=None, target=None):
        if not first and name.startswith(HEAVY):
            first.append((name, signal.getsignal(signal.SIGTERM)))
            signal.raise_signal(signal.SIGTERM)  # a SIGTERM at the first heavy import
        return None

sys.meta_path.insert(0, Spy())
from otel_gpu.cli import main
code = main(["agent", "--simulate", "h200", "--interval", "30", "--exporter", "none"])
name, handler = first[0]
print(name, callable(handler))
raise SystemExit(code)
"""


def test_the_stop_handlers_are_in_before_the_first_heavy_import() -> None:
    result = subprocess.run([sys.executable, "-c", _SPY], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    name, installed = result.stdout.split()
    assert name.startswith(HEAVY) and installed == "True", result.stdout
