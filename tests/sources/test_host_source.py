from __future__ import annotations

import sys
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from otel_gpu.sources import host as host_module
from otel_gpu.sources import proc_files
from otel_gpu.sources.host import HostSource

SEMCONV_CPU_MODES = {"user", "system", "nice", "idle", "iowait", "interrupt", "steal", "kernel"}


@dataclass
class Overrides:
    memory_used_ratio: float | None = None
    filesystems: list[tuple[str, int, int]] = field(default_factory=list)


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_real_values_are_sane() -> None:
    snap, errors = HostSource().read()
    assert errors == []

    assert snap.cpu_logical_count and snap.cpu_logical_count > 0
    assert snap.cpu_time_s
    assert set(snap.cpu_time_s) <= SEMCONV_CPU_MODES
    assert {"user", "system", "idle"} <= set(snap.cpu_time_s)
    assert all(v >= 0 for v in snap.cpu_time_s.values())
    assert snap.cpu_utilization == {}

    assert snap.memory_total_bytes and snap.memory_total_bytes > 0
    assert snap.memory_available_bytes is not None
    state = snap.memory_state_bytes
    assert set(state) <= {"used", "free", "buffers", "cached"}
    assert state["used"] == snap.memory_total_bytes - snap.memory_available_bytes
    # MemFree can exceed MemAvailable: the kernel keeps its low watermarks out of the latter.
    assert 0 <= state["free"] <= snap.memory_total_bytes
    assert 0 <= snap.memory_available_bytes <= snap.memory_total_bytes
    ratio = snap.memory_used_ratio
    assert ratio is not None and 0 < ratio < 1

    assert set(snap.swap_state_bytes) == {"used", "free"}
    assert all(v >= 0 for v in snap.swap_state_bytes.values())

    assert "lo" not in snap.networks
    assert not any(name.startswith(("loop", "ram", "zram")) for name in snap.disks)
    for io in snap.disks.values():
        assert min(io.read_bytes, io.write_bytes, io.read_operations, io.write_operations) >= 0

    devices = [fs.device for fs in snap.filesystems]
    assert len(devices) == len(set(devices))
    for fs in snap.filesystems:
        assert fs.mode in {"rw", "ro"}
        assert fs.size_bytes > 0
        assert min(fs.used_bytes, fs.free_bytes, fs.reserved_bytes) >= 0
        usage = psutil.disk_usage(fs.mountpoint)
        assert fs.size_bytes == usage.total


def test_utilization_from_the_second_read_sums_to_one() -> None:
    source = HostSource()
    first, _ = source.read()
    assert first.cpu_utilization == {}
    _busy(0.5)
    second, errors = source.read()
    assert errors == []
    util = second.cpu_utilization
    assert set(util) == set(second.cpu_time_s)
    assert all(0.0 <= v <= 1.0 for v in util.values())
    assert sum(util.values()) == pytest.approx(1.0, abs=0.15)
    assert util["user"] + util["system"] > 0


def test_utilization_is_delta_over_elapsed_times_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    samples = iter(
        [
            Times(100, 0, 50, 1000, 5, 1, 1, 0, 0, 0),
            Times(103, 0, 51, 1003, 5, 1.25, 1.25, 0.5, 0, 0),
        ]
    )
    clock = iter([10.0, 14.0])
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: next(samples))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    source = HostSource(procfs=None, clock=lambda: next(clock))
    first, _ = source.read()
    assert first.cpu_time_s["interrupt"] == 2
    second, errors = source.read()
    assert errors == []
    assert second.cpu_utilization == pytest.approx(
        {
            "user": 3 / 8,
            "system": 1 / 8,
            "nice": 0,
            "idle": 3 / 8,
            "iowait": 0,
            "interrupt": 0.5 / 8,
            "steal": 0.5 / 8,
        }
    )
    assert sum(second.cpu_utilization.values()) == pytest.approx(1.0)


def _raise(exc: type[Exception]):
    def fail(*args: object, **kwargs: object) -> None:
        raise exc("boom")

    return fail


