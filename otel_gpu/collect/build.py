"""The one place that builds a Collector: over this host's driver and readers, or over a
simulated server, with the production readers pointed at the simulated world."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from otel_gpu.collect.attribution import Attributor
from otel_gpu.collect.collector import Collector, LocalSources
from otel_gpu.config import kubelet_insecure, kubelet_url
from otel_gpu.insights.engine import InsightEngine
from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.sources.cgroup import CgroupReader
from otel_gpu.sources.dcgm import DcgmBindings, DcgmSource
from otel_gpu.sources.docker import DEFAULT_SOCKET as DOCKER_SOCKET
from otel_gpu.sources.docker import DockerClient
from otel_gpu.sources.host import HostSource
from otel_gpu.sources.kubelet import POD_RESOURCES_SOCKET, PodListClient, PodResourcesClient
from otel_gpu.sources.mounts import FilesystemFilter
from otel_gpu.sources.netns import NetnsReader
from otel_gpu.sources.nvml import NvmlSource
from otel_gpu.sources.procfs import ProcfsReader

if TYPE_CHECKING:
    from otel_gpu.simulate.server import SimulatedServer
    from otel_gpu.simulate.world import SimulatedWorld


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
        host = HostSource(filesystems=FilesystemFilter.from_environ())
        return Collector(LocalSources(NvmlSource(), host, attributor=attributor,
                                      dcgm=DcgmSource()),
                         insights=engine)

    # The simulator (its driver, scenario parser and stand-in servers) loads only when asked for.
    from otel_gpu.simulate import SimulatedServer, load_scenario
    from otel_gpu.simulate.world import SimulatedWorld

    server = SimulatedServer(load_scenario(simulate), interval_s=interval_s)
    # The world (a procfs and cgroup tree, Docker and kubelet stand-ins) exists for attribution.
    world = SimulatedWorld(server) if attribution else None
    sources = LocalSources(
        NvmlSource(server.nvml, gpm_warmup_s=0.0),
        simulated_host(world),
        simulation=world if world is not None else server,
        attributor=simulated_attributor(world) if world is not None else None,
        dcgm=simulated_dcgm(server),
    )
    return Collector(sources, insights=engine)


# A simulated mount that does not answer costs a cycle this long once (the agent's bound is
# STATVFS_TIMEOUT_S), so that a scenario with one runs quickly.
SIMULATED_STATVFS_TIMEOUT_S = 0.2


def simulated_host(world: SimulatedWorld | None) -> HostSource:
    """The host source; over a world, its network and FUSE mounts are the world's."""
    filesystems = FilesystemFilter.from_environ()
    if world is None:
        return HostSource(filesystems=FilesystemFilter((), filesystems.exclude))
    return HostSource(filesystems=filesystems, mounts_procfs=world.proc_root,
                      statvfs=world.mounts.statvfs,
                      statvfs_timeout_s=SIMULATED_STATVFS_TIMEOUT_S)


def simulated_dcgm(server: SimulatedServer) -> DcgmSource | None:
    """The production DCGM adapter over the server's stand-in bindings and, where the scenario
    runs one, its stand-in dcgm-exporter; None when the scenario has no DCGM."""
    fake = server.dcgm
    if fake is None:
        return None
    environ = {"OTEL_GPU_DCGM_ADDRESS": "127.0.0.1"}
    url = server.dcgm_exporter_url()
    if url is not None:
        environ["OTEL_GPU_DCGM_EXPORTER_URL"] = url
    bindings = DcgmBindings(fake.dcgm_structs, fake.dcgm_fields, fake.dcgm_agent, fake.pydcgm)
    return DcgmSource(bindings, environ=environ)


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
            url=kubelet_url(env),
            node=env.get("NODE_NAME") or "localhost",
            verify=not kubelet_insecure(env),
        )
    return Attributor(ProcfsReader(), CgroupReader(), docker, pod_resources, pod_list,
                      network=NetnsReader())



def simulated_attributor(world: SimulatedWorld) -> Attributor:
    """The production readers and clients, pointed at a simulated world."""
    users = dict(world.scenario.users)
    return Attributor(
        ProcfsReader(world.proc_root),
        CgroupReader(world.cgroup_root),
        DockerClient(world.docker_socket) if world.docker_socket else None,
        PodResourcesClient(world.pod_resources_socket) if world.pod_resources_socket else None,
        PodListClient(world.pod_list_url) if world.pod_list_url else None,
        network=NetnsReader(world.proc_root),
        user_name=users.get,
    )
