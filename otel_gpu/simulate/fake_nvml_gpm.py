"""The GPM and event calls of the ``pynvml`` stand-in."""

from __future__ import annotations

from typing import Any

import pynvml

from otel_gpu.simulate.fake_nvml_parts import (
    GPM_METRIC_FIELDS,
    NO_ID,
    EventData,
    EventSet,
    GpmSample,
    device_call,
    nvml_error,
)
from otel_gpu.simulate.spec import (
    GpmValues,
    GpuSpec,
    MigInstanceSpec,
    at_cycle,
)


class GpmAndEventServing:
    """``FakeNvml``'s GPM samples and Xid event sets."""

    @device_call()
    def nvmlGpmQueryDeviceSupport(self, gpu: GpuSpec, instance: MigInstanceSpec | None) -> Any:
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if gpu.model.gpm_supported else 0
        return support

    def nvmlGpmSampleAlloc(self) -> GpmSample:
        self._require_init()
        return GpmSample()

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        self._require_init()
        self._check_sample(gpmSample)
        gpmSample.freed = True

    def _check_sample(self, sample: Any) -> GpmSample:
        if not isinstance(sample, GpmSample) or sample.freed:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return sample

    def _fill_sample(
        self, sample: Any, gpu: GpuSpec, target: tuple[Any, ...], values: GpmValues | None
    ) -> GpmSample:
        if not gpu.model.gpm_supported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        sample = self._check_sample(sample)
        sample.gpu_index = gpu.index
        sample.target = target
        sample.values = values
        sample.cycle = self.cycle
        return sample

    @device_call()
    def nvmlGpmSampleGet(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None, gpmSample: Any
    ) -> GpmSample:
        if instance is None:
            return self._fill_sample(gpmSample, gpu, (gpu.uuid,), gpu.gpm)
        return self._fill_sample(gpmSample, gpu, (gpu.uuid, instance.uuid), instance.gpm)

    @device_call(physical=True)
    def nvmlGpmMigSampleGet(
        self, gpu: GpuSpec, instance: None, gpuInstanceId: int, gpmSample: Any
    ) -> GpmSample:
        layout = self._layout(gpu)
        if layout is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        for spec in layout.instances:
            if spec.gpu_instance_id == gpuInstanceId:
                return self._fill_sample(gpmSample, gpu, (gpu.uuid, spec.uuid), spec.gpm)
        raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        self._require_init()
        if metricsGet.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise nvml_error(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first = self._check_sample(metricsGet.sample1)
        second = self._check_sample(metricsGet.sample2)
        if first.target is None or first.target != second.target:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= metricsGet.numMetrics <= len(metricsGet.metrics):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._check_faults("nvmlGpmMetricsGet", self.scenario.gpus[second.gpu_index])
        for metric in metricsGet.metrics[: metricsGet.numMetrics]:
            name = GPM_METRIC_FIELDS.get(metric.metricId)
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

    def nvmlEventSetCreate(self) -> EventSet:
        self._require_init()
        self._check_driver_faults("nvmlEventSetCreate")
        return EventSet()

    def _check_event_set(self, event_set: Any) -> EventSet:
        if not isinstance(event_set, EventSet) or event_set.freed:
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return event_set

    @device_call()
    def nvmlDeviceRegisterEvents(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None, eventTypes: int, eventSet: Any
    ) -> None:
        if instance is not None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        event_set = self._check_event_set(eventSet)
        mask, since = event_set.registered.get(gpu.index, (0, self.cycle))
        event_set.registered[gpu.index] = (mask | eventTypes, since)

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> EventData:
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
            gi = ci = NO_ID
            if event.mig_instance is not None and gpu.mig:
                gi, ci = gpu.mig.layout_at(cycle).instances[event.mig_instance].gpu_instance_id, 0
            return EventData(
                self._gpu_handles[gpu_index],
                pynvml.nvmlEventTypeXidCriticalError,
                event.code,
                gi,
                ci,
            )
        raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)

    nvmlEventSetWait = nvmlEventSetWait_v2

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._require_init()
        self._check_event_set(eventSet).freed = True


