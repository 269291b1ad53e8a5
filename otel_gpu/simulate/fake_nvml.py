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
- NVLink: the links a GPU's ``nvlinks`` lists answer ``nvmlDeviceGetNvLinkState`` (enabled while
  ``active``), ``nvmlDeviceGetNvLinkErrorCounter`` (the scenario's cumulative counts) and the
  field values ``NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX`` with the link as scope id (cumulative
  KiB: the byte rates summed over the cycles so far); other links answer NOT_SUPPORTED, links past
  ``NVML_NVLINK_MAX_LINKS`` INVALID_ARGUMENT. ``nvmlDeviceGetPcieReplayCounter`` serves
  ``pcie_replays``.
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

from otel_gpu.simulate.fake_nvml_board import BoardServing
from otel_gpu.simulate.fake_nvml_gpm import GpmAndEventServing
from otel_gpu.simulate.fake_nvml_mig import MigServing
from otel_gpu.simulate.fake_nvml_parts import (
    CLOCK_TYPES,
    DRIVER_UPTIME_S,
    NVLINK_ERROR_FIELDS,
    SAMPLING_PERIOD_US,
    GpuHandle,
    GpuInstanceHandle,
    MigHandle,
    c_nvmlGpmMetric_t,
    c_nvmlGpmMetricsGet_t,
    device_call,
    nvml_error,
)
from otel_gpu.simulate.fake_nvml_processes import ProcessServing
from otel_gpu.simulate.spec import (
    GpuSpec,
    MigInstanceSpec,
    MigLayout,
    ProcessSpec,
    Scenario,
    at_cycle,
)
from otel_gpu.sources.libnvml import CLOCK_EVENT_REASONS

SIMULATION_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the simulated clock at cycle 0


class FakeNvml(BoardServing, ProcessServing, MigServing, GpmAndEventServing):
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
        self._gpu_handles = [GpuHandle(self, gpu.index) for gpu in scenario.gpus]
        self._mig_handles: dict[tuple[int, int, int], MigHandle] = {}
        self._gi_handles: dict[tuple[int, int, int], GpuInstanceHandle] = {}
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
                raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

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
            raise nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)

    def _check_faults(self, call: str, gpu: GpuSpec) -> None:
        for fault in gpu.faults:
            if fault.applies_to(call) and fault.active(self.cycle):
                raise nvml_error(fault.code)

    def _layout(self, gpu: GpuSpec) -> MigLayout | None:
        return gpu.mig.layout_at(self.cycle) if gpu.mig else None

    def _resolve(self, call: str, handle: Any) -> tuple[GpuSpec, MigInstanceSpec | None]:
        self._require_init()
        if isinstance(handle, GpuHandle) and handle.owner is self:
            gpu = self.scenario.gpus[handle.index]
            self._check_faults(call, gpu)
            return gpu, None
        if isinstance(handle, MigHandle) and handle.owner is self:
            gpu = self.scenario.gpus[handle.gpu_index]
            self._check_faults(call, gpu)
            layout = self._layout(gpu)
            if layout is None or layout.generation != handle.generation:
                raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return gpu, layout.instances[handle.position]
        raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _mig_handle(self, gpu: GpuSpec, layout: MigLayout, position: int) -> MigHandle:
        key = (gpu.index, layout.generation, position)
        if key not in self._mig_handles:
            self._mig_handles[key] = MigHandle(self, *key)
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
            raise nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)  # the driver is still loading
        self._init_count += 1

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def _check_driver_faults(self, call: str) -> None:
        for fault in self.scenario.driver.faults:
            if fault.applies_to(call) and fault.active(self.cycle):
                raise nvml_error(fault.code)

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

    def nvmlDeviceGetHandleByIndex(self, index: int) -> GpuHandle:
        self._require_init()
        if isinstance(index, bool) or not isinstance(index, int):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < len(self.scenario.gpus):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check_faults("nvmlDeviceGetHandleByIndex", self.scenario.gpus[index])
        return self._gpu_handles[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> GpuHandle | MigHandle:
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
        raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)

    # -- identity --

    @device_call(physical=True)
    def nvmlDeviceGetIndex(self, gpu: GpuSpec, instance: None) -> int:
        return gpu.index

    @device_call()
    def nvmlDeviceGetUUID(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> str:
        return instance.uuid if instance else gpu.uuid

    @device_call()
    def nvmlDeviceGetName(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> str:
        if instance:
            return f"{gpu.model.nvml_name} MIG {instance.profile.name}"
        return gpu.model.nvml_name

    @device_call(physical=True)
    def nvmlDeviceGetSerial(self, gpu: GpuSpec, instance: None) -> str:
        return gpu.serial

    @device_call()
    def nvmlDeviceGetArchitecture(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> int:
        return gpu.model.architecture

    @device_call()
    def nvmlDeviceIsMigDeviceHandle(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> ctypes.c_uint:
        return ctypes.c_uint(1 if instance else 0)

    # -- utilization --

    @device_call(physical=True)
    def nvmlDeviceGetUtilizationRates(self, gpu: GpuSpec, instance: None) -> Any:
        if gpu.mig:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        util = self._utilization(gpu)
        memory = self._value(gpu.memory_utilization)
        memory_percent = util * 50 if memory is None else memory * 100
        return pynvml.c_nvmlUtilization_t(gpu=round(util * 100), memory=round(memory_percent))

    def _codec_utilization(self, gpu: GpuSpec, value: Any) -> list[int]:
        if gpu.mig:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        ratio = self._value(value)
        return [round((ratio or 0.0) * 100), SAMPLING_PERIOD_US]

    @device_call(physical=True)
    def nvmlDeviceGetEncoderUtilization(self, gpu: GpuSpec, instance: None) -> list[int]:
        return self._codec_utilization(gpu, gpu.encoder_utilization)

    @device_call(physical=True)
    def nvmlDeviceGetDecoderUtilization(self, gpu: GpuSpec, instance: None) -> list[int]:
        return self._codec_utilization(gpu, gpu.decoder_utilization)

    # -- memory --

    @device_call()
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

    @device_call(physical=True)
    def nvmlDeviceGetPowerUsage(self, gpu: GpuSpec, instance: None) -> int:
        return round(self._power_watts(gpu, self.cycle) * 1000)

    @device_call(physical=True)
    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: GpuSpec, instance: None) -> int:
        return round(self._power_limit_watts(gpu) * 1000)

    @device_call(physical=True)
    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: GpuSpec, instance: None) -> int:
        totals = self._energy_mj.setdefault(
            gpu.index, [gpu.model.idle_power_watts * DRIVER_UPTIME_S * 1000.0]
        )
        while len(totals) <= self.cycle:
            cycle = len(totals)
            totals.append(totals[-1] + self._power_watts(gpu, cycle) * self.interval_s * 1000.0)
        return round(totals[self.cycle])

    @device_call(physical=True)
    def nvmlDeviceGetTemperature(self, gpu: GpuSpec, instance: None, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        value = self._value(gpu.temperature_celsius)
        if value is None:
            value = gpu.model.idle_temperature_celsius + 45.0 * self._utilization(gpu)
        return round(value)

    @device_call(physical=True)
    def nvmlDeviceGetFieldValues(self, gpu: GpuSpec, instance: None, fieldIds: list) -> Any:
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        timestamp = round(self.clock() * 1_000_000)
        for value, requested in zip(values, fieldIds, strict=True):
            field_id, scope_id = requested if isinstance(requested, tuple) else (requested, 0)
            value.fieldId = field_id
            value.scopeId = scope_id
            value.timestamp = timestamp
            temperature = self._value(gpu.memory_temperature_celsius)
            link = next((n for n in gpu.nvlinks if n.link == scope_id), None)
            throughput = {
                pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: "tx_bytes_per_s",
                pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: "rx_bytes_per_s",
            }
            if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP and temperature is not None:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = round(temperature)
                value.nvmlReturn = pynvml.NVML_SUCCESS
            elif field_id in throughput and link is not None:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                value.value.ullVal = self._nvlink_kib(getattr(link, throughput[field_id]))
                value.nvmlReturn = pynvml.NVML_SUCCESS
            elif field_id in NVLINK_ERROR_FIELDS and (
                counted := next((n for n in gpu.nvlinks
                                 if n.link == NVLINK_ERROR_FIELDS[field_id][0]), None)
            ) is not None:
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                count = getattr(counted, NVLINK_ERROR_FIELDS[field_id][1])
                value.value.ullVal = int(at_cycle(count, self.cycle))
                value.nvmlReturn = pynvml.NVML_SUCCESS
            else:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    @device_call(physical=True)
    def nvmlDeviceGetClockInfo(self, gpu: GpuSpec, instance: None, type: int) -> int:
        if type not in CLOCK_TYPES:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        name = CLOCK_TYPES[type]
        given = self._value(getattr(gpu.clocks_mhz, name))
        if given is not None:
            return int(given)
        clocks = gpu.model.max_clocks if self._busy(gpu) else gpu.model.idle_clocks
        return getattr(clocks, name)

    @device_call(physical=True)
    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: GpuSpec, instance: None) -> int:
        names = self._value(gpu.clocks_event_reasons)
        if names is None:
            names = () if self._busy(gpu) else ("gpu_idle",)
        mask = 0
        for name in names:
            mask |= CLOCK_EVENT_REASONS[name]
        return mask

    @device_call(physical=True)
    def nvmlDeviceGetSupportedClocksEventReasons(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.nvmlClocksEventReasonAll

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons
    nvmlDeviceGetSupportedClocksThrottleReasons = nvmlDeviceGetSupportedClocksEventReasons

    # -- health --

    @device_call(physical=True)
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
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(counters[errorType]))

    @device_call(physical=True)
    def nvmlDeviceGetRemappedRows(self, gpu: GpuSpec, instance: None) -> tuple[int, ...]:
        if gpu.mig:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        rows = gpu.remapped_rows
        return (
            int(self._value(rows.corrected)),
            int(self._value(rows.uncorrected)),
            int(bool(self._value(rows.pending))),
            int(bool(self._value(rows.failed))),
        )

    @device_call(physical=True)
    def nvmlDeviceGetPcieThroughput(self, gpu: GpuSpec, instance: None, counter: int) -> int:
        rates = {
            pynvml.NVML_PCIE_UTIL_TX_BYTES: gpu.pcie_tx_bytes_per_s,
            pynvml.NVML_PCIE_UTIL_RX_BYTES: gpu.pcie_rx_bytes_per_s,
        }
        if counter not in rates:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int((self._value(rates[counter]) or 0) // 1024)


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
