"""The board calls of the ``pynvml`` stand-in: NVLink and PCIe link health, and the
configuration a monitor shows (PCI info, limits, modes, compute capability)."""

from __future__ import annotations

from typing import Any

import pynvml

from otel_gpu.simulate.fake_nvml_parts import (
    BAR1_USED_BYTES,
    CLOCK_TYPES,
    CUDA_BY_DRIVER_BRANCH,
    PCI_DEVICE_IDS,
    GpuHandle,
    device_call,
    nvml_error,
)
from otel_gpu.simulate.spec import (
    GpuSpec,
    MigInstanceSpec,
    NvLinkSpec,
    at_cycle,
)


class BoardServing:
    """``FakeNvml``'s link-health and configuration calls."""

    def _nvlink(self, gpu: GpuSpec, link: int) -> NvLinkSpec:
        if not 0 <= link < pynvml.NVML_NVLINK_MAX_LINKS:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for spec in gpu.nvlinks:
            if spec.link == link:
                return spec
        raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def _nvlink_kib(self, rate: Any) -> int:
        """A link's cumulative data counter in KiB: its byte rate summed over the cycles."""
        total = sum(float(at_cycle(rate, k) or 0) * self.interval_s
                    for k in range(1, self.cycle + 1))
        return int(total // 1024)

    @device_call(physical=True)
    def nvmlDeviceGetNvLinkState(self, gpu: GpuSpec, instance: None, link: int) -> int:
        active = at_cycle(self._nvlink(gpu, link).active, self.cycle)
        return pynvml.NVML_FEATURE_ENABLED if active else pynvml.NVML_FEATURE_DISABLED

    @device_call(physical=True)
    def nvmlDeviceGetNvLinkErrorCounter(
        self, gpu: GpuSpec, instance: None, link: int, counter: int
    ) -> int:
        spec = self._nvlink(gpu, link)
        counters = {
            pynvml.NVML_NVLINK_ERROR_DL_REPLAY: spec.replay_errors,
            pynvml.NVML_NVLINK_ERROR_DL_RECOVERY: spec.recovery_errors,
            pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT: spec.crc_flit_errors,
            pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA: spec.crc_data_errors,
        }
        if counter not in counters:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(at_cycle(counters[counter], self.cycle))

    @device_call(physical=True)
    def nvmlDeviceGetPcieReplayCounter(self, gpu: GpuSpec, instance: None) -> int:
        return int(at_cycle(gpu.pcie_replays, self.cycle))

    @device_call(physical=True)
    def nvmlDeviceGetFanSpeed(self, gpu: GpuSpec, instance: None) -> int:
        raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._require_init()
        branch = int(self.scenario.driver_version.split(".", 1)[0])
        known = [b for b in CUDA_BY_DRIVER_BRANCH if b <= branch]
        if not known:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return CUDA_BY_DRIVER_BRANCH[max(known)]

    nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion

    def _bus_id(self, gpu: GpuSpec) -> str:
        # Synthetic bus numbers, one per GPU in index order.
        return f"00000000:{0x10 * (gpu.index + 1) & 0xFF:02X}:00.0"

    @device_call(physical=True)
    def nvmlDeviceGetPciInfo(self, gpu: GpuSpec, instance: None) -> Any:
        bus_id = self._bus_id(gpu).encode()
        return pynvml.nvmlPciInfo_t(
            busIdLegacy=bus_id,
            domain=0,
            bus=int(bus_id.split(b":")[1], 16),
            device=0,
            pciDeviceId=PCI_DEVICE_IDS.get(gpu.model.key, 0),
            pciSubSystemId=0,
            busId=bus_id,
        )

    nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo

    def nvmlDeviceGetHandleByPciBusId(self, pciBusId: str | bytes) -> GpuHandle:
        self._require_init()
        text = (pciBusId.decode() if isinstance(pciBusId, bytes) else pciBusId).upper()
        for gpu in self.scenario.gpus:
            bus_id = self._bus_id(gpu)
            if text in (bus_id, bus_id[4:]):
                self._check_faults("nvmlDeviceGetHandleByPciBusId", gpu)
                return self._gpu_handles[gpu.index]
        raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)

    @device_call(physical=True)
    def nvmlDeviceGetMaxClockInfo(self, gpu: GpuSpec, instance: None, type: int) -> int:
        if type not in CLOCK_TYPES:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return getattr(gpu.model.max_clocks, CLOCK_TYPES[type])

    @device_call(physical=True)
    def nvmlDeviceGetPowerManagementLimit(self, gpu: GpuSpec, instance: None) -> int:
        return round(self._power_limit_watts(gpu) * 1000)

    @device_call(physical=True)
    def nvmlDeviceGetPowerManagementDefaultLimit(self, gpu: GpuSpec, instance: None) -> int:
        return round(gpu.model.power_limit_watts * 1000)

    @device_call(physical=True)
    def nvmlDeviceGetPersistenceMode(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_FEATURE_ENABLED  # as a GPU server runs its driver

    @device_call(physical=True)
    def nvmlDeviceGetPerformanceState(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_PSTATE_0

    @device_call(physical=True)
    def nvmlDeviceGetComputeMode(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_COMPUTEMODE_DEFAULT

    @device_call(physical=True)
    def nvmlDeviceGetDisplayMode(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_FEATURE_DISABLED

    @device_call(physical=True)
    def nvmlDeviceGetDisplayActive(self, gpu: GpuSpec, instance: None) -> int:
        return pynvml.NVML_FEATURE_DISABLED

    @device_call()
    def nvmlDeviceGetCudaComputeCapability(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> tuple[int, int]:
        # Ampere GA100 is 8.0, Hopper GH100 9.0 (CUDA C++ Programming Guide, compute capabilities).
        return (9, 0) if gpu.model.architecture == pynvml.NVML_DEVICE_ARCH_HOPPER else (8, 0)

    @device_call(physical=True)
    def nvmlDeviceGetBAR1MemoryInfo(self, gpu: GpuSpec, instance: None) -> Any:
        # Data-centre boards map their whole framebuffer: BAR1 is the next power of two above it.
        total = 1 << (gpu.model.memory_total_bytes - 1).bit_length()
        return pynvml.c_nvmlBAR1Memory_t(
            bar1Total=total, bar1Free=total - BAR1_USED_BYTES, bar1Used=BAR1_USED_BYTES
        )

    @device_call(physical=True)
    def nvmlDeviceGetDriverModel(self, gpu: GpuSpec, instance: None) -> list[int]:
        raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)  # a Windows-only notion (nvml.h)

    nvmlDeviceGetDriverModel_v2 = nvmlDeviceGetDriverModel
    nvmlDeviceGetCurrentDriverModel = nvmlDeviceGetDriverModel
    nvmlDeviceGetPendingDriverModel = nvmlDeviceGetDriverModel


