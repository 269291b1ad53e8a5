"""The process calls of the ``pynvml`` stand-in: running processes and their utilization
samples, stamped by the wall clock as the driver stamps them."""

from __future__ import annotations

from typing import Any

import pynvml

from otel_gpu.simulate.fake_nvml_parts import (
    NO_ID,
    SAMPLING_PERIOD_US,
    device_call,
    nvml_error,
)
from otel_gpu.simulate.spec import (
    GpuSpec,
    MigInstanceSpec,
)


class ProcessServing:
    """``FakeNvml``'s process lists and utilization samples."""

    @device_call()
    def nvmlDeviceGetComputeRunningProcesses(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> list[Any]:
        layout = self._layout(gpu)
        result = []
        for process in self._processes(gpu):
            if instance is not None and process.mig_instance != instance.index:
                continue
            gi = ci = NO_ID
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
        stamp = now - now % SAMPLING_PERIOD_US
        floor = self._last_stamp_us + (1 if self.cycle != self._sample_cycle else 0)
        self._sample_cycle = self.cycle
        self._last_stamp_us = max(stamp, floor)
        return self._last_stamp_us

    def _process_samples(self, gpu: GpuSpec, last_seen_us: int) -> list[tuple[int, int, int, int]]:
        """(pid, stamp, sm %, memory %) of the samples newer than ``last_seen_us``."""
        if gpu.mig:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        stamp = self._sample_stamp_us()
        samples = []
        if last_seen_us < stamp:
            for process in self._processes(gpu):
                sm = round((self._value(process.sm_utilization) or 0.0) * 100)
                memory = round((self._value(process.memory_utilization) or 0.0) * 100)
                if sm or memory:
                    samples.append((process.pid, stamp, sm, memory))
        if not samples:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    @device_call(physical=True)
    def nvmlDeviceGetProcessUtilization(
        self, gpu: GpuSpec, instance: None, timeStamp: int
    ) -> list[Any]:
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(
                pid=pid, timeStamp=stamp, smUtil=sm, memUtil=memory, encUtil=0, decUtil=0
            )
            for pid, stamp, sm, memory in self._process_samples(gpu, timeStamp)
        ]

    @device_call(physical=True)
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

    @device_call()
    def nvmlDeviceGetGraphicsRunningProcesses(
        self, gpu: GpuSpec, instance: MigInstanceSpec | None
    ) -> list[Any]:
        return []  # a compute server: no process has a graphics context

    @device_call()
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

