"""A container's own disk and shared memory, and the environments several containers carry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from otel_gpu.snapshot import ContainerStorage, SharedEnvironment, Snapshot
from otel_gpu.telemetry.catalog.metric import (
    CONTAINER_ATTRIBUTES,
    UPDOWNCOUNTER,
    Observe,
    Point,
    Section,
)
from otel_gpu.telemetry.catalog.workloads import CONTAINERS

ENVIRONMENTS = Section("Environments across containers")
ENVIRONMENT_ATTRIBUTES = ("otel_gpu.environment.kind", "otel_gpu.environment.path",
                          "otel_gpu.environment.digest")
_POD = ("k8s.pod.name", "k8s.pod.uid", "k8s.namespace.name")


def _storage(value_of: Callable[[ContainerStorage], float | None]) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for usage in snap.containers:
            value = value_of(usage.storage) if usage.storage is not None else None
            if value is not None:
                yield value, dict(usage.attributes)

    return observe


CONTAINERS.add(
    name="container.filesystem.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Bytes in the container's writable layer: Docker's SizeRw, or the kubelet "
    "Summary's container rootfs.usedBytes; sampled every OTEL_GPU_DISK_INTERVAL seconds "
    "(default 300), the last sample standing in between.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_storage(lambda s: s.writable_bytes),
    semconv=True,
)


@CONTAINERS.observed_by(
    name="k8s.pod.filesystem.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Bytes of a pod's ephemeral storage (its containers' writable layers, logs and "
    "emptyDir volumes): the kubelet Summary's ephemeral-storage.usedBytes, on the writable "
    "layers' cadence.",
    attributes=_POD,
    semconv=True,
)
def _pod_ephemeral(snap: Snapshot) -> Iterator[Point]:
    seen = set()
    for usage in snap.containers:
        used = usage.storage.pod_ephemeral_bytes if usage.storage is not None else None
        pod = tuple((k, usage.attributes[k]) for k in _POD if k in usage.attributes)
        if used is not None and pod and pod not in seen:
            seen.add(pod)
            yield used, dict(pod)


CONTAINERS.add(
    name="otel_gpu.container.shm.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Bytes in use in the container's /dev/shm (statvfs through one of its "
    "processes' root), where PyTorch DataLoader workers hand batches to the training process.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_storage(lambda s: s.shm_used_bytes),
)
CONTAINERS.add(
    name="otel_gpu.container.shm.limit",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Size of the container's /dev/shm: Docker's --shm-size (64 MiB by default), "
    "the host's with --ipc=host.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_storage(lambda s: s.shm_size_bytes),
)
CONTAINERS.add(
    name="otel_gpu.container.dataloader.workers",
    instrument=UPDOWNCOUNTER,
    unit="{process}",
    description="DataLoader worker processes under the container's GPU process (children named "
    "pt_data_worker, else python*); absent for a container without a GPU process.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_storage(lambda s: s.data_workers),
)


def _environment(value_of: Callable[[SharedEnvironment], float | None]) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for env in snap.environments:
            value = value_of(env)
            if value is not None:
                yield value, {"otel_gpu.environment.kind": env.kind,
                              "otel_gpu.environment.path": env.path,
                              "otel_gpu.environment.digest": env.digest}

    return observe


ENVIRONMENTS.add(
    name="otel_gpu.environment.containers",
    instrument=UPDOWNCOUNTER,
    unit="{container}",
    description="Containers carrying one conda or pip environment, known by the digest of its "
    "package listing; only environments found in two or more containers, scanned every "
    "OTEL_GPU_ENVIRONMENT_INTERVAL seconds (default 1800).",
    attributes=ENVIRONMENT_ATTRIBUTES,
    observe=_environment(lambda e: len(e.containers)),
)
ENVIRONMENTS.add(
    name="otel_gpu.environment.copies",
    instrument=UPDOWNCOUNTER,
    unit="{copy}",
    description="Copies of that environment on disk: the distinct images of the containers "
    "carrying it (containers of one image share its layers).",
    attributes=ENVIRONMENT_ATTRIBUTES,
    observe=_environment(lambda e: e.copies),
)
ENVIRONMENTS.add(
    name="otel_gpu.environment.size",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Apparent size of one copy of that environment (at least this, when the walk "
    "stopped at its bound).",
    attributes=ENVIRONMENT_ATTRIBUTES,
    observe=_environment(lambda e: e.size_bytes),
)
