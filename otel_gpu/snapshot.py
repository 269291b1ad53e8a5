"""The Snapshot: everything one collection cycle read from the world, as frozen plain data.

Sources fill these types and know nothing of OpenTelemetry; the catalog turns a Snapshot into
data points. Units are in the field names: ``_bytes``, ``_watts``, ``_joules``, ``_celsius``,
``_hz``, ``_s``; ratios are 0..1. ``None`` means the hardware or the kernel did not give the value.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_gpu.snapshot import Insight


@dataclass(frozen=True)
class SourceError:
    """One failed read, recorded instead of raised."""

    source: str  # nvml, host, procfs, cgroup, docker, kubelet
    call: str  # the function or file that failed, e.g. nvmlDeviceGetPowerUsage
    error_type: str  # e.g. NOT_SUPPORTED, GPU_IS_LOST, PermissionError
    device: str | None = None  # hw.name of the device concerned, when there is one


@dataclass(frozen=True)
class GpmMetrics:
    """Hopper-and-later GPU Performance Monitoring ratios over the last sample interval."""

    sm_utilization: float | None = None
    sm_occupancy: float | None = None
    tensor_utilization: float | None = None
    dram_utilization: float | None = None
    graphics_engine_utilization: float | None = None


@dataclass(frozen=True)
class DcgmActivity:
    """DCGM's profiling (DCP) fields for one GPU or MIG GPU instance, as DCGM last sampled them.

    Ratios are 0..1 over DCGM's sample interval; the byte fields are rates in bytes per second.
    ``source`` says which route gave them: ``hostengine`` (DCGM's bindings) or ``exporter`` (a
    dcgm-exporter scrape).
    """

    source: str
    graphics_engine_active: float | None = None
    sm_active: float | None = None
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None
    pcie_tx_bytes_per_s: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    nvlink_tx_bytes_per_s: float | None = None
    nvlink_rx_bytes_per_s: float | None = None


@dataclass(frozen=True)
class NvLink:
    """One active NVLink of a GPU: cumulative counters since the driver loaded."""

    link: int
    tx_bytes: int | None = None
    rx_bytes: int | None = None
    crc_flit_errors: int | None = None
    crc_data_errors: int | None = None
    replay_errors: int | None = None
    recovery_errors: int | None = None


@dataclass(frozen=True)
class GpuProcess:
    """A process that holds a context on a GPU or MIG device, as NVML reports it (host pid)."""

    pid: int
    used_memory_bytes: int | None
    gpu_instance_id: int | None = None  # None when MIG is off
    compute_instance_id: int | None = None
    sm_utilization: float | None = None  # per-process sample; never on MIG


@dataclass(frozen=True)
class MigDevice:
    index: int  # NVML MIG device index on its parent
    uuid: str
    name: str  # hw.name, e.g. gpu0/mig1
    parent_uuid: str
    model: str
    profile: str | None  # e.g. 3g.20gb
    gpu_instance_id: int | None
    compute_instance_id: int | None
    placement_start: int | None
    placement_size: int | None
    compute_slices: int | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    processes: tuple[GpuProcess, ...] = ()
    gpm: GpmMetrics | None = None
    dcgm: DcgmActivity | None = None


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str  # hw.name, e.g. gpu0
    model: str | None = None
    serial: str | None = None
    lost: bool = False
    utilization_general: float | None = None
    utilization_encoder: float | None = None
    utilization_decoder: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    temperature_gpu_celsius: float | None = None
    temperature_memory_celsius: float | None = None
    clocks_hz: dict[str, float] = field(default_factory=dict)  # graphics/sm/memory/video
    clocks_event_reasons: dict[str, bool] = field(default_factory=dict)  # supported ones only
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    remapped_rows_corrected: int | None = None
    remapped_rows_uncorrected: int | None = None
    remap_pending: bool | None = None
    remap_failed: bool | None = None
    pcie_tx_bytes: int | None = None  # cumulative (driver counter, else since the agent started)
    pcie_rx_bytes: int | None = None
    fan_speed_ratio: float | None = None
    mig_mode_current: bool | None = None
    mig_mode_pending: bool | None = None
    mig_devices: tuple[MigDevice, ...] = ()
    mig_compute_slices_total: int | None = None
    mig_reconfigurations: int = 0
    processes: tuple[GpuProcess, ...] = ()  # with MIG on: every MIG device's processes
    gpm: GpmMetrics | None = None
    xid_errors: dict[int, int] = field(default_factory=dict)  # code -> count since start
    dcgm: DcgmActivity | None = None
    nvlinks: tuple[NvLink, ...] = ()  # active links only
    pcie_replays: int | None = None  # PCIe replay counter since the driver loaded

    @property
    def mig_enabled(self) -> bool:
        return bool(self.mig_mode_current)


@dataclass(frozen=True)
class DiskIo:
    read_bytes: int
    write_bytes: int
    read_operations: int
    write_operations: int


@dataclass(frozen=True)
class NetworkIo:
    receive_bytes: int
    transmit_bytes: int
    receive_dropped: int
    transmit_dropped: int


@dataclass(frozen=True)
class Filesystem:
    device: str
    mountpoint: str
    type: str
    mode: str  # rw / ro
    used_bytes: int
    free_bytes: int
    reserved_bytes: int

    @property
    def size_bytes(self) -> int:
        return self.used_bytes + self.free_bytes + self.reserved_bytes


@dataclass(frozen=True)
class NfsIo:
    """One NFS mount's byte counters since it was mounted, from ``/proc/self/mountstats``: what
    the client read from and wrote to the server (page-cache hits never reach it)."""

    device: str  # server:/export
    mountpoint: str
    type: str  # nfs or nfs4
    read_bytes: int
    write_bytes: int


@dataclass(frozen=True)
class HostSnapshot:
    cpu_time_s: dict[str, float] = field(default_factory=dict)  # cpu.mode -> seconds, all CPUs
    cpu_utilization: dict[str, float] = field(default_factory=dict)  # cpu.mode -> ratio
    cpu_logical_count: int | None = None
    memory_total_bytes: int | None = None
    memory_state_bytes: dict[str, int] = field(default_factory=dict)  # used/free/buffers/cached
    memory_available_bytes: int | None = None
    swap_state_bytes: dict[str, int] = field(default_factory=dict)  # used/free
    disks: dict[str, DiskIo] = field(default_factory=dict)
    networks: dict[str, NetworkIo] = field(default_factory=dict)
    filesystems: tuple[Filesystem, ...] = ()  # local disks, then network and FUSE filesystems
    nfs: tuple[NfsIo, ...] = ()

    @property
    def memory_used_ratio(self) -> float | None:
        used = self.memory_state_bytes.get("used")
        if used is None or not self.memory_total_bytes:
            return None
        return used / self.memory_total_bytes


@dataclass(frozen=True)
class ContainerResources:
    """A cgroup's limits and usage; None where the kernel gave no value, or there is no limit."""

    cgroup_version: int  # 1 or 2
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    cpu_limit: float | None = None  # CPUs (quota / period); None: no limit
    cpu_periods: int | None = None  # enforcement periods elapsed
    cpu_throttled_periods: int | None = None
    cpu_throttled_s: float | None = None
    memory_usage_bytes: int | None = None
    memory_limit_bytes: int | None = None  # None: no limit
    oom_kills: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    # Pressure stall time (cgroup v2 io.pressure, memory.pressure), seconds since the cgroup was
    # made: "some" while at least one of its tasks stalled, "full" while all of them did.
    io_pressure_some_s: float | None = None
    io_pressure_full_s: float | None = None
    memory_pressure_some_s: float | None = None
    memory_pressure_full_s: float | None = None

    @property
    def cpu_s(self) -> float | None:
        """User plus system CPU time; None when the cgroup gave neither."""
        if self.cpu_user_s is None and self.cpu_system_s is None:
            return None
        return (self.cpu_user_s or 0.0) + (self.cpu_system_s or 0.0)


