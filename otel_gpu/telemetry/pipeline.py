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
from otel_gpu.telemetry.failures import FailureTally
from otel_gpu.telemetry.generations import MeterGenerations, RotationPolicy
from otel_gpu.telemetry.instruments import SnapshotSource, StandDown
from otel_gpu.telemetry.node_agent import OwnSeries
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
    driver_message: str | None = None
    logger_provider: Any = None  # insight log records, when an exporter for them is set
    #: whether ``shutdown`` shuts the providers down (else it flushes them: they belong to
    #: the application)
    owns_provider: bool = True
    owns_logger_provider: bool = True
    tally: FailureTally = field(default_factory=FailureTally)
    outputs: ReaderFactory | None = None  # the exporters the generations' readers borrow

    @property
    def provider(self) -> MeterProvider:
        return self.meters.provider

    @property
    def resource(self) -> Resource:
        return self.meters.resource

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
        its exporter (the agent's queues it, see ``QueuedExporter``: a slow backend never holds
        the cycle up). Then, if too many series are gone, a new MeterProvider generation."""
        snapshot = self.cache.refresh()
        self.meters.collect()
        self.meters.maybe_rotate(snapshot.cycle)
        return snapshot

    def shutdown(self, *, done: Collection[Any] = ()) -> None:
        """The last export of the providers, then the sources. ``done``: providers the caller
        has already shut down or flushed (an exporter shut down complains of a second export)."""
        try:
            done_ids = {id(d) for d in done}
            if id(self.provider) not in done_ids:
                if self.owns_provider:
                    try:
                        self.meters.shutdown()
                    finally:
                        if self.outputs is not None:
                            self.outputs.close()
                else:
                    self.provider.force_flush()
            if self.logger_provider is not None and id(self.logger_provider) not in done_ids:
                if self.owns_logger_provider:
                    self.logger_provider.shutdown()
                else:
                    self.logger_provider.force_flush()
        finally:
            self.collector.close()


def assemble_pipeline(
    collector: Collector,
    *,
    cache_max_age_s: float,
    resource: Resource | None = None,
    readers: Sequence[MetricReader] = (),
    make_readers: Callable[[], list[MetricReader]] | None = None,
    provider: MeterProvider | None = None,
    logger_provider: Any = None,
    owns_logger_provider: bool = True,
    view: Callable[[SnapshotCache], SnapshotSource] | None = None,
    in_memory: bool = False,
    tally: FailureTally | None = None,
    policy: RotationPolicy | None = None,
    own_only: bool = False,
    stand_down: StandDown | None = None,
) -> Pipeline:
    """Start ``collector`` and put the catalog's instruments over it.

    The instruments go on ``provider`` when given (an application's, left running by
    ``shutdown``), else on a new MeterProvider over ``readers`` and ``resource``. With
    ``make_readers`` instead of ``readers`` (fresh readers on each call, the agent's), the
    MeterProvider is replaced by a new generation whenever too many of its series are gone
    (``MeterGenerations``). Each insight that fires or clears goes to ``logger_provider`` as a
    log record, when there is one. ``view`` narrows what the instruments see of each Snapshot
    (a training rank's devices). ``own_only``: a node agent reports this node's devices,
    workloads and containers, so the instruments report only what is the session's own
    (``OwnSeries``).
    ``stand_down`` names the instruments that report nothing at a collection.
    """
    tally = tally if tally is not None else FailureTally()
    if logger_provider is not None:
        # The SDK's logs package is loaded only when insight log records are exported.
        from otel_gpu.telemetry.insight_log import InsightLogEmitter

        collector.add_insight_listener(InsightLogEmitter(logger_provider))
    message = collector.start()
    cache = SnapshotCache(collector, max_age_s=cache_max_age_s)
    source: SnapshotSource = view(cache) if view else cache
    if own_only:
        source = OwnSeries(source)
    resource = resource or build_resource()
    memory = [InMemoryMetricReader] if in_memory else []
    owns_provider = provider is None
    if provider is None and make_readers is not None:
        rotating = make_readers

        def fresh() -> list[MetricReader]:
            return [*rotating(), *(make() for make in memory)]

        meters = MeterGenerations(fresh, resource, source, tally, policy=policy,
                                  stand_down=stand_down)
    else:
        fixed = [*readers, *(make() for make in memory)]
        meters = MeterGenerations(lambda: fixed, resource, source, tally, provider=provider,
                                  rotate=False, stand_down=stand_down)
    return Pipeline(collector, cache, meters, message, logger_provider, owns_provider,
                    owns_logger_provider, tally)


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
        from otel_gpu.telemetry.insight_log import build_logger_provider

        logger_provider = build_logger_provider([otlp_exporter("logs", strict=True)], resource)
    pipeline = assemble_pipeline(collector, cache_max_age_s=1.5 * interval_s, resource=resource,
                                 make_readers=outputs, logger_provider=logger_provider,
                                 in_memory=in_memory, tally=tally, policy=policy)
    pipeline.outputs = outputs
    return pipeline
