"""Which part of a Snapshot one training process reports.

Under torchrun-style jobs every rank of a node runs a session; each reports its own device and
only local rank 0 reports the host, so that every device and the host are reported once per node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from otel_gpu.snapshot import Insight, Snapshot, each_device
from otel_gpu.sources.identity import visible_devices


def rank_devices(environ: Mapping[str, str] | None = None) -> tuple[list[str] | None, bool]:
    """The devices this rank reports and whether it reports the host.

    With ``LOCAL_RANK`` set, a rank reports the ``LOCAL_RANK``-th visible device, and only local
    rank 0 reports the host. ``None`` for devices means all of them.
    """
    env = os.environ if environ is None else environ
    devices = visible_devices(env)
    local_rank = env.get("LOCAL_RANK")
    if local_rank is None or not local_rank.strip().isdigit():
        return devices, True
    rank = int(local_rank)
    if devices is None:
        return [str(rank)], rank == 0
    return (devices[rank:rank + 1] if rank < len(devices) else []), rank == 0


def scope_snapshot(snapshot: Snapshot, devices: Sequence[str] | None,
                   report_host: bool) -> Snapshot:
    """The part of a Snapshot this process reports."""
    if devices is None and report_host:
        return snapshot
    gpus = snapshot.gpus
    if devices is not None:
        wanted = set(devices)
        kept = []
        for gpu in gpus:
            if str(gpu.index) in wanted or gpu.uuid in wanted:
                kept.append(gpu)
                continue
            migs = tuple(m for m in gpu.mig_devices if m.uuid in wanted)
            if migs:
                kept.append(replace(gpu, mig_devices=migs,
                                    processes=tuple(p for m in migs for p in m.processes)))
        gpus = tuple(kept)
    kept_ids = {(mig or gpu).uuid for gpu, mig in each_device(gpus)}
    insights = tuple(i for i in snapshot.insights if _insight_in_scope(i, kept_ids, report_host))
    accounts = tuple(a for a in snapshot.accounts if a.attributes.get("hw.id") in kept_ids)
    return replace(snapshot, gpus=gpus, host=snapshot.host if report_host else None,
                   insights=insights, accounts=accounts)


def _insight_in_scope(insight: Insight, device_ids: set[str], report_host: bool) -> bool:
    """Device insights go with their device; the others (host, containers) with the host, and
    a training run's with the process that trains."""
    device = insight.attributes.get("hw.id")
    if device is not None:
        return device in device_ids
    return report_host or (insight.rule == "input_bound" and not _is_container(insight))


def _is_container(insight: Insight) -> bool:
    return any(key.startswith(("container.", "k8s.")) for key in insight.attributes)


class _Cache(Protocol):
    def get(self) -> Snapshot: ...


class ScopedCache:
    """A SnapshotCache as one process sees it: its devices only, nothing after close or fork."""

    def __init__(self, cache: _Cache, devices: Sequence[str] | None, host: bool) -> None:
        self._cache = cache
        self._devices = devices
        self._host = host
        self._pid = os.getpid()
        self.closed = False
        self._empty: Snapshot | None = None
        self._scoped: tuple[Snapshot, Snapshot] | None = None  # (cycle's Snapshot, our part)

    def get(self) -> Snapshot:
        if self.closed or os.getpid() != self._pid:
            if self._empty is None:
                self._empty = Snapshot(cycle=-1, timestamp=0.0, driver_available=False)
            return self._empty
        base = self._cache.get()
        scoped = self._scoped
        if scoped is None or scoped[0] is not base:
            # Scoped once per cycle, not once per instrument callback.
            scoped = (base, scope_snapshot(base, self._devices, self._host))
            self._scoped = scoped
        return scoped[1]
