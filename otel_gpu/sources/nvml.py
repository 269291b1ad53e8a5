"""The NVML source: the only path from the driver (or the simulator in its place) to a Snapshot.

Every call goes through one failsafe wrapper: an NVML error becomes a recorded ``SourceError`` and
an absent value; ``GPU_IS_LOST`` marks that GPU failed and the others go on; a missing library or
driver leaves the source unavailable with one message. NOT_SUPPORTED is a capability, not a
failure: the device lacks that field (fan speed on an SXM board), so the value is absent, nothing
is recorded, and that call (with those arguments) is not made on that device again until
``CAPABILITY_RECHECK_S`` (10 minutes) of the source's clock have passed, when it is tried once
more. Units are converted here: mW -> W, mJ -> J, MHz -> Hz, percent -> ratio.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from otel_gpu.snapshot import GpmMetrics, Gpu, GpuProcess, MigDevice, SourceError

SOURCE = "nvml"
_NO_ID = 0xFFFFFFFF
_MAX_EVENTS_PER_CYCLE = 1000
CAPABILITY_RECHECK_S = 600.0  # how long a NOT_SUPPORTED answer stands before the call is retried

# nvmlClocksEventReason* bits (nvml.h); names are the catalog's attribute values.
CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
}

_GPM_FIELDS = {
    "NVML_GPM_METRIC_SM_UTIL": "sm_utilization",
    "NVML_GPM_METRIC_SM_OCCUPANCY": "sm_occupancy",
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL": "tensor_utilization",
    "NVML_GPM_METRIC_DRAM_BW_UTIL": "dram_utilization",
    "NVML_GPM_METRIC_GRAPHICS_UTIL": "graphics_engine_utilization",
}

_CLOCKS = {
    "graphics": "NVML_CLOCK_GRAPHICS",
    "sm": "NVML_CLOCK_SM",
    "memory": "NVML_CLOCK_MEM",
    "video": "NVML_CLOCK_VIDEO",
}


class _GpuLost(Exception):
    pass


_ABSENT: Any = object()
_EXPECTED: Any = object()  # an error the caller anticipated (NOT_FOUND for an empty MIG slot)


class _Capabilities:
    """The calls each device answered NOT_SUPPORTED to, and until when that answer stands."""

    def __init__(self) -> None:
        self.now = 0.0  # the source's clock at the current cycle
        self._until: dict[tuple[str, str, tuple[int, ...]], float] = {}

    @staticmethod
    def key(device: str, fn: str, args: tuple[Any, ...]) -> tuple[str, str, tuple[int, ...]]:
        # Integer arguments (clock domain, sensor, counter) select a field; handles do not.
        ints = tuple(a for a in args if isinstance(a, int) and not isinstance(a, bool))
        return device, fn, ints

    def lacks(self, key: tuple[str, str, tuple[int, ...]]) -> bool:
        until = self._until.get(key)
        return until is not None and self.now < until

    def unsupported(self, key: tuple[str, str, tuple[int, ...]]) -> None:
        self._until[key] = self.now + CAPABILITY_RECHECK_S

    def supported(self, key: tuple[str, str, tuple[int, ...]]) -> None:
        self._until.pop(key, None)


class _Caller:
    """Calls NVML functions for one device, recording failures instead of raising them."""

    def __init__(
        self,
        nvml: Any,
        errors: list[SourceError],
        error_names: dict[int, str],
        device: str | None,
        capabilities: _Capabilities | None = None,
    ) -> None:
        self._nvml = nvml
        self._errors = errors
        self._names = error_names
        self.device = device
        self._capabilities = capabilities if device is not None else None

    def __call__(self, fn: str, *args: Any, expected: tuple[str, ...] = ()) -> Any:
        capabilities = self._capabilities
        key = None
        if capabilities is not None:
            key = capabilities.key(self.device or "", fn, args)
            if capabilities.lacks(key):
                return _ABSENT
        try:
            result = getattr(self._nvml, fn)(*args)
        except self._nvml.NVMLError as err:
            name = self._names.get(getattr(err, "value", -1), "UNKNOWN")
            if name in expected:
                return _EXPECTED
            if name == "NOT_SUPPORTED" and key is not None:
                capabilities.unsupported(key)  # type: ignore[union-attr]
                return _ABSENT
            self._errors.append(SourceError(SOURCE, fn, name, self.device))
            if name == "GPU_IS_LOST":
                raise _GpuLost from err
            return _ABSENT
        except AttributeError:
            self._errors.append(SourceError(SOURCE, fn, "FUNCTION_NOT_FOUND", self.device))
            return _ABSENT
        except Exception as err:  # a binding bug must not stop the cycle
            self._errors.append(SourceError(SOURCE, fn, type(err).__name__, self.device))
            return _ABSENT
        if key is not None:
            capabilities.supported(key)  # type: ignore[union-attr]
        return result


def _handle_key(handle: Any) -> int:
    """A device handle's identity: the address it points to (pynvml), else the object."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or id(handle)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


