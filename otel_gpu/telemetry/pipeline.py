"""The pipeline: Collector -> SnapshotCache -> instruments -> MeterProvider -> readers.

``assemble_pipeline`` is the one assembly, used by the agent (``build_pipeline``), by a training
process that reports through its own providers and by a session's collector process.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource

from otel_gpu.collect.build import build_collector
from otel_gpu.collect.collector import Collector, SnapshotCache
from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.snapshot import Snapshot
from otel_gpu.telemetry.instruments import SnapshotSource, StandDown, register_catalog
from otel_gpu.telemetry.providers import (
    build_meter_provider,
    build_readers,
    build_resource,
    get_meter,
    otlp_exporter,
)


@dataclass
class Pipeline:
    collector: Collector
    cache: SnapshotCache
    provider: MeterProvider
    readers: list[MetricReader]
    memory_reader: InMemoryMetricReader | None = None
    driver_message: str | None = None
    instruments: list[Any] = field(default_factory=list)
    logger_provider: Any = None  # insight log records, when an exporter for them is set
    #: whether ``shutdown`` shuts the providers down (else it flushes them: they belong to
    #: the application)
    owns_provider: bool = True
    owns_logger_provider: bool = True

    def collect_and_export(self) -> Snapshot:
        """One cycle: read the world once, then let every reader collect and export it."""
        snapshot = self.cache.refresh()
        self.provider.force_flush()
        return snapshot

    def shutdown(self, *, done: Collection[Any] = ()) -> None:
        """The last export of the providers, then the sources. ``done``: providers the caller
        has already shut down or flushed (an exporter shut down complains of a second export)."""
        try:
            for provider, owned in ((self.provider, self.owns_provider),
                                    (self.logger_provider, self.owns_logger_provider)):
                if provider is None or any(provider is d for d in done):
                    continue
                if owned:
                    provider.shutdown()
                else:
                    provider.force_flush()
        finally:
            self.collector.close()


def assemble_pipeline(
    collector: Collector,
    *,
    cache_max_age_s: float,
    resource: Resource | None = None,
    readers: Sequence[MetricReader] = (),
    provider: MeterProvider | None = None,
    logger_provider: Any = None,
    owns_logger_provider: bool = True,
    view: Callable[[SnapshotCache], SnapshotSource] | None = None,
    in_memory: bool = False,
    stand_down: StandDown | None = None,
) -> Pipeline:
    """Start ``collector`` and put the catalog's instruments over it.

    The instruments go on ``provider`` when given (an application's, left running by
    ``shutdown``), else on a new MeterProvider over ``readers`` and ``resource``. Each insight
    that fires or clears goes to ``logger_provider`` as a log record, when there is one.
    ``view`` narrows what the instruments see of each Snapshot (a training rank's devices);
    ``stand_down`` names the instruments that report nothing at a collection.
    """
    memory_reader = InMemoryMetricReader() if in_memory else None
    readers = [*readers, *([memory_reader] if memory_reader is not None else [])]
    if logger_provider is not None:
        # The SDK's logs package is loaded only when insight log records are exported.
        from otel_gpu.telemetry.insight_log import InsightLogEmitter

        collector.add_insight_listener(InsightLogEmitter(logger_provider))
    message = collector.start()
    cache = SnapshotCache(collector, max_age_s=cache_max_age_s)
    owns_provider = provider is None
    if provider is None:
        provider = build_meter_provider(readers, resource or build_resource())
    instruments = register_catalog(get_meter(provider), view(cache) if view else cache,
                                   stand_down=stand_down)
    return Pipeline(collector, cache, provider, list(readers), memory_reader, message,
                    instruments, logger_provider, owns_provider, owns_logger_provider)


def build_pipeline(
    *,
    simulate: str | None = None,
    exporters: Sequence[str] = ("otlp",),
    interval_s: float = 10.0,
    in_memory: bool = False,
    resource: Resource | None = None,
    thresholds: Thresholds | None = None,
) -> Pipeline:
    """The agent's pipeline: collection driven by ``collect_and_export()`` every interval.

    The cache keeps a Snapshot for 1.5 intervals so that a pull reader (a Prometheus scrape)
    between two cycles reuses the last one instead of reading the hardware again. With the
    ``otlp`` exporter, each insight that fires or clears also goes out as an OTLP log record.
    """
    collector = build_collector(simulate, interval_s, thresholds=thresholds)
    readers = build_readers(exporters, interval_s=None)
    resource = resource or build_resource(stable_instance=True)
    logger_provider = None
    if "otlp" in exporters:
        from otel_gpu.telemetry.insight_log import build_logger_provider

        logger_provider = build_logger_provider([otlp_exporter("logs", strict=True)], resource)
    return assemble_pipeline(collector, cache_max_age_s=1.5 * interval_s, resource=resource,
                             readers=readers, logger_provider=logger_provider,
                             in_memory=in_memory)
