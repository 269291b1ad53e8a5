"""Whether a slow input pipeline waits on storage: the evidence ``input_bound`` names when the
data wait comes with storage being read and the CPUs are not the limit.

Storage is being read when, over the trailing rate span, the container's tasks stalled on I/O
(its cgroup's PSI io ``some`` time, Documentation/accounting/psi.rst) for a share of the time,
or its block devices (io.stat) or an NFS mount of the host (mountstats' server bytes) delivered
bytes at a rate; an NFS mount is the host's, so it is named as where the data likely comes from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.insights.window import ContainerKey, Sample, pct
from otel_gpu.snapshot import ContainerResources

STORAGE_REMEDY = (
    "The data arrives from storage slower than the GPU takes it, and the CPUs are not the "
    "limit: copy or cache the dataset on node-local NVMe or in memory, pack many small files "
    "into large shards (WebDataset tar shards, TFRecord files), read in parallel (more "
    "DataLoader workers, or more DALI reader threads), and prefetch further ahead."
)


@dataclass(frozen=True)
class StorageReads:
    """Rates over the trailing span; None where a figure is not known."""

    io_pressure: float | None = None  # share of time some task of the container waited on I/O
    disk_read_bytes_per_s: float | None = None  # the container's block-device reads
    nfs: tuple[str, str, float] | None = None  # the most-read NFS mount: point, device, bytes/s

    def _levels(self) -> tuple[tuple[float | None, bool], ...]:
        nfs = self.nfs[2] if self.nfs is not None else None
        return ((self.io_pressure, True), (self.disk_read_bytes_per_s, False), (nfs, False))

    def raised(self, t: Thresholds) -> bool:
        """At or over a raise threshold (as ``level`` raises)."""
        return any(value is not None and value >= (
            t.storage_io_pressure if is_pressure else t.storage_read_bytes_per_s)
            for value, is_pressure in self._levels())

    def held(self, t: Thresholds) -> bool:
        """Over a clear threshold (as ``level`` holds)."""
        return any(value is not None and value > (
            t.storage_io_pressure_clear if is_pressure else t.storage_read_bytes_per_s_clear)
            for value, is_pressure in self._levels())

    def phrase(self) -> str:
        """What was measured, in words."""
        parts = []
        if self.io_pressure is not None:
            parts.append(f"its tasks waited for I/O {pct(self.io_pressure)} of the time")
        if self.disk_read_bytes_per_s:
            parts.append(f"it read {self.disk_read_bytes_per_s / 1e6:.0f} MB/s from disk")
        if self.nfs is not None and self.nfs[2] > 0:
            parts.append(f"the NFS mount {self.nfs[0]} ({self.nfs[1]}) was read at "
                         f"{self.nfs[2] / 1e6:.0f} MB/s")
        return ", ".join(parts) or "storage was read"


def storage_reads(newest: Sample, start: Sample, key: ContainerKey | None) -> StorageReads:
    """The storage figures of a container (``key``; None: the host's NFS mounts only) between
    ``start`` and ``newest``."""
    elapsed = newest.snapshot.timestamp - start.snapshot.timestamp
    if start is newest or elapsed <= 0:
        return StorageReads()
    pressure = disk = None
    now = newest.containers.get(key) if key is not None else None
    before = start.containers.get(key) if key is not None else None
    if now is not None and before is not None:
        pressure = _rate(before.resources, now.resources, "io_pressure_some_s", elapsed)
        disk = _rate(before.resources, now.resources, "disk_read_bytes", elapsed)
    return StorageReads(pressure, disk, _busiest_nfs(newest, start, elapsed))


def _rate(before: ContainerResources, now: ContainerResources, name: str,
          elapsed: float) -> float | None:
    a, b = getattr(before, name), getattr(now, name)
    if a is None or b is None or b < a:  # a new cgroup under the same name counts from 0
        return None
    return (b - a) / elapsed


def _busiest_nfs(newest: Sample, start: Sample, elapsed: float) -> tuple[str, str, float] | None:
    if newest.snapshot.host is None or start.snapshot.host is None:
        return None
    before = {m.mountpoint: m for m in start.snapshot.host.nfs}
    best: tuple[str, str, float] | None = None
    for mount in newest.snapshot.host.nfs:
        earlier = before.get(mount.mountpoint)
        if earlier is None or earlier.device != mount.device or mount.read_bytes < \
                earlier.read_bytes:
            continue
        rate = (mount.read_bytes - earlier.read_bytes) / elapsed
        if best is None or rate > best[2]:
            best = (mount.mountpoint, mount.device, rate)
    return best


def host_cpu_busy(sample: Sample) -> float | None:
    """The share of the host's CPU time not idle (I/O wait is idle time) in the last cycle."""
    host = sample.snapshot.host
    if host is None or "idle" not in host.cpu_utilization:
        return None
    idle = host.cpu_utilization["idle"] + host.cpu_utilization.get("iowait", 0.0)
    return min(max(1.0 - idle, 0.0), 1.0)


def cpu_phrase(cpu_of_limit: float | None, limit: float | None, host_busy: float | None) -> str:
    """Why the CPUs are not the limit, in words."""
    if cpu_of_limit is not None and limit:
        return f"it uses {pct(cpu_of_limit)} of its {limit:g} CPUs"
    if host_busy is not None:
        return f"the host's CPUs are {pct(host_busy)} busy"
    return "the CPUs are not busy"


def storage_verdict(reads: StorageReads, cpu: float | None, t: Thresholds) -> tuple[bool, bool]:
    """(raised, held) of "storage is read and the CPUs are not the limit": the CPU-bound band
    of ``input_bound`` mirrored, so that both never raise at once."""
    if cpu is None:
        return False, False
    return (reads.raised(t) and cpu < t.input_bound_cpu_of_limit_clear,
            reads.held(t) and cpu < t.input_bound_cpu_of_limit)


def run_container(newest: Sample, attributes: dict[str, str]) -> ContainerKey | None:
    """The container a training run is in: the one its attributes name, else the only one the
    Snapshot has (a session inside a container sees its own)."""
    cid = attributes.get("container.id")
    if cid is not None:
        key: ContainerKey = ("container", cid)
        return key if key in newest.containers else None
    keys: Sequence[ContainerKey] = list(newest.containers)
    return keys[0] if len(keys) == 1 else None
