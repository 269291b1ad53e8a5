"""In every mode the training loop only writes each step into the tracker's StepBuffer; with
the application's providers (and in-process collection) a drain thread replays the steps into
the training instruments, and the exemplars still link to the step spans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from runner import ROOT

from otel_gpu.session.drain import StepDrain
from otel_gpu.session.steps import StepBuffer
from otel_gpu.snapshot import ErrorLog

SCRIPT = """
    import json, otel_gpu
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter, MetricExportResult, PeriodicExportingMetricReader)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    class Capture(MetricExporter):
        def __init__(self):
            super().__init__()
            self.exports = []
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            self.exports.append(metrics_data)
            return MetricExportResult.SUCCESS
        def force_flush(self, timeout_millis=10_000):
            return True
        def shutdown(self, timeout_millis=30_000, **kwargs):
            pass

    capture = Capture()
    # Exported only when flushed: by stop(), after the last steps were replayed.
    meters = MeterProvider(metric_readers=[PeriodicExportingMetricReader(
        capture, export_interval_millis=float("inf"))])
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    session = otel_gpu.start(meter_provider=meters, tracer_provider=tracers)
    deferred = session.tracker.buffer is not None
    for _ in otel_gpu.track(range(250), batch_size=4):
        pass
    otel_gpu.stop()
    out = {"mode": session.mode.name, "deferred": deferred, "steps": 0, "exemplars": []}
    # Exemplars belong to the collection that took them; the counter is cumulative.
    for n, data in enumerate(capture.exports):
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        if metric.name == "otel_gpu.training.steps" and n == 0:
                            out["steps"] += point.value
                        if metric.name == "otel_gpu.training.step.duration":
                            out["exemplars"] += [[e.trace_id, e.span_id]
                                                 for e in point.exemplars]
    out["spans"] = [[s.context.trace_id, s.context.span_id] for s in spans.get_finished_spans()
                    if s.name == "otel_gpu.training.step"]
    print(json.dumps(out))
"""


@pytest.mark.parametrize("in_process", ["false", "true"])
def test_application_providers_defer_and_exemplars_link_to_step_spans(in_process: str) -> None:
    env = {**os.environ, "OTEL_GPU_SIMULATE": "h200", "OTEL_GPU_SUMMARY": "false",
           "OTEL_LOGS_EXPORTER": "none", "OTEL_GPU_COLLECT_IN_PROCESS": in_process}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mode"] == ("IN_PROCESS" if in_process == "true" else "SOURCES_CHILD")
    assert out["deferred"]
    assert out["steps"] == 250
    spans = {tuple(s) for s in out["spans"]}
    exemplars = {tuple(e) for e in out["exemplars"]}
    assert len(spans) == 3  # steps 0, 100 and 200
    assert exemplars and exemplars <= spans


def test_drain_replays_and_counts_an_overflow() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_gpu.telemetry.instruments import TrainingInstruments

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    buffer = StepBuffer({"run": "a"}, capacity=4)
    errors = ErrorLog("training")
    drain = StepDrain(buffer, TrainingInstruments(provider), interval_s=3600, errors=errors)
    for _ in range(6):  # two more than the ring holds before a drain
        buffer.add(1_000_000, 250_000, 0.25, 8, None)
    drain.close()
    steps = [p.value for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics if m.name == "otel_gpu.training.steps"
             for p in m.data.data_points]
    assert steps == [4] and drain.dropped == 2
    assert [(e.call, e.error_type) for e in errors.take_errors()] == [("step_buffer", "Overflow")]
