"""Host source: CPU, memory, paging, disks, network interfaces and filesystems.

On Linux the source reads ``/proc/stat``, ``/proc/meminfo``, ``/proc/diskstats`` and
``/proc/net/dev`` itself, each once per cycle, with the definitions psutil uses, so the values are
psutil's; elsewhere, or for a kind whose ``/proc`` file cannot be read (or lacks the fields it
needs), it asks psutil. The number of logical CPUs is taken once, and the list of mounted
filesystems once per ``partitions_ttl_s``; the usage of each filesystem is read every cycle.
Network and FUSE filesystems, which psutil's listing leaves out, come from ``/proc/self/mounts``
and are read with a bounded wait, and NFS mounts get their byte counters from
``/proc/self/mountstats`` (``otel_gpu.sources.mounts``).

Each kind is read once per cycle and the catalog derives every metric of that kind from the one
answer, so all points of a cycle agree. A failed call becomes a ``SourceError`` and leaves only
its own fields empty. A ``/proc`` line that cannot be parsed is skipped; each file with such lines
adds one ``SourceError`` (``error_type`` ``Malformed``) to the cycle.

CPU utilization is the change in cumulative CPU time between two reads of this source divided by
the elapsed time times the number of logical CPUs. The source keeps the previous sample itself:
psutil's ``cpu_percent`` keeps its previous sample per calling thread, and its first answer
compares against nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import psutil

from otel_gpu.snapshot import DiskIo, Filesystem, HostSnapshot, NetworkIo, NfsIo, SourceError
from otel_gpu.sources.mounts import (
    MAX_REMOTE_MOUNTS,
    NFS_TYPES,
    STATVFS_TIMEOUT_S,
    BoundedStatvfs,
    FilesystemFilter,
    Mount,
    filesystem_of,
    nfs_io,
    parse_mounts,
    parse_mountstats,
)
from otel_gpu.sources.proc_files import (
    SKIPPED_DISK,
    SKIPPED_NETWORK,
    Memory,
    memory_from_meminfo,
    parse_diskstats,
    parse_meminfo,
    parse_net_dev,
    parse_proc_stat,
    swap_from_meminfo,
)

SOURCE = "host"
MALFORMED = "Malformed"

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

PARTITIONS_TTL_S = 60.0

DEFAULT_PROCFS: str | None = "/proc" if sys.platform.startswith("linux") else None

_T = TypeVar("_T")

log = logging.getLogger("otel_gpu")


class HostOverrides(Protocol):
    """What a simulated scenario may impose on the host readings."""

    memory_used_ratio: float | None
    filesystems: Sequence[tuple[str, int, int]]  # (mountpoint, size_bytes, used_bytes)
    cpu_utilization: Mapping[str, float] | None  # share of CPU time by mode


class _Partition(NamedTuple):
    device: str
    mountpoint: str
    type: str
    mode: str


def _clock_ticks() -> float | None:
    try:
        ticks = os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None
    return float(ticks) if ticks > 0 else None


class HostSource:
    """Reads the host once per call to ``read``.

    ``root_filesystems_only`` (the default) reports only filesystems on real block devices
    (``psutil.disk_partitions(all=False)``); with ``False`` every mounted filesystem with a
    non-zero size is reported, tmpfs and the like included. Either way a block device mounted at
    more than one mountpoint (bind mounts) is reported once, at its first mountpoint; pseudo
    filesystems, whose device is a name such as ``tmpfs``, are told apart by mountpoint.

    ``procfs`` is the directory to read ``stat``, ``meminfo``, ``diskstats`` and ``net/dev``
    from (``/proc`` on Linux); ``None`` reads everything through psutil. ``clock``
    (seconds, monotonic) times CPU utilization and the re-listing of filesystems every
    ``partitions_ttl_s``.

    ``filesystems`` says which network and FUSE mounts are added and which filesystems are left
    out; ``mounts_procfs`` is where ``self/mounts`` and ``self/mountstats`` are read (default:
    ``procfs``); ``statvfs`` reads a network or FUSE mount's usage, waited for at most
    ``statvfs_timeout_s``.
    """

    def __init__(
        self,
        *,
        root_filesystems_only: bool = True,
        procfs: str | None = DEFAULT_PROCFS,
        clock: Callable[[], float] = time.monotonic,
        partitions_ttl_s: float = PARTITIONS_TTL_S,
        filesystems: FilesystemFilter | None = None,
        mounts_procfs: str | None = None,
        statvfs: Callable[[str], Any] = os.statvfs,
        statvfs_timeout_s: float = STATVFS_TIMEOUT_S,
    ) -> None:
        self._root_filesystems_only = root_filesystems_only
        self._filter = filesystems if filesystems is not None else FilesystemFilter()
        mounts_root = mounts_procfs if mounts_procfs is not None else procfs
        self._mounts = _ProcFile(mounts_root, "self/mounts") if mounts_root else None
        self._mountstats = _ProcFile(mounts_root, "self/mountstats") if mounts_root else None
        self._statvfs = BoundedStatvfs(statvfs, statvfs_timeout_s)
        self._remote: list[Mount] = []
        self._told_too_many = False
        self._procfs = procfs
        self._ticks = _clock_ticks() if procfs is not None else None
        self._stat = _ProcFile(procfs, "stat", limit=4096)
        self._meminfo = _ProcFile(procfs, "meminfo")
        self._diskstats = _ProcFile(procfs, "diskstats")
        self._net_dev = _ProcFile(procfs, "net/dev")
        files = [self._stat, self._meminfo, self._diskstats, self._net_dev]
        files += [f for f in (self._mounts, self._mountstats) if f is not None]
        self._closer = weakref.finalize(self, _close_all, files, self._statvfs)
        self._clock = clock
        self._partitions_ttl_s = partitions_ttl_s
        self._partitions: list[_Partition] | None = None
        self._partitions_at = 0.0
        self._logical_count: int | None = None
        self._previous_cpu: tuple[float, dict[str, float]] | None = None

    def close(self) -> None:
        """Close the kept files and stop the threads that read network and FUSE mounts."""
        self._closer()

    def read(
        self, overrides: HostOverrides | None = None
    ) -> tuple[HostSnapshot, list[SourceError]]:
        errors: list[SourceError] = []
        call = _PsutilCall(errors)
        now = self._clock()
        cpu_time_s = self._cpu_times(call, errors)
        logical_count = self._logical_cpus(call)
        cpu_utilization = self._cpu_utilization(now, cpu_time_s, logical_count)
        memory, swap_state = self._memory(call, errors)

        memory_total: int | None = None
        memory_available: int | None = None
        memory_state: dict[str, int] = {}
        if memory is not None:
            memory_total, memory_available = memory.total, memory.available
            memory_state["used"] = max(memory_total - memory_available, 0)
            memory_state["free"] = memory.free
            if memory.buffers is not None:
                memory_state["buffers"] = memory.buffers
            if memory.cached is not None:
                memory_state["cached"] = memory.cached

        disks = self._disks(call, errors)
        networks = self._networks(call, errors)
        filesystems = self._filesystems(self._listed_partitions(now, call, errors), call)
        filesystems += self._remote_filesystems(errors)
        nfs = self._nfs(errors)

        if overrides is not None:
            ratio = getattr(overrides, "memory_used_ratio", None)
            if ratio is not None and memory_total is not None:
                used = round(memory_total * min(max(float(ratio), 0.0), 1.0))
                # The simulated split is used/free only; buffers and cached would contradict it.
                memory_state = {"used": used, "free": memory_total - used}
                memory_available = memory_total - used
            simulated = getattr(overrides, "filesystems", None) or ()
            filesystems = _with_simulated(filesystems, simulated)
            cpu = getattr(overrides, "cpu_utilization", None)
            if cpu is not None:
                cpu_utilization = dict(cpu)

        snapshot = HostSnapshot(
            cpu_time_s=cpu_time_s,
            cpu_utilization=cpu_utilization,
            cpu_logical_count=logical_count,
            memory_total_bytes=memory_total,
            memory_state_bytes=memory_state,
            memory_available_bytes=memory_available,
            swap_state_bytes=swap_state,
            disks=disks,
            networks=networks,
            filesystems=tuple(filesystems),
            nfs=nfs,
        )
        return snapshot, errors

    # -- one method per kind: /proc when it can be read, psutil else ----------------------------

    def _proc(
        self, file: _ProcFile, parse: Callable[[bytes], tuple[_T, bool]], errors: list[SourceError]
    ) -> _T | None:
        """``parse`` of ``file``'s contents; None when there is no procfs or the file cannot be
        read. Malformed lines add one error for the file."""
        if self._procfs is None:
            return None
        data = file.read()
        if data is None:
            return None
        value, malformed = parse(data)
        if malformed:
            errors.append(SourceError(SOURCE, file.label, MALFORMED))
        return value

    def _cpu_times(self, call: _PsutilCall, errors: list[SourceError]) -> dict[str, float]:
        ticks = self._ticks
        if ticks is not None:
            modes = self._proc(self._stat, lambda data: _first_cpu_line(data, ticks), errors)
            if modes is not None:
                return modes
        cpu_times = call("cpu_times", psutil.cpu_times, percpu=False)
        return _cpu_modes(cpu_times) if cpu_times is not None else {}

    def _logical_cpus(self, call: _PsutilCall) -> int | None:
        if self._logical_count is None:
            counted = call("cpu_count", psutil.cpu_count, logical=True)
            self._logical_count = int(counted) if counted else None
        return self._logical_count

    def _cpu_utilization(
        self, now: float, cpu_time_s: dict[str, float], logical_count: int | None
    ) -> dict[str, float]:
        if not cpu_time_s:
            return {}
        previous = self._previous_cpu
        if previous is not None and now - previous[0] < _MIN_CPU_INTERVAL_S:
            return {}  # too short for the kernel's tick: keep the older baseline
        self._previous_cpu = (now, cpu_time_s)
        if previous is None or not logical_count:
            return {}
        return _utilization(previous, (now, cpu_time_s), logical_count)

    def _memory(
        self, call: _PsutilCall, errors: list[SourceError]
    ) -> tuple[Memory | None, dict[str, int]]:
        memory: Memory | None = None
        swap_state: dict[str, int] | None = None
        meminfo = self._proc(self._meminfo, parse_meminfo, errors)
        if meminfo is not None:
            memory = memory_from_meminfo(meminfo)
            swap_state = swap_from_meminfo(meminfo)
        if memory is None:
            vm = call("virtual_memory", psutil.virtual_memory)
            if vm is not None:
                memory = Memory(
                    int(vm.total),
                    int(vm.available),
                    int(vm.free),
                    _int_or_none(getattr(vm, "buffers", None)),
                    _int_or_none(getattr(vm, "cached", None)),
                )
        if swap_state is None:
            swap = call("swap_memory", psutil.swap_memory)
            swap_state = {"used": int(swap.used), "free": int(swap.free)} if swap else {}
        return memory, swap_state

    def _disks(self, call: _PsutilCall, errors: list[SourceError]) -> dict[str, DiskIo]:
        disks = self._proc(self._diskstats, parse_diskstats, errors)
        if disks is not None:
            return disks
        counters = call("disk_io_counters", psutil.disk_io_counters, perdisk=True) or {}
        return {
            name: DiskIo(
                read_bytes=int(io.read_bytes),
                write_bytes=int(io.write_bytes),
                read_operations=int(io.read_count),
                write_operations=int(io.write_count),
            )
            for name, io in counters.items()
            if not SKIPPED_DISK.match(name)
        }

    def _networks(self, call: _PsutilCall, errors: list[SourceError]) -> dict[str, NetworkIo]:
        networks = self._proc(self._net_dev, parse_net_dev, errors)
        if networks is not None:
            return networks
        counters = call("net_io_counters", psutil.net_io_counters, pernic=True) or {}
        return {
            name: NetworkIo(
                receive_bytes=int(io.bytes_recv),
                transmit_bytes=int(io.bytes_sent),
                receive_dropped=int(io.dropin),
                transmit_dropped=int(io.dropout),
            )
            for name, io in counters.items()
            if name not in SKIPPED_NETWORK
        }

    def _listed_partitions(
        self, now: float, call: Callable[..., Any], errors: list[SourceError]
    ) -> list[_Partition]:
        """The mounted filesystems, listed again once ``partitions_ttl_s`` has passed; after a
        failed listing the previous list stands and the next cycle tries again. The network
        and FUSE mounts are listed at the same time."""
        if self._partitions is not None and now - self._partitions_at < self._partitions_ttl_s:
            return self._partitions
        listed = call(
            "disk_partitions", psutil.disk_partitions, all=not self._root_filesystems_only
        )
        if listed is None:
            return self._partitions or []
        excludes = self._filter.excludes
        self._partitions = [
            _Partition(
                part.device,
                part.mountpoint,
                part.fstype,
                "ro" if "ro" in part.opts.split(",") else "rw",
            )
            for part in listed
            if part.fstype not in _SKIPPED_FILESYSTEM_TYPES
            and not excludes(part.fstype, part.mountpoint)
        ]
        self._partitions_at = now
        self._remote = self._remote_mounts({p.mountpoint for p in self._partitions}, errors)
        return self._partitions

    def _remote_mounts(self, local: set[str], errors: list[SourceError]) -> list[Mount]:
        """The network and FUSE mounts the filter includes, each mount point once."""
        if self._mounts is None or not self._filter.include:
            return []
        data = self._mounts.read()
        if data is None:
            return self._remote
        mounts, malformed = parse_mounts(data.decode("utf-8", errors="replace"))
        if malformed:
            errors.append(SourceError(SOURCE, self._mounts.label, MALFORMED))
        found: dict[str, Mount] = {}
        for mount in mounts:
            if mount.mountpoint not in local and self._filter.includes(mount.type,
                                                                       mount.mountpoint):
                found[mount.mountpoint] = mount  # the last mount on a point is the visible one
        # An export mounted twice is one filesystem, kept at its first mount point; a FUSE
        # device is only a name.
        unique: dict[str, Mount] = {}
        for mount in found.values():
            unique.setdefault(mount.mountpoint if mount.type.startswith("fuse") else mount.device,
                              mount)
        kept = list(unique.values())
        if len(kept) > MAX_REMOTE_MOUNTS:
            if not self._told_too_many:
                log.warning("otel-gpu: %d network and FUSE mounts; reporting the first %d by "
                            "mount point (OTEL_GPU_FILESYSTEM_EXCLUDE leaves others out)",
                            len(kept), MAX_REMOTE_MOUNTS)
                self._told_too_many = True
            kept = sorted(kept, key=lambda m: m.mountpoint)[:MAX_REMOTE_MOUNTS]
        return kept

    def _remote_filesystems(self, errors: list[SourceError]) -> list[Filesystem]:
        if not self._remote:
            return []
        record = _Recorder(errors)
        answers = self._statvfs.read([m.mountpoint for m in self._remote], record)
        found: list[Filesystem] = []
        for mount in self._remote:
            result = answers.get(mount.mountpoint)
            if result is None:
                continue
            try:
                filesystem = filesystem_of(mount, result)
            except (AttributeError, TypeError, ValueError):
                record("statvfs", MALFORMED)
                continue
            if filesystem is not None:
                found.append(filesystem)
        return found

    def _nfs(self, errors: list[SourceError]) -> tuple[NfsIo, ...]:
        nfs = [m for m in self._remote if m.type in NFS_TYPES]
        if not nfs or self._mountstats is None:
            return ()
        data = self._mountstats.read()
        if data is None:
            errors.append(SourceError(SOURCE, self._mountstats.label, "Unreadable"))
            return ()
        counters, malformed = parse_mountstats(data.decode("utf-8", errors="replace"))
        if malformed:
            errors.append(SourceError(SOURCE, self._mountstats.label, MALFORMED))
        return nfs_io(nfs, counters)

    def _filesystems(
        self, partitions: Iterable[_Partition], call: Callable[..., Any]
    ) -> list[Filesystem]:
        filesystems: list[Filesystem] = []
        seen: set[str] = set()
        for part in partitions:
            key = part.device if part.device.startswith("/") else part.mountpoint
            if key in seen:
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
                    type=part.type,
                    mode=part.mode,
                    used_bytes=used,
                    free_bytes=free,
                    # Blocks kept for root: psutil's free is what unprivileged users may use.
                    reserved_bytes=max(int(usage.total) - used - free, 0),
                )
            )
        return filesystems


# -- /proc ----------------------------------------------------------------------------------------


class _ProcFile:
    """A ``/proc`` file kept open and read from its start each cycle: the kernel renders it
    afresh on every read from offset 0, and sparing the open and close each cycle saves about a
    third of the cost of reading a small one. Closed when the source is garbage-collected."""

    def __init__(self, procfs: str | None, name: str, limit: int | None = None) -> None:
        self.path = f"{procfs}/{name}"
        self.label = f"/proc/{name}"  # the name errors carry, wherever procfs is mounted
        self._limit = limit  # bytes enough for the lines wanted; None reads to the end
        self._fd: int | None = None

    def read(self) -> bytes | None:
        """The contents, or None when the file cannot be read (it is opened again next time)."""
        fd = self._fd
        try:
            if fd is None:
                fd = self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if self._limit is not None:
                return os.pread(fd, self._limit, 0)
            chunks: list[bytes] = []
            offset = 0
            while chunk := os.pread(fd, 65536, offset):
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)
        except OSError:
            self.close()
            return None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _close_all(files: Iterable[_ProcFile], statvfs: BoundedStatvfs) -> None:
    statvfs.close()
    for file in files:
        file.close()


def _first_cpu_line(data: bytes, ticks: float) -> tuple[dict[str, float], bool]:
    # A malformed line gives no CPU times rather than psutil's, which parses the same file.
    modes, malformed = parse_proc_stat(data.split(b"\n", 1)[0], ticks)
    return modes or {}, malformed


class _Recorder:
    """Records a failed call of the host source as a ``SourceError``."""

    def __init__(self, errors: list[SourceError]) -> None:
        self._errors = errors

    def __call__(self, call: str, error_type: str) -> None:
        self._errors.append(SourceError(SOURCE, call, error_type))


class _PsutilCall:
    """Calls psutil, recording an exception as a ``SourceError`` and answering None."""

    def __init__(self, errors: list[SourceError]) -> None:
        self._errors = errors

    def __call__(self, name: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self._errors.append(SourceError(SOURCE, f"psutil.{name}", type(exc).__name__))
            return None


# -- helpers --------------------------------------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


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
