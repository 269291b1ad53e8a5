"""Parsers of the host's ``/proc`` files: pure functions from the bytes read to values.

Each takes what the kernel rendered and returns the values with the definitions psutil uses, plus
whether a line could not be parsed (the caller records that as one ``Malformed`` error per file).
Nothing here reads a file or raises on bad input.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from otel_gpu.snapshot import DiskIo, NetworkIo
from otel_gpu.sources._text import INT64_MAX, clean_text, parse_count

# Block devices that are no disk of their own: loop devices (files and snap images), RAM disks,
# zram (compressed RAM, usually swap) and floppies, plus the partitions of whole disks
# (sda1, vda2, xvdb1, nvme0n1p1, mmcblk0p1), whose I/O the whole disk already counts; summing
# system.disk.io over system.device stays meaningful. Device-mapper and md devices are kept.
SKIPPED_DISK = re.compile(
    r"^(?:(?:z?ram|loop|fd)\d+|(?:h|s|v|xv)d[a-z]+\d+|(?:nvme\d+n\d+|mmcblk\d+)p\d+)$"
)

SKIPPED_NETWORK = frozenset({"lo"})


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


class Memory(NamedTuple):
    total: int
    available: int
    free: int
    buffers: int | None
    cached: int | None


def parse_proc_stat(line: bytes, ticks_per_s: float) -> tuple[dict[str, float] | None, bool]:
    """cpu.mode -> seconds from the aggregate ``cpu `` line of ``/proc/stat`` (proc(5)), as
    psutil's ``cpu_times``: each column in ticks divided by USER_HZ, irq + softirq as
    ``interrupt``. Returns (modes or None, whether the line was malformed)."""
    fields = line.split()
    if len(fields) < 5 or fields[0] != b"cpu":
        return None, True
    try:
        times = {
            column: parse_count(value) / ticks_per_s
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
            value = parse_count(parts[0])
        except (IndexError, ValueError):
            malformed = True
            continue
        if len(parts) > 1:
            if parts[1] != b"kB":
                malformed = True
                continue
            value *= 1024
        if value > INT64_MAX:
            malformed = True
            continue
        values[key] = value
        if len(values) == len(_MEMINFO_KEYS):
            break
    return values, malformed


def memory_from_meminfo(meminfo: dict[bytes, int]) -> Memory | None:
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
    return Memory(total, available, free, meminfo.get(b"Buffers"), cached)


def swap_from_meminfo(meminfo: dict[bytes, int]) -> dict[str, int] | None:
    total, free = meminfo.get(b"SwapTotal"), meminfo.get(b"SwapFree")
    if total is None or free is None:
        return None
    return {"used": max(total - free, 0), "free": free}


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
            reads, read_sectors, writes, write_sectors = map(parse_count, texts)
        except ValueError:
            malformed = True
            continue
        read_bytes = read_sectors * DISKSTATS_SECTOR_BYTES
        write_bytes = write_sectors * DISKSTATS_SECTOR_BYTES
        name = clean_text(fields[2].decode("utf-8", "replace"))
        if max(read_bytes, write_bytes) > INT64_MAX or not name:
            malformed = True
            continue
        disks[name] = DiskIo(
            read_bytes=read_bytes,
            write_bytes=write_bytes,
            read_operations=reads,
            write_operations=writes,
        )
    return disks, malformed


@functools.lru_cache(maxsize=1024)
def _is_skipped_disk(name: bytes) -> bool:
    return SKIPPED_DISK.match(name.decode("utf-8", "surrogateescape")) is not None


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
        name = clean_text(name_part.decode("utf-8", "replace"))
        if name in SKIPPED_NETWORK:
            continue
        fields = rest.split()
        if len(fields) < 12 or not name:
            malformed = True
            continue
        try:
            networks[name] = NetworkIo(
                receive_bytes=parse_count(fields[0]),
                transmit_bytes=parse_count(fields[8]),
                receive_dropped=parse_count(fields[3]),
                transmit_dropped=parse_count(fields[11]),
            )
        except ValueError:
            malformed = True
    return networks, malformed