def _present(value: Any) -> bool:
    return value is not _ABSENT and value is not _EXPECTED and value is not None


def _text(value: Any) -> str | None:
    if not _present(value):
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _ratio(percent: Any) -> float | None:
    return None if not _present(percent) else float(percent) / 100.0


def profile_from_name(name: str | None) -> str | None:
    """``NVIDIA A100-SXM4-40GB MIG 3g.20gb`` -> ``3g.20gb`` (how NVML names MIG devices)."""
    if not name or " MIG " not in f" {name} ":
        return None
    return name.rsplit("MIG", 1)[1].strip() or None


@dataclass
class _StaticInfo:
    uuid: str
    model: str | None
    serial: str | None
    supported_reasons: int | None
    max_mig_devices: int
    gpm_supported: bool


@dataclass
class NvmlReading:
    gpus: list[Gpu]
    driver_version: str | None
    errors: list[SourceError]


@dataclass
class _GpuState:
    """What the source remembers about one GPU between cycles."""

    static: _StaticInfo | None = None
    pcie_tx_bytes: float = 0.0
    pcie_rx_bytes: float = 0.0
    pcie_counters: bool | None = None  # the driver's PCIe byte counters work; None: untried
    last_process_sample_us: int = 0
    mig_layout: frozenset[str] | None = None
    reconfigurations: int = 0
    xid_errors: dict[int, int] = field(default_factory=dict)


