"""What the collecting side keeps of a run for the end-of-run summary (see ``summary``):
for the devices this process reports, their mean activity and memory peak, and the insights
that fired. Used where collection runs: the child's program and the in-process modes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from otel_gpu.session.protocol import DeviceFigures, RunFigures
from otel_gpu.session.scope import scope_snapshot
from otel_gpu.snapshot import Insight, Snapshot, each_device


@dataclass
class _Device:
    model: str | None
    activity_sum: float = 0.0
    activity_n: int = 0
    memory_peak: int | None = None
    memory_total: int | None = None


class RunRecorder:
    """Device figures and fired insights over the collections of one run (an insight listener
    on a Collector; called on the thread that collects)."""

    def __init__(self, devices: Sequence[str] | None, report_host: bool) -> None:
        self._devices = devices
        self._host = report_host
        self._lock = threading.Lock()
        self._collections = 0
        self._seen: dict[str, _Device] = {}
        self._insights: dict[tuple[str, tuple[tuple[str, Any], ...]], Insight] = {}

    def __call__(self, update: Any, snapshot: Snapshot) -> None:
        scoped = scope_snapshot(snapshot, self._devices, self._host)
        kept = {(i.rule, tuple(sorted(i.attributes.items()))) for i in scoped.insights}
        with self._lock:
            self._collections += 1
            for gpu, mig in each_device(scoped.gpus):
                if gpu.lost or (mig is None and gpu.mig_devices):
                    continue  # a MIG device's figures are its own, not its parent's
                name = mig.name if mig is not None else gpu.name
                seen = self._seen.setdefault(name, _Device(mig.model if mig else gpu.model))
                if mig is not None:
                    activity = mig.gpm.sm_utilization if mig.gpm is not None else None
                    used, total = mig.memory_used_bytes, mig.memory_total_bytes
                else:
                    activity = gpu.utilization_general
                    used, total = gpu.memory_used_bytes, gpu.memory_total_bytes
                if activity is not None:
                    seen.activity_sum += activity
                    seen.activity_n += 1
                if used is not None:
                    seen.memory_peak = used if seen.memory_peak is None else \
                        max(seen.memory_peak, used)
                if total is not None:
                    seen.memory_total = total
            for insight in getattr(update, "fired", ()):
                key = (insight.rule, tuple(sorted(insight.attributes.items())))
                if key in kept:
                    self._insights.setdefault(key, insight)

    def figures(self) -> RunFigures:
        with self._lock:
            devices = tuple(
                DeviceFigures(name, d.model,
                              d.activity_sum / d.activity_n if d.activity_n else None,
                              d.memory_peak, d.memory_total)
                for name, d in self._seen.items())
            return RunFigures(self._collections, devices, tuple(self._insights.values()))
