"""The MIG calls of the ``pynvml`` stand-in: devices, GPU instances and their placements."""

from __future__ import annotations

from typing import Any

import pynvml

from otel_gpu.simulate.fake_nvml_parts import (
    GpuHandle,
    GpuInstanceHandle,
    GpuInstanceInfo,
    MigHandle,
    Placement,
    device_call,
    nvml_error,
)
from otel_gpu.simulate.spec import (
    GpuSpec,
    MigInstanceSpec,
)


class MigServing:
    """``FakeNvml``'s MIG calls."""

    @device_call(physical=True)
    def nvmlDeviceGetMigMode(self, gpu: GpuSpec, instance: None) -> list[int]:
        current = 1 if gpu.mig else 0
        pending = 1 - current if self._value(gpu.mig_pending) else current
        return [current, pending]

    @device_call(physical=True)
    def nvmlDeviceGetMaxMigDeviceCount(self, gpu: GpuSpec, instance: None) -> int:
        return gpu.model.compute_slices if gpu.mig else 0

    @device_call(physical=True)
    def nvmlDeviceGetMigDeviceHandleByIndex(
        self, gpu: GpuSpec, instance: None, index: int
    ) -> MigHandle:
        layout = self._layout(gpu)
        if layout is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < gpu.model.compute_slices:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(layout.instances):
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return self._mig_handle(gpu, layout, index)

    def _require_mig(self, instance: MigInstanceSpec | None) -> MigInstanceSpec:
        if instance is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return instance

    @device_call()
    def nvmlDeviceGetGpuInstanceId(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> int:
        return self._require_mig(instance).gpu_instance_id

    @device_call()
    def nvmlDeviceGetComputeInstanceId(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> int:
        self._require_mig(instance)
        return 0

    @device_call()
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

    @device_call()
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> GpuHandle:
        if instance is None:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu_handles[gpu.index]

    @device_call(physical=True)
    def nvmlDeviceGetGpuInstanceById(
        self, gpu: GpuSpec, instance: None, gpuInstanceId: int
    ) -> GpuInstanceHandle:
        layout = self._layout(gpu)
        if layout is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not any(i.gpu_instance_id == gpuInstanceId for i in layout.instances):
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        key = (gpu.index, layout.generation, gpuInstanceId)
        if key not in self._gi_handles:
            self._gi_handles[key] = GpuInstanceHandle(self, *key)
        return self._gi_handles[key]

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> GpuInstanceInfo:
        self._require_init()
        if not isinstance(gpuInstance, GpuInstanceHandle) or gpuInstance.owner is not self:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.scenario.gpus[gpuInstance.gpu_index]
        self._check_faults("nvmlGpuInstanceGetInfo", gpu)
        layout = self._layout(gpu)
        if layout is None or layout.generation != gpuInstance.generation:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        spec = next(i for i in layout.instances if i.gpu_instance_id == gpuInstance.gpu_instance_id)
        return GpuInstanceInfo(
            self._gpu_handles[gpu.index],
            spec.gpu_instance_id,
            spec.profile.profile_id,
            Placement(spec.start, spec.size),
        )

