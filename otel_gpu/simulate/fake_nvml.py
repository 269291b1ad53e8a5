"""A stand-in for the ``pynvml`` module that answers from a scenario.

:class:`FakeNvml` has the names, argument orders, return shapes, units and errors of
nvidia-ml-py's ``pynvml`` for the calls the NVML source makes; every ``NVML_*``/``nvml*``
constant and the ``NVMLError`` classes are those of the real module, so ``except
pynvml.NVMLError`` and ``err.value`` work the same. Where the real binding returns a ctypes
structure that can hold only C values, the real structure is returned; where it would hold a
device handle or a GPM sample (event data, GPU-instance info, GPM metrics requests), a plain
object with the same attribute names stands in.

Behaviour worth knowing:

- ``begin_cycle(cycle)`` selects the state served: values at that cycle, the MIG layout in place
  after the reconfigurations up to it, the faults that fire, the Xid events that occurred.
- Faults (``{call, error, cycles}`` on a GPU) raise ``NVMLError(<code>)`` from that call on that
  GPU and on its MIG devices; ``"*"`` means every device call, ``nvmlDeviceGetHandleByIndex`` for
  its index included. GPU_IS_LOST persists from its first cycle on: a lost GPU stays lost until
  reset, which a simulation never does.
- On a MIG-enabled GPU, utilization, encoder/decoder utilization, per-process utilization and
  remapped rows raise NOT_SUPPORTED (nvml.h). Physical-GPU queries (power, temperature, clocks,
  ECC, PCIe, fan, ...) raise NOT_SUPPORTED on a MIG device handle. SXM boards have no fan.
- MIG device j of a GPU is instance j of the layout in place; its handle is a new object after
  each reconfiguration, and a handle of a replaced layout raises INVALID_ARGUMENT.
- GPU-instance ids follow :func:`otel_gpu.simulate.hardware.gpu_instance_id` (not sequential);
  each GPU instance holds one compute instance, id 0.
- Energy (mJ) starts at a day of idle power and grows by the power of each cycle times the
  interval. PCIe throughput is served in KB/s with 1 KB = 1024 bytes.
- Xid events are delivered once per event set, to sets on which the GPU was registered at or
  before the event's cycle; ``nvmlEventSetWait_v2`` never blocks and raises TIMEOUT when nothing
  is pending.
- GPM (Hopper only) serves the scenario's ``gpm`` values at the cycle of ``sample2`` as
  percentages; a value the scenario does not give comes back with that metric's ``nvmlReturn``
  set to NOT_SUPPORTED rather than an invented number.
- Per-process utilization samples (``nvmlDeviceGetProcessUtilization``,
  ``nvmlDeviceGetProcessesUtilizationInfo``) are stamped as the driver stamps them: wall-clock
  microseconds since the epoch (``wall_clock``, default ``time.time``), at the last tick of its
  sampling period, one per running process with non-zero SM or memory utilization; a call answers
  the samples newer than its ``lastSeenTimeStamp``, else NOT_FOUND. A cycle's sample is newer
  than every earlier cycle's even when cycles follow each other within one sampling period (so
  stamps may run a few microseconds ahead of the wall clock under fast simulated time).
- Identity and configuration a monitor shows (PCI info, max clocks, power management limit,
  persistence, performance state, compute mode, CUDA compute capability, BAR1) come from the GPU
  model; the CUDA driver version from the driver branch. No graphics or MPS processes run.

To run third-party code that imports ``pynvml`` itself (nvitop, nvitop-exporter) on a stand-in,
see :func:`otel_gpu.simulate.nvml_module.install`.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import pynvml

from otel_gpu.simulate.spec import (
    GpmValues,
    GpuSpec,
    MigInstanceSpec,
    MigLayout,
    ProcessSpec,
    Scenario,
    at_cycle,
)
from otel_gpu.sources.libnvml import CLOCK_EVENT_REASONS, gpm_metric_ids

SIMULATION_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the simulated clock at cycle 0

_NO_ID = 0xFFFFFFFF
_SAMPLING_PERIOD_US = 167_000
_MIB = 1024 * 1024

# CUDA version each driver branch ships with (CUDA Toolkit Release Notes, "CUDA Toolkit and
# Corresponding Driver Versions"), as nvmlSystemGetCudaDriverVersion encodes it: 1000 * major +
# 10 * minor. A branch not listed reports the newest listed branch below it.
_CUDA_BY_DRIVER_BRANCH = {
    525: 12000, 530: 12010, 535: 12020, 545: 12030, 550: 12040, 555: 12050, 560: 12060,
}

# PCI device ids (PCI ID Repository, pci-ids.ucw.cz, vendor 10de), as NVML packs them:
# device id << 16 | vendor id.
_PCI_DEVICE_IDS = {
    "A100-SXM4-40GB": 0x20B010DE,
    "A100-SXM4-80GB": 0x20B210DE,
    "H100-SXM5-80GB": 0x233010DE,
    "H200-141GB": 0x233510DE,
}
_BAR1_USED_BYTES = 5 * _MIB
_DRIVER_UPTIME_S = 86_400.0  # energy is counted since the driver loaded, a day before cycle 0

_GPM_METRIC_FIELDS = gpm_metric_ids(pynvml)


def _fail(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


# --- handles and the plain objects that stand in for ctypes structures -------------------------


class _GpuHandle:
    __slots__ = ("index", "owner")

    def __init__(self, owner: FakeNvml, index: int) -> None:
        self.owner = owner
        self.index = index

    def __repr__(self) -> str:
        return f"<simulated GPU handle gpu{self.index}>"


class _MigHandle:
    __slots__ = ("generation", "gpu_index", "owner", "position")

    def __init__(self, owner: FakeNvml, gpu_index: int, generation: int, position: int) -> None:
        self.owner = owner
        self.gpu_index = gpu_index
        self.generation = generation
        self.position = position

    def __repr__(self) -> str:
        return (
            f"<simulated MIG handle gpu{self.gpu_index}/mig{self.position}"
            f" layout {self.generation}>"
        )


class _GpuInstanceHandle:
    __slots__ = ("generation", "gpu_index", "gpu_instance_id", "owner")

    def __init__(self, owner: FakeNvml, gpu_index: int, generation: int, gi_id: int) -> None:
        self.owner = owner
        self.gpu_index = gpu_index
        self.generation = generation
        self.gpu_instance_id = gi_id


class _EventSet:
    def __init__(self) -> None:
        self.registered: dict[int, tuple[int, int]] = {}  # gpu index -> (event mask, cycle)
        self.delivered: set[int] = set()
        self.freed = False


class _GpmSample:
    def __init__(self) -> None:
        self.freed = False
        self.gpu_index: int | None = None
        self.values: GpmValues | None = None
        self.target: tuple[Any, ...] | None = None  # what was sampled, to pair samples
        self.cycle = 0


class _Placement:
    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size


class _GpuInstanceInfo:
    def __init__(self, device: _GpuHandle, gi_id: int, profile_id: int, placement: _Placement):
        self.device = device
        self.id = gi_id
        self.profileId = profile_id
        self.placement = placement


class _EventData:
    def __init__(self, device: _GpuHandle, event_type: int, data: int, gi: int, ci: int) -> None:
        self.device = device
        self.eventType = event_type
        self.eventData = data
        self.gpuInstanceId = gi
        self.computeInstanceId = ci


class c_nvmlGpmMetric_t:
    """One requested GPM metric, as in pynvml's structure of the same name."""

    def __init__(self) -> None:
        self.metricId = 0
        self.nvmlReturn = pynvml.NVML_SUCCESS
        self.value = 0.0
        self.metricInfo = None


