"""The host: CPUs, memory, swap, disks, network interfaces and filesystems."""

from __future__ import annotations

from collections.abc import Iterator

from otel_gpu.snapshot import Snapshot
from otel_gpu.telemetry.catalog.metric import (
    COUNTER,
    GAUGE,
    UPDOWNCOUNTER,
    AttributeSets,
    Observe,
    Point,
    Section,
    SeriesAttributes,
)

HOST = Section("Host")

_FS = (
    "system.device",
    "system.filesystem.state",
    "system.filesystem.type",
    "system.filesystem.mode",
    "system.filesystem.mountpoint",
)
_DISK = ("system.device", "disk.io.direction")
_NET = ("network.interface.name", "network.io.direction")


# Every observe function here hands out the same attribute dict for the same series, cycle
# after cycle (``AttributeSets``): the series ledger then finds the series by the key the dict
# carries instead of hashing its attributes at every point.


def _host_map(attr: str, key: str) -> Observe:
    sets = AttributeSets()

    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is not None:
            for state, value in getattr(snap.host, attr).items():
                yield value, sets.find(state) or sets.add(state, {key: state})

    return observe


_NONE = SeriesAttributes({})


def _host_value(attr: str) -> Observe:
    def observe(snap: Snapshot) -> Iterator[Point]:
        value = getattr(snap.host, attr) if snap.host is not None else None
        if value is not None:
            yield value, _NONE

    return observe


HOST.add(
    name="system.cpu.time",
    instrument=COUNTER,
    unit="s",
    description="CPU time of all logical CPUs by mode.",
    attributes=("cpu.mode",),
    observe=_host_map("cpu_time_s", "cpu.mode"),
    semconv=True,
)
HOST.add(
    name="system.cpu.utilization",
    instrument=GAUGE,
    unit="1",
    description="CPU time by mode over the last cycle, divided by elapsed time and logical CPUs.",
    attributes=("cpu.mode",),
    observe=_host_map("cpu_utilization", "cpu.mode"),
    semconv=True,
)
HOST.add(
    name="system.cpu.logical.count",
    instrument=UPDOWNCOUNTER,
    unit="{cpu}",
    description="Logical CPUs.",
    attributes=(),
    observe=_host_value("cpu_logical_count"),
    semconv=True,
)
HOST.add(
    name="system.memory.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Memory by state (used: total - available).",
    attributes=("system.memory.state",),
    observe=_host_map("memory_state_bytes", "system.memory.state"),
    semconv=True,
)


@HOST.observed_by(
    name="system.memory.utilization",
    instrument=GAUGE,
    unit="1",
    description="Memory by state over total memory.",
    attributes=("system.memory.state",),
    semconv=True,
)
def _memory_state_utilization(snap: Snapshot) -> Iterator[Point]:
    host = snap.host
    if host is not None and host.memory_total_bytes:
        for state, value in host.memory_state_bytes.items():
            attributes = _MEMORY_STATES.find(state) or _MEMORY_STATES.add(
                state, {"system.memory.state": state})
            yield value / host.memory_total_bytes, attributes


_MEMORY_STATES = AttributeSets()


HOST.add(
    name="system.memory.limit",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Total memory.",
    attributes=(),
    observe=_host_value("memory_total_bytes"),
    semconv=True,
)
HOST.add(
    name="system.memory.linux.available",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Memory available to start new work without swapping (MemAvailable).",
    attributes=(),
    observe=_host_value("memory_available_bytes"),
    semconv=True,
)
HOST.add(
    name="system.paging.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Swap space by state.",
    attributes=("system.paging.state",),
    observe=_host_map("swap_state_bytes", "system.paging.state"),
    semconv=True,
)


def _by_direction(table: str, name_key: str, direction_key: str,
                  fields: tuple[tuple[str, str], tuple[str, str]]) -> Observe:
    """Per entry of ``host.<table>`` (a disk, an interface), one point per direction: the
    entry's field for it, with the entry's name and the direction."""
    (first, first_field), (second, second_field) = fields
    firsts, seconds = AttributeSets(), AttributeSets()

    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is None:
            return
        for name, io in getattr(snap.host, table).items():
            yield getattr(io, first_field), firsts.find(name) or firsts.add(
                name, {name_key: name, direction_key: first})
            yield getattr(io, second_field), seconds.find(name) or seconds.add(
                name, {name_key: name, direction_key: second})

    return observe


