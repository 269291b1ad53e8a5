from __future__ import annotations

import time
from collections import namedtuple
from dataclasses import dataclass, field

import psutil
import pytest

from otel_gpu.sources import host as host_module
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
    monkeypatch.setattr(host_module.time, "monotonic", lambda: next(clock))
    source = HostSource()
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
    snap, errors = HostSource().read()
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
    snap, errors = HostSource().read()
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
    snap, _ = HostSource().read()
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
