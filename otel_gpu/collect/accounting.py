"""Accounting: device-seconds and energy per workload, summed over consecutive Snapshots.

Each cycle credits the interval since the previous Snapshot to the workloads holding a device
in the new one (a workload is the processes of one user in one container or pod on one device):

- Time. A whole GPU counts 1 device-second per second; a MIG device counts its share of the
  GPU's compute slices (``compute_slices / mig_compute_slices_total``: a 1g slice of 7 counts
  1/7). Several workloads on one device split its seconds by the sharing rule below. Each
  second is ``busy`` when the device's activity is at least ``BUSY_ACTIVITY``, ``idle`` below
  it, ``unknown`` when there is no activity reading (a MIG device without GPM).
- Energy. The GPU's energy counter over the interval (else its power times the interval) is
  split between MIG devices by their slice share, then between the workloads on one device by
  the sharing rule. The energy of free MIG slices is charged to no one.
- Sharing rule. By the workloads' SM utilization samples when every workload has one and they
  sum above zero; else by their device memory when every workload has a figure; else equally.

Intervals longer than ``max_gap_s`` (a stalled agent, a suspended host) are not credited: no
one knows who held the device then. Counts start when the agent starts; a workload not seen on
a device for ``retention_s`` is forgotten and starts again from zero if it comes back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from otel_gpu.snapshot import (
    Attributes,
    Gpu,
    MigDevice,
    Snapshot,
    Workload,
    WorkloadAccount,
    device_identity,
)

# Activity (GPU utilization, SM utilization or GPM SM activity, 0..1) at or above which a held
# second counts as busy: the level at which the device_idle insight clears.
BUSY_ACTIVITY = 0.05
DEFAULT_MAX_GAP_S = 300.0
DEFAULT_RETENTION_S = 86_400.0
MIG_COMPUTE_SLICES = 7  # every MIG-capable NVIDIA GPU so far (A100, H100, H200)

_PROFILE_SLICES = re.compile(r"^(\d+)g\.")

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class _Holding:
    """One workload's part of one device over one interval."""

    key: Key
    attributes: Attributes
    weight: float  # device-seconds per second, and its part of the GPU's energy
    slices: float  # MIG compute slices held (times its share of the device)
    state: str  # busy, idle or unknown


