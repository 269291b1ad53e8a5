"""Host source: CPU, memory, paging, disks, network interfaces and filesystems, read with psutil.

Each kind is read with one psutil call per cycle and the catalog derives every metric of that kind
from the one answer, so all points of a cycle agree. A failed call becomes a ``SourceError`` and
leaves only its own fields empty.

CPU utilization is the change in cumulative CPU time between two reads of this source divided by
the elapsed time times the number of logical CPUs. The source keeps the previous sample itself:
psutil's ``cpu_percent`` keeps its previous sample per calling thread, and its first answer
compares against nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import psutil

from otel_gpu.snapshot import DiskIo, Filesystem, HostSnapshot, NetworkIo, SourceError

SOURCE = "host"

# Block devices that are no disk of their own: loop devices (files and snap images), RAM disks,
# zram (compressed RAM, usually swap) and floppies, plus the partitions of whole disks
# (sda1, vda2, xvdb1, nvme0n1p1, mmcblk0p1), whose I/O the whole disk already counts; summing
# system.disk.io over system.device stays meaningful. Device-mapper and md devices are kept.
_SKIPPED_DISK = re.compile(
    r"^(?:(?:z?ram|loop|fd)\d+|(?:h|s|v|xv)d[a-z]+\d+|(?:nvme\d+n\d+|mmcblk\d+)p\d+)$"
)

_SKIPPED_NETWORK = frozenset({"lo"})

# Read-only images that are always full; reporting them would only look like full disks.
_SKIPPED_FILESYSTEM_TYPES = frozenset({"squashfs"})

# psutil cpu_times field -> cpu.mode. Fields a platform lacks are left out. Linux counts guest
# time inside user and nice already, so guest fields are not added.
_CPU_MODES: dict[str, tuple[str, ...]] = {
    "user": ("user",),
    "system": ("system",),
    "nice": ("nice",),
    "idle": ("idle",),
    "iowait": ("iowait",),
    "interrupt": ("irq", "softirq", "interrupt", "dpc"),
    "steal": ("steal",),
}

SIMULATED_DEVICE = "sim"

# CPU times advance in kernel ticks (10 ms at USER_HZ 100): two reads closer than this give
# deltas of zero, not a utilization.
_MIN_CPU_INTERVAL_S = 0.1

_T = TypeVar("_T")


class HostOverrides(Protocol):
    """What a simulated scenario may impose on the host readings."""

    memory_used_ratio: float | None
    filesystems: Sequence[tuple[str, int, int]]  # (mountpoint, size_bytes, used_bytes)


class HostSource:
    """Reads the host once per call to ``read``.

    ``root_filesystems_only`` (the default) reports only filesystems on real block devices
    (``psutil.disk_partitions(all=False)``); with ``False`` every mounted filesystem with a
    non-zero size is reported, tmpfs and the like included. Either way a block device mounted at
    more than one mountpoint (bind mounts) is reported once, at its first mountpoint; pseudo
    filesystems, whose device is a name such as ``tmpfs``, are told apart by mountpoint.
    """

    def __init__(self, *, root_filesystems_only: bool = True) -> None:
        self._root_filesystems_only = root_filesystems_only
        self._previous_cpu: tuple[float, dict[str, float]] | None = None

    def read(
        self, overrides: HostOverrides | None = None
    ) -> tuple[HostSnapshot, list[SourceError]]:
        errors: list[SourceError] = []

        def call(name: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                errors.append(SourceError(SOURCE, f"psutil.{name}", type(exc).__name__))
                return None

        now = time.monotonic()
        cpu_times = call("cpu_times", psutil.cpu_times, percpu=False)
        logical_count = call("cpu_count", psutil.cpu_count, logical=True)
        cpu_time_s = _cpu_modes(cpu_times) if cpu_times is not None else {}
        cpu_utilization: dict[str, float] = {}
        if cpu_time_s:
            previous = self._previous_cpu
            if previous is not None and now - previous[0] < _MIN_CPU_INTERVAL_S:
                pass  # too short for the kernel's tick: keep the older baseline
            else:
                if previous is not None and logical_count:
                    cpu_utilization = _utilization(previous, (now, cpu_time_s), logical_count)
                self._previous_cpu = (now, cpu_time_s)

        memory_total: int | None = None
        memory_available: int | None = None
        memory_state: dict[str, int] = {}
        vm = call("virtual_memory", psutil.virtual_memory)
        if vm is not None:
            memory_total = int(vm.total)
            memory_available = int(vm.available)
            memory_state["used"] = max(memory_total - memory_available, 0)
            memory_state["free"] = int(vm.free)
            for state in ("buffers", "cached"):
                value = getattr(vm, state, None)
                if value is not None:
                    memory_state[state] = int(value)

        swap_state: dict[str, int] = {}
        swap = call("swap_memory", psutil.swap_memory)
        if swap is not None:
            swap_state = {"used": int(swap.used), "free": int(swap.free)}

        disks: dict[str, DiskIo] = {}
        for name, io in (
            call("disk_io_counters", psutil.disk_io_counters, perdisk=True) or {}
        ).items():
            if _SKIPPED_DISK.match(name):
                continue
            disks[name] = DiskIo(
                read_bytes=int(io.read_bytes),
                write_bytes=int(io.write_bytes),
                read_operations=int(io.read_count),
                write_operations=int(io.write_count),
            )

        networks: dict[str, NetworkIo] = {}
        for name, io in (
            call("net_io_counters", psutil.net_io_counters, pernic=True) or {}
        ).items():
            if name in _SKIPPED_NETWORK:
                continue
            networks[name] = NetworkIo(
                receive_bytes=int(io.bytes_recv),
                transmit_bytes=int(io.bytes_sent),
                receive_dropped=int(io.dropin),
                transmit_dropped=int(io.dropout),
            )

        partitions = call(
            "disk_partitions", psutil.disk_partitions, all=not self._root_filesystems_only
        )
        filesystems = self._filesystems(partitions or [], call)

        if overrides is not None:
            ratio = getattr(overrides, "memory_used_ratio", None)
            if ratio is not None and memory_total is not None:
                used = round(memory_total * min(max(float(ratio), 0.0), 1.0))
                # The simulated split is used/free only; buffers and cached would contradict it.
                memory_state = {"used": used, "free": memory_total - used}
                memory_available = memory_total - used
            simulated = getattr(overrides, "filesystems", None) or ()
            filesystems = _with_simulated(filesystems, simulated)

        snapshot = HostSnapshot(
            cpu_time_s=cpu_time_s,
            cpu_utilization=cpu_utilization,
            cpu_logical_count=int(logical_count) if logical_count else None,
            memory_total_bytes=memory_total,
            memory_state_bytes=memory_state,
            memory_available_bytes=memory_available,
            swap_state_bytes=swap_state,
            disks=disks,
            networks=networks,
            filesystems=tuple(filesystems),
        )
        return snapshot, errors

    def _filesystems(self, partitions: Iterable[Any], call: Callable[..., Any]) -> list[Filesystem]:
        filesystems: list[Filesystem] = []
        seen: set[str] = set()
        for part in partitions:
            key = part.device if part.device.startswith("/") else part.mountpoint
            if key in seen or part.fstype in _SKIPPED_FILESYSTEM_TYPES:
                continue
            usage = call("disk_usage", psutil.disk_usage, part.mountpoint)
            if usage is None or usage.total <= 0:
                continue
            seen.add(key)
            used, free = int(usage.used), int(usage.free)
            filesystems.append(
                Filesystem(
                    device=part.device,
                    mountpoint=part.mountpoint,
                    type=part.fstype,
                    mode="ro" if "ro" in part.opts.split(",") else "rw",
                    used_bytes=used,
                    free_bytes=free,
                    # Blocks kept for root: psutil's free is what unprivileged users may use.
                    reserved_bytes=max(int(usage.total) - used - free, 0),
                )
            )
        return filesystems


def _cpu_modes(times: Any) -> dict[str, float]:
    modes: dict[str, float] = {}
    for mode, fields in _CPU_MODES.items():
        values = [getattr(times, f) for f in fields if hasattr(times, f)]
        if values:
            modes[mode] = float(sum(values))
    return modes


def _utilization(
    previous: tuple[float, dict[str, float]],
    current: tuple[float, dict[str, float]],
    logical_count: int,
) -> dict[str, float]:
    (then, before), (now, after) = previous, current
    capacity = (now - then) * logical_count
    if capacity <= 0:
        return {}
    return {
        mode: min(max((value - before[mode]) / capacity, 0.0), 1.0)
        for mode, value in after.items()
        if mode in before
    }


def _with_simulated(
    filesystems: list[Filesystem], simulated: Iterable[tuple[str, int, int]]
) -> list[Filesystem]:
    replacements = {
        mountpoint: Filesystem(
            device=SIMULATED_DEVICE,
            mountpoint=mountpoint,
            type="ext4",
            mode="rw",
            used_bytes=int(used),
            free_bytes=max(int(size) - int(used), 0),
            reserved_bytes=0,
        )
        for mountpoint, size, used in simulated
    }
    kept = [fs for fs in filesystems if fs.mountpoint not in replacements]
    return kept + list(replacements.values())
