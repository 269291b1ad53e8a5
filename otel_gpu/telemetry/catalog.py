"""The metric catalog: one table, from which instruments are registered and docs/metrics.md is made.

Each entry names an instrument and says how to read its points off a Snapshot. Entries without
an ``observe`` function are synchronous instruments recorded elsewhere (training signals); they
stand here so that their names, units and descriptions have one home.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from otel_gpu.snapshot import (
    Attributes,
    ContainerUsage,
    Gpu,
    MigDevice,
    Snapshot,
    Workload,
    gpu_identity,
    mig_identity,
)

Point = tuple[float, Attributes]

COUNTER = "counter"
UPDOWNCOUNTER = "updowncounter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

GPU_IDENTITY = ("hw.id", "hw.name", "hw.model", "hw.vendor")
MIG_IDENTITY = (*GPU_IDENTITY, "hw.parent", "nvidia.gpu.mig.profile")
LABEL_TEMPLATE = "container.label.<key>"  # one attribute per allow-listed container label
CONTAINER_ATTRIBUTES = (
    "container.id",
    "container.name",
    "container.image.name",
    "container.runtime.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.namespace.name",
    "k8s.container.name",
    LABEL_TEMPLATE,
)
WORKLOAD_ATTRIBUTES = ("process.owner", *CONTAINER_ATTRIBUTES)


@dataclass(frozen=True)
class Metric:
    name: str
    instrument: str
    unit: str
    description: str
    attributes: tuple[str, ...]
    section: str
    observe: Callable[[Snapshot], Iterable[Point]] | None = None
    semconv: bool = False  # the name comes from the OpenTelemetry semantic conventions


# -- identity ---------------------------------------------------------------------------------


def gpu_state(gpu: Gpu) -> str:
    if gpu.lost:
        return "failed"
    if gpu.remap_failed or gpu.remap_pending:
        return "degraded"
    return "ok"


HW_STATES = ("ok", "degraded", "failed")


# -- observe functions --------------------------------------------------------------------------


def _live(snap: Snapshot) -> Iterator[Gpu]:
    return (g for g in snap.gpus if not g.lost)


def _all_devices(snap: Snapshot) -> Iterator[tuple[Gpu | MigDevice, Attributes]]:
    for gpu in _live(snap):
        yield gpu, gpu_identity(gpu)
        for mig in gpu.mig_devices:
            yield mig, mig_identity(mig)


def _gpu_utilization(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        if gpu.mig_enabled:
            continue
        for task, value in (
            ("general", gpu.utilization_general),
            ("encoder", gpu.utilization_encoder),
            ("decoder", gpu.utilization_decoder),
        ):
            if value is not None:
                yield value, {**gpu_identity(gpu), "hw.gpu.task": task}


def _memory_usage(snap: Snapshot) -> Iterator[Point]:
    for dev, ident in _all_devices(snap):
        if dev.memory_used_bytes is not None:
            yield dev.memory_used_bytes, ident


def _memory_limit(snap: Snapshot) -> Iterator[Point]:
    for dev, ident in _all_devices(snap):
        if dev.memory_total_bytes is not None:
            yield dev.memory_total_bytes, ident


def _memory_utilization(snap: Snapshot) -> Iterator[Point]:
    for dev, ident in _all_devices(snap):
        if dev.memory_used_bytes is not None and dev.memory_total_bytes:
            yield dev.memory_used_bytes / dev.memory_total_bytes, ident


def _gpu_io(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for direction, value in (("transmit", gpu.pcie_tx_bytes), ("receive", gpu.pcie_rx_bytes)):
            if value is not None:
                yield value, {**gpu_identity(gpu), "network.io.direction": direction}


def _gpu_field(attr: str, extra: Attributes | None = None) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for gpu in _live(snap):
            value = getattr(gpu, attr)
            if value is not None:
                yield value, {**gpu_identity(gpu), **(extra or {})}

    observe.__name__ = f"observe_{attr}"
    return observe


def _temperature(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for location, value in (
            ("gpu", gpu.temperature_gpu_celsius),
            ("memory", gpu.temperature_memory_celsius),
        ):
            if value is not None:
                yield (
                    value,
                    {
                        "hw.id": f"{gpu.uuid}:{location}",
                        "hw.name": f"{gpu.name}:{location}",
                        "hw.parent": gpu.uuid,
                        "hw.sensor_location": location,
                    },
                )


def _fan(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        if gpu.fan_speed_ratio is not None:
            yield (
                gpu.fan_speed_ratio,
                {"hw.id": f"{gpu.uuid}:fan", "hw.name": f"{gpu.name}:fan", "hw.parent": gpu.uuid},
            )


def _ecc(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, value in (("corrected", gpu.ecc_corrected), ("uncorrected", gpu.ecc_uncorrected)):
            if value is not None:
                yield value, {**gpu_identity(gpu), "hw.type": "gpu", "error.type": kind}


def _status(snap: Snapshot) -> Iterator[Point]:
    for gpu in snap.gpus:
        current = gpu_state(gpu)
        ident = {**gpu_identity(gpu), "hw.type": "gpu"}
        for state in HW_STATES:
            yield int(state == current), {**ident, "hw.state": state}
        for mig in gpu.mig_devices:
            ident = {**mig_identity(mig), "hw.type": "gpu"}
            for state in HW_STATES:
                yield int(state == "ok"), {**ident, "hw.state": state}


def _clocks(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, hz in gpu.clocks_hz.items():
            yield hz, {**gpu_identity(gpu), "nvidia.gpu.clock.type": kind}


def _clock_events(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for reason, active in gpu.clocks_event_reasons.items():
            yield int(active), {**gpu_identity(gpu), "nvidia.gpu.clocks_event.reason": reason}


def _xid(snap: Snapshot) -> Iterator[Point]:
    for gpu in snap.gpus:
        for code, count in gpu.xid_errors.items():
            yield count, {**gpu_identity(gpu), "nvidia.gpu.xid": code}


def _remapped_rows(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, value in (
            ("corrected", gpu.remapped_rows_corrected),
            ("uncorrected", gpu.remapped_rows_uncorrected),
        ):
            if value is not None:
                yield value, {**gpu_identity(gpu), "error.type": kind}


def _remap_flag(attr: str) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for gpu in _live(snap):
            value = getattr(gpu, attr)
            if value is not None:
                yield int(value), gpu_identity(gpu)

    return observe


def _gpm(attr: str) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for dev, ident in _all_devices(snap):
            value = getattr(dev.gpm, attr) if dev.gpm is not None else None
            if value is not None:
                yield value, ident

    return observe


def _mig_mode(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for kind, value in (("current", gpu.mig_mode_current), ("pending", gpu.mig_mode_pending)):
            if value is not None:
                yield int(value), {**gpu_identity(gpu), "nvidia.gpu.mig.mode.type": kind}


def _mig_instances(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        for mig in gpu.mig_devices:
            attrs = mig_identity(mig)
            for key, value in (
                ("nvidia.gpu.mig.gpu_instance.id", mig.gpu_instance_id),
                ("nvidia.gpu.mig.compute_instance.id", mig.compute_instance_id),
                ("nvidia.gpu.mig.placement.start", mig.placement_start),
                ("nvidia.gpu.mig.placement.size", mig.placement_size),
            ):
                if value is not None:
                    attrs[key] = value
            yield 1, attrs


def _mig_slices(snap: Snapshot) -> Iterator[Point]:
    for gpu in _live(snap):
        if not gpu.mig_enabled or gpu.mig_compute_slices_total is None:
            continue
        per_instance = {m.gpu_instance_id: m.compute_slices or 0 for m in gpu.mig_devices}
        used = sum(per_instance.values())
        ident = gpu_identity(gpu)
        yield used, {**ident, "nvidia.gpu.mig.slice.state": "used"}
        yield (
            max(gpu.mig_compute_slices_total - used, 0),
            {**ident, "nvidia.gpu.mig.slice.state": "free"},
        )


# -- who uses what ------------------------------------------------------------------------------


def _identities(snap: Snapshot) -> dict[str, Attributes]:
    return {dev.uuid: ident for dev, ident in _all_devices(snap)}


def _workload(
    value_of: Callable[[Workload], float | None],
) -> Callable[[Snapshot], Iterator[Point]]:
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


def _assignments(snap: Snapshot) -> Iterator[Point]:
    if not snap.assignments:
        return
    identities = _identities(snap)
    for assignment in snap.assignments:
        identity = identities.get(assignment.device_uuid)
        if identity is not None:
            yield 1, {**identity, **assignment.attributes}


def _container(
    value_of: Callable[[ContainerUsage], float | None],
) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for usage in snap.containers:
            value = value_of(usage)
            if value is not None:
                yield value, dict(usage.attributes)

    return observe


def _container_pair(
    key: str, pairs: tuple[tuple[str, str], ...]
) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        for usage in snap.containers:
            for state, attr in pairs:
                value = getattr(usage.resources, attr)
                if value is not None:
                    yield value, {**usage.attributes, key: state}

    return observe


def _insights(snap: Snapshot) -> Iterator[Point]:
    for insight in snap.insights:
        yield 1, {
            **insight.attributes,
            "otel_gpu.insight.rule": insight.rule,
            "otel_gpu.insight.severity": insight.severity,
        }


def _collection_duration(snap: Snapshot) -> Iterator[Point]:
    for source, seconds in snap.durations_s.items():
        yield seconds, {"otel_gpu.source": source}


def _collection_errors(snap: Snapshot) -> Iterator[Point]:
    for (source, error_type), count in snap.error_counts.items():
        yield count, {"otel_gpu.source": source, "error.type": error_type}


# -- host ---------------------------------------------------------------------------------------


def _host_map(attr: str, key: str) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is not None:
            for state, value in getattr(snap.host, attr).items():
                yield value, {key: state}

    return observe


def _host_value(attr: str) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        value = getattr(snap.host, attr) if snap.host is not None else None
        if value is not None:
            yield value, {}

    return observe


def _memory_state_utilization(snap: Snapshot) -> Iterator[Point]:
    host = snap.host
    if host is not None and host.memory_total_bytes:
        for state, value in host.memory_state_bytes.items():
            yield value / host.memory_total_bytes, {"system.memory.state": state}


def _disk(field_read: str, field_write: str) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is not None:
            for device, io in snap.host.disks.items():
                yield (
                    getattr(io, field_read),
                    {"system.device": device, "disk.io.direction": "read"},
                )
                yield (
                    getattr(io, field_write),
                    {"system.device": device, "disk.io.direction": "write"},
                )

    return observe


def _net(field_rx: str, field_tx: str) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is not None:
            for name, io in snap.host.networks.items():
                yield (
                    getattr(io, field_rx),
                    {"network.interface.name": name, "network.io.direction": "receive"},
                )
                yield (
                    getattr(io, field_tx),
                    {"network.interface.name": name, "network.io.direction": "transmit"},
                )

    return observe


def _filesystem(ratio: bool) -> Callable[[Snapshot], Iterator[Point]]:
    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is None:
            return
        for fs in snap.host.filesystems:
            size = fs.size_bytes
            base = {
                "system.device": fs.device,
                "system.filesystem.mountpoint": fs.mountpoint,
                "system.filesystem.type": fs.type,
                "system.filesystem.mode": fs.mode,
            }
            for state, value in (
                ("used", fs.used_bytes),
                ("free", fs.free_bytes),
                ("reserved", fs.reserved_bytes),
            ):
                if ratio:
                    if size:
                        yield value / size, {**base, "system.filesystem.state": state}
                else:
                    yield value, {**base, "system.filesystem.state": state}

    return observe


# -- the table ----------------------------------------------------------------------------------

_GPU = "Physical GPU and MIG device"
_MIG = "MIG layout"
_WHO = "Who uses what"
_CONTAINERS = "Containers that hold GPUs"
_HOST = "Host"
_SELF = "Training and self-telemetry"
_INSIGHTS = "Insights"

_HW_GPU = (*GPU_IDENTITY, "hw.type")
_FS = (
    "system.device",
    "system.filesystem.state",
    "system.filesystem.type",
    "system.filesystem.mode",
    "system.filesystem.mountpoint",
)
_TRAINING = ("otel_gpu.training.run",)
_WORKLOAD = (*MIG_IDENTITY, *WORKLOAD_ATTRIBUTES)

CATALOG: tuple[Metric, ...] = (
    Metric(
        "hw.gpu.utilization",
        GAUGE,
        "1",
        "Fraction of time the GPU ran a task (general: any kernel); absent with MIG on.",
        (*GPU_IDENTITY, "hw.gpu.task"),
        _GPU,
        _gpu_utilization,
        semconv=True,
    ),
    Metric(
        "hw.gpu.memory.usage",
        UPDOWNCOUNTER,
        "By",
        "GPU or MIG device memory used.",
        MIG_IDENTITY,
        _GPU,
        _memory_usage,
        semconv=True,
    ),
    Metric(
        "hw.gpu.memory.limit",
        UPDOWNCOUNTER,
        "By",
        "GPU or MIG device memory size.",
        MIG_IDENTITY,
        _GPU,
        _memory_limit,
        semconv=True,
    ),
    Metric(
        "hw.gpu.memory.utilization",
        GAUGE,
        "1",
        "Fraction of GPU or MIG device memory used.",
        MIG_IDENTITY,
        _GPU,
        _memory_utilization,
        semconv=True,
    ),
    Metric(
        "hw.gpu.io",
        COUNTER,
        "By",
        "PCIe bytes moved by the GPU: the driver's byte counters where it has them, else NVML's "
        "20 ms throughput rate integrated between cycles.",
        (*GPU_IDENTITY, "network.io.direction"),
        _GPU,
        _gpu_io,
        semconv=True,
    ),
    Metric(
        "hw.power",
        GAUGE,
        "W",
        "Power drawn by the GPU.",
        _HW_GPU,
        _GPU,
        _gpu_field("power_watts", {"hw.type": "gpu"}),
        semconv=True,
    ),
    Metric(
        "hw.energy",
        COUNTER,
        "J",
        "Energy used by the GPU since the driver was loaded.",
        _HW_GPU,
        _GPU,
        _gpu_field("energy_joules", {"hw.type": "gpu"}),
        semconv=True,
    ),
    Metric(
        "hw.temperature",
        GAUGE,
        "Cel",
        "GPU die and memory temperature.",
        ("hw.id", "hw.name", "hw.parent", "hw.sensor_location"),
        _GPU,
        _temperature,
        semconv=True,
    ),
    Metric(
        "hw.fan.speed_ratio",
        GAUGE,
        "1",
        "Intended fan speed as a fraction of its maximum (may exceed 1); absent without a fan.",
        ("hw.id", "hw.name", "hw.parent"),
        _GPU,
        _fan,
        semconv=True,
    ),
    Metric(
        "hw.errors",
        COUNTER,
        "{error}",
        "ECC memory errors over the GPU's life.",
        (*_HW_GPU, "error.type"),
        _GPU,
        _ecc,
        semconv=True,
    ),
    Metric(
        "hw.status",
        UPDOWNCOUNTER,
        "1",
        "1 for the current state of the GPU or MIG device, 0 for the others.",
        (*MIG_IDENTITY, "hw.type", "hw.state"),
        _GPU,
        _status,
        semconv=True,
    ),
    Metric(
        "nvidia.gpu.power.limit",
        GAUGE,
        "W",
        "Enforced power limit.",
        GPU_IDENTITY,
        _GPU,
        _gpu_field("power_limit_watts"),
    ),
    Metric(
        "nvidia.gpu.clock.frequency",
        GAUGE,
        "Hz",
        "Current clock frequency.",
        (*GPU_IDENTITY, "nvidia.gpu.clock.type"),
        _GPU,
        _clocks,
    ),
    Metric(
        "nvidia.gpu.clocks_event.active",
        GAUGE,
        "1",
        "1 while a reason holds the clocks down (throttling, idle), 0 otherwise; per "
        "supported reason.",
        (*GPU_IDENTITY, "nvidia.gpu.clocks_event.reason"),
        _GPU,
        _clock_events,
    ),
    Metric(
        "nvidia.gpu.xid.errors",
        COUNTER,
        "{error}",
        "Xid errors seen since the agent started.",
        (*GPU_IDENTITY, "nvidia.gpu.xid"),
        _GPU,
        _xid,
    ),
    Metric(
        "nvidia.gpu.memory.remapped_rows",
        UPDOWNCOUNTER,
        "{row}",
        "Memory rows remapped; absent while MIG instances are active.",
        (*GPU_IDENTITY, "error.type"),
        _GPU,
        _remapped_rows,
    ),
    Metric(
        "nvidia.gpu.memory.remap.pending",
        GAUGE,
        "1",
        "1 when a row remap waits for a GPU reset.",
        GPU_IDENTITY,
        _GPU,
        _remap_flag("remap_pending"),
    ),
    Metric(
        "nvidia.gpu.memory.remap.failed",
        GAUGE,
        "1",
        "1 when a row remap has failed.",
        GPU_IDENTITY,
        _GPU,
        _remap_flag("remap_failed"),
    ),
    Metric(
        "nvidia.gpu.sm.utilization",
        GAUGE,
        "1",
        "Fraction of SMs busy (GPM, Hopper+).",
        MIG_IDENTITY,
        _GPU,
        _gpm("sm_utilization"),
    ),
    Metric(
        "nvidia.gpu.sm.occupancy",
        GAUGE,
        "1",
        "Active warps over the theoretical maximum (GPM, Hopper+).",
        MIG_IDENTITY,
        _GPU,
        _gpm("sm_occupancy"),
    ),
    Metric(
        "nvidia.gpu.tensor.utilization",
        GAUGE,
        "1",
        "Fraction of time SMs ran tensor operations (GPM, Hopper+).",
        MIG_IDENTITY,
        _GPU,
        _gpm("tensor_utilization"),
    ),
    Metric(
        "nvidia.gpu.dram.utilization",
        GAUGE,
        "1",
        "DRAM bandwidth used over the maximum (GPM, Hopper+).",
        MIG_IDENTITY,
        _GPU,
        _gpm("dram_utilization"),
    ),
    Metric(
        "nvidia.gpu.graphics_engine.utilization",
        GAUGE,
        "1",
        "Fraction of time any graphics or compute engine was active (GPM, Hopper+).",
        MIG_IDENTITY,
        _GPU,
        _gpm("graphics_engine_utilization"),
    ),
    Metric(
        "nvidia.gpu.mig.mode",
        GAUGE,
        "1",
        "1 when MIG mode is enabled (current or pending).",
        (*GPU_IDENTITY, "nvidia.gpu.mig.mode.type"),
        _MIG,
        _mig_mode,
    ),
    Metric(
        "nvidia.gpu.mig.instance",
        GAUGE,
        "1",
        "1 per MIG device, with its place on the GPU.",
        (
            *MIG_IDENTITY,
            "nvidia.gpu.mig.gpu_instance.id",
            "nvidia.gpu.mig.compute_instance.id",
            "nvidia.gpu.mig.placement.start",
            "nvidia.gpu.mig.placement.size",
        ),
        _MIG,
        _mig_instances,
    ),
    Metric(
        "nvidia.gpu.mig.slices",
        UPDOWNCOUNTER,
        "{slice}",
        "Compute slices of a MIG-enabled GPU, used by instances or free.",
        (*GPU_IDENTITY, "nvidia.gpu.mig.slice.state"),
        _MIG,
        _mig_slices,
    ),
    Metric(
        "nvidia.gpu.mig.reconfigurations",
        COUNTER,
        "{event}",
        "MIG layout changes seen since the agent started.",
        GPU_IDENTITY,
        _MIG,
        _gpu_field("mig_reconfigurations"),
    ),
    Metric(
        "otel_gpu.workload.gpu.memory.usage",
        UPDOWNCOUNTER,
        "By",
        "GPU or MIG device memory used by the processes of one user in one container.",
        _WORKLOAD,
        _WHO,
        _workload(lambda w: w.memory_bytes),
    ),
    Metric(
        "otel_gpu.workload.gpu.processes",
        UPDOWNCOUNTER,
        "{process}",
        "Processes of one user in one container holding a context on the GPU or MIG device.",
        _WORKLOAD,
        _WHO,
        _workload(lambda w: w.processes),
    ),
    Metric(
        "otel_gpu.workload.gpu.utilization",
        GAUGE,
        "1",
        "Sum of the workload's per-process SM utilization samples, at most 1; absent on MIG.",
        _WORKLOAD,
        _WHO,
        _workload(lambda w: None if w.mig else w.sm_utilization),
    ),
    Metric(
        "otel_gpu.device.assignment",
        GAUGE,
        "1",
        "1 per device and container or pod that the runtime or the kubelet gave it, busy or idle.",
        (*MIG_IDENTITY, *CONTAINER_ATTRIBUTES),
        _WHO,
        _assignments,
    ),
    Metric(
        "container.cpu.time",
        COUNTER,
        "s",
        "CPU time of a container that holds a GPU process, by mode (from its cgroup).",
        (*CONTAINER_ATTRIBUTES, "cpu.mode"),
        _CONTAINERS,
        _container_pair("cpu.mode", (("user", "cpu_user_s"), ("system", "cpu_system_s"))),
        semconv=True,
    ),
    Metric(
        "container.memory.usage",
        UPDOWNCOUNTER,
        "By",
        "Memory charged to the container's cgroup (memory.current, memory.usage_in_bytes).",
        CONTAINER_ATTRIBUTES,
        _CONTAINERS,
        _container(lambda c: c.resources.memory_usage_bytes),
        semconv=True,
    ),
    Metric(
        "otel_gpu.container.memory.limit",
        UPDOWNCOUNTER,
        "By",
        "The container's cgroup memory limit; absent when it has none.",
        CONTAINER_ATTRIBUTES,
        _CONTAINERS,
        _container(lambda c: c.resources.memory_limit_bytes),
    ),
    Metric(
        "otel_gpu.container.cpu.limit",
        GAUGE,
        "{cpu}",
        "The container's CPU quota over its period, in CPUs; absent when it has none.",
        CONTAINER_ATTRIBUTES,
        _CONTAINERS,
        _container(lambda c: c.resources.cpu_limit),
    ),
    Metric(
        "otel_gpu.container.oom_kills",
        COUNTER,
        "{event}",
        "Processes of the container killed by the out-of-memory killer.",
        CONTAINER_ATTRIBUTES,
        _CONTAINERS,
        _container(lambda c: c.resources.oom_kills),
    ),
    Metric(
        "container.disk.io",
        COUNTER,
        "By",
        "Bytes the container's cgroup read from and wrote to block devices.",
        (*CONTAINER_ATTRIBUTES, "disk.io.direction"),
        _CONTAINERS,
        _container_pair(
            "disk.io.direction", (("read", "disk_read_bytes"), ("write", "disk_write_bytes"))
        ),
        semconv=True,
    ),
    Metric(
        "system.cpu.time",
        COUNTER,
        "s",
        "CPU time of all logical CPUs by mode.",
        ("cpu.mode",),
        _HOST,
        _host_map("cpu_time_s", "cpu.mode"),
        semconv=True,
    ),
    Metric(
        "system.cpu.utilization",
        GAUGE,
        "1",
        "CPU time by mode over the last cycle, divided by elapsed time and logical CPUs.",
        ("cpu.mode",),
        _HOST,
        _host_map("cpu_utilization", "cpu.mode"),
        semconv=True,
    ),
    Metric(
        "system.cpu.logical.count",
        UPDOWNCOUNTER,
        "{cpu}",
        "Logical CPUs.",
        (),
        _HOST,
        _host_value("cpu_logical_count"),
        semconv=True,
    ),
    Metric(
        "system.memory.usage",
        UPDOWNCOUNTER,
        "By",
        "Memory by state (used: total - available).",
        ("system.memory.state",),
        _HOST,
        _host_map("memory_state_bytes", "system.memory.state"),
        semconv=True,
    ),
    Metric(
        "system.memory.utilization",
        GAUGE,
        "1",
        "Memory by state over total memory.",
        ("system.memory.state",),
        _HOST,
        _memory_state_utilization,
        semconv=True,
    ),
    Metric(
        "system.memory.limit",
        UPDOWNCOUNTER,
        "By",
        "Total memory.",
        (),
        _HOST,
        _host_value("memory_total_bytes"),
        semconv=True,
    ),
    Metric(
        "system.memory.linux.available",
        UPDOWNCOUNTER,
        "By",
        "Memory available to start new work without swapping (MemAvailable).",
        (),
        _HOST,
        _host_value("memory_available_bytes"),
        semconv=True,
    ),
    Metric(
        "system.paging.usage",
        UPDOWNCOUNTER,
        "By",
        "Swap space by state.",
        ("system.paging.state",),
        _HOST,
        _host_map("swap_state_bytes", "system.paging.state"),
        semconv=True,
    ),
    Metric(
        "system.disk.io",
        COUNTER,
        "By",
        "Bytes read from and written to each disk.",
        ("system.device", "disk.io.direction"),
        _HOST,
        _disk("read_bytes", "write_bytes"),
        semconv=True,
    ),
    Metric(
        "system.disk.operations",
        COUNTER,
        "{operation}",
        "Disk reads and writes.",
        ("system.device", "disk.io.direction"),
        _HOST,
        _disk("read_operations", "write_operations"),
        semconv=True,
    ),
    Metric(
        "system.network.io",
        COUNTER,
        "By",
        "Bytes received and sent per interface.",
        ("network.interface.name", "network.io.direction"),
        _HOST,
        _net("receive_bytes", "transmit_bytes"),
        semconv=True,
    ),
    Metric(
        "system.network.packet.dropped",
        COUNTER,
        "{packet}",
        "Packets dropped per interface.",
        ("network.interface.name", "network.io.direction"),
        _HOST,
        _net("receive_dropped", "transmit_dropped"),
        semconv=True,
    ),
    Metric(
        "system.filesystem.usage",
        UPDOWNCOUNTER,
        "By",
        "Filesystem space by state.",
        _FS,
        _HOST,
        _filesystem(ratio=False),
        semconv=True,
    ),
    Metric(
        "system.filesystem.utilization",
        GAUGE,
        "1",
        "Filesystem space by state over its size.",
        _FS,
        _HOST,
        _filesystem(ratio=True),
        semconv=True,
    ),
    Metric(
        "otel_gpu.insight.active",
        GAUGE,
        "1",
        "1 for each active insight (a finding with a remedy) about its subject.",
        (
            "otel_gpu.insight.rule",
            "otel_gpu.insight.severity",
            *MIG_IDENTITY,
            *WORKLOAD_ATTRIBUTES,
            "nvidia.gpu.xid",
            "system.device",
            "system.filesystem.mountpoint",
            *_TRAINING,
        ),
        _INSIGHTS,
        _insights,
    ),
    Metric(
        "otel_gpu.training.step.duration",
        HISTOGRAM,
        "s",
        "Time of one training step: waiting for the batch plus computing on it.",
        _TRAINING,
        _SELF,
    ),
    Metric(
        "otel_gpu.training.data_wait.duration",
        HISTOGRAM,
        "s",
        "Time blocked waiting for the next batch.",
        _TRAINING,
        _SELF,
    ),
    Metric(
        "otel_gpu.training.data_wait.ratio",
        GAUGE,
        "1",
        "Data wait over step time across the last window of steps.",
        _TRAINING,
        _SELF,
    ),
    Metric(
        "otel_gpu.training.steps", COUNTER, "{step}", "Training steps completed.", _TRAINING, _SELF
    ),
    Metric(
        "otel_gpu.training.samples",
        COUNTER,
        "{sample}",
        "Training samples consumed.",
        _TRAINING,
        _SELF,
    ),
    Metric(
        "otel_gpu.collection.duration",
        GAUGE,
        "s",
        "Time each source took in the last cycle.",
        ("otel_gpu.source",),
        _SELF,
        _collection_duration,
    ),
    Metric(
        "otel_gpu.collection.errors",
        COUNTER,
        "{error}",
        "Failed reads since start, by source and error (NVML codes such as NOT_SUPPORTED).",
        ("otel_gpu.source", "error.type"),
        _SELF,
        _collection_errors,
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}


def observed_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in CATALOG if m.observe is not None)


def render_markdown(metrics: Iterable[Metric] = CATALOG) -> str:
    """The docs page of metrics, generated from the table
    (``python -m otel_gpu.telemetry.catalog``)."""
    lines = [
        "# Metrics",
        "",
        "Generated from `otel_gpu/telemetry/catalog.py` by",
        "`python -m otel_gpu.telemetry.catalog > docs/metrics.md`;",
        "a test fails when this page and the table differ.",
        "",
        "Device identity on every GPU point: "
        + ", ".join(f"`{a}`" for a in GPU_IDENTITY)
        + "; MIG devices add `hw.parent` and `nvidia.gpu.mig.profile`.",
        "Ratios are 0..1. A value the hardware cannot give is absent, never 0.",
        "",
        "Workload attributes, each present only when known: "
        + ", ".join(f"`{a}`" for a in WORKLOAD_ATTRIBUTES)
        + " (`process.owner` is the user name, or the numeric uid when it has none;"
        " `container.label.<key>` for each allow-listed label). No process id on any metric.",
    ]
    section = None
    for metric in metrics:
        if metric.section != section:
            section = metric.section
            lines += [
                "",
                f"## {section}",
                "",
                "| metric | instrument | unit | attributes | description | name from |",
                "|---|---|---|---|---|---|",
            ]
        attrs = ", ".join(f"`{a}`" for a in metric.attributes) or "none"
        origin = "semantic conventions" if metric.semconv else "otel-gpu"
        lines.append(
            f"| `{metric.name}` | {metric.instrument} | `{metric.unit}` | {attrs} | "
            f"{metric.description} | {origin} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
