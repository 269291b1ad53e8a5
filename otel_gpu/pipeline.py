"""The whole pipeline, shared by the agent, ``snapshot`` and ``otel_gpu.start()``:
sources -> Collector -> SnapshotCache -> instruments -> MeterProvider -> readers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource

from otel_gpu.collector import Collector, SnapshotCache
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.host import HostSource
from otel_gpu.sources.nvml import NvmlSource
from otel_gpu.telemetry import (
    build_meter_provider,
    build_readers,
    build_resource,
    get_meter,
    register_catalog,
)


def build_collector(simulate: str | None = None, interval_s: float = 10.0) -> Collector:
    """A Collector over the real driver, or over the simulated server of a scenario.

    Raises ``ScenarioError`` for a bad scenario.
    """
    if simulate is None:
        return Collector(NvmlSource(), HostSource())
    from otel_gpu.simulate import SimulatedServer, load_scenario

    server = SimulatedServer(load_scenario(simulate), interval_s=interval_s)
    return Collector(NvmlSource(server.nvml, gpm_warmup_s=0.0), HostSource(), simulation=server)


@dataclass
class Pipeline:
    collector: Collector
    cache: SnapshotCache
    provider: MeterProvider
    readers: list[MetricReader]
    memory_reader: InMemoryMetricReader | None = None
    driver_message: str | None = None
    instruments: list[Any] = field(default_factory=list)

    def collect_and_export(self) -> Snapshot:
        """One cycle: read the world once, then let every reader collect and export it."""
        snapshot = self.cache.refresh()
        self.provider.force_flush()
        return snapshot

    def shutdown(self) -> None:
        self.provider.shutdown()
        self.collector.close()


def build_pipeline(
    *,
    simulate: str | None = None,
    exporters: Sequence[str] = ("otlp",),
    interval_s: float = 10.0,
    in_memory: bool = False,
    resource: Resource | None = None,
) -> Pipeline:
    """The agent's pipeline: collection driven by ``collect_and_export()`` every interval.

    The cache keeps a Snapshot for 1.5 intervals so that a pull reader (a Prometheus scrape)
    between two cycles reuses the last one instead of reading the hardware again.
    """
    collector = build_collector(simulate, interval_s)
    readers = build_readers(exporters, interval_s=None)
    memory_reader = InMemoryMetricReader() if in_memory else None
    if memory_reader is not None:
        readers.append(memory_reader)
    message = collector.start()
    cache = SnapshotCache(collector, max_age_s=1.5 * interval_s)
    provider = build_meter_provider(readers, resource or build_resource())
    instruments = register_catalog(get_meter(provider), cache)
    return Pipeline(collector, cache, provider, readers, memory_reader, message, instruments)