def _disk(field_read: str, field_write: str) -> Observe:
    return _by_direction("disks", "system.device", "disk.io.direction",
                         (("read", field_read), ("write", field_write)))


HOST.add(
    name="system.disk.io",
    instrument=COUNTER,
    unit="By",
    description="Bytes read from and written to each disk.",
    attributes=_DISK,
    observe=_disk("read_bytes", "write_bytes"),
    semconv=True,
)
HOST.add(
    name="system.disk.operations",
    instrument=COUNTER,
    unit="{operation}",
    description="Disk reads and writes.",
    attributes=_DISK,
    observe=_disk("read_operations", "write_operations"),
    semconv=True,
)


def _net(field_rx: str, field_tx: str) -> Observe:
    return _by_direction("networks", "network.interface.name", "network.io.direction",
                         (("receive", field_rx), ("transmit", field_tx)))


HOST.add(
    name="system.network.io",
    instrument=COUNTER,
    unit="By",
    description="Bytes received and sent per interface.",
    attributes=_NET,
    observe=_net("receive_bytes", "transmit_bytes"),
    semconv=True,
)
HOST.add(
    name="system.network.packet.dropped",
    instrument=COUNTER,
    unit="{packet}",
    description="Packets dropped per interface.",
    attributes=_NET,
    observe=_net("receive_dropped", "transmit_dropped"),
    semconv=True,
)


def _filesystem(ratio: bool) -> Observe:
    sets = AttributeSets()

    def observe(snap: Snapshot) -> Iterator[Point]:
        if snap.host is None:
            return
        for fs in snap.host.filesystems:
            size = fs.size_bytes
            if ratio and not size:
                continue
            for state, value in (
                ("used", fs.used_bytes),
                ("free", fs.free_bytes),
                ("reserved", fs.reserved_bytes),
            ):
                key = (fs.device, fs.mountpoint, fs.type, fs.mode, state)
                attributes = sets.find(key) or sets.add(key, {
                    "system.device": fs.device,
                    "system.filesystem.mountpoint": fs.mountpoint,
                    "system.filesystem.type": fs.type,
                    "system.filesystem.mode": fs.mode,
                    "system.filesystem.state": state,
                })
                yield (value / size if ratio else value), attributes

    return observe


HOST.add(
    name="system.filesystem.usage",
    instrument=UPDOWNCOUNTER,
    unit="By",
    description="Filesystem space by state: local disks, and the network and FUSE mounts "
    "OTEL_GPU_FILESYSTEM_INCLUDE names (nfs, cifs, lustre, beegfs, gpfs, fuse.* by default); a "
    "mount that does not answer within 2 s is left out until it does.",
    attributes=_FS,
    observe=_filesystem(ratio=False),
    semconv=True,
)
HOST.add(
    name="system.filesystem.utilization",
    instrument=GAUGE,
    unit="1",
    description="Filesystem space by state over its size.",
    attributes=_FS,
    observe=_filesystem(ratio=True),
    semconv=True,
)


@HOST.observed_by(
    name="otel_gpu.nfs.io",
    instrument=COUNTER,
    unit="By",
    description="Bytes each NFS mount read from and wrote to its server since it was mounted "
    "(the server bytes of the `bytes:` line of /proc/self/mountstats; reads served from the page "
    "cache are not counted). An export mounted twice is counted once, at its first mount point.",
    attributes=("system.device", "system.filesystem.mountpoint", "system.filesystem.type",
                "disk.io.direction"),
)
def _nfs_io(snap: Snapshot) -> Iterator[Point]:
    if snap.host is None:
        return
    for mount in snap.host.nfs:
        for direction, value in (("read", mount.read_bytes), ("write", mount.write_bytes)):
            key = (mount.device, mount.mountpoint, mount.type, direction)
            attributes = _NFS_MOUNTS.find(key) or _NFS_MOUNTS.add(key, {
                "system.device": mount.device,
                "system.filesystem.mountpoint": mount.mountpoint,
                "system.filesystem.type": mount.type,
                "disk.io.direction": direction,
            })
            yield value, attributes


_NFS_MOUNTS = AttributeSets()
