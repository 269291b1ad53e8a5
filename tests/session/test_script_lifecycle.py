"""A training script's first hour: no collector, Ctrl-C, no stop(), a collector process killed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.session.delivery import Backend, otlp_address

# Without the end-of-run summary, which tests/session/test_summary.py checks.
QUIET = {"OTEL_GPU_SIMULATE": "h200", "OTEL_METRIC_EXPORT_INTERVAL": "60000",
         "OTEL_GPU_SUMMARY": "false"}


def _script(code: str, env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            env={**os.environ, **QUIET, **env}, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stdout, stderr


def _free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gone(pid: int, timeout_s: float = 15.0) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def _steps(requests: list) -> list[float]:
    return [p["value"] for p in points(requests) if p["name"] == "otel_gpu.training.steps"]


def test_the_otlp_address_is_the_exporters() -> None:
    assert otlp_address("metrics", "grpc", {}) == ("localhost", 4317)
    assert otlp_address("logs", "http/protobuf", {}) == ("localhost", 4318)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw:4000",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/v1/traces"}
    assert otlp_address("metrics", "grpc", env) == ("gw", 4000)
    assert otlp_address("traces", "http/protobuf", env) == ("traces.example", 443)
    assert otlp_address("metrics", "grpc", {"OTEL_EXPORTER_OTLP_ENDPOINT": "gw:55"}) == \
        ("gw", 55)
    assert otlp_address("metrics", "grpc", {"OTEL_EXPORTER_OTLP_ENDPOINT": "unix:///s"}) is None
    # a gRPC target without a port is port 443, as the exporter (and otel-gpu doctor) reads it
    assert otlp_address("metrics", "grpc", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw"}) == \
        ("gw", 443)


def test_nothing_listening_is_one_failed_delivery_and_one_line(caplog: object) -> None:
    backend = Backend()
    address = ("127.0.0.1", _free_port())
    assert not backend.deliverable(address) and not backend.deliverable(address)
    messages = [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]
    assert messages == [f"otel-gpu: no OTLP collector at 127.0.0.1:{address[1]}; "
                        "set OTEL_METRICS_EXPORTER=console or start one"]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert backend.deliverable(server.getsockname())


@pytest.mark.parametrize("in_process", ["false", "true"])
def test_without_a_collector_stop_is_quick_and_says_so_in_one_line(in_process: str) -> None:
    port = _free_port()
    stdout, stderr = _finish(_script("""
        import time
        import otel_gpu
        otel_gpu.start()
        for _ in otel_gpu.track(range(20)):
            pass
        started = time.monotonic()
        otel_gpu.stop()
        print(time.monotonic() - started)
    """, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
          "OTEL_GPU_COLLECT_IN_PROCESS": in_process}))
    # A bound with generous slack over the expected tenths of a second: the SDK's retries
    # alone would take its 10 s timeout.
    assert float(stdout) < 2.0
    lines = stderr.splitlines()
    assert len(lines) <= 2, stderr
    assert f"otel-gpu: no OTLP collector at 127.0.0.1:{port}; set OTEL_METRICS_EXPORTER=" \
        "console or start one" in lines


def test_a_collector_that_went_away_costs_stop_at_most_the_exporter_timeout() -> None:
    with OtlpReceiver() as receiver:
        process = _script("""
            import sys, time
            import otel_gpu
            otel_gpu.start()
            for _ in otel_gpu.track(range(20)):
                pass
            print("exported?", flush=True)
            sys.stdin.readline()  # the receiver is gone now
            started = time.monotonic()
            otel_gpu.stop()
            print(time.monotonic() - started)
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_EXPORTER_OTLP_TIMEOUT": "4"},
            stdin=subprocess.PIPE)
        assert process.stdout is not None and process.stdout.readline()
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=20)
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()
    stdout, _ = _finish(process)
    assert float(stdout) < 4.0


