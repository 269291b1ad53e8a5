"""The per-container reads that follow the join: a container's network namespace, its disk and
shared memory, and the environments several containers carry. Each takes the containers the
join found, one process of each (host pid), and the reader; the Attributor times and
fault-isolates each call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from otel_gpu.snapshot import ContainerUsage, SharedEnvironment
from otel_gpu.sources.container_disk import ContainerDiskReader, DiskTarget
from otel_gpu.sources.docker import ContainerMeta
from otel_gpu.sources.environments import EnvironmentScanner, EnvTarget
from otel_gpu.sources.netns import NetnsReader

Containers = tuple[ContainerUsage, ...]


def _cid(usage: ContainerUsage) -> str:
    return usage.attributes.get("container.id", "")


def with_networks(
    reader: NetnsReader | None, containers: Containers, pids: Mapping[str, int]
) -> Containers:
    """Each container's network counters, through one of its processes (none: no figures)."""
    assert reader is not None
    out = []
    for usage in containers:
        pid = pids.get(_cid(usage))
        counters = reader.read(pid) if pid is not None else None
        out.append(replace(usage, network=counters) if counters is not None else usage)
    return tuple(out)


def with_storage(
    reader: ContainerDiskReader | None,
    containers: Containers,
    pids: Mapping[str, int],
    gpu_holders: set[str],
    metas: Mapping[str, ContainerMeta],
    pods: Mapping[str, tuple[str, str, str]],
) -> Containers:
    """Each container's writable layer, /dev/shm and DataLoader workers. ``gpu_holders``: the
    containers whose process in ``pids`` is a GPU process; ``pods``: container id ->
    (namespace, pod, container) for pod containers."""
    assert reader is not None
    targets = [
        DiskTarget(container_id=_cid(u), pid=pids.get(_cid(u)), gpu_process=_cid(u) in gpu_holders,
                   meta=metas.get(_cid(u)), pod=pods.get(_cid(u)))
        for u in containers
    ]
    found = reader.read(targets)
    return tuple(ContainerUsage(attributes=u.attributes, resources=u.resources,
                                network=u.network, storage=found[_cid(u)])
                 if _cid(u) in found else u for u in containers)


def shared_environments(
    scanner: EnvironmentScanner | None,
    containers: Containers,
    pids: Mapping[str, int],
    images: Mapping[str, str],
) -> tuple[SharedEnvironment, ...]:
    """The environments two or more of the containers carry; ``images``: container id -> the id
    of its image, where known."""
    assert scanner is not None
    return scanner.read([
        EnvTarget(dict(u.attributes), pids[_cid(u)], images.get(_cid(u)))
        for u in containers if _cid(u) in pids
    ])
