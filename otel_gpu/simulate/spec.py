"""The loaded scenario: the simulated server's GPUs, MIG layouts, processes, containers, pods
and host, as frozen dataclasses.

A field that can change between collection cycles holds either a constant or a
:class:`PerCycle` (element k at cycle k, the last one repeating); :func:`at_cycle` picks the
value for a cycle. :mod:`otel_gpu.simulate.scenario` loads and validates a file into this model;
the keys a file may use are derived from these dataclasses' fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from otel_gpu.simulate.hardware import GpuModel, MigProfile
from otel_gpu.sources.libnvml import error_codes

# The device-scoped calls of the simulated driver that a fault may name ("*" names them all).
FAULTABLE_CALLS: frozenset[str] = frozenset(
    {
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetHandleByUUID",
        "nvmlDeviceGetIndex",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetSerial",
        "nvmlDeviceGetArchitecture",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetEncoderUtilization",
        "nvmlDeviceGetDecoderUtilization",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetClockInfo",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetSupportedClocksEventReasons",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetPcieThroughput",
        "nvmlDeviceGetFanSpeed",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetProcessUtilization",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceIsMigDeviceHandle",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetAttributes",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlDeviceGetGpuInstanceById",
        "nvmlGpuInstanceGetInfo",
        "nvmlGpmQueryDeviceSupport",
        "nvmlGpmSampleGet",
        "nvmlGpmMigSampleGet",
        "nvmlGpmMetricsGet",
        "nvmlDeviceRegisterEvents",
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetNvLinkErrorCounter",
        "nvmlDeviceGetPcieReplayCounter",
    }
)

NVML_ERROR_NAMES: dict[str, int] = error_codes(pynvml)


class PerCycle(tuple):
    """A value that changes over collection cycles: element k at cycle k, the last one repeats."""

    __slots__ = ()


Varying = Any  # a constant or a PerCycle of constants


def at_cycle(value: Any, cycle: int) -> Any:
    """The value a field has at ``cycle``: sequences (PerCycle or list) are indexed, the last
    element repeating; anything else is returned as is."""
    if isinstance(value, (PerCycle, list)):
        if not value:
            return None
        return value[min(max(cycle, 0), len(value) - 1)]
    return value


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """An injected NVML error on one GPU (and its MIG devices)."""

    call: str  # an NVML function name, or "*" for every device call
    error: str  # NVML error name without the NVML_ERROR_ prefix
    cycles: tuple[int, ...] | None  # None: every cycle

    @property
    def code(self) -> int:
        return NVML_ERROR_NAMES[self.error]

    def active(self, cycle: int) -> bool:
        """Whether the fault fires at ``cycle``. A lost GPU stays lost: GPU_IS_LOST fires from
        its first cycle on."""
        if self.cycles is None:
            return True
        if self.error == "GPU_IS_LOST":
            return cycle >= min(self.cycles)
        return cycle in self.cycles

    def applies_to(self, call: str) -> bool:
        return self.call in ("*", call)


@dataclass(frozen=True)
class XidEvent:
    cycle: int
    code: int
    mig_instance: int | None = None  # index into the layout active at that cycle


@dataclass(frozen=True)
class GpmValues:
    """Hopper GPM ratios (0..1), each possibly per cycle; None where the scenario gives none."""

    sm_utilization: Varying = None
    sm_occupancy: Varying = None
    tensor_utilization: Varying = None
    dram_utilization: Varying = None
    graphics_engine_utilization: Varying = None


@dataclass(frozen=True)
class DcgmValues:
    """DCGM profiling values of a GPU or GPU instance, each possibly per cycle; None where the
    scenario gives none (DCGM answers a blank value). Ratios 0..1; the byte fields per second."""

    graphics_engine_active: Varying = None
    sm_active: Varying = None
    sm_occupancy: Varying = None
    tensor_active: Varying = None
    dram_active: Varying = None
    pcie_tx_bytes_per_s: Varying = None
    pcie_rx_bytes_per_s: Varying = None
    nvlink_tx_bytes_per_s: Varying = None
    nvlink_rx_bytes_per_s: Varying = None


# The DCGM calls a scenario fault may name: connecting to the host engine, watching the fields,
# reading them, and the dcgm-exporter scrape.
DCGM_FAULTABLE_CALLS = frozenset({"connect", "WatchFields", "GetLatest_v2", "scrape"})
# DCGM status names (dcgm_structs DCGM_ST_*, without the prefix) a fault may raise, and
# Malformed: the exporter serves a scrape that is not in the Prometheus text format.
DCGM_FAULT_ERRORS = frozenset(
    {"CONNECTION_NOT_VALID", "NOT_SUPPORTED", "IN_USE", "TIMEOUT", "NO_PERMISSION",
     "PROFILING_NOT_SUPPORTED", "Malformed"}
)


@dataclass(frozen=True)
class DcgmFault:
    call: str  # one of DCGM_FAULTABLE_CALLS
    error: str  # one of DCGM_FAULT_ERRORS
    cycles: tuple[int, ...] | None  # None: every cycle

    def active(self, cycle: int) -> bool:
        return self.cycles is None or cycle in self.cycles


@dataclass(frozen=True)
class DcgmSpec:
    """The DCGM services of the simulated server."""

    hostengine: bool = True  # nv-hostengine runs and accepts connections
    exporter: bool = False  # a dcgm-exporter endpoint serves the same values over HTTP
    version: str = "4.2.3"
    profiling_module: bool = True  # the profiling module loads (it needs a supported GPU)
    faults: tuple[DcgmFault, ...] = ()


@dataclass(frozen=True)
class NvLinkSpec:
    """One NVLink of a GPU: its state and cumulative counters, each possibly per cycle."""

    link: int
    active: Varying = True
    tx_bytes_per_s: Varying = 0
    rx_bytes_per_s: Varying = 0
    crc_flit_errors: Varying = 0
    crc_data_errors: Varying = 0
    replay_errors: Varying = 0
    recovery_errors: Varying = 0


@dataclass(frozen=True)
class ProcessSpec:
    pid: int
    uid: int
    comm: str
    cgroup: str
    cmdline: tuple[str, ...]
    used_memory_bytes: Varying
    sm_utilization: Varying = None
    memory_utilization: Varying = None
    mig_instance: int | None = None
    running: Varying = True
    libraries: tuple[str, ...] = ()  # shared objects its /proc/<pid>/maps lists, e.g. libdali.so
    environ: dict[str, str] = field(default_factory=dict)  # its /proc/<pid>/environ


@dataclass(frozen=True)
class MigInstanceSpec:
    index: int  # the NVML MIG device index: its position in the layout
    profile: MigProfile
    start: int
    uuid: str
    gpu_instance_id: int
    memory_used_bytes: Varying = None  # None: the sum of its processes' memory
    gpm: GpmValues | None = None
    dcgm: DcgmValues | None = None

    @property
    def size(self) -> int:
        return self.profile.memory_slices


@dataclass(frozen=True)
class MigLayout:
    generation: int  # 0 for the initial layout, k for the k-th reconfiguration
    cycle: int  # the first cycle it is in place
    instances: tuple[MigInstanceSpec, ...]
    processes: tuple[ProcessSpec, ...]


@dataclass(frozen=True)
class MigSpec:
    layouts: tuple[MigLayout, ...]  # in cycle order; layouts[0] starts at cycle 0

    def layout_at(self, cycle: int) -> MigLayout:
        current = self.layouts[0]
        for layout in self.layouts[1:]:
            if layout.cycle <= cycle:
                current = layout
        return current


@dataclass(frozen=True)
class EccCounts:
    corrected: Varying = 0
    uncorrected: Varying = 0


@dataclass(frozen=True)
class RemappedRows:
    corrected: Varying = 0
    uncorrected: Varying = 0
    pending: Varying = False
    failed: Varying = False


@dataclass(frozen=True)
class ClockValues:
    """Clock overrides in MHz; None where the model's defaults apply."""

    graphics: Varying = None
    sm: Varying = None
    memory: Varying = None
    video: Varying = None


