"""The whole pipeline, shared by the agent, ``snapshot`` and ``otel_gpu.start()``:
sources -> Collector -> SnapshotCache -> instruments -> MeterProvider -> readers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource

from otel_gpu.attribution import Attributor
from otel_gpu.collector import Collector, SnapshotCache
from otel_gpu.insight_log import InsightLogEmitter, build_logger_provider
from otel_gpu.insights import InsightEngine, Thresholds
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.cgroup import CgroupReader
from otel_gpu.sources.docker import DEFAULT_SOCKET as DOCKER_SOCKET
from otel_gpu.sources.docker import DockerClient
from otel_gpu.sources.host import HostSource
from otel_gpu.sources.kubelet import POD_RESOURCES_SOCKET, PodListClient, PodResourcesClient
from otel_gpu.sources.nvml import NvmlSource
from otel_gpu.sources.procfs import ProcfsReader
from otel_gpu.telemetry import (
    build_meter_provider,
    build_readers,
    build_resource,
    get_meter,
    otlp_exporter,
    register_catalog,
)


def build_collector(
    simulate: str | None = None,
    interval_s: float = 10.0,
    *,
    attribution: bool = True,
    thresholds: Thresholds | None = None,
) -> Collector:
    """A Collector over the real driver, or over the simulated server of a scenario.

    ``attribution`` joins GPU processes to users, containers and pods; it needs the host's pid
    and cgroup namespaces. ``thresholds`` configure the insight rules. Raises
    ``ScenarioError`` for a bad scenario.
    """
    engine = InsightEngine(thresholds)
    if simulate is None:
        attributor = build_host_attributor() if attribution else None
        return Collector(NvmlSource(), HostSource(), attributor=attributor, insights=engine)
    from otel_gpu.simulate import SimulatedServer, load_scenario
    from otel_gpu.simulate.world import SimulatedWorld

    server = SimulatedServer(load_scenario(simulate), interval_s=interval_s)
    # The world (a procfs and cgroup tree, Docker and kubelet stand-ins) exists for attribution.
    world = SimulatedWorld(server) if attribution else None
    return Collector(
        NvmlSource(server.nvml, gpm_warmup_s=0.0),
        HostSource(),
        simulation=world if world is not None else server,
        attributor=world.attributor() if world is not None else None,
        insights=engine,
    )


def build_host_attributor(environ: Mapping[str, str] | None = None) -> Attributor:
    """The join over this host's /proc and cgroups, the Docker daemon when its socket exists,
    and the kubelet on a Kubernetes node (pod-resources when its socket exists; ``/pods`` when
    ``KUBERNETES_SERVICE_HOST`` is set: ``OTEL_GPU_KUBELET_URL`` if given, else
    ``https://$NODE_NAME:10250/pods``; ``OTEL_GPU_KUBELET_INSECURE=true`` skips verifying the
    kubelet's serving certificate, which is often self-signed)."""
    env = os.environ if environ is None else environ
    docker = DockerClient() if os.path.exists(DOCKER_SOCKET) else None
    pod_resources = PodResourcesClient() if os.path.exists(POD_RESOURCES_SOCKET) else None
    pod_list = None
    if env.get("KUBERNETES_SERVICE_HOST"):
        pod_list = PodListClient(
            url=env.get("OTEL_GPU_KUBELET_URL") or None,
            node=env.get("NODE_NAME") or "localhost",
            verify=env.get("OTEL_GPU_KUBELET_INSECURE", "").strip().lower() != "true",
        )
    return Attributor(ProcfsReader(), CgroupReader(), docker, pod_resources, pod_list)


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

    def collect_and_export(self) -> Snapshot:
        """One cycle: read the world once, then let every reader collect and export it."""
        snapshot = self.cache.refresh()
        self.provider.force_flush()
        return snapshot

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
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
        logger_provider = build_logger_provider([otlp_exporter("logs")], resource)
        collector.add_insight_listener(InsightLogEmitter(logger_provider))
    memory_reader = InMemoryMetricReader() if in_memory else None
    if memory_reader is not None:
        readers.append(memory_reader)
    message = collector.start()
    cache = SnapshotCache(collector, max_age_s=1.5 * interval_s)
    provider = build_meter_provider(readers, resource)
    instruments = register_catalog(get_meter(provider), cache)
    return Pipeline(
        collector, cache, provider, readers, memory_reader, message, instruments, logger_provider
    )