@dataclass(frozen=True)
class Workload:
    """The processes of one user in one container on one GPU or MIG device; never a pid.

    ``attributes`` holds the workload attributes that are known: ``process.owner``,
    ``container.*`` (``container.label.<key>`` for allow-listed labels) and ``k8s.*``.
    """

    device_uuid: str  # the GPU's or MIG device's UUID
    mig: bool
    attributes: dict[str, str]
    processes: int
    memory_bytes: int | None  # None when NVML gave no process its memory
    sm_utilization: float | None = None  # sum of per-process samples; None on MIG
    #: NVIDIA DALI (libdali) mapped by one of its processes; None when no process's maps were read
    dali: bool | None = None


OWNER_SOURCES = ("process", "docker.config.user", "proc.init", "k8s.run_as_user")


@dataclass(frozen=True)
class DeviceAssignment:
    """A GPU or MIG device that a container runtime or the kubelet gave a container or pod.

    ``owner`` is the user it is held for, as ``process.owner`` spells users (a name, else the
    uid); ``owner_uid`` the uid where one is known; ``owner_source`` says where the answer came
    from, the first that gives one of: ``process`` (the uid of the container's GPU processes),
    ``docker.config.user`` (Docker inspect ``Config.User``), ``proc.init`` (the uid of the
    container's init process, Docker's ``State.Pid``, from /proc), ``k8s.run_as_user`` (the pod's
    or container's ``securityContext.runAsUser``). All three are None when none answers.
    """

    device_uuid: str
    mig: bool
    attributes: dict[str, str]  # container.* and k8s.* attributes
    owner: str | None = None
    owner_uid: int | None = None
    owner_source: str | None = None