def test_failures_become_errors_and_the_rest_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", _raise(PermissionError))
    monkeypatch.setattr(psutil, "disk_io_counters", _raise(RuntimeError))
    snap, errors = HostSource(procfs=None).read()
    assert {(e.source, e.call, e.error_type) for e in errors} == {
        ("host", "psutil.virtual_memory", "PermissionError"),
        ("host", "psutil.disk_io_counters", "RuntimeError"),
    }
    assert snap.memory_total_bytes is None
    assert snap.memory_state_bytes == {}
    assert snap.memory_available_bytes is None
    assert snap.memory_used_ratio is None
    assert snap.disks == {}
    assert snap.cpu_time_s
    assert snap.swap_state_bytes
    assert snap.filesystems


def test_every_call_is_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "cpu_times",
        "cpu_count",
        "swap_memory",
        "net_io_counters",
        "disk_partitions",
    ):
        monkeypatch.setattr(psutil, name, _raise(OSError))
    snap, errors = HostSource(procfs=None).read()
    assert sorted(e.call for e in errors) == [
        "psutil.cpu_count",
        "psutil.cpu_times",
        "psutil.disk_partitions",
        "psutil.net_io_counters",
        "psutil.swap_memory",
    ]
    assert all(e.error_type == "OSError" and e.source == "host" for e in errors)
    assert snap.cpu_time_s == {} and snap.cpu_logical_count is None
    assert snap.networks == {} and snap.filesystems == () and snap.swap_state_bytes == {}
    assert snap.memory_total_bytes


def test_disk_usage_failure_skips_only_that_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    Part = namedtuple("Part", "device mountpoint fstype opts")
    Usage = namedtuple("Usage", "total used free percent")
    monkeypatch.setattr(
        psutil,
        "disk_partitions",
        lambda all=False: [
            Part("/dev/sda1", "/", "ext4", "rw,relatime"),
            Part("/dev/sda1", "/var/lib/bind", "ext4", "rw,relatime"),
            Part("/dev/sdb1", "/data", "xfs", "ro,noatime"),
            Part("/dev/sdc1", "/secret", "ext4", "rw"),
            Part("/dev/loop3", "/snap/core/1", "squashfs", "ro"),
        ],
    )

    def disk_usage(path: str) -> Usage:
        if path == "/secret":
            raise PermissionError(path)
        return {
            "/": Usage(1000, 600, 350, 63.2),
            "/var/lib/bind": Usage(1000, 600, 350, 63.2),
            "/data": Usage(500, 100, 400, 20.0),
        }[path]

    monkeypatch.setattr(psutil, "disk_usage", disk_usage)
    snap, errors = HostSource().read()
    assert [(e.call, e.error_type) for e in errors] == [("psutil.disk_usage", "PermissionError")]
    assert [fs.mountpoint for fs in snap.filesystems] == ["/", "/data"]
    by_mount = {fs.mountpoint: fs for fs in snap.filesystems}
    assert set(by_mount) == {"/", "/data"}
    root = by_mount["/"]
    assert (root.device, root.type, root.mode) == ("/dev/sda1", "ext4", "rw")
    assert (root.used_bytes, root.free_bytes, root.reserved_bytes) == (600, 350, 50)
    assert root.size_bytes == 1000
    assert by_mount["/data"].mode == "ro"
    assert by_mount["/data"].reserved_bytes == 0


