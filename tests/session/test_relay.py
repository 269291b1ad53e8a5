"""What the training process relays to its collector process arrives as it left."""

from __future__ import annotations

import pickle

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link

from otel_gpu.session.protocol import Kind
from otel_gpu.session.relay import (
    RelayMetricExporter,
    metrics_from_wire,
    metrics_to_wire,
    span_from_wire,
    span_to_wire,
)

RESOURCE = Resource({"service.name": "train", "process.pid": 42})


def test_metrics_cross_the_pipe_unchanged() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    tracer_provider = TracerProvider(resource=RESOURCE)
    meter = provider.get_meter("otel_gpu", "1.0", schema_url="https://example/schema")
    histogram = meter.create_histogram("otel_gpu.training.step.duration", unit="s")
    counter = meter.create_counter("otel_gpu.training.steps")
    with tracer_provider.get_tracer("t").start_as_current_span("step"):
        histogram.record(0.25, {"otel_gpu.training.run": "r1"})  # with an exemplar
    counter.add(3, {"otel_gpu.training.run": "r1"})
    data = reader.get_metrics_data()
    wire = pickle.loads(pickle.dumps(metrics_to_wire(data)))
    assert encode_metrics(metrics_from_wire(wire, RESOURCE)) == encode_metrics(data)
    exemplars = encode_metrics(data).resource_metrics[0].scope_metrics[0].metrics[0]
    assert exemplars.histogram.data_points[0].exemplars


def test_spans_cross_the_pipe_unchanged() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("otel_gpu", "1.0")
    epoch = tracer.start_span("epoch", attributes={"otel_gpu.training.epoch": 1})
    with tracer.start_as_current_span("step", links=[Link(epoch.get_span_context(),
                                                          {"why": "test"})]) as step:
        step.add_event("data_wait", {"duration_s": 0.1})
    epoch.end()
    spans = exporter.get_finished_spans()
    wire = pickle.loads(pickle.dumps([span_to_wire(s) for s in spans]))
    assert encode_spans([span_from_wire(w, RESOURCE) for w in wire]) == encode_spans(spans)


def test_the_relay_asks_for_what_the_otlp_exporter_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_gpu.session.child_main import _otlp_preferences

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    sent: list[tuple[Kind, object]] = []
    # The child reads the preferences and hands them over in its Ready message.
    temporality, aggregation = pickle.loads(pickle.dumps(_otlp_preferences()))
    relay = RelayMetricExporter(lambda kind, payload: sent.append((kind, payload)) or True,
                                temporality, aggregation)
    assert relay._preferred_temporality[Histogram] == AggregationTemporality.DELTA
    data = MetricsData(resource_metrics=[])
    assert relay.export(data).name == "SUCCESS" and sent == [(Kind.METRICS, [])]
    gone = RelayMetricExporter(lambda kind, payload: False)
    assert gone.export(data).name == "FAILURE"


def test_exports_the_backend_cannot_keep_up_with_are_dropped_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from otel_gpu.session.child_main import RelayWorker

    for signal in ("METRICS", "TRACES"):
        monkeypatch.setenv(f"OTEL_{signal}_EXPORTER", "none")
    monkeypatch.setattr(RelayWorker, "QUEUE_SIZE", 1)
    release, exporting = threading.Event(), threading.Event()

    class Stuck:
        def export(self, data: object) -> None:
            exporting.set()
            release.wait(10)

        def shutdown(self) -> None:
            pass

    dropped: list[str] = []
    worker = RelayWorker(RESOURCE, "", on_drop=dropped.append)
    worker._exporters[Kind.SPANS] = Stuck()
    worker.put(Kind.SPANS, [])  # taken by the worker, which hangs in the backend
    assert exporting.wait(10)
    worker.put(Kind.SPANS, [])  # waits in the queue
    worker.put(Kind.SPANS, [])  # no room
    assert dropped == [Kind.SPANS] and worker.dropped == 1
    release.set()
    worker.close(timeout_s=10)
