"""The standard OTEL_* settings in a training script, read the SDK's way: every exporter the
SDK's configurator resolves (entry points included), and a bad value is a warning, not a stop."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

from otel_gpu.telemetry.providers import (
    env_export_interval_ms,
    env_exporters,
    otlp_protocol,
    unknown_exporters,
)

QUIET = {"OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
         "OTEL_GPU_SUMMARY": "false"}


def _script(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env={**os.environ, "OTEL_GPU_SIMULATE": "h200", **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_exporter_serves_the_training_steps() -> None:
    port = _free_port()
    result = _script(f"""
        import time, urllib.request
        import otel_gpu
        with otel_gpu.start() as session:
            for _ in otel_gpu.track(range(20), batch_size=4):
                pass
            deadline = time.monotonic() + 30
            body = ""
            while "otel_gpu_training_steps_total" not in body and time.monotonic() < deadline:
                time.sleep(0.2)
                try:
                    with urllib.request.urlopen("http://127.0.0.1:{port}/metrics") as r:
                        body = r.read().decode()
                except OSError:
                    pass
            print(session.mode.name)
            print(body)
    """, {**QUIET, "OTEL_METRICS_EXPORTER": "prometheus",
          "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
          "OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "OTEL_METRIC_EXPORT_INTERVAL": "500"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    mode, _, body = result.stdout.partition("\n")
    assert mode == "EXPORT_CHILD"
    steps = [line for line in body.splitlines()
             if line.startswith("otel_gpu_training_steps_total")]
    assert steps and float(steps[0].rsplit(" ", 1)[1]) == 20.0, body
    assert "hw_gpu_memory_usage" in body  # the same endpoint serves the GPU metrics


def test_invalid_export_interval_warns_and_the_run_goes_on() -> None:
    result = _script("""
        import otel_gpu
        with otel_gpu.start():
            for _ in otel_gpu.track(range(5)):
                pass
        print("trained")
    """, {**QUIET, "OTEL_METRICS_EXPORTER": "none", "OTEL_METRIC_EXPORT_INTERVAL": "abc"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "trained"
    assert "OTEL_METRIC_EXPORT_INTERVAL: 'abc' is not a number; using the default" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_otlp_timeout_warns_and_exports_with_the_default() -> None:
    with OtlpReceiver() as receiver:
        result = _script("""
            import otel_gpu
            with otel_gpu.start():
                for _ in otel_gpu.track(range(5)):
                    pass
        """, {**QUIET, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_EXPORTER_OTLP_TIMEOUT": "abc"})
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        received = points(list(receiver.metric_requests))
    assert sum(p["value"] for p in received if p["name"] == "otel_gpu.training.steps") == 5
    assert result.stderr.count("OTEL_EXPORTER_OTLP_TIMEOUT: 'abc'") == 1, result.stderr
    assert "did not start" not in result.stderr and "Traceback" not in result.stderr


def test_unknown_exemplar_filter_warns_and_the_run_goes_on() -> None:
    with OtlpReceiver() as receiver:
        result = _script("""
            import otel_gpu
            with otel_gpu.start() as session:
                for _ in otel_gpu.track(range(5)):
                    pass
            print(session.mode.name)
        """, {**QUIET, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_METRICS_EXEMPLAR_FILTER": "sometimes"})
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        received = points(list(receiver.metric_requests))
    assert result.stdout.strip() == "EXPORT_CHILD"  # not a fallback: the child started too
    assert sum(p["value"] for p in received if p["name"] == "otel_gpu.training.steps") == 5
    assert result.stderr.count("OTEL_METRICS_EXEMPLAR_FILTER: 'sometimes'") == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("raw", ["abc", "-5", "0", "inf", "nan"])
def test_bad_interval_is_the_default(raw: str, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", raw)
    with caplog.at_level(logging.WARNING, logger="otel_gpu"):
        assert env_export_interval_ms() == 60_000.0
    assert any("OTEL_METRIC_EXPORT_INTERVAL" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1500")
    assert env_export_interval_ms() == 1500.0


def test_bad_protocol_is_grpc_for_a_session_and_refused_on_the_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
    assert otlp_protocol("metrics") == "grpc"
    with pytest.raises(ValueError, match="thrift"):
        otlp_protocol("metrics", strict=True)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert otlp_protocol("traces") == "http/protobuf"


def test_unknown_exporter_names_warn_and_the_others_export() -> None:
    with OtlpReceiver() as receiver:
        result = _script("""
            import otel_gpu
            with otel_gpu.start():
                for _ in otel_gpu.track(range(10), batch_size=2):
                    pass
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
              "OTEL_METRICS_EXPORTER": "nosuch,otlp", "OTEL_TRACES_EXPORTER": "zipkin",
              "OTEL_LOGS_EXPORTER": "none", "OTEL_GPU_SUMMARY": "false"})
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(lambda: receiver.metric_requests, timeout_s=10)
        received = points(list(receiver.metric_requests))
    assert sum(p["value"] for p in received if p["name"] == "otel_gpu.training.steps") == 10
    assert result.stderr.count("'nosuch'") == 1 and result.stderr.count("'zipkin'") == 1
    assert "Traceback" not in result.stderr


def test_unknown_exporters_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp,prometheus,console")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp_proto_http,zipkin")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    notes = unknown_exporters()
    assert len(notes) == 1 and notes[0].startswith("OTEL_TRACES_EXPORTER: ")
    assert env_exporters("traces", console=lambda: None, otlp=lambda name: "relay") == ["relay"]


def _entry_point_package(root: Path) -> None:
    """A package that registers a metric exporter named ``capture`` as an entry point: it
    appends the metric names of each export to the file ``CAPTURE_FILE`` names."""
    (root / "capture_exporter.py").write_text(textwrap.dedent("""
        import os
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

        class CaptureExporter(MetricExporter):
            def export(self, metrics_data, timeout_millis=10_000, **kwargs):
                names = [m.name for rm in metrics_data.resource_metrics
                         for sm in rm.scope_metrics for m in sm.metrics]
                with open(os.environ["CAPTURE_FILE"], "a") as f:
                    f.write("\\n".join(names) + "\\n")
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis=10_000):
                return True

            def shutdown(self, timeout_millis=30_000, **kwargs):
                pass
    """))
    info = root / "capture_exporter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: capture-exporter\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_metrics_exporter]\ncapture = capture_exporter:CaptureExporter\n")


def test_an_exporter_registered_as_an_entry_point_exports(tmp_path: Path) -> None:
    _entry_point_package(tmp_path)
    capture = tmp_path / "exported.txt"
    result = _script("""
        import otel_gpu
        with otel_gpu.start():
            for _ in otel_gpu.track(range(10), batch_size=2):
                pass
    """, {**QUIET, "OTEL_METRICS_EXPORTER": "capture", "CAPTURE_FILE": str(capture),
          "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr
    names = set(capture.read_text().split())
    assert {"otel_gpu.training.steps", "hw.gpu.memory.usage"} <= names
    assert "OTEL_METRICS_EXPORTER" not in result.stderr
