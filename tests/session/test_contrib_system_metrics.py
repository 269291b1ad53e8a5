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


def test_each_system_metric_name_comes_from_one_scope() -> None:
    # Our instrumentor is installed first, so it starts before the contrib one instruments.
    with OtlpReceiver() as receiver:
        env = {**os.environ, "OTEL_GPU_SIMULATE": "h200",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_METRIC_EXPORT_INTERVAL": "300", "OTEL_TRACES_EXPORTER": "none",
               "OTEL_LOGS_EXPORTER": "none", "OTEL_GPU_SUMMARY": "false"}
        result = subprocess.run([INSTRUMENT, sys.executable, "-c", "import time; time.sleep(2)"],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
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
