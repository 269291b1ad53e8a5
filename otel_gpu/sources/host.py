"""Host source: CPU, memory, paging, disks, network interfaces and filesystems.

On Linux the source reads ``/proc/stat``, ``/proc/meminfo``, ``/proc/diskstats`` and
``/proc/net/dev`` itself, each once per cycle, with the definitions psutil uses, so the values are
psutil's; elsewhere, or for a kind whose ``/proc`` file cannot be read (or lacks the fields it
needs), it asks psutil. The number of logical CPUs is taken once, and the list of mounted
filesystems once per ``partitions_ttl_s``; the usage of each filesystem is read every cycle.

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
import functools
import os
import re
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import psutil

from otel_gpu.snapshot import DiskIo, Filesystem, HostSnapshot, NetworkIo, SourceError

SOURCE = "host"
MALFORMED = "Malformed"

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

# The columns of the "cpu " line of /proc/stat, in order (proc(5)); older kernels stop early.
_PROC_STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

# /proc/diskstats always counts 512-byte sectors, whatever the device's own sector size.
DISKSTATS_SECTOR_BYTES = 512

_MEMINFO_KEYS = frozenset(
    {
        b"MemTotal",
        b"MemFree",
        b"MemAvailable",
        b"Buffers",
        b"Cached",
        b"SReclaimable",
        b"SwapTotal",
        b"SwapFree",
    }
)

SIMULATED_DEVICE = "sim"

# CPU times advance in kernel ticks (10 ms at USER_HZ 100): two reads closer than this give
# deltas of zero, not a utilization.
_MIN_CPU_INTERVAL_S = 0.1

PARTITIONS_TTL_S = 60.0

DEFAULT_PROCFS: str | None = "/proc" if sys.platform.startswith("linux") else None

_T = TypeVar("_T")


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
    """

    def __init__(
        self,
        *,
        root_filesystems_only: bool = True,
        procfs: str | None = DEFAULT_PROCFS,
        clock: Callable[[], float] = time.monotonic,
        partitions_ttl_s: float = PARTITIONS_TTL_S,
    ) -> None:
        self._root_filesystems_only = root_filesystems_only
        self._procfs = procfs
        self._ticks = _clock_ticks() if procfs is not None else None
        self._stat = _ProcFile(f"{procfs}/stat", limit=4096)
        self._meminfo = _ProcFile(f"{procfs}/meminfo")
        self._diskstats = _ProcFile(f"{procfs}/diskstats")
        self._net_dev = _ProcFile(f"{procfs}/net/dev")
        files = (self._stat, self._meminfo, self._diskstats, self._net_dev)
        weakref.finalize(self, _close_all, files)
        self._clock = clock
        self._partitions_ttl_s = partitions_ttl_s
        self._partitions: list[_Partition] | None = None
        self._partitions_at = 0.0
        self._logical_count: int | None = None
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

        now = self._clock()
        procfs = self._procfs

        cpu_time_s: dict[str, float] | None = None
        if procfs is not None and self._ticks is not None:
            data = self._stat.read()
            if data is not None:
                modes, malformed = parse_proc_stat(data.split(b"\n", 1)[0], self._ticks)
                cpu_time_s = modes or {}
                if malformed:
                    errors.append(SourceError(SOURCE, "/proc/stat", MALFORMED))
        if cpu_time_s is None:
            cpu_times = call("cpu_times", psutil.cpu_times, percpu=False)
            cpu_time_s = _cpu_modes(cpu_times) if cpu_times is not None else {}

        logical_count = self._logical_count
        if logical_count is None:
            counted = call("cpu_count", psutil.cpu_count, logical=True)
            logical_count = self._logical_count = int(counted) if counted else None

        cpu_utilization: dict[str, float] = {}
        if cpu_time_s:
            previous = self._previous_cpu
            if previous is not None and now - previous[0] < _MIN_CPU_INTERVAL_S:
                pass  # too short for the kernel's tick: keep the older baseline
            else:
                if previous is not None and logical_count:
                    cpu_utilization = _utilization(previous, (now, cpu_time_s), logical_count)
                self._previous_cpu = (now, cpu_time_s)

        memory: _Memory | None = None
        swap_state: dict[str, int] | None = None
        if procfs is not None:
            data = self._meminfo.read()
            if data is not None:
                meminfo, malformed = parse_meminfo(data)
                if malformed:
                    errors.append(SourceError(SOURCE, "/proc/meminfo", MALFORMED))
                memory = memory_from_meminfo(meminfo)
                swap_state = swap_from_meminfo(meminfo)
        if memory is None:
            vm = call("virtual_memory", psutil.virtual_memory)
            if vm is not None:
                memory = _Memory(
                    int(vm.total),
                    int(vm.available),
                    int(vm.free),
                    _int_or_none(getattr(vm, "buffers", None)),
                    _int_or_none(getattr(vm, "cached", None)),
                )
        if swap_state is None:
            swap = call("swap_memory", psutil.swap_memory)
            swap_state = {"used": int(swap.used), "free": int(swap.free)} if swap else {}

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

        disks: dict[str, DiskIo] | None = None
        if procfs is not None:
            data = self._diskstats.read()
            if data is not None:
                disks, malformed = parse_diskstats(data)
                if malformed:
                    errors.append(SourceError(SOURCE, "/proc/diskstats", MALFORMED))
        if disks is None:
            disks = {}
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

        networks: dict[str, NetworkIo] | None = None
        if procfs is not None:
            data = self._net_dev.read()
            if data is not None:
                networks, malformed = parse_net_dev(data)
                if malformed:
                    errors.append(SourceError(SOURCE, "/proc/net/dev", MALFORMED))
        if networks is None:
            networks = {}
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

        filesystems = self._filesystems(self._listed_partitions(now, call), call)

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
        )
        return snapshot, errors

    def _listed_partitions(self, now: float, call: Callable[..., Any]) -> list[_Partition]:
        """The mounted filesystems, listed again once ``partitions_ttl_s`` has passed; after a
        failed listing the previous list stands and the next cycle tries again."""
        if self._partitions is not None and now - self._partitions_at < self._partitions_ttl_s:
            return self._partitions
        listed = call(
            "disk_partitions", psutil.disk_partitions, all=not self._root_filesystems_only
        )
        if listed is None:
            return self._partitions or []
        self._partitions = [
            _Partition(
                part.device,
                part.mountpoint,
                part.fstype,
                "ro" if "ro" in part.opts.split(",") else "rw",
            )
            for part in listed
            if part.fstype not in _SKIPPED_FILESYSTEM_TYPES
        ]
        self._partitions_at = now
        return self._partitions

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