def test_ctrl_c_ends_the_script_without_our_tracebacks_and_leaves_no_child() -> None:
    port = _free_port()
    # The terminal sends SIGINT to the whole foreground process group: here, the script's.
    process = _script("""
        import time
        import otel_gpu
        session = otel_gpu.start()
        print(session.child.process.pid, flush=True)
        with session:
            while True:
                with otel_gpu.step():
                    time.sleep(0.01)
    """, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
          "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
          "OTEL_METRICS_EXPORTER": "none"}, start_new_session=True)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0  # the script's own KeyboardInterrupt
    assert stderr.count("Traceback") == 1, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert "otel_gpu" not in stderr and "otel-gpu" not in stderr, stderr
    assert _gone(child)


def test_the_child_ends_with_a_training_process_that_is_killed() -> None:
    process = _script("""
        import time
        import otel_gpu
        session = otel_gpu.start()
        print(session.child.process.pid, flush=True)
        time.sleep(60)
    """, {"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none",
          "OTEL_LOGS_EXPORTER": "none"})
    assert process.stdout is not None
    child = int(process.stdout.readline())
    process.kill()
    process.wait(timeout=30)
    assert _gone(child)
    process.communicate()


def test_a_script_that_never_calls_stop_exports_every_step() -> None:
    with OtlpReceiver() as receiver:
        stdout, _ = _finish(_script("""
            import time
            import otel_gpu
            otel_gpu.start()
            steps = 0
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                for _ in otel_gpu.track(range(10)):
                    time.sleep(0.001)
                    steps += 1
            print(steps)
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}))
        assert receiver.wait_for(lambda: _steps(receiver.metric_requests), timeout_s=10)
        time.sleep(0.3)
        steps = _steps(receiver.metric_requests)
    assert steps == [int(stdout)]  # one export, at exit, with every step


def test_steps_after_a_kill_are_exported_when_stop_comes_before_the_restart() -> None:
    with OtlpReceiver() as receiver:
        _finish(_script("""
            import otel_gpu
            session = otel_gpu.start(export_interval_s=0.2)
            list(otel_gpu.track(range(10)))
            first = session.child.process
            first.kill()
            first.wait()
            list(otel_gpu.track(range(15)))
            otel_gpu.stop()  # within the first back-off: a last child exports them
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}))
        assert receiver.wait_for(lambda: 25 in _steps(receiver.metric_requests), timeout_s=10)
        steps = _steps(receiver.metric_requests)
    assert steps == sorted(steps) and steps[-1] == 25


def test_a_second_ctrl_c_while_stop_waits_gives_up_the_flush_quietly() -> None:
    process = _script("""
        import time
        import otel_gpu
        session = otel_gpu.start()
        print(session.child.process.pid, flush=True)
        with session:
            while True:
                with otel_gpu.step():
                    time.sleep(0.01)
    """, {"OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
          "OTEL_METRICS_EXPORTER": "none"}, start_new_session=True)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    time.sleep(0.5)
    os.kill(child, signal.SIGSTOP)  # a child that does not answer: stop() waits for it
    try:
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(1.0)
        assert process.poll() is None  # still waiting in stop()
        os.killpg(process.pid, signal.SIGINT)  # the impatient second Ctrl-C
        _, stderr = process.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
    assert process.returncode != 0
    assert stderr.count("Traceback") == 1, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert "otel_gpu" not in stderr and "otel-gpu" not in stderr, stderr
    assert _gone(child)


@pytest.mark.parametrize("in_process", ["false", "true"])
def test_with_a_collector_stop_writes_nothing_on_stderr(in_process: str) -> None:
    with OtlpReceiver() as receiver:
        _, stderr = _finish(_script("""
            import otel_gpu
            otel_gpu.start()
            for _ in otel_gpu.track(range(20)):
                pass
            otel_gpu.stop()
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_GPU_COLLECT_IN_PROCESS": in_process}))
        assert receiver.wait_for(lambda: 20 in _steps(receiver.metric_requests), timeout_s=10)
    assert stderr == ""
