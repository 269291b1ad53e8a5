"""The NVML source: the only path from the driver (or the simulator in its place) to a Snapshot.

Every call goes through one failsafe wrapper: an NVML error becomes a recorded ``SourceError`` and
an absent value; ``GPU_IS_LOST`` marks that GPU failed and the others go on; a missing library or
driver leaves the source unavailable with one message; NOT_SUPPORTED is a learned capability
(see ``otel_gpu.sources.libnvml``). Units are converted here: mW -> W, mJ -> J, MHz -> Hz,
percent -> ratio.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from otel_gpu.snapshot import Gpu, GpuProcess, MigDevice, SourceError
from otel_gpu.sources.libnvml import (
    ABSENT,
    CLOCK_DOMAINS,
    CLOCK_EVENT_REASONS,
    SOURCE,
    Caller,
    Capabilities,
    GpuLost,
    error_name,
    error_names,
    field_number,
    present,
    text,
)
from otel_gpu.sources.libnvml import CAPABILITY_RECHECK_S as CAPABILITY_RECHECK_S
from otel_gpu.sources.nvml_events import XidEventReader
from otel_gpu.sources.nvml_gpm import GpmReader
from otel_gpu.sources.nvml_links import LinkReader

_NO_ID = 0xFFFFFFFF


def profile_from_name(name: str | None) -> str | None:
    """``NVIDIA A100-SXM4-40GB MIG 3g.20gb`` -> ``3g.20gb`` (how NVML names MIG devices)."""
    if not name or " MIG " not in f" {name} ":
        return None
    return name.rsplit("MIG", 1)[1].strip() or None


# nvmlInit is retried after a failure: 5 s later, then after twice the previous wait, at most
# 300 s apart, until it succeeds (a driver still loading when the agent starts).
INIT_RETRY_FIRST_S = 5.0
INIT_RETRY_MAX_S = 300.0
INIT_RETRY_NOTE = (
    f"the agent retries nvmlInit {INIT_RETRY_FIRST_S:g} s after a failure, doubling the wait up "
    f"to {INIT_RETRY_MAX_S:g} s, and reports the GPUs once it succeeds"
)
# No driver library at all: a host without NVIDIA GPUs, or a container not given them.
_NO_RETRY = frozenset({"LIBRARY_NOT_FOUND"})

# The facts of a GPU read until NVML answers them (a value, or a permanent error): field of
# _StaticInfo -> NVML function.
_STATIC_CALLS = {
    "uuid": "nvmlDeviceGetUUID",
    "model": "nvmlDeviceGetName",
    "serial": "nvmlDeviceGetSerial",
    "supported_reasons": "nvmlDeviceGetSupportedClocksEventReasons",
    "max_mig_devices": "nvmlDeviceGetMaxMigDeviceCount",
    "gpm_supported": "nvmlGpmQueryDeviceSupport",
}


@dataclass
class _StaticInfo:
    """What does not change while the driver runs; ``pending`` names what is still unread."""

    uuid: str | None = None
    model: str | None = None
    serial: str | None = None
    supported_reasons: int | None = None
    max_mig_devices: int | None = None
    gpm_supported: bool | None = None
    pending: set[str] = field(default_factory=lambda: set(_STATIC_CALLS))

    @property
    def identified(self) -> bool:
        """hw.id and hw.model are known: the GPU's series may be reported."""
        return not self.pending & {"uuid", "model"}


@dataclass
class NvmlReading:
    gpus: list[Gpu]
    driver_version: str | None
    errors: list[SourceError]


@dataclass
class _GpuState:
    """What the source remembers about one GPU between cycles."""

    static: _StaticInfo = field(default_factory=_StaticInfo)
    pcie_bytes: dict[str, float] = field(default_factory=lambda: {"tx": 0.0, "rx": 0.0})
    pcie_sampled_at: dict[str, float] = field(default_factory=dict)  # direction -> last read
    pcie_counters: bool | None = None  # the driver's PCIe byte counters work; None: untried
    last_process_sample_us: int = 0
    mig_mode: tuple[bool, bool] | None = None  # (current, pending), the last answer
    mig_answered: bool = False  # NVML has answered the MIG mode (None: no MIG on this model)
    mig_layout: frozenset[str] | None = None  # the MIG device UUIDs of the last complete read
    reconfigurations: int = 0
    xid_errors: dict[int, int] = field(default_factory=dict)
    lost: bool = False  # the last read found the GPU lost


