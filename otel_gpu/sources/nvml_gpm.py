"""GPU Performance Monitoring (Hopper and later), read for ``NvmlSource``: two samples per
device, the second of a cycle against the one before; a device seen for the first time is sampled
twice, ``_gpm_warmup_s`` apart, in the same cycle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from otel_gpu.snapshot import GpmMetrics, Gpu
from otel_gpu.sources.libnvml import (
    GPM_FIELDS,
    Caller,
    present,
)


class GpmReader:
    """``NvmlSource``'s GPM reads; they use its ``_nvml``, ``_gpm_samples`` (the last sample of
    each device, by UUID), ``_gpm_warmup_s`` and ``_sleep``."""

    _nvml: Any
    _gpm_samples: dict[str, Any]
    _gpm_warmup_s: float
    _sleep: Callable[[float], None]

    def _gpm(
        self, call: Caller, key: str, pending: list, sample_call: Callable[[Any], tuple]
    ) -> GpmMetrics | None:
        sample = call("nvmlGpmSampleAlloc")
        if not present(sample):
            return None
        fn, *args = sample_call(sample)
        if not present(call(fn, *args)):
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

    def _gpm_metrics(self, call: Caller, first: Any, second: Any) -> GpmMetrics | None:
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.sample1 = first
        request.sample2 = second
        ids = [(getattr(nvml, const), attr) for const, attr in GPM_FIELDS.items()]
        request.numMetrics = len(ids)
        for i, (metric_id, _) in enumerate(ids):
            request.metrics[i].metricId = metric_id
        result = call("nvmlGpmMetricsGet", request)
        if not present(result):
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
