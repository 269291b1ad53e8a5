"""What our telemetry relies on in the installed OpenTelemetry SDK. When an upgrade changes one
of these, revisit the mechanism named in the test (README: Series and cardinality)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    PeriodicExportingMetricReader,
)

from otel_gpu.telemetry.export_queue import Borrowed, QueuedExporter
from otel_gpu.telemetry.failures import FailureTally


def _counter_over(reader: MetricReader, keys: list[int]) -> MeterProvider:
    provider = MeterProvider(metric_readers=[reader])

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1, {"k": keys[-1]})]

    provider.get_meter("pin").create_observable_counter("c", callbacks=[observe])
    return provider


def _points(reader: InMemoryMetricReader) -> list:
    data = reader.get_metrics_data()
    return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            for p in m.data.data_points]


def test_an_observable_instrument_never_forgets_a_series_and_overflows_past_2000() -> None:
    # MeterGenerations exists because of this: gone series stay until the provider shuts down.
    reader = InMemoryMetricReader()
    keys: list[int] = []
    provider = _counter_over(reader, keys)
    try:
        overflow_at = None
        for i in range(2001):
            keys.append(i)
            points = _points(reader)
            assert len(points) == 1  # a gone series is not exported ...
            if "otel.metric.overflow" in points[0].attributes:
                overflow_at = i
                break
        assert overflow_at == 2000  # ... but it is kept, and the 2001st lands in overflow
    finally:
        provider.shutdown()


def test_a_new_provider_holds_nothing_and_starts_a_series_at_its_first_observation() -> None:
    # SeriesLedger gives counters their baseline at the first observation, the SDK's start time.
    reader = InMemoryMetricReader()
    keys = [1]
    provider = _counter_over(reader, keys)
    try:
        first = _points(reader)[0]
        second = _points(reader)[0]
        assert second.start_time_unix_nano == first.start_time_unix_nano
    finally:
        provider.shutdown()
    fresh = InMemoryMetricReader()
    provider = _counter_over(fresh, [2])
    try:
        (point,) = _points(fresh)
        assert point.attributes == {"k": 2}
        assert point.start_time_unix_nano > first.start_time_unix_nano
    finally:
        provider.shutdown()


def test_the_otlp_exporter_keeps_its_temporality_where_the_queue_reads_it(monkeypatch) -> None:
    # QueuedExporter and Borrowed hand the real exporter's preference to the reader.
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    monkeypatch.setitem(os.environ, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    exporter = OTLPMetricExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        assert exporter._preferred_temporality[ObservableCounter] is AggregationTemporality.DELTA
    finally:
        exporter.shutdown()

    class Capture(MetricExporter):
        def __init__(self) -> None:
            super().__init__(preferred_temporality=dict(exporter._preferred_temporality))
            self.temporalities: list[AggregationTemporality] = []

        def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
            self.temporalities += [m.data.aggregation_temporality
                                   for rm in metrics_data.resource_metrics
                                   for sm in rm.scope_metrics for m in sm.metrics]
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
            pass

    capture = Capture()
    queued = QueuedExporter(capture, FailureTally())
    reader = PeriodicExportingMetricReader(Borrowed(queued), export_interval_millis=float("inf"))
    provider = _counter_over(reader, [1])
    try:
        reader.collect()
        assert queued.force_flush(10_000)
    finally:
        provider.shutdown()
        queued.shutdown()
    assert capture.temporalities == [AggregationTemporality.DELTA]