def test_all_filesystems_tell_pseudo_devices_apart_by_mountpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Part = namedtuple("Part", "device mountpoint fstype opts")
    Usage = namedtuple("Usage", "total used free percent")
    calls: list[bool] = []

    def disk_partitions(all: bool = False) -> list[Part]:
        calls.append(all)
        return [
            Part("tmpfs", "/dev/shm", "tmpfs", "rw"),
            Part("tmpfs", "/run", "tmpfs", "rw"),
            Part("/dev/sda1", "/", "ext4", "rw"),
            Part("/dev/sda1", "/mnt/bind", "ext4", "rw"),
            Part("proc", "/proc", "proc", "rw"),
        ]

    monkeypatch.setattr(psutil, "disk_partitions", disk_partitions)
    monkeypatch.setattr(
        psutil,
        "disk_usage",
        lambda path: Usage(0, 0, 0, 0) if path == "/proc" else Usage(100, 10, 90, 10.0),
    )
    snap, errors = HostSource(root_filesystems_only=False).read()
    assert errors == [] and calls == [True]
    assert [fs.mountpoint for fs in snap.filesystems] == ["/dev/shm", "/run", "/"]


def test_pseudo_disks_partitions_and_loopback_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Disk = namedtuple("Disk", "read_count write_count read_bytes write_bytes")
    Nic = namedtuple("Nic", "bytes_sent bytes_recv dropin dropout")
    names = [
        "loop0", "ram1", "zram0", "sda", "sda1", "vda", "vda2", "nvme0n1", "nvme0n1p1",
        "mmcblk0", "mmcblk0p1", "dm-0", "md0", "xvdb",
    ]  # fmt: skip
    monkeypatch.setattr(
        psutil, "disk_io_counters", lambda perdisk=True: {n: Disk(1, 2, 3, 4) for n in names}
    )
    monkeypatch.setattr(
        psutil,
        "net_io_counters",
        lambda pernic=True: {"lo": Nic(1, 1, 0, 0), "eth0": Nic(10, 20, 3, 4)},
    )
    snap, _ = HostSource(procfs=None).read()
    assert sorted(snap.disks) == ["dm-0", "md0", "mmcblk0", "nvme0n1", "sda", "vda", "xvdb"]
    sda = snap.disks["sda"]
    assert (sda.read_operations, sda.write_operations, sda.read_bytes, sda.write_bytes) == (
        1,
        2,
        3,
        4,
    )
    assert list(snap.networks) == ["eth0"]
    eth0 = snap.networks["eth0"]
    assert (eth0.transmit_bytes, eth0.receive_bytes) == (10, 20)
    assert (eth0.receive_dropped, eth0.transmit_dropped) == (3, 4)


def test_overrides_replace_memory_split_and_filesystems() -> None:
    real, _ = HostSource().read()
    overrides = Overrides(
        memory_used_ratio=0.9,
        filesystems=[("/", 100 * 2**30, 99 * 2**30), ("/scratch", 2**40, 2**39)],
    )
    snap, errors = HostSource().read(overrides)
    assert errors == []
    total = snap.memory_total_bytes
    assert total == real.memory_total_bytes
    assert snap.memory_used_ratio == pytest.approx(0.9)
    assert snap.memory_state_bytes["used"] + snap.memory_state_bytes["free"] == total
    assert snap.memory_available_bytes == total - snap.memory_state_bytes["used"]

    by_mount = {fs.mountpoint: fs for fs in snap.filesystems}
    assert [fs.mountpoint for fs in snap.filesystems].count("/") == 1
    root = by_mount["/"]
    assert (root.device, root.type, root.mode) == ("sim", "ext4", "rw")
    assert (root.used_bytes, root.free_bytes, root.size_bytes) == (99 * 2**30, 2**30, 100 * 2**30)
    assert by_mount["/scratch"].size_bytes == 2**40
    for fs in real.filesystems:
        if fs.mountpoint != "/":
            assert fs.mountpoint in by_mount


def test_partial_overrides_leave_the_rest_real() -> None:
    snap, _ = HostSource().read(Overrides(memory_used_ratio=None, filesystems=[]))
    assert snap.memory_state_bytes["used"] == (
        snap.memory_total_bytes - snap.memory_available_bytes
    )
    assert all(fs.device != "sim" for fs in snap.filesystems)