class _Memory(NamedTuple):
    total: int
    available: int
    free: int
    buffers: int | None
    cached: int | None


class _ProcFile:
    """A ``/proc`` file kept open and read from its start each cycle: the kernel renders it
    afresh on every read from offset 0, and sparing the open and close each cycle saves about a
    third of the cost of reading a small one. Closed when the source is garbage-collected."""

    def __init__(self, path: str, limit: int | None = None) -> None:
        self.path = path
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


def _close_all(files: Iterable[_ProcFile]) -> None:
    for file in files:
        file.close()


def parse_proc_stat(line: bytes, ticks_per_s: float) -> tuple[dict[str, float] | None, bool]:
    """cpu.mode -> seconds from the aggregate ``cpu `` line of ``/proc/stat`` (proc(5)), as
    psutil's ``cpu_times``: each column in ticks divided by USER_HZ, irq + softirq as
    ``interrupt``. Returns (modes or None, whether the line was malformed)."""
    fields = line.split()
    if len(fields) < 5 or fields[0] != b"cpu":
        return None, True
    try:
        times = {
            column: int(value) / ticks_per_s
            for column, value in zip(_PROC_STAT_COLUMNS, fields[1:], strict=False)
        }
    except ValueError:
        return None, True
    modes = {
        mode: times[column]
        for mode, column in (
            ("user", "user"),
            ("system", "system"),
            ("nice", "nice"),
            ("idle", "idle"),
            ("iowait", "iowait"),
        )
        if column in times
    }
    if "irq" in times:
        modes["interrupt"] = times["irq"] + times.get("softirq", 0.0)
    if "steal" in times:
        modes["steal"] = times["steal"]
    return modes, False