class NvmlSource(LinkReader, GpmReader, XidEventReader):
    """Reads every GPU, MIG device and GPU process through a ``pynvml``-compatible module.

    ``nvml`` is the ``pynvml`` module (imported on ``start()`` when not given) or the simulator's
    stand-in. ``gpm_warmup_s`` is the wait between the two GPM samples taken the first time a
    device is seen (NVML needs them more than 100 ms apart); later cycles use the previous
    cycle's sample.

    Nothing a transient error answers is kept: a failed ``nvmlInit`` is retried (see
    ``INIT_RETRY_NOTE``), each GPU's static facts are read again until NVML has answered each one,
    a GPU whose UUID or name is still unanswered is left out of the cycle rather than reported
    under an invented identity, and a MIG layout counts as changed only when a complete read
    shows a different one.
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        gpm_warmup_s: float = 0.11,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._nvml = nvml
        self._gpm_warmup_s = gpm_warmup_s
        self._sleep = sleep
        self._available = False
        self._driver_version: str | None = None
        self._error_names: dict[int, str] = {}
        self._state: dict[int, _GpuState] = {}
        self._handle_to_index: dict[int, int] = {}
        self._gpm_samples: dict[str, Any] = {}
        self._event_set: Any = None  # None: not created yet; False: the driver has no events
        self._registered: set[int] = set()  # GPU indexes whose registration is settled
        self._init_retrying = False
        self._init_failures = 0
        self._init_retry_at: float | None = None  # None: at the next read
        self._capabilities = Capabilities()
        self.unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self._available

    @property
    def retrying(self) -> bool:
        """NVML could not be initialised yet, and ``read`` will try again when it is due."""
        return self._init_retrying and not self._available

    def start(self) -> bool:
        """Initialise NVML. False (with ``unavailable_reason``) when there is no driver; then
        ``read`` retries on the back-off schedule unless the driver library itself is missing."""
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                self.unavailable_reason = "nvidia-ml-py (module pynvml) is not installed"
                return False
            self._nvml = pynvml
        self._error_names = error_names(self._nvml)
        failure = self._init()
        if failure is None:
            return True
        self._init_retrying = failure not in _NO_RETRY
        if self._init_retrying:
            self.unavailable_reason = f"{self.unavailable_reason}; {INIT_RETRY_NOTE}"
        return False

    def _init(self) -> str | None:
        """nvmlInit; None on success, else the error's name (``unavailable_reason`` says it)."""
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            code = error_name(self._error_names, err)
            self.unavailable_reason = f"no NVIDIA driver found (NVML init failed: {code})"
            return code
        except OSError as err:
            self.unavailable_reason = f"no NVIDIA driver found ({err})"
            return "LIBRARY_NOT_FOUND"
        except Exception as err:  # a binding bug must not stop the agent
            self.unavailable_reason = f"NVML init failed ({type(err).__name__})"
            return type(err).__name__
        self._available = True
        self.unavailable_reason = None
        self._driver_version = text(Caller(nvml, [], self._error_names, None)(
            "nvmlSystemGetDriverVersion"
        ))
        return None

    def _retry_init(self, now: float, errors: list[SourceError]) -> bool:
        if self._init_retry_at is not None and now < self._init_retry_at:
            return False
        failure = self._init()
        if failure is None:
            return True
        errors.append(SourceError(SOURCE, "nvmlInit", failure))
        if failure in _NO_RETRY:
            self._init_retrying = False
            return False
        wait = min(INIT_RETRY_FIRST_S * 2.0**self._init_failures, INIT_RETRY_MAX_S)
        self._init_failures += 1
        self._init_retry_at = now + wait
        return False

    def close(self) -> None:
        self._init_retrying = False
        if not self._available:
            return
        nvml = self._nvml
        for sample in self._gpm_samples.values():
            Caller(nvml, [], self._error_names, None)("nvmlGpmSampleFree", sample)
        self._gpm_samples.clear()
        if self._event_set:
            Caller(nvml, [], self._error_names, None)("nvmlEventSetFree", self._event_set)
        self._event_set = None
        self._registered.clear()
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        self._available = False

    # -- one cycle ---------------------------------------------------------------------------

    def read(self, now: float | None = None) -> NvmlReading:
        errors: list[SourceError] = []
        now = time.monotonic() if now is None else now
        if not self._available and not (self.retrying and self._retry_init(now, errors)):
            return NvmlReading([], None, errors)
        self._capabilities.now = now
        call = Caller(self._nvml, errors, self._error_names, None)
        count = call("nvmlDeviceGetCount")
        count = count if present(count) else 0
        self._register_events(count, errors)
        xids = self._drain_events(errors)
        pending_gpm: list[tuple[str, Callable[[Any], Any], Any]] = []
        gpus = []
        for index in range(count):
            state = self._state.setdefault(index, _GpuState())
            for code in xids.get(index, ()):
                state.xid_errors[code] = state.xid_errors.get(code, 0) + 1
            gpu = self._read_gpu(index, state, now, errors, pending_gpm)
            if gpu is not None:
                gpus.append(gpu)
        if pending_gpm:
            gpus = self._finish_gpm_warmup(gpus, pending_gpm, errors)
        return NvmlReading(gpus, self._driver_version, errors)

    def _read_gpu(
        self,
        index: int,
        state: _GpuState,
        now: float,
        errors: list[SourceError],
        pending_gpm: list,
    ) -> Gpu | None:
        name = f"gpu{index}"
        call = Caller(self._nvml, errors, self._error_names, name, self._capabilities)
        try:
            handle = call("nvmlDeviceGetHandleByIndex", index)
            if not present(handle):
                return None  # not lost (that raises): left out of this cycle, asked again next
            state.lost = False
            static = state.static
            if static.pending:
                self._read_static(call, handle, static, index)
            if not static.identified:
                return None  # asked again next cycle; no series under a stand-in identity
            return self._read_gpu_values(index, handle, static, state, now, call, pending_gpm)
        except GpuLost:
            return self._lost_gpu(index, state)

    def _lost_gpu(self, index: int, state: _GpuState) -> Gpu:
        # The UUID cannot be asked of a lost GPU: the index stands in when it was never read.
        state.lost = True
        static = state.static
        return Gpu(
            index=index,
            uuid=static.uuid or f"gpu{index}",
            name=f"gpu{index}",
            model=static.model,
            lost=True,
            xid_errors=dict(state.xid_errors),
            mig_reconfigurations=state.reconfigurations,
        )

    def _read_static(self, call: Caller, handle: Any, static: _StaticInfo, index: int) -> None:
        """Ask NVML each fact still pending; a fact is settled by a value or a permanent error."""
        for fact in sorted(static.pending):
            value = call(_STATIC_CALLS[fact], handle)
            if not call.settled(value):
                continue
            static.pending.discard(fact)
            got = present(value)
            if fact == "uuid":
                static.uuid = text(value) if got else f"gpu{index}"
            elif fact == "model":
                static.model = text(value) if got else None
            elif fact == "serial":
                static.serial = text(value) if got else None
            elif fact == "supported_reasons":
                static.supported_reasons = int(value) if got else None
            elif fact == "max_mig_devices":
                static.max_mig_devices = int(value) if got else 0
            else:
                static.gpm_supported = got and bool(getattr(value, "isSupportedDevice", 0))

    def _read_gpu_values(
        self,
        index: int,
        handle: Any,
        static: _StaticInfo,
        state: _GpuState,
        now: float,
        call: Caller,
        pending_gpm: list,
    ) -> Gpu:
        nvml = self._nvml
        values: dict[str, Any] = {}
        mig = call("nvmlDeviceGetMigMode", handle)
        if present(mig):
            state.mig_mode = (bool(mig[0]), bool(mig[1]))
            state.mig_answered = True
        elif call.settled(mig):
            state.mig_mode, state.mig_answered = None, True  # no MIG on this model
        # A failed read keeps the last answer: the mode changes only with a GPU reset, and taking
        # a MIG GPU for a whole one would report a false reconfiguration.
        mig_current, mig_pending = state.mig_mode or (None, None)
        values["mig_mode_current"] = mig_current
        values["mig_mode_pending"] = mig_pending
        mig_on = state.mig_answered and bool(mig_current)
        whole = state.mig_answered and not mig_current
        if whole:
            rates = call("nvmlDeviceGetUtilizationRates", handle)
            if present(rates):
                values["utilization_general"] = rates.gpu / 100.0
            for fn, key in (
                ("nvmlDeviceGetEncoderUtilization", "utilization_encoder"),
                ("nvmlDeviceGetDecoderUtilization", "utilization_decoder"),
            ):
                util = call(fn, handle)
                if present(util):
                    values[key] = util[0] / 100.0
        memory = call("nvmlDeviceGetMemoryInfo", handle)
        if present(memory):
            values["memory_used_bytes"] = int(memory.used)
            values["memory_total_bytes"] = int(memory.total)
        power = call("nvmlDeviceGetPowerUsage", handle)
        if present(power):
            values["power_watts"] = power / 1000.0
        limit = call("nvmlDeviceGetEnforcedPowerLimit", handle)
        if present(limit):
            values["power_limit_watts"] = limit / 1000.0
        energy = call("nvmlDeviceGetTotalEnergyConsumption", handle)
        if present(energy):
            values["energy_joules"] = energy / 1000.0
        temp = call("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
        if present(temp):
            values["temperature_gpu_celsius"] = float(temp)
        values["temperature_memory_celsius"] = self._memory_temperature(call, handle)
        values["clocks_hz"] = {
            kind: mhz * 1e6
            for kind, const in CLOCK_DOMAINS.items()
            if present(mhz := call("nvmlDeviceGetClockInfo", handle, getattr(nvml, const)))
        }
        current = call("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if present(current) and "supported_reasons" not in static.pending:
            supported = static.supported_reasons
            values["clocks_event_reasons"] = {
                reason: bool(current & bit)
                for reason, bit in CLOCK_EVENT_REASONS.items()
                if supported is None or supported & bit
            }
        for key, const in (
            ("ecc_corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
            ("ecc_uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"),
        ):
            count = call(
                "nvmlDeviceGetTotalEccErrors", handle, getattr(nvml, const), nvml.NVML_AGGREGATE_ECC
            )
            if present(count):
                values[key] = int(count)
        if whole:
            rows = call("nvmlDeviceGetRemappedRows", handle)
            if present(rows):
                corrected, uncorrected, pending, failed = rows
                values.update(
                    remapped_rows_corrected=int(corrected),
                    remapped_rows_uncorrected=int(uncorrected),
                    remap_pending=bool(pending),
                    remap_failed=bool(failed),
                )
        self._pcie(call, handle, state, now, values)
        self._link_health(call, handle, values)
        fan = call("nvmlDeviceGetFanSpeed", handle)
        if present(fan):
            values["fan_speed_ratio"] = fan / 100.0

        mig_devices: tuple[MigDevice, ...] = ()
        processes: tuple[GpuProcess, ...] = ()
        complete = state.mig_answered
        if mig_on:
            mig_devices, complete = self._read_mig_devices(index, handle, static, call, pending_gpm)
            processes = tuple(p for m in mig_devices for p in m.processes)
            if complete:
                # Slices used and free only from a whole layout: a partial one would show free
                # slices that are in use.
                values["mig_compute_slices_total"] = static.max_mig_devices or None
        elif whole:
            processes = self._read_processes(call, handle, state)
            if static.gpm_supported:
                values["gpm"] = self._gpm(
                    call, static.uuid, pending_gpm, lambda s, h=handle: ("nvmlGpmSampleGet", h, s)
                )
        if complete:
            layout = frozenset(m.uuid for m in mig_devices)
            if state.mig_layout is not None and layout != state.mig_layout:
                state.reconfigurations += 1
            state.mig_layout = layout
        return Gpu(
            index=index,
            uuid=static.uuid or f"gpu{index}",
            name=f"gpu{index}",
            model=static.model,
            serial=static.serial,
            mig_devices=mig_devices,
            processes=processes,
            mig_reconfigurations=state.reconfigurations,
            xid_errors=dict(state.xid_errors),
            **values,
        )

    def _memory_temperature(self, call: Caller, handle: Any) -> float | None:
        nvml = self._nvml
        field_id = getattr(nvml, "NVML_FI_DEV_MEMORY_TEMP", None)
        if field_id is None:
            return None
        values = call("nvmlDeviceGetFieldValues", handle, [field_id])
        if not present(values) or len(values) < 1:
            return None
        value = values[0]
        if value.nvmlReturn != nvml.NVML_SUCCESS:
            name = self._error_names.get(value.nvmlReturn, "UNKNOWN")
            call.errors.append(
                SourceError(SOURCE, "nvmlDeviceGetFieldValues(MEMORY_TEMP)", name, call.device)
            )
            return None
        return field_number(self._nvml, value)

    def _read_processes(self, call: Caller, handle: Any, state: _GpuState) -> tuple:
        procs = call("nvmlDeviceGetComputeRunningProcesses", handle)
        if not present(procs):
            return ()
        sm: dict[int, float] = {}
        samples = call(
            "nvmlDeviceGetProcessUtilization",
            handle,
            state.last_process_sample_us,
            expected=("NOT_FOUND",),
        )
        if present(samples):
            newest: dict[int, int] = {}
            for sample in samples:
                if sample.timeStamp >= newest.get(sample.pid, -1):
                    newest[sample.pid] = sample.timeStamp
                    sm[sample.pid] = sample.smUtil / 100.0
                state.last_process_sample_us = max(state.last_process_sample_us, sample.timeStamp)
        # NOT_FOUND means no process had a non-zero sample in the period: their use is zero.
        default = None if samples is ABSENT else 0.0
        return tuple(
            GpuProcess(
                pid=int(p.pid),
                used_memory_bytes=p.usedGpuMemory,
                sm_utilization=sm.get(p.pid, default),
            )
            for p in procs
        )

    def _read_mig_devices(
        self, index: int, parent: Any, static: _StaticInfo, call: Caller, pending_gpm: list
    ) -> tuple[tuple[MigDevice, ...], bool]:
        """The MIG devices that could be read, and whether that is the whole layout."""
        if static.max_mig_devices is None:
            return (), False
        devices = []
        complete = True
        for j in range(static.max_mig_devices):
            handle = call(
                "nvmlDeviceGetMigDeviceHandleByIndex",
                parent,
                j,
                expected=("NOT_FOUND", "INVALID_ARGUMENT"),
            )
            if handle is ABSENT:
                complete = False
            if not present(handle):
                continue
            mig_call = call.for_device(f"gpu{index}/mig{j}")
            device = self._read_mig(index, j, parent, handle, static, mig_call, pending_gpm)
            if device is None or device.compute_slices is None:
                complete = False
            if device is not None:
                devices.append(device)
        return tuple(devices), complete

    def _read_mig(
        self,
        index: int,
        j: int,
        parent: Any,
        handle: Any,
        static: _StaticInfo,
        call: Caller,
        pending_gpm: list,
    ) -> MigDevice | None:
        """One MIG device; None while its UUID or name cannot be read (no stand-in identity)."""
        uuid = text(call("nvmlDeviceGetUUID", handle))
        name = text(call("nvmlDeviceGetName", handle))
        if uuid is None or name is None:
            return None
        gi = call("nvmlDeviceGetGpuInstanceId", handle)
        ci = call("nvmlDeviceGetComputeInstanceId", handle)
        gi = gi if present(gi) else None
        ci = ci if present(ci) else None
        memory = call("nvmlDeviceGetMemoryInfo", handle)
        attrs = call("nvmlDeviceGetAttributes", handle)
        start = size = None
        if gi is not None:
            instance = call("nvmlDeviceGetGpuInstanceById", parent, gi)
            if present(instance):
                info = call("nvmlGpuInstanceGetInfo", instance)
                if present(info):
                    start, size = int(info.placement.start), int(info.placement.size)
        procs = call("nvmlDeviceGetComputeRunningProcesses", handle)
        processes = tuple(
            GpuProcess(
                pid=int(p.pid),
                used_memory_bytes=p.usedGpuMemory,
                gpu_instance_id=None if p.gpuInstanceId == _NO_ID else p.gpuInstanceId,
                compute_instance_id=None if p.computeInstanceId == _NO_ID else p.computeInstanceId,
            )
            for p in (procs if present(procs) else ())
        )
        gpm = None
        if static.gpm_supported and gi is not None:
            gpm = self._gpm(
                call, uuid, pending_gpm, lambda s, p=parent, g=gi: ("nvmlGpmMigSampleGet", p, g, s)
            )
        return MigDevice(
            index=j,
            uuid=uuid,
            name=f"gpu{index}/mig{j}",
            parent_uuid=static.uuid or f"gpu{index}",
            model=static.model or "",
            profile=profile_from_name(name),
            gpu_instance_id=gi,
            compute_instance_id=ci,
            placement_start=start,
            placement_size=size,
            compute_slices=int(attrs.gpuInstanceSliceCount) if present(attrs) else None,
            memory_used_bytes=int(memory.used) if present(memory) else None,
            memory_total_bytes=int(memory.total) if present(memory) else None,
            processes=processes,
            gpm=gpm,
        )