@dataclass(frozen=True)
class GpuSpec:
    index: int
    model: GpuModel
    uuid: str
    serial: str
    utilization: Varying = None
    memory_utilization: Varying = None
    memory_used_bytes: Varying = None
    power_watts: Varying = None
    power_limit_watts: float | None = None
    temperature_celsius: Varying = None
    memory_temperature_celsius: Varying = None
    clocks_mhz: ClockValues = field(default_factory=ClockValues)
    clocks_event_reasons: Varying = None  # tuple of names, or PerCycle of tuples
    encoder_utilization: Varying = None
    decoder_utilization: Varying = None
    ecc_errors: EccCounts = field(default_factory=EccCounts)
    remapped_rows: RemappedRows = field(default_factory=RemappedRows)
    pcie_tx_bytes_per_s: Varying = None
    pcie_rx_bytes_per_s: Varying = None
    mig_pending: Varying = False
    xid_events: tuple[XidEvent, ...] = ()
    faults: tuple[Fault, ...] = ()
    mig: MigSpec | None = None
    gpm: GpmValues | None = None
    dcgm: DcgmValues | None = None
    nvlinks: tuple[NvLinkSpec, ...] = ()  # links not listed are not supported on the board
    pcie_replays: Varying = 0  # the PCIe replay counter
    processes: tuple[ProcessSpec, ...] = ()  # without MIG; with MIG, the initial layout's

    @property
    def hw_name(self) -> str:
        return f"gpu{self.index}"

    def processes_at(self, cycle: int) -> tuple[ProcessSpec, ...]:
        """The processes running on this GPU at ``cycle``."""
        candidates = self.mig.layout_at(cycle).processes if self.mig else self.processes
        return tuple(p for p in candidates if at_cycle(p.running, cycle))