def parse_meminfo(data: bytes) -> tuple[dict[bytes, int], bool]:
    """Bytes of the ``/proc/meminfo`` keys the source uses, read up to the last of them; lines
    after it are not looked at. Returns (values, whether a line was malformed)."""
    values: dict[bytes, int] = {}
    malformed = False
    for line in data.splitlines():
        key, colon, rest = line.partition(b":")
        if not colon:
            malformed = malformed or bool(line.strip())
            continue
        if key not in _MEMINFO_KEYS:
            continue
        parts = rest.split()
        try:
            value = int(parts[0])
        except (IndexError, ValueError):
            malformed = True
            continue
        if len(parts) > 1:
            if parts[1] != b"kB":
                malformed = True
                continue
            value *= 1024
        values[key] = value
        if len(values) == len(_MEMINFO_KEYS):
            break
    return values, malformed


def memory_from_meminfo(meminfo: dict[bytes, int]) -> _Memory | None:
    """Memory as psutil's ``virtual_memory`` computes it; None when a field psutil would have
    to estimate (or could not find) is missing."""
    try:
        total = meminfo[b"MemTotal"]
        free = meminfo[b"MemFree"]
        available = meminfo[b"MemAvailable"]
    except KeyError:
        return None
    if available <= 0:
        return None  # psutil estimates it from the zone watermarks then
    if available > total:
        available = free  # psutil and procps: values from outside a container's limits
    cached = meminfo.get(b"Cached")
    if cached is not None:
        # procps' "free" and psutil count reclaimable slab as cache.
        cached += meminfo.get(b"SReclaimable", 0)
    return _Memory(total, available, free, meminfo.get(b"Buffers"), cached)


def swap_from_meminfo(meminfo: dict[bytes, int]) -> dict[str, int] | None:
    total, free = meminfo.get(b"SwapTotal"), meminfo.get(b"SwapFree")
    if total is None or free is None:
        return None
    return {"used": total - free, "free": free}


def parse_diskstats(data: bytes) -> tuple[dict[str, DiskIo], bool]:
    """Per-device I/O from ``/proc/diskstats``, devices that are no disk of their own left out.

    Columns per the kernel's Documentation/admin-guide/iostats.rst: major, minor, name, then
    field 1 reads completed, 2 reads merged, 3 sectors read, 4 ms reading, 5 writes completed,
    6 writes merged, 7 sectors written, ... (11 fields up to 4.17, 15 from 4.18, 17 from 5.5).
    Old 2.6 kernels give partitions 4 fields only: reads, sectors read, writes, sectors written.
    """
    disks: dict[str, DiskIo] = {}
    malformed = False
    for line in data.splitlines():
        fields = line.split()
        count = len(fields)
        if count == 14 or count >= 18:
            texts = fields[3], fields[5], fields[7], fields[9]
        elif count == 7:
            texts = fields[3], fields[4], fields[5], fields[6]
        else:
            malformed = malformed or count > 0
            continue
        if _is_skipped_disk(fields[2]):
            continue
        try:
            reads, read_sectors, writes, write_sectors = map(int, texts)
        except ValueError:
            malformed = True
            continue
        disks[fields[2].decode("utf-8", "surrogateescape")] = DiskIo(
            read_bytes=read_sectors * DISKSTATS_SECTOR_BYTES,
            write_bytes=write_sectors * DISKSTATS_SECTOR_BYTES,
            read_operations=reads,
            write_operations=writes,
        )
    return disks, malformed


@functools.lru_cache(maxsize=1024)
def _is_skipped_disk(name: bytes) -> bool:
    return _SKIPPED_DISK.match(name.decode("utf-8", "surrogateescape")) is not None


def parse_net_dev(data: bytes) -> tuple[dict[str, NetworkIo], bool]:
    """Per-interface bytes and drops from ``/proc/net/dev`` (two header lines, then
    ``name: 8 receive columns, 8 transmit columns``), ``lo`` left out."""
    networks: dict[str, NetworkIo] = {}
    malformed = False
    for line in data.splitlines()[2:]:
        name_part, colon, rest = line.rpartition(b":")
        if not colon:
            malformed = malformed or bool(line.strip())
            continue
        name = name_part.strip().decode("utf-8", "surrogateescape")
        if name in _SKIPPED_NETWORK:
            continue
        fields = rest.split()
        if len(fields) < 12 or not name:
            malformed = True
            continue
        try:
            networks[name] = NetworkIo(
                receive_bytes=int(fields[0]),
                transmit_bytes=int(fields[8]),
                receive_dropped=int(fields[3]),
                transmit_dropped=int(fields[11]),
            )
        except ValueError:
            malformed = True
    return networks, malformed


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