# -- /proc --------------------------------------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PROC_STAT = b"""cpu  13818 5 2958 197722 253 7 72 12 3 0
cpu0 4136 0 1112 102098 13 0 36 3 0 0
intr 1 2 3
"""

MEMINFO = b"""MemTotal:       16000000 kB
MemFree:         2000000 kB
MemAvailable:    9000000 kB
Buffers:          300000 kB
Cached:          5000000 kB
SwapCached:            0 kB
SwapTotal:       4000000 kB
SwapFree:        3000000 kB
Shmem:            100000 kB
SReclaimable:     400000 kB
HugePages_Total:       0
"""

DISKSTATS = b"""   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254 0 vda 40384 6741 2610522 11217 7069 14269 762224 3524 0 3756 15127 6416 61 170656 374 328 10
 254       1 vda1 40000 6000 2600000 11000 7000 14000 760000 3500 0 3700 15000
   8       0 sda 100 1 200 3 400 5 600 7 0 9 10
   8      16 sdb 11 22 33 44
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
"""

NET_DEV = b"""Inter-|   Receive                            |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls \
carrier compressed
    lo: 1849264 3027 0 0 0 0 0 0  1849264 3027 0 0 0 0 0 0
  eth0: 74666803 2327 0 9 0 0 0 0  168051 1436 0 4 0 0 0 0
  ib0: 10 1 0 0 0 0 0 0 20 2 0 1 0 0 0 0