class Accountant:
    """Sums what workloads used, cycle after cycle; ``update()`` returns the Snapshot with its
    ``accounts``. Never raises on odd readings: a value it cannot use credits nothing."""

    def __init__(self, *, max_gap_s: float = DEFAULT_MAX_GAP_S,
                 retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.max_gap_s = max_gap_s
        self.retention_s = retention_s
        self._accounts: dict[Key, WorkloadAccount] = {}
        self._previous: Snapshot | None = None

    def update(self, snapshot: Snapshot) -> Snapshot:
        if snapshot.gpus:
            previous, self._previous = self._previous, snapshot
            if previous is not None:
                seconds = snapshot.timestamp - previous.timestamp
                if 0 < seconds <= self.max_gap_s:
                    self._credit(previous, snapshot, seconds)
            self._forget(snapshot.timestamp)
        if not self._accounts and not snapshot.accounts:
            return snapshot  # nothing to add: a Snapshot's copy costs more than the rest here
        return replace(snapshot, accounts=tuple(self._accounts.values()))

    def _credit(self, previous: Snapshot, now: Snapshot, seconds: float) -> None:
        before = {gpu.uuid: gpu for gpu in previous.gpus}
        by_device: dict[str, list[Workload]] = {}
        for workload in now.workloads:
            by_device.setdefault(workload.device_uuid, []).append(workload)
        for gpu in now.gpus:
            if gpu.lost:
                continue
            energy = _energy(before.get(gpu.uuid), gpu, seconds)
            for holding in holdings(gpu, by_device):
                account = self._accounts.get(holding.key) or WorkloadAccount(holding.attributes)
                held = holding.weight * seconds
                self._accounts[holding.key] = replace(
                    account,
                    attributes=holding.attributes,
                    busy_s=account.busy_s + (held if holding.state == "busy" else 0.0),
                    idle_s=account.idle_s + (held if holding.state == "idle" else 0.0),
                    unknown_s=account.unknown_s + (held if holding.state == "unknown" else 0.0),
                    slice_s=account.slice_s + holding.slices * seconds,
                    energy_joules=account.energy_joules + (energy or 0.0) * holding.weight,
                    last_held=now.timestamp,
                )

    def _forget(self, now: float) -> None:
        stale = [k for k, a in self._accounts.items() if now - a.last_held > self.retention_s]
        for key in stale:
            del self._accounts[key]


def holdings(gpu: Gpu, by_device: dict[str, list[Workload]]) -> list[_Holding]:
    """The workloads holding ``gpu`` or its MIG devices (``by_device``: workloads by device
    UUID), each with its weight and shares."""
    found: list[_Holding] = []
    if gpu.mig_enabled:
        total = gpu.mig_compute_slices_total or MIG_COMPUTE_SLICES
        for mig in gpu.mig_devices:
            on_it = by_device.get(mig.uuid, [])
            slices = mig_slices(mig)
            if not on_it or slices is None:
                continue
            device_share = min(slices / total, 1.0)
            activity = mig.gpm.sm_utilization if mig.gpm is not None else None
            for workload, share in zip(on_it, sharing(on_it), strict=True):
                found.append(_holding(gpu, mig, workload, device_share * share,
                                      slices * share, activity))
        return found
    on_it = by_device.get(gpu.uuid, [])
    for workload, share in zip(on_it, sharing(on_it), strict=True):
        found.append(_holding(gpu, None, workload, share, 0.0, _gpu_activity(gpu, workload)))
    return found


def mig_slices(mig: MigDevice) -> int | None:
    """The compute slices of a MIG device, from NVML or else from its profile name (``3g.``)."""
    if mig.compute_slices:
        return mig.compute_slices
    match = _PROFILE_SLICES.match(mig.profile or "")
    return int(match.group(1)) if match else None


def sharing(workloads: list[Workload]) -> list[float]:
    """Each workload's part of one device: by SM samples, else by memory, else equal."""
    sm = [w.sm_utilization for w in workloads]
    if all(v is not None for v in sm) and sum(sm) > 0:  # type: ignore[arg-type]
        return [v / sum(sm) for v in sm]  # type: ignore[operator,arg-type]
    memory = [w.memory_bytes for w in workloads]
    if all(v is not None for v in memory) and sum(memory) > 0:  # type: ignore[arg-type]
        return [v / sum(memory) for v in memory]  # type: ignore[operator,arg-type]
    return [1.0 / len(workloads)] * len(workloads) if workloads else []


def _gpu_activity(gpu: Gpu, workload: Workload) -> float | None:
    if workload.sm_utilization is not None:
        return workload.sm_utilization
    if gpu.utilization_general is not None:
        return gpu.utilization_general
    return gpu.gpm.sm_utilization if gpu.gpm is not None else None


def _holding(gpu: Gpu, mig: MigDevice | None, workload: Workload, weight: float,
             slices: float, activity: float | None) -> _Holding:
    state = "unknown" if activity is None else "busy" if activity >= BUSY_ACTIVITY else "idle"
    key: Key = (workload.device_uuid, tuple(sorted(workload.attributes.items())))
    return _Holding(key, {**device_identity(gpu, mig), **workload.attributes}, weight, slices,
                    state)


def _energy(before: Gpu | None, now: Gpu, seconds: float) -> float | None:
    """Joules the GPU used over the interval: its energy counter's increase, else its mean
    power times the interval. A counter that went back (driver reload) gives the power figure."""
    if before is not None and before.energy_joules is not None and now.energy_joules is not None:
        spent = now.energy_joules - before.energy_joules
        if spent >= 0:
            return spent
    watts = [g.power_watts for g in (before, now) if g is not None and g.power_watts is not None]
    return sum(watts) / len(watts) * seconds if watts else None
