"""Network and FUSE filesystems through the host source: listed from /proc/self/mounts, filtered,
read with a bounded wait, and NFS bytes from /proc/self/mountstats."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from otel_gpu.config import DEFAULT_FILESYSTEM_EXCLUDE, filesystem_exclude, filesystem_include
from otel_gpu.sources.host import HostSource
from otel_gpu.sources.mounts import (
    BoundedStatvfs,
    FilesystemFilter,
    parse_mounts,
    parse_mountstats,
)

GIB = 1 << 30
# As the kernel writes /proc/self/mounts (fs/proc_namespace.c show_vfsmnt): a space in a mount
# point is \040.
MOUNTS = """\
/dev/nvme0n1p2 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
nas:/export/datasets /datasets nfs4 rw,relatime,vers=4.2,rsize=1048576,hard,proto=tcp 0 0
nas:/export/datasets /mnt/datasets-again nfs4 rw,relatime,vers=4.2,hard 0 0
nas:/export/home /home nfs rw,relatime,vers=3,hard 0 0
//files/share /mnt/team\\040share cifs rw,relatime,vers=3.1.1 0 0
alice@login:/data /home/alice/remote fuse.sshfs rw,nosuid,nodev,relatime,user_id=1000 0 0
lustre@o2ib:/scratch /lustre lustre ro,flock 0 0
"""
# /proc/self/mountstats as fs/proc_namespace.c show_vfsstat and fs/nfs/super.c nfs_show_stats
# write it, abridged: the bytes: line holds normal read/write, direct read/write, server
# read/write, pages read/written.
MOUNTSTATS = """\
device /dev/nvme0n1p2 mounted on / with fstype ext4
device proc mounted on /proc with fstype proc
device nas:/export/datasets mounted on /datasets with fstype nfs4 statvers=1.1
\topts:\trw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,acregmin=3,hard,proto=tcp
\tage:\t3600
\tcaps:\tcaps=0x3fff7,wtmult=512,dtsize=32768,bsize=0,namlen=255
\tsec:\tflavor=1,pseudoflavor=1
\tevents:\t5 10 0 2 3 4 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
\tbytes:\t5000 600 0 0 7000000 800 1709 1
\tRPC iostats version: 1.1  p/v: 100003/4 (nfs)
\txprt:\ttcp 0 1 2 0 0 10 10 0 10 0 2 0 0
\tper-op statistics
\t        NULL: 1 1 0 44 24 0 0 0 0
\t        READ: 10 10 0 1520 7001280 3 12 16 0
device nas:/export/datasets mounted on /mnt/datasets-again with fstype nfs4 statvers=1.1
\tbytes:\t5000 600 0 0 7000000 800 1709 1
device nas:/export/home mounted on /home with fstype nfs statvers=1.1
\tbytes:\t10 20 30 40 50 60 70 80
"""


def _statvfs(size: int, used: int, reserved: int = 0) -> Any:
    block = 4096
    blocks, used_blocks = size // block, used // block
    free = blocks - used_blocks
    return SimpleNamespace(f_bsize=block, f_frsize=block, f_blocks=blocks, f_bfree=free,
                           f_bavail=free - reserved // block)


class FakeStatvfs:
    """Answers by mount point; a mount in ``blocked`` blocks until it is released."""

    def __init__(self, sizes: dict[str, tuple[int, int]]) -> None:
        self.sizes = sizes
        self.calls: list[str] = []
        self.blocked: dict[str, threading.Event] = {}

    def __call__(self, path: str) -> Any:
        self.calls.append(path)
        gate = self.blocked.get(path)
        if gate is not None:
            gate.wait()
        if path not in self.sizes:
            raise PermissionError(path)
        return _statvfs(*self.sizes[path])


def _proc(tmp_path: Path, mounts: str = MOUNTS, mountstats: str = MOUNTSTATS) -> str:
    (tmp_path / "self").mkdir(exist_ok=True)
    (tmp_path / "self" / "mounts").write_text(mounts)
    (tmp_path / "self" / "mountstats").write_text(mountstats)
    return str(tmp_path)


SIZES = {
    "/datasets": (100 * GIB, 40 * GIB),
    "/mnt/datasets-again": (100 * GIB, 40 * GIB),
    "/home": (10 * GIB, 9 * GIB),
    "/mnt/team share": (5 * GIB, 1 * GIB),
    "/home/alice/remote": (2 * GIB, 1 * GIB),
    "/lustre": (1000 * GIB, 10 * GIB),
}


def _source(proc: str, statvfs: Any, **kwargs: Any) -> HostSource:
    return HostSource(procfs=None, mounts_procfs=proc, statvfs=statvfs, **kwargs)


def _remote(snap: Any) -> dict[str, Any]:
    return {fs.mountpoint: fs for fs in snap.filesystems if fs.device.count(":") or
            fs.type.startswith("fuse") or fs.type == "cifs"}


def test_parse_mounts_unescapes_and_reads_the_mode() -> None:
    mounts, malformed = parse_mounts(MOUNTS)
    assert not malformed
    by_point = {m.mountpoint: m for m in mounts}
    assert by_point["/mnt/team share"].device == "//files/share"
    assert by_point["/lustre"].mode == "ro" and by_point["/datasets"].mode == "rw"
    assert parse_mounts("nas:/x /x nfs\n")[1]  # a short line is malformed


def test_parse_mountstats_takes_the_server_bytes() -> None:
    counters, malformed = parse_mountstats(MOUNTSTATS)
    assert not malformed
    assert counters == {"/datasets": (7_000_000, 800), "/mnt/datasets-again": (7_000_000, 800),
                        "/home": (50, 60)}
    for bad in ("\tbytes:\t1 2 3\n", "\tbytes:\t1 2 3 4 -5 6 7 8\n", "\tbytes:\t1 2 3 4 x 6 7 8\n"):
        text = "device nas:/e mounted on /e with fstype nfs statvers=1.1\n" + bad
        assert parse_mountstats(text) == ({}, True)


def test_network_and_fuse_filesystems_get_usage(tmp_path: Path) -> None:
    fake = FakeStatvfs(SIZES)
    snap, errors = _source(_proc(tmp_path), fake).read()
    assert errors == []
    remote = _remote(snap)
    # The export mounted twice is one filesystem, at its first mount point.
    assert set(remote) == {"/datasets", "/home", "/mnt/team share", "/home/alice/remote",
                           "/lustre"}
    datasets = remote["/datasets"]
    assert (datasets.device, datasets.type, datasets.mode) == ("nas:/export/datasets", "nfs4",
                                                               "rw")
    assert (datasets.used_bytes, datasets.free_bytes, datasets.size_bytes) == (
        40 * GIB, 60 * GIB, 100 * GIB)
    assert remote["/home/alice/remote"].type == "fuse.sshfs"
    assert remote["/lustre"].mode == "ro"
    # NFS counters: one per export, the server bytes.
    assert [(m.mountpoint, m.read_bytes, m.write_bytes) for m in snap.nfs] == [
        ("/datasets", 7_000_000, 800), ("/home", 50, 60)]


def test_include_and_exclude_patterns(tmp_path: Path) -> None:
    only = FilesystemFilter(include=("nfs*",), exclude=("/home",))
    snap, _ = _source(_proc(tmp_path), FakeStatvfs(SIZES), filesystems=only).read()
    assert set(_remote(snap)) == {"/datasets"}
    assert [m.mountpoint for m in snap.nfs] == ["/datasets"]
    by_point = FilesystemFilter(include=("/home/*",))
    snap, _ = _source(_proc(tmp_path), FakeStatvfs(SIZES), filesystems=by_point).read()
    assert set(_remote(snap)) == {"/home/alice/remote"}
    none = FilesystemFilter(include=())
    fake = FakeStatvfs(SIZES)
    snap, _ = _source(_proc(tmp_path), fake, filesystems=none).read()
    assert _remote(snap) == {} and snap.nfs == () and fake.calls == []


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "fuse.*" in filesystem_include({})
    assert filesystem_include({"OTEL_GPU_FILESYSTEM_INCLUDE": "NFS4, /Data/*"}) == (
        "nfs4", "/Data/*")
    assert filesystem_include({"OTEL_GPU_FILESYSTEM_INCLUDE": "none"}) == ()
    assert filesystem_exclude({}) == DEFAULT_FILESYSTEM_EXCLUDE
    assert filesystem_exclude({"OTEL_GPU_FILESYSTEM_EXCLUDE": "none"}) == ()
    default = FilesystemFilter.from_environ({})
    assert not default.includes("nfs4", "/var/lib/kubelet/pods/9f/volumes/kubernetes.io~nfs/d")
    assert not default.includes("fuse.gvfsd-fuse", "/run/user/1000/gvfs")
    assert not default.includes("fuse.lxcfs", "/var/lib/lxcfs")
    assert default.includes("nfs4", "/var/lib/kubelet/plugins/kubernetes.io/nfs/pv1")
    assert default.includes("fuse.sshfs", "/mnt/remote")
    assert filesystem_exclude({"OTEL_GPU_FILESYSTEM_EXCLUDE": "fuse.*,/scratch"}) == (
        "fuse.*", "/scratch")
    monkeypatch.setenv("OTEL_GPU_FILESYSTEM_EXCLUDE", "cifs")
    assert FilesystemFilter.from_environ().excludes("cifs", "/mnt/x")


def test_a_hung_mount_never_hangs_a_cycle(tmp_path: Path) -> None:
    fake = FakeStatvfs(SIZES)
    gate = fake.blocked["/home"] = threading.Event()
    source = _source(_proc(tmp_path), fake, statvfs_timeout_s=0.05)
    try:
        snap, errors = source.read()
        assert "/home" not in _remote(snap) and "/datasets" in _remote(snap)
        assert [(e.source, e.call, e.error_type) for e in errors] == [
            ("host", "statvfs", "Unresponsive")]
        # Still stuck: skipped without a second call, and counted again.
        snap, errors = source.read()
        assert fake.calls.count("/home") == 1
        assert "/home" not in _remote(snap)
        assert [e.error_type for e in errors] == ["Unresponsive"]
    finally:
        gate.set()
    # Once the stuck call returns, the next cycle reads the mount afresh.
    for _ in range(200):
        snap, errors = source.read()
        if "/home" in _remote(snap):
            break
        gate.wait(0.01)
    assert "/home" in _remote(snap) and errors == []
    assert fake.calls.count("/home") == 2


def test_bounded_statvfs_keeps_one_call_per_mount_and_forgets_unmounted_ones() -> None:
    gate = threading.Event()
    calls: list[str] = []

    def blocking(path: str) -> Any:
        calls.append(path)
        gate.wait()
        return _statvfs(GIB, 0)

    reader = BoundedStatvfs(blocking, timeout_s=0.01)
    errors: list[tuple[str, str]] = []
    try:
        for _ in range(5):
            assert reader.read(["/a", "/b"], lambda c, e: errors.append((c, e))) == {}
        assert sorted(calls) == ["/a", "/b"]  # one thread per mount, however many cycles
        assert reader.unresponsive == {"/a", "/b"}
        reader.read(["/a"], lambda c, e: None)  # /b unmounted
        assert reader.unresponsive == {"/a"}
        assert len(errors) == 10
    finally:
        gate.set()


def test_failed_and_malformed_reads_are_counted(tmp_path: Path) -> None:
    sizes = {k: v for k, v in SIZES.items() if k != "/lustre"}  # statvfs: PermissionError
    bad_stats = "device nas:/export/datasets mounted on /datasets with fstype nfs4 statvers=1.1" \
        "\n\tbytes:\t1 2 3\n"
    proc = _proc(tmp_path, MOUNTS + "garbage\n", bad_stats)
    snap, errors = _source(proc, FakeStatvfs(sizes)).read()
    assert sorted((e.call, e.error_type) for e in errors) == [
        ("/proc/self/mounts", "Malformed"), ("/proc/self/mountstats", "Malformed"),
        ("statvfs", "PermissionError")]
    assert snap.nfs == ()
    assert "/datasets" in _remote(snap)


def test_the_mount_list_is_read_on_its_cadence(tmp_path: Path) -> None:
    now = [0.0]
    proc = _proc(tmp_path)
    source = _source(proc, FakeStatvfs(SIZES), clock=lambda: now[0], partitions_ttl_s=60.0)
    source.read()
    with open(os.path.join(proc, "self", "mounts"), "w") as mounts:  # in place, as procfs is
        mounts.write("nas:/export/home /home nfs rw 0 0\n")
    now[0] = 59.0
    assert "/datasets" in _remote(source.read()[0])  # the list stands until the TTL
    now[0] = 61.0
    assert set(_remote(source.read()[0])) == {"/home"}


def _statvfs_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otel-gpu-statvfs"]


def test_one_thread_per_mount_kept_across_cycles_and_stopped_on_close(tmp_path: Path) -> None:
    before = set(_statvfs_threads())  # other tests' sources may still be ending theirs
    source = _source(_proc(tmp_path), FakeStatvfs(SIZES))
    for _ in range(5):
        source.read()
    ours = set(_statvfs_threads()) - before
    assert len(ours) == 5  # the five filesystems read, however many cycles
    source.close()
    for thread in ours:
        thread.join(5)
    assert not any(thread.is_alive() for thread in ours)


def test_mounts_beyond_the_cap_are_left_out_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from otel_gpu.sources.mounts import MAX_REMOTE_MOUNTS

    count = MAX_REMOTE_MOUNTS + 40
    points = [f"/run/media/user{i:03d}" for i in range(count)]
    mounts = "".join(f"u{i}@box:/ {p} fuse.sshfs rw,nosuid 0 0\n" for i, p in enumerate(points))
    before = set(_statvfs_threads())
    source = _source(_proc(tmp_path, mounts=mounts, mountstats=""),
                     FakeStatvfs(dict.fromkeys(points, (GIB, GIB // 2))))
    try:
        with caplog.at_level("WARNING", logger="otel_gpu"):
            for _ in range(3):
                snap, errors = source.read()
        assert errors == []
        assert sorted(_remote(snap)) == points[:MAX_REMOTE_MOUNTS]
        assert len(set(_statvfs_threads()) - before) == MAX_REMOTE_MOUNTS
        told = [r for r in caplog.records if "FUSE mounts" in r.getMessage()]
        assert len(told) == 1 and str(count) in told[0].getMessage()
    finally:
        source.close()
