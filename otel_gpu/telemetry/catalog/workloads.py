"""Who uses what: workloads on each device, the devices given to containers and pods, and the
cgroups of the containers that hold GPUs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from otel_gpu.snapshot import Attributes, ContainerUsage, Snapshot, Workload
from otel_gpu.telemetry.catalog.gpu import all_devices
from otel_gpu.telemetry.catalog.metric import (
    CONTAINER_ATTRIBUTES,
    COUNTER,
    DRA_ATTRIBUTES,
    GAUGE,
    MIG_IDENTITY,
    UPDOWNCOUNTER,
    WORKLOAD_ATTRIBUTES,
    Observe,
    Point,
    Section,
)

WHO = Section("Who uses what")
CONTAINERS = Section("Containers that hold GPUs")

_WORKLOAD = (*MIG_IDENTITY, *WORKLOAD_ATTRIBUTES)


def _identities(snap: Snapshot) -> dict[str, Attributes]:
    return {dev.uuid: ident for dev, ident in all_devices(snap)}


def _workload(value_of: Callable[[Workload], float | None]) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        if not snap.workloads:
            return
        identities = _identities(snap)
        for workload in snap.workloads:
            identity = identities.get(workload.device_uuid)
            value = value_of(workload)
            if identity is not None and value is not None:
                yield value, {**identity, **workload.attributes}

    return observe


WHO.add(
    name="otel_gpu.workload.gpu.memory.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="GPU or MIG device memory used by the processes of one user in one container.",
    attributes=_WORKLOAD,
    observe=_workload(lambda w: w.memory_bytes),
)
WHO.add(
    name="otel_gpu.workload.gpu.processes",
    instrument=UPDOWNCOUNTER,
    unit="{process}",
    description="Processes of one user in one container holding a context on the GPU or MIG "
    "device.",
    attributes=_WORKLOAD,
    observe=_workload(lambda w: w.processes),
)
WHO.add(
    name="otel_gpu.workload.gpu.utilization",
    instrument=GAUGE,
    unit="1",
    description="Sum of the workload's per-process SM utilization samples, at most 1; absent "
    "on MIG.",
    attributes=_WORKLOAD,
    observe=_workload(lambda w: None if w.mig else w.sm_utilization),
)


@WHO.observed_by(
    name="otel_gpu.device.assignment",
    instrument=GAUGE,
    unit="1",
    description="1 per device and container or pod that the runtime or the kubelet gave it, "
    "busy or idle.",
    attributes=(*MIG_IDENTITY, *CONTAINER_ATTRIBUTES, *DRA_ATTRIBUTES),
)
def _assignments(snap: Snapshot) -> Iterator[Point]:
    if not snap.assignments:
        return
    identities = _identities(snap)
    for assignment in snap.assignments:
        identity = identities.get(assignment.device_uuid)
        if identity is not None:
            yield 1, {**identity, **assignment.attributes}


# -- accounting -----------------------------------------------------------------------------------

STATE = "otel_gpu.state"
ACCOUNTING_RULE = (
    " Counted from the agent's start (a restart is a counter reset, which increase() and "
    "rate() read as such); a workload unseen for 24 h starts again from zero."
)


@WHO.observed_by(
    name="otel_gpu.workload.gpu.time",
    instrument=COUNTER,
    unit="s",
    description="Device-seconds a workload held, by `otel_gpu.state`: busy when the device's "
    "activity (its SM samples, else GPU utilization, else GPM SM activity) is at least 5 %, "
    "idle below, unknown with no reading (MIG without GPM). A MIG device counts its share of "
    "the GPU's compute slices (1g of 7 = 1/7); workloads sharing a device split it by SM "
    "samples, else by memory, else equally." + ACCOUNTING_RULE,
    attributes=(*_WORKLOAD, STATE),
)
def _gpu_time(snap: Snapshot) -> Iterator[Point]:
    for account in snap.accounts:
        yield account.busy_s, {**account.attributes, STATE: "busy"}
        yield account.idle_s, {**account.attributes, STATE: "idle"}
        if account.unknown_s:
            yield account.unknown_s, {**account.attributes, STATE: "unknown"}


@WHO.observed_by(
    name="otel_gpu.workload.mig.slice.time",
    instrument=COUNTER,
    unit="s",
    description="MIG compute slices a workload held times seconds (a 3g device for an hour = "
    "3 slice-hours); only on MIG devices." + ACCOUNTING_RULE,
    attributes=_WORKLOAD,
)
def _slice_time(snap: Snapshot) -> Iterator[Point]:
    for account in snap.accounts:
        if "hw.parent" in account.attributes:
            yield account.slice_s, dict(account.attributes)


@WHO.observed_by(
    name="otel_gpu.workload.energy",
    instrument=COUNTER,
    unit="J",
    description="A workload's part of its GPU's energy counter (else power times time): a MIG "
    "device gets its slice share and free slices are charged to no one; workloads sharing a "
    "device split it by SM samples, else by memory, else equally. Shares are estimates: SM "
    "samples are duty cycles, memory says nothing of compute." + ACCOUNTING_RULE,
    attributes=_WORKLOAD,
)
def _energy(snap: Snapshot) -> Iterator[Point]:
    for account in snap.accounts:
        yield account.energy_joules, dict(account.attributes)


# -- containers -----------------------------------------------------------------------------------


def _container(value_of: Callable[[ContainerUsage], float | None]) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for usage in snap.containers:
            value = value_of(usage)
            if value is not None:
                yield value, dict(usage.attributes)

    return observe


def _container_pair(key: str, pairs: tuple[tuple[str, str], ...]) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for usage in snap.containers:
            for state, attr in pairs:
                value = getattr(usage.resources, attr)
                if value is not None:
                    yield value, {**usage.attributes, key: state}

    return observe


CONTAINERS.add(
    name="container.cpu.time",
    instrument=COUNTER,
    unit="s",
    description="CPU time of a container that holds a GPU process, by mode (from its cgroup).",
    attributes=(*CONTAINER_ATTRIBUTES, "cpu.mode"),
    observe=_container_pair("cpu.mode", (("user", "cpu_user_s"), ("system", "cpu_system_s"))),
    semconv=True,
)
CONTAINERS.add(
    name="container.memory.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Memory charged to the container's cgroup (memory.current, "
    "memory.usage_in_bytes).",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_container(lambda c: c.resources.memory_usage_bytes),
    semconv=True,
)
CONTAINERS.add(
    name="otel_gpu.container.memory.limit",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="The container's cgroup memory limit; absent when it has none.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_container(lambda c: c.resources.memory_limit_bytes),
)
CONTAINERS.add(
    name="otel_gpu.container.cpu.limit",
    instrument=GAUGE,
    unit="{cpu}",
    description="The container's CPU quota over its period, in CPUs; absent when it has none.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_container(lambda c: c.resources.cpu_limit),
)
CONTAINERS.add(
    name="otel_gpu.container.oom_kills",
    instrument=COUNTER,
    unit="{event}",
    description="Processes of the container killed by the out-of-memory killer.",
    attributes=CONTAINER_ATTRIBUTES,
    observe=_container(lambda c: c.resources.oom_kills),
)
CONTAINERS.add(
    name="container.disk.io",
    instrument=COUNTER,
    unit="By",
    description="Bytes the container's cgroup read from and wrote to block devices.",
    attributes=(*CONTAINER_ATTRIBUTES, "disk.io.direction"),
    observe=_container_pair(
        "disk.io.direction", (("read", "disk_read_bytes"), ("write", "disk_write_bytes"))
    ),
    semconv=True,
)


PRESSURE_STALL = "otel_gpu.pressure.stall_type"
_PRESSURE_RULE = (
    " by `otel_gpu.pressure.stall_type`: `some` while at least one of its tasks waited, `full` "
    "while all of them did (PSI, Documentation/accounting/psi.rst); cgroup v2 with PSI only."
)
for _resource, _waited in (("io", "I/O"), ("memory", "memory: reclaim, refaults, swap-in")):
    CONTAINERS.add(
        name=f"otel_gpu.container.{_resource}.pressure.stall.time",
        instrument=COUNTER,
        unit="s",
        description=f"Time the container's tasks stalled waiting for {_waited} (its cgroup's "
        f"{_resource}.pressure total)," + _PRESSURE_RULE,
        attributes=(*CONTAINER_ATTRIBUTES, PRESSURE_STALL),
        observe=_container_pair(PRESSURE_STALL, (("some", f"{_resource}_pressure_some_s"),
                                                 ("full", f"{_resource}_pressure_full_s"))),
    )


def _container_network(kind: str) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for usage in snap.containers:
            net = usage.network
            if net is not None:
                yield getattr(net, f"rx_{kind}"), {**usage.attributes,
                                                  "network.io.direction": "receive"}
                yield getattr(net, f"tx_{kind}"), {**usage.attributes,
                                                  "network.io.direction": "transmit"}

    return observe


CONTAINERS.add(
    name="container.network.io",
    instrument=COUNTER,
    unit="By",
    description="Bytes the container's network namespace received and sent, loopback aside "
    "(from /proc/<pid>/net/dev of one of its processes); absent for a container on the host's "
    "network.",
    attributes=(*CONTAINER_ATTRIBUTES, "network.io.direction"),
    observe=_container_network("bytes"),
    semconv=True,
)
CONTAINERS.add(
    name="otel_gpu.container.network.packets",
    instrument=COUNTER,
    unit="{packet}",
    description="Packets the container's network namespace received and sent, loopback aside; "
    "absent for a container on the host's network.",
    attributes=(*CONTAINER_ATTRIBUTES, "network.io.direction"),
    observe=_container_network("packets"),
)
