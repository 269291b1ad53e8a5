"""The pipeline: Collector -> SnapshotCache -> instruments -> MeterProvider -> readers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource

from otel_gpu.collect.build import build_collector
from otel_gpu.collect.collector import Collector, SnapshotCache
from otel_gpu.insights.engine import Thresholds
from otel_gpu.snapshot import Snapshot
from otel_gpu.telemetry.failures import FailureTally
from otel_gpu.telemetry.generations import MeterGenerations, RotationPolicy
from otel_gpu.telemetry.insight_log import InsightLogEmitter, build_logger_provider
from otel_gpu.telemetry.providers import (
    ReaderFactory,
    agent_export_timeout_s,
    build_resource,
    otlp_exporter,
)


@dataclass
class Pipeline:
    collector: Collector
    cache: SnapshotCache
    meters: MeterGenerations
    outputs: ReaderFactory
    driver_message: str | None = None
    logger_provider: Any = None  # insight log records, when an exporter for them is set
    tally: FailureTally = field(default_factory=FailureTally)

    @property
    def provider(self) -> MeterProvider:
        return self.meters.provider

    @property
    def readers(self) -> list[MetricReader]:
        return self.meters.readers

    @property
    def memory_reader(self) -> InMemoryMetricReader | None:
        return self.meters.memory_reader

    @property
    def instruments(self) -> list[Any]:
        return self.meters.instruments

    def collect_and_export(self) -> Snapshot:
        """One cycle: read the world once, then let every push reader collect it and hand it to
        its exporter, which queues it (see ``QueuedExporter``): a slow backend never holds the
        cycle up. Then, if too many series are gone, a new MeterProvider generation."""
        snapshot = self.cache.refresh()
        self.meters.collect()
        self.meters.maybe_rotate(snapshot.cycle)
        return snapshot

    def shutdown(self) -> None:
        try:
            try:
                self.meters.shutdown()
            finally:
                self.outputs.close()
            if self.logger_provider is not None:
                self.logger_provider.shutdown()
        finally:
            self.collector.close()


def build_pipeline(
    *,
    simulate: str | None = None,
    exporters: Sequence[str] = ("otlp",),
    interval_s: float = 10.0,
    in_memory: bool = False,
    resource: Resource | None = None,
    thresholds: Thresholds | None = None,
    policy: RotationPolicy | None = None,
) -> Pipeline:
    """The agent's pipeline: collection driven by ``collect_and_export()`` every interval.

    The cache keeps a Snapshot for 1.5 intervals so that a pull reader (a Prometheus scrape)
    between two cycles reuses the last one instead of reading the hardware again. With the
    ``otlp`` exporter, each insight that fires or clears also goes out as an OTLP log record.
    """
    collector = build_collector(simulate, interval_s, thresholds=thresholds)
    tally = FailureTally()
    outputs = ReaderFactory(exporters, interval_s=None, tally=tally,
                            export_timeout_s=agent_export_timeout_s(interval_s))
    resource = resource or build_resource(stable_instance=True)
    logger_provider = None
    if "otlp" in exporters:
        logger_provider = build_logger_provider([otlp_exporter("logs")], resource)
        collector.add_insight_listener(InsightLogEmitter(logger_provider))
    message = collector.start()
    cache = SnapshotCache(collector, max_age_s=1.5 * interval_s)

    def make_readers() -> list[MetricReader]:
        return [*outputs(), *([InMemoryMetricReader()] if in_memory else [])]

    meters = MeterGenerations(make_readers, resource, cache, tally, policy=policy)
    return Pipeline(collector, cache, meters, outputs, message, logger_provider, tally)