class NvmlSource:
    """Reads every GPU, MIG device and GPU process through a ``pynvml``-compatible module.

    ``nvml`` is the ``pynvml`` module (imported on ``start()`` when not given) or the simulator's
    stand-in. ``gpm_warmup_s`` is the wait between the two GPM samples taken the first time a
    device is seen (NVML needs them more than 100 ms apart); later cycles use the previous
    cycle's sample.
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
        self._event_set: Any = None
        self._last_read: float | None = None
        self._capabilities = _Capabilities()
        self.unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self._available

    def start(self) -> bool:
        """Initialise NVML. False (with ``unavailable_reason``) when there is no driver."""
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                self.unavailable_reason = "nvidia-ml-py (module pynvml) is not installed"
                return False
            self._nvml = pynvml
        nvml = self._nvml
        self._error_names = {
            getattr(nvml, n): n.removeprefix("NVML_ERROR_")
            for n in dir(nvml)
            if n.startswith("NVML_ERROR_")
        }
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            code = self._error_names.get(getattr(err, "value", -1), "UNKNOWN")
            self.unavailable_reason = f"no NVIDIA driver found (NVML init failed: {code})"
            return False
        except OSError as err:
            self.unavailable_reason = f"no NVIDIA driver found ({err})"
            return False
        self._available = True
        caller = _Caller(nvml, [], self._error_names, None)
        self._driver_version = _text(caller("nvmlSystemGetDriverVersion"))
        return True

    def close(self) -> None:
        if not self._available:
            return
        nvml = self._nvml
        for sample in self._gpm_samples.values():
            _Caller(nvml, [], self._error_names, None)("nvmlGpmSampleFree", sample)
        self._gpm_samples.clear()
        if self._event_set is not None:
            _Caller(nvml, [], self._error_names, None)("nvmlEventSetFree", self._event_set)
            self._event_set = None
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        self._available = False

    # -- one cycle ---------------------------------------------------------------------------

    def read(self, now: float | None = None) -> NvmlReading:
        errors: list[SourceError] = []
        if not self._available:
            return NvmlReading([], None, errors)
        now = time.monotonic() if now is None else now
        elapsed = 0.0 if self._last_read is None else max(0.0, now - self._last_read)
        self._last_read = now
        self._capabilities.now = now
        call = _Caller(self._nvml, errors, self._error_names, None)
        count = call("nvmlDeviceGetCount")
        count = count if _present(count) else 0
        if self._event_set is None:
            self._register_events(count, errors)
        xids = self._drain_events(errors)
        pending_gpm: list[tuple[str, Callable[[Any], Any], Any]] = []
        gpus = []
        for index in range(count):
            state = self._state.setdefault(index, _GpuState())
            for code in xids.get(index, ()):
                state.xid_errors[code] = state.xid_errors.get(code, 0) + 1
            gpus.append(self._read_gpu(index, state, elapsed, errors, pending_gpm))
        if pending_gpm:
            gpus = self._finish_gpm_warmup(gpus, pending_gpm, errors)
        return NvmlReading(gpus, self._driver_version, errors)

    def _read_gpu(
        self,
        index: int,
        state: _GpuState,
        elapsed: float,
        errors: list[SourceError],
        pending_gpm: list,
    ) -> Gpu:
        name = f"gpu{index}"
        call = _Caller(self._nvml, errors, self._error_names, name, self._capabilities)
        try:
            handle = call("nvmlDeviceGetHandleByIndex", index)
            if not _present(handle):
                return self._lost_gpu(index, state)
            static = state.static or self._read_static(call, handle)
            state.static = static
            return self._read_gpu_values(index, handle, static, state, elapsed, call, pending_gpm)
        except _GpuLost:
            return self._lost_gpu(index, state)

    def _lost_gpu(self, index: int, state: _GpuState) -> Gpu:
        static = state.static
        return Gpu(
            index=index,
            uuid=static.uuid if static else f"gpu{index}",
            name=f"gpu{index}",
            model=static.model if static else None,
            lost=True,
            xid_errors=dict(state.xid_errors),
            mig_reconfigurations=state.reconfigurations,
        )

    def _read_static(self, call: _Caller, handle: Any) -> _StaticInfo:
        uuid = _text(call("nvmlDeviceGetUUID", handle))
        if uuid is None:
            uuid = call.device or "gpu"
        gpm = call("nvmlGpmQueryDeviceSupport", handle)
        max_mig = call("nvmlDeviceGetMaxMigDeviceCount", handle)
        reasons = call("nvmlDeviceGetSupportedClocksEventReasons", handle)
        return _StaticInfo(
            uuid=uuid,
            model=_text(call("nvmlDeviceGetName", handle)),
            serial=_text(call("nvmlDeviceGetSerial", handle)),
            supported_reasons=reasons if _present(reasons) else None,
            max_mig_devices=max_mig if _present(max_mig) else 0,
            gpm_supported=_present(gpm) and bool(getattr(gpm, "isSupportedDevice", 0)),
        )

    def _read_gpu_values(
        self,
        index: int,
        handle: Any,
        static: _StaticInfo,
        state: _GpuState,
        elapsed: float,
        call: _Caller,
        pending_gpm: list,
    ) -> Gpu:
        nvml = self._nvml
        values: dict[str, Any] = {}
        mig = call("nvmlDeviceGetMigMode", handle)
        mig_current = bool(mig[0]) if _present(mig) else None
        mig_pending = bool(mig[1]) if _present(mig) else None
        values["mig_mode_current"] = mig_current
        values["mig_mode_pending"] = mig_pending
        if not mig_current:
            rates = call("nvmlDeviceGetUtilizationRates", handle)
            if _present(rates):
                values["utilization_general"] = rates.gpu / 100.0
            for fn, key in (
                ("nvmlDeviceGetEncoderUtilization", "utilization_encoder"),
                ("nvmlDeviceGetDecoderUtilization", "utilization_decoder"),
            ):
                util = call(fn, handle)
                if _present(util):
                    values[key] = util[0] / 100.0
        memory = call("nvmlDeviceGetMemoryInfo", handle)
        if _present(memory):
            values["memory_used_bytes"] = int(memory.used)
            values["memory_total_bytes"] = int(memory.total)
        power = call("nvmlDeviceGetPowerUsage", handle)
        if _present(power):
            values["power_watts"] = power / 1000.0
        limit = call("nvmlDeviceGetEnforcedPowerLimit", handle)
        if _present(limit):
            values["power_limit_watts"] = limit / 1000.0
        energy = call("nvmlDeviceGetTotalEnergyConsumption", handle)
        if _present(energy):
            values["energy_joules"] = energy / 1000.0
        temp = call("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
        if _present(temp):
            values["temperature_gpu_celsius"] = float(temp)
        values["temperature_memory_celsius"] = self._memory_temperature(call, handle)
        values["clocks_hz"] = {
            kind: mhz * 1e6
            for kind, const in _CLOCKS.items()
            if _present(mhz := call("nvmlDeviceGetClockInfo", handle, getattr(nvml, const)))
        }
        current = call("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if _present(current):
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
            if _present(count):
                values[key] = int(count)
        if not mig_current:
            rows = call("nvmlDeviceGetRemappedRows", handle)
            if _present(rows):
                corrected, uncorrected, pending, failed = rows
                values.update(
                    remapped_rows_corrected=int(corrected),
                    remapped_rows_uncorrected=int(uncorrected),
                    remap_pending=bool(pending),
                    remap_failed=bool(failed),
                )
        self._pcie(call, handle, state, elapsed, values)
        fan = call("nvmlDeviceGetFanSpeed", handle)
        if _present(fan):
            values["fan_speed_ratio"] = fan / 100.0

        mig_devices: tuple[MigDevice, ...] = ()
        if mig_current:
            mig_devices = self._read_mig_devices(index, handle, static, call, pending_gpm)
            processes = tuple(p for m in mig_devices for p in m.processes)
            values["mig_compute_slices_total"] = static.max_mig_devices or None
        else:
            processes = self._read_processes(call, handle, state)
            if static.gpm_supported:
                values["gpm"] = self._gpm(
                    call, static.uuid, pending_gpm, lambda s, h=handle: ("nvmlGpmSampleGet", h, s)
                )
        layout = frozenset(m.uuid for m in mig_devices)
        if state.mig_layout is not None and layout != state.mig_layout:
            state.reconfigurations += 1
        state.mig_layout = layout
        return Gpu(
            index=index,
            uuid=static.uuid,
            name=f"gpu{index}",
            model=static.model,
            serial=static.serial,
            mig_devices=mig_devices,
            processes=processes,
            mig_reconfigurations=state.reconfigurations,
            xid_errors=dict(state.xid_errors),
            **values,
        )

    def _memory_temperature(self, call: _Caller, handle: Any) -> float | None:
        nvml = self._nvml
        field_id = getattr(nvml, "NVML_FI_DEV_MEMORY_TEMP", None)
        if field_id is None:
            return None
        values = call("nvmlDeviceGetFieldValues", handle, [field_id])
        if not _present(values) or len(values) < 1:
            return None
        value = values[0]
        if value.nvmlReturn != nvml.NVML_SUCCESS:
            name = self._error_names.get(value.nvmlReturn, "UNKNOWN")
            call._errors.append(
                SourceError(SOURCE, "nvmlDeviceGetFieldValues(MEMORY_TEMP)", name, call.device)
            )
            return None
        return self._field_number(value)

    def _field_number(self, value: Any) -> float:
        nvml = self._nvml
        kind = getattr(value, "valueType", None)
        member = {
            getattr(nvml, "NVML_VALUE_TYPE_DOUBLE", 0): "dVal",
            getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG", 2): "ulVal",
            getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", 3): "ullVal",
            getattr(nvml, "NVML_VALUE_TYPE_SIGNED_LONG_LONG", 4): "sllVal",
        }.get(kind, "uiVal")
        return float(getattr(value.value, member))

    def _pcie_counters(self, call: _Caller, handle: Any, state: _GpuState,
                       values: dict[str, Any]) -> bool:
        """The driver's PCIe byte counters (field values), where it has them."""
        nvml = self._nvml
        fields = [getattr(nvml, "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", None),
                  getattr(nvml, "NVML_FI_DEV_PCIE_COUNT_RX_BYTES", None)]
        if state.pcie_counters is False or None in fields:
            return False
        read = call("nvmlDeviceGetFieldValues", handle, fields)
        if not _present(read) or len(read) < 2 or \
                any(v.nvmlReturn != nvml.NVML_SUCCESS for v in read[:2]):
            # Older drivers and boards: fall back to the sampled rate, and do not ask again.
            state.pcie_counters = False
            return False
        state.pcie_counters = True
        values["pcie_tx_bytes"] = int(self._field_number(read[0]))
        values["pcie_rx_bytes"] = int(self._field_number(read[1]))
        return True

    def _pcie(
        self, call: _Caller, handle: Any, state: _GpuState, elapsed: float, values: dict[str, Any]
    ) -> None:
        if self._pcie_counters(call, handle, state, values):
            return
        # NVML's rate is KB/s over a 20 ms window (nvml.h), and each call blocks for that
        # window; hw.gpu.io is a byte counter, so the rate is integrated between cycles.
        nvml = self._nvml
        tx = call("nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
        rx = call("nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
        if _present(tx):
            state.pcie_tx_bytes += tx * 1024.0 * elapsed
            values["pcie_tx_bytes"] = int(state.pcie_tx_bytes)
        if _present(rx):
            state.pcie_rx_bytes += rx * 1024.0 * elapsed
            values["pcie_rx_bytes"] = int(state.pcie_rx_bytes)

    def _read_processes(self, call: _Caller, handle: Any, state: _GpuState) -> tuple:
        procs = call("nvmlDeviceGetComputeRunningProcesses", handle)
        if not _present(procs):
            return ()
        sm: dict[int, float] = {}
        samples = call(
            "nvmlDeviceGetProcessUtilization",
            handle,
            state.last_process_sample_us,
            expected=("NOT_FOUND",),
        )
        if _present(samples):
            newest: dict[int, int] = {}
            for sample in samples:
                if sample.timeStamp >= newest.get(sample.pid, -1):
                    newest[sample.pid] = sample.timeStamp
                    sm[sample.pid] = sample.smUtil / 100.0
                state.last_process_sample_us = max(state.last_process_sample_us, sample.timeStamp)
        # NOT_FOUND means no process had a non-zero sample in the period: their use is zero.
        default = None if samples is _ABSENT else 0.0
        return tuple(
            GpuProcess(
                pid=int(p.pid),
                used_memory_bytes=p.usedGpuMemory,
                sm_utilization=sm.get(p.pid, default),
            )
            for p in procs
        )

    def _read_mig_devices(
        self, index: int, parent: Any, static: _StaticInfo, call: _Caller, pending_gpm: list
    ) -> tuple[MigDevice, ...]:
        devices = []
        for j in range(static.max_mig_devices):
            handle = call(
                "nvmlDeviceGetMigDeviceHandleByIndex",
                parent,
                j,
                expected=("NOT_FOUND", "INVALID_ARGUMENT"),
            )
            if not _present(handle):
                continue
            mig_call = _Caller(self._nvml, call._errors, self._error_names, f"gpu{index}/mig{j}",
                               self._capabilities)
            devices.append(self._read_mig(index, j, parent, handle, static, mig_call, pending_gpm))
        return tuple(devices)

    def _read_mig(
        self,
        index: int,
        j: int,
        parent: Any,
        handle: Any,
        static: _StaticInfo,
        call: _Caller,
        pending_gpm: list,
    ) -> MigDevice:
        uuid = _text(call("nvmlDeviceGetUUID", handle)) or f"{static.uuid}/mig{j}"
        gi = call("nvmlDeviceGetGpuInstanceId", handle)
        ci = call("nvmlDeviceGetComputeInstanceId", handle)
        gi = gi if _present(gi) else None
        ci = ci if _present(ci) else None
        memory = call("nvmlDeviceGetMemoryInfo", handle)
        attrs = call("nvmlDeviceGetAttributes", handle)
        start = size = None
        if gi is not None:
            instance = call("nvmlDeviceGetGpuInstanceById", parent, gi)
            if _present(instance):
                info = call("nvmlGpuInstanceGetInfo", instance)
                if _present(info):
                    start, size = int(info.placement.start), int(info.placement.size)
        procs = call("nvmlDeviceGetComputeRunningProcesses", handle)
        processes = tuple(
            GpuProcess(
                pid=int(p.pid),
                used_memory_bytes=p.usedGpuMemory,
                gpu_instance_id=None if p.gpuInstanceId == _NO_ID else p.gpuInstanceId,
                compute_instance_id=None if p.computeInstanceId == _NO_ID else p.computeInstanceId,
            )
            for p in (procs if _present(procs) else ())
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
            parent_uuid=static.uuid,
            model=static.model or "",
            profile=profile_from_name(_text(call("nvmlDeviceGetName", handle))),
            gpu_instance_id=gi,
            compute_instance_id=ci,
            placement_start=start,
            placement_size=size,
            compute_slices=int(attrs.gpuInstanceSliceCount) if _present(attrs) else None,
            memory_used_bytes=int(memory.used) if _present(memory) else None,
            memory_total_bytes=int(memory.total) if _present(memory) else None,
            processes=processes,
            gpm=gpm,
        )

    # -- GPM ---------------------------------------------------------------------------------

    def _gpm(
        self, call: _Caller, key: str, pending: list, sample_call: Callable[[Any], tuple]
    ) -> GpmMetrics | None:
        sample = call("nvmlGpmSampleAlloc")
        if not _present(sample):
            return None
        fn, *args = sample_call(sample)
        if not _present(call(fn, *args)):
            call("nvmlGpmSampleFree", sample)
            return None
        previous = self._gpm_samples.get(key)
        self._gpm_samples[key] = sample
        if previous is None:
            pending.append((key, sample_call, call))
            return None
        metrics = self._gpm_metrics(call, previous, sample)
        call("nvmlGpmSampleFree", previous)
        return metrics

    def _gpm_metrics(self, call: _Caller, first: Any, second: Any) -> GpmMetrics | None:
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.sample1 = first
        request.sample2 = second
        ids = [(getattr(nvml, const), attr) for const, attr in _GPM_FIELDS.items()]
        request.numMetrics = len(ids)
        for i, (metric_id, _) in enumerate(ids):
            request.metrics[i].metricId = metric_id
        result = call("nvmlGpmMetricsGet", request)
        if not _present(result):
            return None
        values = {}
        for i, (_, attr) in enumerate(ids):
            metric = result.metrics[i]
            if metric.nvmlReturn == nvml.NVML_SUCCESS:
                values[attr] = min(max(metric.value / 100.0, 0.0), 1.0)
        return GpmMetrics(**values) if values else None

    def _finish_gpm_warmup(self, gpus: list[Gpu], pending: list, errors: list) -> list[Gpu]:
        """Devices seen for the first time had one GPM sample; take the second after a wait."""
        if self._gpm_warmup_s > 0:
            self._sleep(self._gpm_warmup_s)
        results: dict[str, GpmMetrics | None] = {}
        for key, sample_call, call in pending:
            results[key] = self._gpm(call, key, [], sample_call)
        updated = []
        for gpu in gpus:
            changes: dict[str, Any] = {}
            if gpu.uuid in results:
                changes["gpm"] = results[gpu.uuid]
            if any(m.uuid in results for m in gpu.mig_devices):
                changes["mig_devices"] = tuple(
                    replace(m, gpm=results[m.uuid]) if m.uuid in results else m
                    for m in gpu.mig_devices
                )
            updated.append(replace(gpu, **changes) if changes else gpu)
        return updated

    # -- Xid events --------------------------------------------------------------------------

    def _register_events(self, count: int, errors: list[SourceError]) -> None:
        nvml = self._nvml
        call = _Caller(nvml, errors, self._error_names, None)
        event_set = call("nvmlEventSetCreate")
        if not _present(event_set):
            self._event_set = False
            return
        self._event_set = event_set
        for index in range(count):
            gpu_call = _Caller(nvml, errors, self._error_names, f"gpu{index}")
            try:
                handle = gpu_call("nvmlDeviceGetHandleByIndex", index)
                if _present(handle):
                    self._handle_to_index[_handle_key(handle)] = index
                    gpu_call(
                        "nvmlDeviceRegisterEvents",
                        handle,
                        nvml.nvmlEventTypeXidCriticalError,
                        event_set,
                    )
            except _GpuLost:
                continue

    def _drain_events(self, errors: list[SourceError]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        if not self._event_set:
            return found
        call = _Caller(self._nvml, errors, self._error_names, None)
        for _ in range(_MAX_EVENTS_PER_CYCLE):
            try:
                data = call("nvmlEventSetWait_v2", self._event_set, 0, expected=("TIMEOUT",))
            except _GpuLost:
                continue
            if not _present(data):
                break
            if data.eventType != self._nvml.nvmlEventTypeXidCriticalError:
                continue
            # Matched by handle: on a GPU that is being lost, asking for its UUID would fail.
            index = self._handle_to_index.get(_handle_key(data.device))
            if index is not None:
                found.setdefault(index, []).append(int(data.eventData))
        return found