@dataclass(frozen=True)
class ContainerNetwork:
    """A container's network namespace: counters summed over its interfaces but loopback."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True)
class ContainerUsage:
    """The cgroup of a container that holds a GPU process or was given a device."""

    attributes: dict[str, str]  # container.* and k8s.* attributes, as on its workloads
    resources: ContainerResources
    network: ContainerNetwork | None = None  # None: on the host's network, or no process seen


@dataclass(frozen=True)
class WorkloadAccount:
    """What one workload (user, container, pod) has used of one device since the agent started.

    ``attributes``: the device's identity and the workload's attributes, as last seen. Device
    seconds are weighted: a MIG device counts its share of the GPU's compute slices (a 1g slice
    of 7 counts 1/7), a whole GPU shared by several workloads is split between them.
    """

    attributes: Attributes
    busy_s: float = 0.0  # device-seconds with activity at or above the busy threshold
    idle_s: float = 0.0  # device-seconds below it
    unknown_s: float = 0.0  # device-seconds with no activity reading (MIG without GPM)
    slice_s: float = 0.0  # MIG compute slices held times seconds; 0 on whole GPUs
    energy_joules: float = 0.0
    last_held: float = 0.0  # Snapshot time at which it last held the device


@dataclass(frozen=True)
class Snapshot:
    """One collection cycle. ``timestamp`` is simulated time under ``--simulate``."""

    cycle: int
    timestamp: float
    driver_available: bool
    driver_version: str | None = None
    gpus: tuple[Gpu, ...] = ()
    host: HostSnapshot | None = None
    errors: tuple[SourceError, ...] = ()  # this cycle's failures
    error_counts: dict[tuple[str, str], int] = field(default_factory=dict)  # since start
    durations_s: dict[str, float] = field(default_factory=dict)  # source -> seconds this cycle
    workloads: tuple[Workload, ...] = ()
    assignments: tuple[DeviceAssignment, ...] = ()
    containers: tuple[ContainerUsage, ...] = ()
    insights: tuple[Insight, ...] = ()  # active insights after this cycle
    accounts: tuple[WorkloadAccount, ...] = ()  # cumulative, since the agent started


Attributes = dict[str, str | int | float | bool]

INFO, WARNING, CRITICAL = "info", "warning", "critical"
SEVERITIES = (INFO, WARNING, CRITICAL)
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Insight:
    """An active finding about one subject (a device, a workload, a container or the host)."""

    rule: str
    severity: str  # info, warning or critical
    message: str  # what is wrong, with the numbers
    remedy: str  # what to change
    attributes: Attributes  # the subject: device identity and/or workload attributes
    since: float  # Snapshot time at which it became active (at this severity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "remedy": self.remedy,
            "attributes": dict(self.attributes),
            "since": self.since,
        }

    def point_attributes(self) -> Attributes:
        """The attributes of this insight's ``otel_gpu.insight.active`` point and log record."""
        return {
            **self.attributes,
            "otel_gpu.insight.rule": self.rule,
            "otel_gpu.insight.severity": self.severity,
        }


@dataclass(frozen=True)
class TrainingSignals:
    """What a training loop measured about itself, as of one collection cycle."""

    data_wait_ratio: float | None  # data wait over step time across the recent steps
    steps: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    dali: bool | None = None  # nvidia.dali imported in the training process; None: not known