class c_nvmlGpmMetricsGet_t:
    """A GPM metrics request: pynvml's structure, as a plain object that can hold samples."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [c_nvmlGpmMetric_t() for _ in range(pynvml.NVML_GPM_METRIC_MAX)]


# --- the module stand-in -----------------------------------------------------------------------


def _device_call(physical: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a method whose first argument is a device handle: check initialisation, the handle,
    faults and (for ``physical`` queries) that it is not a MIG device, then pass the resolved
    GPU and MIG instance (or None) in place of the handle."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__

        def call(self: FakeNvml, handle: Any, *args: Any, **kwargs: Any) -> Any:
            gpu, instance = self._resolve(name, handle)
            if physical and instance is not None:
                raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return method(self, gpu, instance, *args, **kwargs)

        call.__name__ = name
        call.__qualname__ = method.__qualname__
        call.__doc__ = method.__doc__
        return call

    return wrap


class FakeNvml:
    """The simulated driver of one scenario, used where the ``pynvml`` module would be."""

    c_nvmlGpmMetricsGet_t = c_nvmlGpmMetricsGet_t
    c_nvmlGpmMetric_t = c_nvmlGpmMetric_t

    def __init__(
        self, scenario: Scenario, interval_s: float = 10.0, start_time: float = SIMULATION_EPOCH
    ) -> None:
        self.scenario = scenario
        self.interval_s = interval_s
        self.start_time = start_time
        self.cycle = 0
        self._init_count = 0
        self._gpu_handles = [_GpuHandle(self, gpu.index) for gpu in scenario.gpus]
        self._mig_handles: dict[tuple[int, int, int], _MigHandle] = {}
        self._gi_handles: dict[tuple[int, int, int], _GpuInstanceHandle] = {}
        self._energy_mj: dict[int, list[float]] = {}
        self.wall_clock: Callable[[], float] = time.time  # what utilization samples are stamped by
        self._sample_cycle = -1
        self._last_stamp_us = 0
        self._events = sorted(
            (
                (event.cycle, gpu.index, n, event)
                for gpu in scenario.gpus
                for n, event in enumerate(gpu.xid_events)
            ),
            key=lambda entry: entry[:3],
        )

    def __getattr__(self, name: str) -> Any:
        # A real function this stand-in does not serve behaves as on a driver without the symbol.
        if name.startswith("nvml") and callable(getattr(pynvml, name, None)):

            def missing(*args: Any, **kwargs: Any) -> Any:
                raise _fail(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            missing.__name__ = name
            return missing
        raise AttributeError(name)

    # -- the simulation side --

    def begin_cycle(self, cycle: int) -> None:
        """Serve the state of ``cycle`` from now on."""
        if cycle < 0:
            raise ValueError(f"cycle must be >= 0, got {cycle}")
        self.cycle = cycle

    def clock(self, cycle: int | None = None) -> float:
        """Simulated epoch seconds at ``cycle`` (default: the current one)."""
        return self.start_time + (self.cycle if cycle is None else cycle) * self.interval_s

    # -- plumbing --

    def _require_init(self) -> None:
        if self._init_count == 0:
            raise _fail(pynvml.NVML_ERROR_UNINITIALIZED)

    def _check_faults(self, call: str, gpu: GpuSpec) -> None:
        for fault in gpu.faults:
            if fault.applies_to(call) and fault.active(self.cycle):
                raise _fail(fault.code)

    def _layout(self, gpu: GpuSpec) -> MigLayout | None:
        return gpu.mig.layout_at(self.cycle) if gpu.mig else None

    def _resolve(self, call: str, handle: Any) -> tuple[GpuSpec, MigInstanceSpec | None]:
        self._require_init()
        if isinstance(handle, _GpuHandle) and handle.owner is self:
            gpu = self.scenario.gpus[handle.index]
            self._check_faults(call, gpu)
            return gpu, None
        if isinstance(handle, _MigHandle) and handle.owner is self:
            gpu = self.scenario.gpus[handle.gpu_index]
            self._check_faults(call, gpu)
            layout = self._layout(gpu)
            if layout is None or layout.generation != handle.generation:
                raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return gpu, layout.instances[handle.position]
        raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _mig_handle(self, gpu: GpuSpec, layout: MigLayout, position: int) -> _MigHandle:
        key = (gpu.index, layout.generation, position)
        if key not in self._mig_handles:
            self._mig_handles[key] = _MigHandle(self, *key)
        return self._mig_handles[key]

    def _value(self, value: Any) -> Any:
        return at_cycle(value, self.cycle)

    def _processes(self, gpu: GpuSpec) -> tuple[ProcessSpec, ...]:
        return gpu.processes_at(self.cycle)

    def _utilization(self, gpu: GpuSpec, cycle: int | None = None) -> float:
        value = at_cycle(gpu.utilization, self.cycle if cycle is None else cycle)
        return 0.0 if value is None else float(value)

    def _busy(self, gpu: GpuSpec) -> bool:
        if gpu.utilization is not None:
            return self._utilization(gpu) > 0
        return bool(self._processes(gpu))

    def _power_watts(self, gpu: GpuSpec, cycle: int) -> float:
        value = at_cycle(gpu.power_watts, cycle)
        if value is not None:
            return float(value)
        idle = gpu.model.idle_power_watts
        return idle + (0.8 * self._power_limit_watts(gpu) - idle) * self._utilization(gpu, cycle)

    def _power_limit_watts(self, gpu: GpuSpec) -> float:
        return gpu.power_limit_watts or gpu.model.power_limit_watts

    def _instance_memory_used(self, gpu: GpuSpec, instance: MigInstanceSpec) -> int:
        given = self._value(instance.memory_used_bytes)
        if given is not None:
            return int(given)
        return sum(
            int(self._value(p.used_memory_bytes))
            for p in self._processes(gpu)
            if p.mig_instance == instance.index
        )

    # -- library and system --

    def nvmlInit(self) -> None:
        if self.cycle < self.scenario.driver.init_fails_cycles:
            raise _fail(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)  # the driver is still loading
        self._init_count += 1

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def _check_driver_faults(self, call: str) -> None:
        for fault in self.scenario.driver.faults:
            if fault.applies_to(call) and fault.active(self.cycle):
                raise _fail(fault.code)

    def nvmlShutdown(self) -> None:
        self._require_init()
        self._init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._require_init()
        self._check_driver_faults("nvmlSystemGetDriverVersion")
        return self.scenario.driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._require_init()
        return f"12.{self.scenario.driver_version}"

    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        self._check_driver_faults("nvmlDeviceGetCount")
        return len(self.scenario.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _GpuHandle:
        self._require_init()
        if isinstance(index, bool) or not isinstance(index, int):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < len(self.scenario.gpus):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check_faults("nvmlDeviceGetHandleByIndex", self.scenario.gpus[index])
        return self._gpu_handles[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _GpuHandle | _MigHandle:
        self._require_init()
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.scenario.gpus:
            if gpu.uuid == text:
                self._check_faults("nvmlDeviceGetHandleByUUID", gpu)
                return self._gpu_handles[gpu.index]
            layout = self._layout(gpu)
            for instance in layout.instances if layout else ():
                if instance.uuid == text:
                    self._check_faults("nvmlDeviceGetHandleByUUID", gpu)
                    return self._mig_handle(gpu, layout, instance.index)
        raise _fail(pynvml.NVML_ERROR_NOT_FOUND)

    # -- identity --

    @_device_call(physical=True)
    def nvmlDeviceGetIndex(self, gpu: GpuSpec, instance: None) -> int:
        return gpu.index

    @_device_call()
    def nvmlDeviceGetUUID(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> str:
        return instance.uuid if instance else gpu.uuid

    @_device_call()
    def nvmlDeviceGetName(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> str:
        if instance:
            return f"{gpu.model.nvml_name} MIG {instance.profile.name}"
        return gpu.model.nvml_name

    @_device_call(physical=True)
    def nvmlDeviceGetSerial(self, gpu: GpuSpec, instance: None) -> str:
        return gpu.serial

    @_device_call()
    def nvmlDeviceGetArchitecture(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> int:
        return gpu.model.architecture

    @_device_call()
    def nvmlDeviceIsMigDeviceHandle(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> ctypes.c_uint:
        return ctypes.c_uint(1 if instance else 0)

    # -- utilization --

    @_device_call(physical=True)
    def nvmlDeviceGetUtilizationRates(self, gpu: GpuSpec, instance: None) -> Any:
        if gpu.mig:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        util = self._utilization(gpu)
        memory = self._value(gpu.memory_utilization)
        memory_percent = util * 50 if memory is None else memory * 100
        return pynvml.c_nvmlUtilization_t(gpu=round(util * 100), memory=round(memory_percent))

    def _codec_utilization(self, gpu: GpuSpec, value: Any) -> list[int]:
        if gpu.mig:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        ratio = self._value(value)
        return [round((ratio or 0.0) * 100), _SAMPLING_PERIOD_US]

    @_device_call(physical=True)
    def nvmlDeviceGetEncoderUtilization(self, gpu: GpuSpec, instance: None) -> list[int]:
        return self._codec_utilization(gpu, gpu.encoder_utilization)

    @_device_call(physical=True)
    def nvmlDeviceGetDecoderUtilization(self, gpu: GpuSpec, instance: None) -> list[int]:
        return self._codec_utilization(gpu, gpu.decoder_utilization)

    # -- memory --

    @_device_call()
    def nvmlDeviceGetMemoryInfo(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None, version: int | None = None
    ) -> Any:
        if instance is not None:
            total = instance.profile.memory_bytes
            used = self._instance_memory_used(gpu, instance)
        else:
            total = gpu.model.memory_total_bytes
            given = self._value(gpu.memory_used_bytes)
            if given is not None:
                used = int(given)
            elif gpu.mig:
                layout = self._layout(gpu)
                used = sum(self._instance_memory_used(gpu, i) for i in layout.instances)
            else:
                used = sum(int(self._value(p.used_memory_bytes)) for p in self._processes(gpu))
        used = min(used, total)
        if version:
            return pynvml.c_nvmlMemory_v2_t(
                version=version, total=total, reserved=0, free=total - used, used=used
            )
        return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

    # -- power, temperature, clocks --

    @_device_call(physical=True)
    def nvmlDeviceGetPowerUsage(self, gpu: GpuSpec, instance: None) -> int:
        return round(self._power_watts(gpu, self.cycle) * 1000)

    @_device_call(physical=True)
    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: GpuSpec, instance: None) -> int:
        return round(self._power_limit_watts(gpu) * 1000)

    @_device_call(physical=True)
    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: GpuSpec, instance: None) -> int:
        totals = self._energy_mj.setdefault(
            gpu.index, [gpu.model.idle_power_watts * _DRIVER_UPTIME_S * 1000.0]
        )
        while len(totals) <= self.cycle:
            cycle = len(totals)
            totals.append(totals[-1] + self._power_watts(gpu, cycle) * self.interval_s * 1000.0)
        return round(totals[self.cycle])

    @_device_call(physical=True)
    def nvmlDeviceGetTemperature(self, gpu: GpuSpec, instance: None, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        value = self._value(gpu.temperature_celsius)
        if value is None:
            value = gpu.model.idle_temperature_celsius + 45.0 * self._utilization(gpu)
        return round(value)

    @_device_call(physical=True)
    def nvmlDeviceGetFieldValues(self, gpu: GpuSpec, instance: None, fieldIds: list) -> Any:
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        timestamp = round(self.clock() * 1_000_000)
        for value, requested in zip(values, fieldIds, strict=True):
            field_id, scope_id = requested if isinstance(requested, tuple) else (requested, 0)
            value.fieldId = field_id
            value.scopeId = scope_id
            value.timestamp = timestamp
            temperature = self._value(gpu.memory_temperature_celsius)
            if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP and temperature is not None:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = round(temperature)
                value.nvmlReturn = pynvml.NVML_SUCCESS
            else:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    @_device_call(physical=True)
    def nvmlDeviceGetClockInfo(self, gpu: GpuSpec, instance: None, type: int) -> int:
        names = {
            pynvml.NVML_CLOCK_GRAPHICS: "graphics",
            pynvml.NVML_CLOCK_SM: "sm",
            pynvml.NVML_CLOCK_MEM: "memory",
            pynvml.NVML_CLOCK_VIDEO: "video",
        }
        if type not in names:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        name = names[type]
        given = self._value(getattr(gpu.clocks_mhz, name))
        if given is not None:
            return int(given)
        clocks = gpu.model.max_clocks if self._busy(gpu) else gpu.model.idle_clocks
        return getattr(clocks, name)

    @_device_call(physical=True)
    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: GpuSpec, instance: None) -> int:
        names = self._value(gpu.clocks_event_reasons)
        if names is None:
            names = () if self._busy(gpu) else ("gpu_idle",)
        mask = 0
        for name in names:
            mask |= CLOCK_EVENT_REASONS[name]
        return mask

    @_device_call(physical=True)
    def nvmlDeviceGetSupportedClocksEventReasons(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.nvmlClocksEventReasonAll

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons
    nvmlDeviceGetSupportedClocksThrottleReasons = nvmlDeviceGetSupportedClocksEventReasons

    # -- health --

    @_device_call(physical=True)
    def nvmlDeviceGetTotalEccErrors(
        self, gpu: GpuSpec, instance: None, errorType: int, counterType: int
    ) -> int:
        counters = {
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: gpu.ecc_errors.corrected,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: gpu.ecc_errors.uncorrected,
        }
        if errorType not in counters or counterType not in (
            pynvml.NVML_VOLATILE_ECC,
            pynvml.NVML_AGGREGATE_ECC,
        ):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(counters[errorType]))

    @_device_call(physical=True)
    def nvmlDeviceGetRemappedRows(self, gpu: GpuSpec, instance: None) -> tuple[int, ...]:
        if gpu.mig:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        rows = gpu.remapped_rows
        return (
            int(self._value(rows.corrected)),
            int(self._value(rows.uncorrected)),
            int(bool(self._value(rows.pending))),
            int(bool(self._value(rows.failed))),
        )

    @_device_call(physical=True)
    def nvmlDeviceGetPcieThroughput(self, gpu: GpuSpec, instance: None, counter: int) -> int:
        rates = {
            pynvml.NVML_PCIE_UTIL_TX_BYTES: gpu.pcie_tx_bytes_per_s,
            pynvml.NVML_PCIE_UTIL_RX_BYTES: gpu.pcie_rx_bytes_per_s,
        }
        if counter not in rates:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int((self._value(rates[counter]) or 0) // 1024)

    @_device_call(physical=True)
    def nvmlDeviceGetFanSpeed(self, gpu: GpuSpec, instance: None) -> int:
        raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # -- processes --

    @_device_call()
    def nvmlDeviceGetComputeRunningProcesses(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> list[Any]:
        layout = self._layout(gpu)
        result = []
        for process in self._processes(gpu):
            if instance is not None and process.mig_instance != instance.index:
                continue
            gi = ci = _NO_ID
            if layout is not None and process.mig_instance is not None:
                gi, ci = layout.instances[process.mig_instance].gpu_instance_id, 0
            result.append(
                pynvml.nvmlFriendlyObject(
                    {
                        "pid": process.pid,
                        "usedGpuMemory": int(self._value(process.used_memory_bytes)),
                        "gpuInstanceId": gi,
                        "computeInstanceId": ci,
                    }
                )
            )
        return result

    def _sample_stamp_us(self) -> int:
        """The stamp of the newest utilization sample: the last tick of the sampling period on
        the wall clock, and newer than any sample of an earlier cycle."""
        now = int(self.wall_clock() * 1_000_000)
        stamp = now - now % _SAMPLING_PERIOD_US
        floor = self._last_stamp_us + (1 if self.cycle != self._sample_cycle else 0)
        self._sample_cycle = self.cycle
        self._last_stamp_us = max(stamp, floor)
        return self._last_stamp_us

    def _process_samples(self, gpu: GpuSpec, last_seen_us: int) -> list[tuple[int, int, int, int]]:
        """(pid, stamp, sm %, memory %) of the samples newer than ``last_seen_us``."""
        if gpu.mig:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        stamp = self._sample_stamp_us()
        samples = []
        if last_seen_us < stamp:
            for process in self._processes(gpu):
                sm = round((self._value(process.sm_utilization) or 0.0) * 100)
                memory = round((self._value(process.memory_utilization) or 0.0) * 100)
                if sm or memory:
                    samples.append((process.pid, stamp, sm, memory))
        if not samples:
            raise _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    @_device_call(physical=True)
    def nvmlDeviceGetProcessUtilization(
        self, gpu: GpuSpec, instance: None, timeStamp: int
    ) -> list[Any]:
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(
                pid=pid, timeStamp=stamp, smUtil=sm, memUtil=memory, encUtil=0, decUtil=0
            )
            for pid, stamp, sm, memory in self._process_samples(gpu, timeStamp)
        ]

    @_device_call(physical=True)
    def nvmlDeviceGetProcessesUtilizationInfo(
        self, gpu: GpuSpec, instance: None, timeStamp: int
    ) -> list[Any]:
        return [
            pynvml.c_nvmlProcessUtilizationInfo_v1_t(
                timeStamp=stamp, pid=pid, smUtil=sm, memUtil=memory,
                encUtil=0, decUtil=0, jpgUtil=0, ofaUtil=0,
            )
            for pid, stamp, sm, memory in self._process_samples(gpu, timeStamp)
        ]

    @_device_call()
    def nvmlDeviceGetGraphicsRunningProcesses(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> list[Any]:
        return []  # a compute server: no process has a graphics context

    @_device_call()
    def nvmlDeviceGetMPSComputeRunningProcesses(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> list[Any]:
        return []

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses
    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses
    nvmlDeviceGetGraphicsRunningProcesses_v3 = nvmlDeviceGetGraphicsRunningProcesses
    nvmlDeviceGetGraphicsRunningProcesses_v2 = nvmlDeviceGetGraphicsRunningProcesses
    nvmlDeviceGetMPSComputeRunningProcesses_v3 = nvmlDeviceGetMPSComputeRunningProcesses
    nvmlDeviceGetMPSComputeRunningProcesses_v2 = nvmlDeviceGetMPSComputeRunningProcesses

    # -- configuration a monitor shows --

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._require_init()
        branch = int(self.scenario.driver_version.split(".", 1)[0])
        known = [b for b in _CUDA_BY_DRIVER_BRANCH if b <= branch]
        if not known:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _CUDA_BY_DRIVER_BRANCH[max(known)]

    nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion

    def _bus_id(self, gpu: GpuSpec) -> str:
        # Synthetic bus numbers, one per GPU in index order.
        return f"00000000:{0x10 * (gpu.index + 1) & 0xFF:02X}:00.0"

    @_device_call(physical=True)
    def nvmlDeviceGetPciInfo(self, gpu: GpuSpec, instance: None) -> Any:
        bus_id = self._bus_id(gpu).encode()
        return pynvml.nvmlPciInfo_t(
            busIdLegacy=bus_id,
            domain=0,
            bus=int(bus_id.split(b":")[1], 16),
            device=0,
            pciDeviceId=_PCI_DEVICE_IDS.get(gpu.model.key, 0),
            pciSubSystemId=0,
            busId=bus_id,
        )

    nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo

    def nvmlDeviceGetHandleByPciBusId(self, pciBusId: str | bytes) -> _GpuHandle:
        self._require_init()
        text = (pciBusId.decode() if isinstance(pciBusId, bytes) else pciBusId).upper()
        for gpu in self.scenario.gpus:
            bus_id = self._bus_id(gpu)
            if text in (bus_id, bus_id[4:]):
                self._check_faults("nvmlDeviceGetHandleByPciBusId", gpu)
                return self._gpu_handles[gpu.index]
        raise _fail(pynvml.NVML_ERROR_NOT_FOUND)

    @_device_call(physical=True)
    def nvmlDeviceGetMaxClockInfo(self, gpu: GpuSpec, instance: None, type: int) -> int:
        names = {
            pynvml.NVML_CLOCK_GRAPHICS: "graphics",
            pynvml.NVML_CLOCK_SM: "sm",
            pynvml.NVML_CLOCK_MEM: "memory",
            pynvml.NVML_CLOCK_VIDEO: "video",
        }
        if type not in names:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return getattr(gpu.model.max_clocks, names[type])

    @_device_call(physical=True)
    def nvmlDeviceGetPowerManagementLimit(self, gpu: GpuSpec, instance: None) -> int:
        return round(self._power_limit_watts(gpu) * 1000)

    @_device_call(physical=True)
    def nvmlDeviceGetPowerManagementDefaultLimit(self, gpu: GpuSpec, instance: None) -> int:
        return round(gpu.model.power_limit_watts * 1000)

    @_device_call(physical=True)
    def nvmlDeviceGetPersistenceMode(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_FEATURE_ENABLED  # as a GPU server runs its driver

    @_device_call(physical=True)
    def nvmlDeviceGetPerformanceState(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_PSTATE_0

    @_device_call(physical=True)
    def nvmlDeviceGetComputeMode(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_COMPUTEMODE_DEFAULT

    @_device_call(physical=True)
    def nvmlDeviceGetDisplayMode(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_FEATURE_DISABLED

    @_device_call(physical=True)
    def nvmlDeviceGetDisplayActive(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_FEATURE_DISABLED

    @_device_call()
    def nvmlDeviceGetCudaComputeCapability(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> tuple[int, int]:
        # Ampere GA100 is 8.0, Hopper GH100 9.0 (CUDA C++ Programming Guide, compute capabilities).
        return (9, 0) if gpu.model.architecture == pynvml.NVML_DEVICE_ARCH_HOPPER else (8, 0)

    @_device_call(physical=True)
    def nvmlDeviceGetBAR1MemoryInfo(self, gpu: GpuSpec, instance: None) -> Any:
        # Data-centre boards map their whole framebuffer: BAR1 is the next power of two above it.
        total = 1 << (gpu.model.memory_total_bytes - 1).bit_length()
        return pynvml.c_nvmlBAR1Memory_t(
            bar1Total=total, bar1Free=total - _BAR1_USED_BYTES, bar1Used=_BAR1_USED_BYTES
        )

    @_device_call(physical=True)
    def nvmlDeviceGetDriverModel(self, gpu: GpuSpec, instance: None) -> list[int]:
        raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)  # a Windows-only notion (nvml.h)

    nvmlDeviceGetDriverModel_v2 = nvmlDeviceGetDriverModel
    nvmlDeviceGetCurrentDriverModel = nvmlDeviceGetDriverModel
    nvmlDeviceGetPendingDriverModel = nvmlDeviceGetDriverModel

    # -- MIG --

    @_device_call(physical=True)
    def nvmlDeviceGetMigMode(self, gpu: GpuSpec, instance: None) -> list[int]:
        current = 1 if gpu.mig else 0
        pending = 1 - current if self._value(gpu.mig_pending) else current
        return [current, pending]

    @_device_call(physical=True)
    def nvmlDeviceGetMaxMigDeviceCount(self, gpu: GpuSpec, instance: None) -> int:
        return gpu.model.compute_slices if gpu.mig else 0

    @_device_call(physical=True)
    def nvmlDeviceGetMigDeviceHandleByIndex(
        self, gpu: GpuSpec, instance: None, index: int
    ) -> _MigHandle:
        layout = self._layout(gpu)
        if layout is None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < gpu.model.compute_slices:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(layout.instances):
            raise _fail(pynvml.NVML_ERROR_NOT_FOUND)
        return self._mig_handle(gpu, layout, index)

    def _require_mig(self, instance: MigInstanceSpec | None) -> MigInstanceSpec:
        if instance is None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return instance

    @_device_call()
    def nvmlDeviceGetGpuInstanceId(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> int:
        return self._require_mig(instance).gpu_instance_id

    @_device_call()
    def nvmlDeviceGetComputeInstanceId(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> int:
        self._require_mig(instance)
        return 0

    @_device_call()
    def nvmlDeviceGetAttributes(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> Any:
        if instance is None:
            slices, sms = gpu.model.compute_slices, gpu.model.sm_count
            memory_mb = gpu.model.memory_total_bytes // (1024 * 1024)
        else:
            slices, sms = instance.profile.compute_slices, instance.profile.sm_count
            memory_mb = instance.profile.memory_mib
        return pynvml.c_nvmlDeviceAttributes(
            multiprocessorCount=sms,
            sharedCopyEngineCount=slices,
            gpuInstanceSliceCount=slices,
            computeInstanceSliceCount=slices,
            memorySizeMB=memory_mb,
        )

    nvmlDeviceGetAttributes_v2 = nvmlDeviceGetAttributes

    @_device_call()
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> _GpuHandle:
        if instance is None:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu_handles[gpu.index]

    @_device_call(physical=True)
    def nvmlDeviceGetGpuInstanceById(
        self, gpu: GpuSpec, instance: None, gpuInstanceId: int
    ) -> _GpuInstanceHandle:
        layout = self._layout(gpu)
        if layout is None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not any(i.gpu_instance_id == gpuInstanceId for i in layout.instances):
            raise _fail(pynvml.NVML_ERROR_NOT_FOUND)
        key = (gpu.index, layout.generation, gpuInstanceId)
        if key not in self._gi_handles:
            self._gi_handles[key] = _GpuInstanceHandle(self, *key)
        return self._gi_handles[key]

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> _GpuInstanceInfo:
        self._require_init()
        if not isinstance(gpuInstance, _GpuInstanceHandle) or gpuInstance.owner is not self:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.scenario.gpus[gpuInstance.gpu_index]
        self._check_faults("nvmlGpuInstanceGetInfo", gpu)
        layout = self._layout(gpu)
        if layout is None or layout.generation != gpuInstance.generation:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        spec = next(i for i in layout.instances if i.gpu_instance_id == gpuInstance.gpu_instance_id)
        return _GpuInstanceInfo(
            self._gpu_handles[gpu.index],
            spec.gpu_instance_id,
            spec.profile.profile_id,
            _Placement(spec.start, spec.size),
        )

    # -- GPM --

    @_device_call()
    def nvmlGpmQueryDeviceSupport(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> Any:
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if gpu.model.gpm_supported else 0
        return support

    def nvmlGpmSampleAlloc(self) -> _GpmSample:
        self._require_init()
        return _GpmSample()

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        self._require_init()
        self._check_sample(gpmSample)
        gpmSample.freed = True

    def _check_sample(self, sample: Any) -> _GpmSample:
        if not isinstance(sample, _GpmSample) or sample.freed:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return sample

    def _fill_sample(
        self, sample: Any, gpu: GpuSpec, target: tuple[Any, ...], values: GpmValues | None
    ) -> _GpmSample:
        if not gpu.model.gpm_supported:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        sample = self._check_sample(sample)
        sample.gpu_index = gpu.index
        sample.target = target
        sample.values = values
        sample.cycle = self.cycle
        return sample

    @_device_call()
    def nvmlGpmSampleGet(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None, gpmSample: Any
    ) -> _GpmSample:
        if instance is None:
            return self._fill_sample(gpmSample, gpu, (gpu.uuid,), gpu.gpm)
        return self._fill_sample(gpmSample, gpu, (gpu.uuid, instance.uuid), instance.gpm)

    @_device_call(physical=True)
    def nvmlGpmMigSampleGet(
        self, gpu: GpuSpec, instance: None, gpuInstanceId: int, gpmSample: Any
    ) -> _GpmSample:
        layout = self._layout(gpu)
        if layout is None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        for spec in layout.instances:
            if spec.gpu_instance_id == gpuInstanceId:
                return self._fill_sample(gpmSample, gpu, (gpu.uuid, spec.uuid), spec.gpm)
        raise _fail(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        self._require_init()
        if metricsGet.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise _fail(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first = self._check_sample(metricsGet.sample1)
        second = self._check_sample(metricsGet.sample2)
        if first.target is None or first.target != second.target:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= metricsGet.numMetrics <= len(metricsGet.metrics):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check_faults("nvmlGpmMetricsGet", self.scenario.gpus[second.gpu_index])
        for metric in metricsGet.metrics[: metricsGet.numMetrics]:
            name = _GPM_METRIC_FIELDS.get(metric.metricId)
            ratio = None
            if name is not None and second.values is not None:
                ratio = at_cycle(getattr(second.values, name), second.cycle)
            if ratio is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                metric.value = 0.0
            else:
                metric.nvmlReturn = pynvml.NVML_SUCCESS
                metric.value = float(ratio) * 100.0
        return metricsGet

    # -- events --

    def nvmlEventSetCreate(self) -> _EventSet:
        self._require_init()
        self._check_driver_faults("nvmlEventSetCreate")
        return _EventSet()

    def _check_event_set(self, event_set: Any) -> _EventSet:
        if not isinstance(event_set, _EventSet) or event_set.freed:
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return event_set

    @_device_call()
    def nvmlDeviceRegisterEvents(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None, eventTypes: int, eventSet: Any
    ) -> None:
        if instance is not None:
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        event_set = self._check_event_set(eventSet)
        mask, since = event_set.registered.get(gpu.index, (0, self.cycle))
        event_set.registered[gpu.index] = (mask | eventTypes, since)

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> _EventData:
        self._require_init()
        self._check_driver_faults("nvmlEventSetWait_v2")
        event_set = self._check_event_set(eventSet)
        for n, (cycle, gpu_index, _, event) in enumerate(self._events):
            if cycle > self.cycle:
                break
            mask, since = event_set.registered.get(gpu_index, (0, 0))
            if n in event_set.delivered or cycle < since:
                continue
            if not mask & pynvml.nvmlEventTypeXidCriticalError:
                continue
            event_set.delivered.add(n)
            gpu = self.scenario.gpus[gpu_index]
            gi = ci = _NO_ID
            if event.mig_instance is not None and gpu.mig:
                gi, ci = gpu.mig.layout_at(cycle).instances[event.mig_instance].gpu_instance_id, 0
            return _EventData(
                self._gpu_handles[gpu_index],
                pynvml.nvmlEventTypeXidCriticalError,
                event.code,
                gi,
                ci,
            )
        raise _fail(pynvml.NVML_ERROR_TIMEOUT)

    nvmlEventSetWait = nvmlEventSetWait_v2

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._require_init()
        self._check_event_set(eventSet).freed = True


def _export_constants() -> None:
    """Give FakeNvml the real module's constants and error classes."""
    for name in dir(pynvml):
        value = getattr(pynvml, name)
        is_constant = name.startswith(("NVML_", "nvml")) and not callable(value)
        is_error = name.startswith("NVMLError")
        if (is_constant or is_error) and name not in FakeNvml.__dict__:
            setattr(FakeNvml, name, value)
    FakeNvml.nvmlExceptionClass = staticmethod(pynvml.nvmlExceptionClass)
    FakeNvml.nvmlFriendlyObject = pynvml.nvmlFriendlyObject


_export_constants()