"""


def test_parse_proc_stat_matches_psutil_definitions() -> None:
    modes, malformed = proc_files.parse_proc_stat(PROC_STAT.splitlines()[0], 100.0)
    assert not malformed
    assert modes == pytest.approx(
        {
            "user": 138.18,
            "nice": 0.05,
            "system": 29.58,
            "idle": 1977.22,
            "iowait": 2.53,
            "interrupt": 0.79,
            "steal": 0.12,
        }
    )
    # An older kernel stops before steal (and before irq/softirq on the oldest).
    modes, malformed = proc_files.parse_proc_stat(b"cpu 1 2 3 4 5 6 7", 100.0)
    assert not malformed and set(modes or {}) == {
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "interrupt",
    }


@pytest.mark.parametrize(
    "line", [b"", b"cpu0 1 2 3 4 5", b"cpu 1 2 3", b"cpu 1 2 x 4 5 6 7 8", b"intr 1 2 3 4 5"]
)
def test_parse_proc_stat_malformed(line: bytes) -> None:
    assert proc_files.parse_proc_stat(line, 100.0) == (None, True)


def test_parse_meminfo_and_memory_as_psutil_defines_it() -> None:
    values, malformed = proc_files.parse_meminfo(MEMINFO)
    assert not malformed
    assert values[b"MemTotal"] == 16000000 * 1024
    memory = proc_files.memory_from_meminfo(values)
    assert memory is not None
    assert memory.total == 16000000 * 1024
    assert memory.available == 9000000 * 1024
    assert memory.free == 2000000 * 1024
    assert memory.buffers == 300000 * 1024
    assert memory.cached == (5000000 + 400000) * 1024  # Cached + SReclaimable
    assert proc_files.swap_from_meminfo(values) == {
        "used": 1000000 * 1024,
        "free": 3000000 * 1024,
    }


def test_parse_meminfo_skips_malformed_lines() -> None:
    text = MEMINFO.replace(b"Buffers:          300000 kB", b"Buffers:   lots kB").replace(
        b"SwapFree:        3000000 kB", b"SwapFree:"
    )
    values, malformed = proc_files.parse_meminfo(text + b"no colon here\n")
    assert malformed
    assert b"Buffers" not in values and b"SwapFree" not in values
    memory = proc_files.memory_from_meminfo(values)
    assert memory is not None and memory.buffers is None
    assert proc_files.swap_from_meminfo(values) is None
    _, malformed = proc_files.parse_meminfo(b"MemTotal: 5 MB\n")
    assert malformed


def test_memory_from_meminfo_leaves_estimates_to_psutil() -> None:
    values, _ = proc_files.parse_meminfo(MEMINFO)
    for missing in (b"MemTotal", b"MemFree", b"MemAvailable"):
        assert (
            proc_files.memory_from_meminfo({k: v for k, v in values.items() if k != missing})
            is None
        )
    assert proc_files.memory_from_meminfo({**values, b"MemAvailable": 0}) is None
    # Available above total (a container seeing the host's figures): psutil takes free.
    above = proc_files.memory_from_meminfo({**values, b"MemAvailable": 10**15})
    assert above is not None and above.available == values[b"MemFree"]


def test_parse_diskstats() -> None:
    disks, malformed = proc_files.parse_diskstats(DISKSTATS)
    assert not malformed
    assert sorted(disks) == ["nvme0n1", "sda", "sdb", "vda"]
    vda = disks["vda"]
    assert (vda.read_operations, vda.write_operations) == (40384, 7069)
    assert (vda.read_bytes, vda.write_bytes) == (2610522 * 512, 762224 * 512)
    nvme = disks["nvme0n1"]  # 15 fields: 4.18 to 5.4
    assert (nvme.read_operations, nvme.read_bytes, nvme.write_operations, nvme.write_bytes) == (
        1,
        3 * 512,
        5,
        7 * 512,
    )
    sda = disks["sda"]  # 11 fields: kernels before 4.18
    assert (sda.read_operations, sda.read_bytes, sda.write_operations, sda.write_bytes) == (
        100,
        200 * 512,
        400,
        600 * 512,
    )
    sdb = disks["sdb"]  # 4 fields: a partition on 2.6 kernels
    assert (sdb.read_operations, sdb.read_bytes, sdb.write_operations, sdb.write_bytes) == (
        11,
        22 * 512,
        33,
        44 * 512,
    )


def test_parse_diskstats_skips_malformed_lines() -> None:
    text = DISKSTATS + b"   8  32 sdc 1 2 3\n   8  48 sdd 1 2 x 4 5 6 7 8 9 10 11\n\n"
    disks, malformed = proc_files.parse_diskstats(text)
    assert malformed
    assert sorted(disks) == ["nvme0n1", "sda", "sdb", "vda"]


def test_parse_net_dev() -> None:
    networks, malformed = proc_files.parse_net_dev(NET_DEV)
    assert not malformed
    assert list(networks) == ["eth0", "ib0"]
    eth0 = networks["eth0"]
    assert (eth0.receive_bytes, eth0.transmit_bytes) == (74666803, 168051)
    assert (eth0.receive_dropped, eth0.transmit_dropped) == (9, 4)


def test_parse_net_dev_skips_malformed_lines() -> None:
    text = NET_DEV + b"  eth1: 1 2 3\n  eth2: 1 2 3 x 5 6 7 8 9 10 11 12 13 14 15 16\ngarbage\n"
    networks, malformed = proc_files.parse_net_dev(text)
    assert malformed
    assert list(networks) == ["eth0", "ib0"]


def _procfs(root: Path, **files: bytes) -> str:
    contents = {
        "stat": PROC_STAT,
        "meminfo": MEMINFO,
        "diskstats": DISKSTATS,
        "net/dev": NET_DEV,
    }
    contents.update({name.replace("_", "/"): data for name, data in files.items()})
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def _no_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "cpu_times",
        "virtual_memory",
        "swap_memory",
        "disk_io_counters",
        "net_io_counters",
    ):
        monkeypatch.setattr(psutil, name, _raise(AssertionError))


def test_reads_proc_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_psutil(monkeypatch)
    snap, errors = HostSource(procfs=_procfs(tmp_path)).read()
    assert errors == []
    assert snap.cpu_time_s["interrupt"] == pytest.approx(0.79)
    assert snap.memory_total_bytes == 16000000 * 1024
    assert snap.memory_available_bytes == 9000000 * 1024
    assert snap.memory_state_bytes == {
        "used": 7000000 * 1024,
        "free": 2000000 * 1024,
        "buffers": 300000 * 1024,
        "cached": 5400000 * 1024,
    }
    assert snap.swap_state_bytes == {"used": 1000000 * 1024, "free": 3000000 * 1024}
    assert sorted(snap.disks) == ["nvme0n1", "sda", "sdb", "vda"]
    assert list(snap.networks) == ["eth0", "ib0"]


def test_malformed_lines_make_one_error_per_file_per_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_psutil(monkeypatch)
    root = _procfs(
        tmp_path,
        stat=b"cpu 1 2 x 4 5\n",
        meminfo=b"Garbage\nMoreGarbage\n" + MEMINFO,
        diskstats=DISKSTATS + b"1 2 sdx 1\n1 2 sdy 1 2\n",
        net_dev=NET_DEV + b"bad\nworse\n",
    )
    source = HostSource(procfs=root)
    for _ in range(2):
        snap, errors = source.read()
        assert sorted((e.source, e.call, e.error_type) for e in errors) == [
            ("host", "/proc/diskstats", "Malformed"),
            ("host", "/proc/meminfo", "Malformed"),
            ("host", "/proc/net/dev", "Malformed"),
            ("host", "/proc/stat", "Malformed"),
        ]
        assert snap.cpu_time_s == {} and snap.cpu_utilization == {}
        assert snap.memory_total_bytes == 16000000 * 1024
        assert sorted(snap.disks) == ["nvme0n1", "sda", "sdb", "vda"]
        assert list(snap.networks) == ["eth0", "ib0"]


def test_unreadable_proc_files_fall_back_to_psutil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Disk = namedtuple("Disk", "read_count write_count read_bytes write_bytes")
    root = _procfs(tmp_path)
    (tmp_path / "diskstats").unlink()
    (tmp_path / "meminfo").unlink()
    monkeypatch.setattr(psutil, "disk_io_counters", lambda perdisk=True: {"xvda": Disk(1, 2, 3, 4)})
    monkeypatch.setattr(psutil, "swap_memory", _raise(OSError))
    snap, errors = HostSource(procfs=root).read()
    assert [(e.call, e.error_type) for e in errors] == [("psutil.swap_memory", "OSError")]
    assert list(snap.disks) == ["xvda"]
    assert snap.memory_total_bytes == psutil.virtual_memory().total
    assert snap.swap_state_bytes == {}
    assert snap.cpu_time_s["user"] == pytest.approx(138.18)


def test_meminfo_without_available_asks_psutil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Vm = namedtuple("Vm", "total available free buffers cached")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Vm(100, 60, 10, 5, 20))
    meminfo = MEMINFO.replace(b"MemAvailable:    9000000 kB\n", b"")
    snap, errors = HostSource(procfs=_procfs(tmp_path, meminfo=meminfo)).read()
    assert errors == []
    assert snap.memory_state_bytes == {"used": 40, "free": 10, "buffers": 5, "cached": 20}
    assert snap.swap_state_bytes == {"used": 1000000 * 1024, "free": 3000000 * 1024}


def test_proc_files_are_read_afresh_each_cycle(tmp_path: Path) -> None:
    root = _procfs(tmp_path)
    clock = iter([0.0, 1.0])
    source = HostSource(procfs=root, clock=lambda: next(clock))
    source.read()
    (tmp_path / "stat").write_bytes(b"cpu  13918 5 2958 197722 253 7 72 12 3 0\n")
    snap, _ = source.read()
    assert snap.cpu_time_s["user"] == pytest.approx(139.18)
    assert snap.cpu_utilization["user"] > 0


def test_logical_count_is_taken_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def cpu_count(logical: bool = True) -> int:
        calls.append(logical)
        return 3

    monkeypatch.setattr(psutil, "cpu_count", cpu_count)
    source = HostSource()
    for _ in range(3):
        snap, _ = source.read()
        assert snap.cpu_logical_count == 3
    assert calls == [True]


def test_partitions_are_listed_again_after_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    Part = namedtuple("Part", "device mountpoint fstype opts")
    Usage = namedtuple("Usage", "total used free percent")
    listings: list[list[Part] | None] = [
        [Part("/dev/sda1", "/", "ext4", "rw")],
        None,
        [Part("/dev/sda1", "/", "ext4", "rw"), Part("/dev/sdb1", "/data", "xfs", "ro")],
    ]
    listed: list[float] = []
    usage_calls: list[str] = []
    now = [0.0]

    def disk_partitions(all: bool = False) -> list[Part]:
        listed.append(now[0])
        result = listings.pop(0)
        if result is None:
            raise OSError("mounts")
        return result

    def disk_usage(path: str) -> Usage:
        usage_calls.append(path)
        return Usage(100, 10, 80, 10.0)

    monkeypatch.setattr(psutil, "disk_partitions", disk_partitions)
    monkeypatch.setattr(psutil, "disk_usage", disk_usage)
    source = HostSource(clock=lambda: now[0], partitions_ttl_s=60.0)

    mounts = []
    for t in (0.0, 30.0, 59.9, 60.0, 61.0, 120.9):
        now[0] = t
        snap, errors = source.read()
        mounts.append([fs.mountpoint for fs in snap.filesystems])
        if t == 60.0:
            assert [(e.call, e.error_type) for e in errors] == [
                ("psutil.disk_partitions", "OSError")
            ]
    # Listed at 0; at 60 the listing fails and the old list stands; tried again at 61.
    assert listed == [0.0, 60.0, 61.0]
    assert mounts == [["/"], ["/"], ["/"], ["/"], ["/", "/data"], ["/", "/data"]]
    assert usage_calls.count("/") == 6


@linux_only
def test_proc_values_equal_psutil() -> None:
    source = HostSource()
    assert source._procfs is not None
    snap, errors = source.read()
    assert errors == []
    times = psutil.cpu_times()
    for mode, value in host_module._cpu_modes(times).items():
        # CPU time moves on between the two reads; a second of it is plenty.
        assert snap.cpu_time_s[mode] == pytest.approx(value, abs=1.0)
    assert snap.cpu_logical_count == psutil.cpu_count(logical=True)
    vm = psutil.virtual_memory()
    assert snap.memory_total_bytes == vm.total
    tolerance = 64 * 2**20  # memory moves between the two reads too
    assert snap.memory_available_bytes == pytest.approx(vm.available, abs=tolerance)
    for state, value in (
        ("free", vm.free),
        ("buffers", vm.buffers),
        ("cached", vm.cached),
        ("used", vm.total - vm.available),
    ):
        assert snap.memory_state_bytes[state] == pytest.approx(value, abs=tolerance)
    swap = psutil.swap_memory()
    assert snap.swap_state_bytes["used"] == pytest.approx(swap.used, abs=tolerance)
    assert snap.swap_state_bytes["free"] == pytest.approx(swap.free, abs=tolerance)
    disks = psutil.disk_io_counters(perdisk=True, nowrap=False)
    assert set(snap.disks) == {n for n in disks if not proc_files.SKIPPED_DISK.match(n)}
    for name, io in snap.disks.items():
        theirs = disks[name]
        assert io.read_operations == pytest.approx(theirs.read_count, abs=1000)
        assert io.write_operations == pytest.approx(theirs.write_count, abs=1000)
        assert io.read_bytes == pytest.approx(theirs.read_bytes, abs=64 * 2**20)
        assert io.write_bytes == pytest.approx(theirs.write_bytes, abs=64 * 2**20)
    nics = psutil.net_io_counters(pernic=True, nowrap=False)
    assert set(snap.networks) == set(nics) - {"lo"}
    for name, net in snap.networks.items():
        theirs = nics[name]
        assert net.receive_bytes == pytest.approx(theirs.bytes_recv, abs=16 * 2**20)
        assert net.transmit_bytes == pytest.approx(theirs.bytes_sent, abs=16 * 2**20)
        assert net.receive_dropped == pytest.approx(theirs.dropin, abs=100)
        assert net.transmit_dropped == pytest.approx(theirs.dropout, abs=100)