@dataclass(frozen=True)
class Resources:
    """A container's cgroup (v2) figures; None where the scenario gives none."""

    cpu_limit: Varying = None
    cpu_utilization: Varying = None
    cpu_throttled_ratio: Varying = None
    memory_limit_bytes: Varying = None
    memory_used_bytes: Varying = None
    oom_kills: Varying = None
    disk_read_bytes_per_s: Varying = None
    disk_write_bytes_per_s: Varying = None
    network_rx_bytes_per_s: Varying = None  # its network namespace's, loopback aside
    network_tx_bytes_per_s: Varying = None
    # Shares of each cycle its tasks stalled (PSI "some": at least one task, "full": all of
    # them), accumulated into io.pressure and memory.pressure; None: PSI off (no such files).
    io_pressure_some: Varying = None
    io_pressure_full: Varying = None
    memory_pressure_some: Varying = None
    memory_pressure_full: Varying = None


@dataclass(frozen=True)
class ClaimSpec:
    """A DRA ResourceClaim allocated to a pod container (pod-resources ``dynamic_resources``)."""

    name: str
    devices: tuple[str, ...]  # as written: UUIDs or hw.names
    device_uuids: tuple[str, ...]  # the same, resolved to UUIDs
    driver: str = "gpu.nvidia.com"


@dataclass(frozen=True)
class ContainerSpec:
    id: str
    name: str
    image: str | None
    labels: dict[str, str]
    devices: tuple[str, ...]  # as written: UUIDs or hw.names
    device_uuids: tuple[str, ...]  # the same, resolved to UUIDs
    resources: Resources
    user: str | None = None  # Docker's Config.User, as written
    pid: int | None = None  # the host pid of its init process (Docker's State.Pid), in /proc
    uid: int = 0  # the uid of that init process
    claims: tuple[ClaimSpec, ...] = ()  # pods only: its DRA claims
    host_network: bool = False  # on the host's network namespace (--network host, hostNetwork)


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    uid: str
    containers: tuple[ContainerSpec, ...]
    run_as_user: int | None = None  # spec.securityContext.runAsUser


@dataclass(frozen=True)
class FilesystemSpec:
    mountpoint: str
    size_bytes: Varying
    used_bytes: Varying


@dataclass(frozen=True)
class MountSpec:
    """A network or FUSE filesystem in the simulated /proc/self/mounts, answering statvfs
    through the world's stand-in; NFS mounts also get their mountstats counters."""

    mountpoint: str
    device: str  # e.g. nas:/datasets
    type: str  # e.g. nfs4, cifs, fuse.sshfs
    size_bytes: Varying
    used_bytes: Varying
    read_bytes_per_s: Varying = 0  # what the client reads from the server
    write_bytes_per_s: Varying = 0
    responsive: Varying = True  # False: statvfs blocks, as on a dead NFS server


@dataclass(frozen=True)
class HostSpec:
    memory_used_ratio: Varying = None
    cpu_utilization: Varying = None  # the busy share of all the host's CPUs, 0..1
    filesystems: tuple[FilesystemSpec, ...] = ()
    mounts: tuple[MountSpec, ...] = ()


@dataclass(frozen=True)
class KubeletSpec:
    """Which of the kubelet's APIs answer (both do by default, where the scenario has pods)."""

    pod_resources: bool = True  # the pod-resources gRPC socket exists
    pod_list: bool = True  # /pods answers; False: it answers 503


# The driver-wide calls of the simulated driver that a ``driver.faults`` entry may name.
DRIVER_FAULTABLE_CALLS: frozenset[str] = frozenset(
    {
        "nvmlDeviceGetCount",
        "nvmlSystemGetDriverVersion",
        "nvmlEventSetCreate",
        "nvmlEventSetWait_v2",
    }
)


@dataclass(frozen=True)
class DriverSpec:
    """The driver itself: how many cycles it takes to load, and faults of its driver-wide calls."""

    init_fails_cycles: int = 0  # nvmlInit answers DRIVER_NOT_LOADED before this cycle
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    driver_version: str
    description: str | None
    users: dict[int, str]
    containers: tuple[ContainerSpec, ...]
    pods: tuple[PodSpec, ...]
    gpus: tuple[GpuSpec, ...]
    host: HostSpec | None
    kubelet: KubeletSpec = field(default_factory=KubeletSpec)
    dcgm: DcgmSpec | None = None  # None: no DCGM on the server
    driver: DriverSpec = field(default_factory=DriverSpec)

    def resolve_device(self, ref: str) -> str | None:
        """The UUID a device reference (a UUID or a hw.name like gpu3 or gpu0/mig1) names."""
        return device_refs(self.gpus).get(ref)


def device_refs(gpus: Iterable[GpuSpec]) -> dict[str, str]:
    """Every name a device may be referred to by (UUID, gpuN, gpuN/migM), mapped to its UUID."""
    refs: dict[str, str] = {}
    for gpu in gpus:
        refs[gpu.uuid] = gpu.uuid
        refs[gpu.hw_name] = gpu.uuid
        for layout in gpu.mig.layouts if gpu.mig else ():
            for instance in layout.instances:
                refs[instance.uuid] = instance.uuid
                refs.setdefault(f"{gpu.hw_name}/mig{instance.index}", instance.uuid)
    return refs