MAX_PENDING_ERRORS = 1000


class ErrorLog:
    """The failures a reader records between two cycles; the Collector drains them once a cycle
    with ``take_errors()`` into ``otel_gpu.collection.errors``. At most 1000 are kept."""

    source = "unknown"

    def __init__(self, source: str | None = None) -> None:
        if source is not None:
            self.source = source
        self._errors: deque[SourceError] = deque(maxlen=MAX_PENDING_ERRORS)

    def take_errors(self) -> tuple[SourceError, ...]:
        """The failures recorded since the last call."""
        errors = tuple(self._errors)
        self._errors.clear()
        return errors

    def record(self, call: str, error_type: str) -> None:
        self._errors.append(SourceError(self.source, call, error_type))


def gpu_identity(gpu: Gpu) -> Attributes:
    attrs: Attributes = {"hw.id": gpu.uuid, "hw.name": gpu.name, "hw.vendor": "nvidia"}
    if gpu.model:
        attrs["hw.model"] = gpu.model
    return attrs


def mig_identity(mig: MigDevice) -> Attributes:
    attrs: Attributes = {
        "hw.id": mig.uuid,
        "hw.name": mig.name,
        "hw.vendor": "nvidia",
        "hw.parent": mig.parent_uuid,
    }
    if mig.model:
        attrs["hw.model"] = mig.model
    if mig.profile:
        attrs["nvidia.gpu.mig.profile"] = mig.profile
    return attrs




def device_identity(gpu: Gpu, mig: MigDevice | None = None) -> Attributes:
    """The identity attributes of a GPU, or of one of its MIG devices."""
    return gpu_identity(gpu) if mig is None else mig_identity(mig)


def each_device(
    gpus: Iterable[Gpu], live_only: bool = False
) -> Iterator[tuple[Gpu, MigDevice | None]]:
    """Every GPU as ``(gpu, None)``, each followed by its MIG devices as ``(gpu, mig)``;
    ``live_only`` leaves out lost GPUs."""
    for gpu in gpus:
        if live_only and gpu.lost:
            continue
        yield gpu, None
        for mig in gpu.mig_devices:
            yield gpu, mig


def cpu_rates(
    before: ContainerResources | None, now: ContainerResources | None, seconds: float
) -> tuple[float | None, float | None]:
    """Between two reads of a cgroup ``seconds`` apart: the CPUs it used on average (user plus
    system time) and the share of its CFS enforcement periods that were throttled (0..1)."""
    if before is None or now is None:
        return None, None
    used = throttled = None
    if seconds > 0 and now.cpu_s is not None and before.cpu_s is not None:
        used = max(now.cpu_s - before.cpu_s, 0.0) / seconds
    if None not in (now.cpu_periods, before.cpu_periods, now.cpu_throttled_periods,
                    before.cpu_throttled_periods):
        periods = (now.cpu_periods or 0) - (before.cpu_periods or 0)
        if periods > 0:
            hit = (now.cpu_throttled_periods or 0) - (before.cpu_throttled_periods or 0)
            throttled = min(1.0, max(hit, 0) / periods)
    return used, throttled


def format_gib(value: float, unit: str = " GiB") -> str:
    """Bytes as GiB with one decimal, e.g. ``1.5 GiB``."""
    return f"{value / 2**30:.1f}{unit}"


# GPM ratio -> the DCGM profiling field that measures the same thing.
ACTIVITY_FIELDS: dict[str, str] = {
    "sm_utilization": "sm_active",
    "sm_occupancy": "sm_occupancy",
    "tensor_utilization": "tensor_active",
    "dram_utilization": "dram_active",
    "graphics_engine_utilization": "graphics_engine_active",
}


def device_activity(device: Gpu | MigDevice, gpm_field: str) -> tuple[float | None, str | None]:
    """One activity ratio of a GPU or MIG device and the source that gave it (``gpm`` or
    ``dcgm``). GPM wins where both have the value: it is the driver's own reading of the device,
    so one series never comes from two sources at once."""
    if device.gpm is not None:
        value = getattr(device.gpm, gpm_field)
        if value is not None:
            return value, "gpm"
    if device.dcgm is not None:
        value = getattr(device.dcgm, ACTIVITY_FIELDS[gpm_field])
        if value is not None:
            return value, "dcgm"
    return None, None
