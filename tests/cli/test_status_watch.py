"""``otel-gpu status --watch`` in a pseudo-terminal: it redraws in place, shows this user's
training sessions, and quits on ``q`` and on Ctrl-C with the terminal put back."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from runner import ROOT

from otel_gpu.sources.sessions import SessionBeacon, read_sessions

HEADER = b"q to quit"


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Watch:
    def __init__(self, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x28\x00\x50\x00\x00\x00\x00\x00")  # 40x80
        self.before = termios.tcgetattr(slave)
        self.slave = slave
        self.process = subprocess.Popen(
            [sys.executable, "-m", "otel_gpu.cli", "status", "--watch", "--simulate", "h200",
             "--interval", "0.2"], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
            env={**os.environ, "TERM": "xterm", "NO_COLOR": "1", **env},
            preexec_fn=_controlling_terminal)
        self.output = b""

    def read_until(self, predicate, timeout_s: float = 60) -> bytes:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not predicate(self.output) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    break
        return self.output

    def finish(self) -> int:
        code = self.process.wait(timeout=30)
        self.read_until(lambda out: False, timeout_s=0.5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_watch_redraws_and_quits_restoring_the_terminal(tmp_path: Path, key: bytes) -> None:
    beacons = tmp_path / "otel-gpu" / "sessions"
    SessionBeacon(os.getpid(), "resnet-train", beacons).write(1234, 0.375)
    watch = Watch({"XDG_RUNTIME_DIR": str(tmp_path)})
    try:
        out = watch.read_until(lambda out: out.count(HEADER) >= 3)
        assert out.count(HEADER) >= 3, out[-2000:]
        assert out.startswith(b"\033[?1049h")  # the alternate screen
        assert out.count(b"\033[H") >= 3  # each frame drawn from the top, in place
        assert b"GPU" in out or b"gpu0" in out
        assert f"pid {os.getpid()} resnet-train: 1234 steps, data wait 38%".encode() in out
        for line in re.split(rb"\r\n|\033\[H", out):  # lines, and frames from the top
            text = re.sub(rb"\033\[[0-9;?]*[A-Za-z]", b"", line)
            assert len(text) <= 80, text
        os.write(watch.master, key)
        assert watch.finish() == 0
        assert watch.output.rstrip().endswith(b"\033[?25h\033[?1049l")
        assert b"Traceback" not in watch.output
        assert termios.tcgetattr(watch.slave) == watch.before  # modes back as they were
    finally:
        watch.close()


def test_watch_needs_a_terminal() -> None:
    result = subprocess.run([sys.executable, "-m", "otel_gpu.cli", "status", "--watch",
                             "--simulate", "h200"], capture_output=True, text=True, cwd=ROOT,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 2 and "needs a terminal" in result.stderr
    assert result.stderr.count("\n") == 1


def test_sessions_of_running_processes_only(tmp_path: Path) -> None:
    SessionBeacon(os.getpid(), "mine", tmp_path).write(10, None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    SessionBeacon(gone.pid, "ended", tmp_path).write(5, 0.5)
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"pid": "1", "steps": 1, "updated": 0}))
    states = read_sessions(tmp_path)
    assert [(s.pid, s.service, s.steps, s.data_wait_ratio) for s in states] == [
        (os.getpid(), "mine", 10, None)]


def test_a_session_writes_its_state_while_it_runs(tmp_path: Path) -> None:
    code = """
        import json, os, time, otel_gpu
        from otel_gpu.sources.sessions import read_sessions
        with otel_gpu.start():
            for _ in otel_gpu.track(range(30)):
                time.sleep(0.01)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                states = [s for s in read_sessions() if s.pid == os.getpid() and s.steps == 30]
                if states:
                    break
                time.sleep(0.1)
            print(json.dumps([s.steps for s in states]))
        print(json.dumps([s.pid for s in read_sessions()]))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path),
                                 "OTEL_GPU_SIMULATE": "h200", "OTEL_METRICS_EXPORTER": "console",
                                 "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
                                 "OTEL_METRIC_EXPORT_INTERVAL": "200",
                                 "OTEL_GPU_SUMMARY": "false"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert lines[-2:] == ["[30]", "[]"]  # written while running, removed at stop()


@pytest.mark.parametrize("colour", [False, True])
def test_a_long_service_name_keeps_the_session_line_in_80_columns(colour: bool) -> None:
    from otel_gpu.cli.terminal import Style, visible
    from otel_gpu.cli.watch import session_lines
    from otel_gpu.sources.sessions import SessionState

    state = SessionState(4242, "a-very-long-service-name-" * 4, 123456, 0.5, 100.0)
    line = session_lines([state], 103.0, Style(colour))[-1]
    assert len(visible(line)) <= 80, visible(line)
    assert visible(line).startswith("  pid 4242 a-very-long-service-name-")
    assert visible(line).endswith(": 123456 steps, data wait 50% (3 s ago)")
