"""Under ``opentelemetry-instrument`` with the contrib system-metrics instrumentation installed
(as ``opentelemetry-bootstrap`` installs it), every ``system.*`` name is exported once."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections import defaultdict

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otlp_receiver import OtlpReceiver
from runner import ROOT

from otel_gpu.telemetry import system_metrics
from otel_gpu.telemetry.system_metrics import StandDown, contrib_system_metrics

INSTRUMENT = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")


# What the session's mode is: the distro's providers are built from the environment, so the
# collector process exports the GPU and host metrics (mirrored), ours standing down there too.
SCRIPT = """
import time
from otel_gpu.session import api
time.sleep(2)
print(api._session.mode.name, sorted(api._session.child._task.settings.stand_down)[:3])
"""


def test_each_system_metric_name_comes_from_one_scope() -> None:
    # Our instrumentor is installed first, so it starts before the contrib one instruments.
    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_GPU_SIMULATE": "h200",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_METRIC_EXPORT_INTERVAL": "300", "OTEL_TRACES_EXPORTER": "none",
               "OTEL_LOGS_EXPORTER": "none", "OTEL_GPU_SUMMARY": "false"}
        result = subprocess.run([INSTRUMENT, sys.executable, "-c", SCRIPT],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0] == "EXPORT_CHILD", result.stdout
        assert "system.cpu.time" in result.stdout, result.stdout
        assert receiver.wait_for(lambda: len(receiver.metric_requests) >= 3, timeout_s=10)
        requests = list(receiver.metric_requests)
    scopes: dict[str, set[str]] = defaultdict(set)
    for request in requests:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name.startswith("system."):
                        scopes[metric.name].add(sm.scope.name)
    # Both are there: the contrib instrumentation's names, and ours it does not report.
    contrib = "opentelemetry.instrumentation.system_metrics"
    assert {"system.cpu.time", "system.memory.usage", "system.network.io"} <= {
        name for name, found in scopes.items() if found == {contrib}}
    assert {"system.filesystem.usage", "system.memory.limit"} <= {
        name for name, found in scopes.items() if found == {"otel_gpu"}}
    twice = {name: found for name, found in scopes.items() if len(found) > 1}
    assert not twice, twice


def test_stand_down_follows_the_instrumentation() -> None:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = SystemMetricsInstrumentor(config={"system.cpu.time": ["user"],
                                                     "process.cpu.time": ["user"]})
    assert contrib_system_metrics() == frozenset()
    instrumentor.instrument(meter_provider=provider)
    try:
        assert contrib_system_metrics() == {"system.cpu.time"}
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert contrib_system_metrics() == frozenset()


def test_stand_down_waits_for_an_expected_instrumentation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    assert StandDown(clock=lambda: now[0])() == frozenset()  # not under opentelemetry-instrument
    monkeypatch.setitem(sys.modules, system_metrics.AUTO_MODULE, types.ModuleType("auto"))
    stand_down = StandDown(grace_s=60, clock=lambda: now[0])
    expected = stand_down()
    assert {"system.cpu.time", "system.memory.usage"} <= expected
    assert not any(name.startswith("process.") for name in expected)
    now[0] = 61.0  # it never instrumented: ours report again
    assert stand_down() == frozenset()
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "flask,system_metrics")
    assert StandDown(clock=lambda: now[0])() == frozenset()


def test_an_instrumentation_with_unmet_dependencies_is_not_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # opentelemetry-instrument skips an instrumentor whose dependencies conflict.
    from opentelemetry.instrumentation import dependencies

    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    monkeypatch.setitem(sys.modules, system_metrics.AUTO_MODULE, types.ModuleType("auto"))
    assert system_metrics.contrib_expected()
    assert "system.cpu.time" in system_metrics.contrib_names()
    conflict = dependencies.DependencyConflict("psutil >= 99", "psutil 7.0.0")
    monkeypatch.setattr(dependencies, "get_dist_dependency_conflicts", lambda dist: conflict)
    assert not system_metrics.contrib_expected()
    assert system_metrics.contrib_names() == frozenset()
    assert StandDown()() == frozenset()


LATE = """
import time
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
import otel_gpu

reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=300)
provider = MeterProvider(metric_readers=[reader])
session = otel_gpu.start(meter_provider=provider)
time.sleep(1.0)
SystemMetricsInstrumentor(config={"system.cpu.time": ["user"], "system.memory.usage": ["used"]}
                          ).instrument(meter_provider=provider)
print("instrumented", time.time_ns(), flush=True)
time.sleep(2.5)
otel_gpu.stop()
provider.shutdown()
print(session.mode.name)
"""


def test_an_instrumentation_that_comes_after_start_is_followed_by_the_collector_process(
) -> None:
    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_GPU_SIMULATE": "h200", "OTEL_GPU_SUMMARY": "false",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_TRACES_EXPORTER": "none",
               "OTEL_LOGS_EXPORTER": "none"}
        result = subprocess.run([sys.executable, "-c", LATE], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        requests = list(receiver.metric_requests)
    lines = result.stdout.split()
    assert lines[-1] == "EXPORT_CHILD"  # the application's provider, mirrored
    instrumented_ns = int(lines[1])
    ours_before: set[str] = set()
    ours_late: set[str] = set()
    contrib: set[str] = set()
    for request in requests:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    stamps = [p.time_unix_nano for p in metric.gauge.data_points] + \
                        [p.time_unix_nano for p in metric.sum.data_points]
                    if not metric.name.startswith("system.") or not stamps:
                        continue
                    if sm.scope.name != "otel_gpu":
                        contrib.add(metric.name)
                    elif max(stamps) < instrumented_ns:
                        ours_before.add(metric.name)
                    elif min(stamps) > instrumented_ns + 1_500_000_000:
                        ours_late.add(metric.name)
    assert {"system.cpu.time", "system.memory.usage"} <= ours_before
    assert contrib == {"system.cpu.time", "system.memory.usage"}
    assert "system.filesystem.usage" in ours_late  # ours it does not report stay
    assert not ours_late & contrib, ours_late & contrib
