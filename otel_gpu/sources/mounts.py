"""Network and FUSE filesystems: which are mounted, their usage read with a bounded wait, and the
NFS byte counters of ``/proc/self/mountstats``.

psutil's ``disk_partitions(all=False)`` lists only filesystem types that need a block device
(those ``/proc/filesystems`` does not mark ``nodev``), so it leaves out nfs, nfs4, cifs, smb3,
lustre, beegfs, gpfs and every ``fuse.<name>`` mount (sshfs, s3fs). Those are read here from
``/proc/self/mounts`` (proc(5): ``device mountpoint type options dump pass``, with space, tab,
newline and backslash written as octal escapes by ``fs/proc_namespace.c``), kept when a pattern
of the filter includes them and none excludes them.

``statvfs`` on a mount whose server no longer answers blocks in the kernel (a ``hard`` NFS mount
retries for ever), so each call runs on a thread of its own and is waited for at most
``timeout_s``. A mount whose call is still running is unresponsive: it is skipped, and counted as
a ``SourceError`` (``Unresponsive``) every cycle, until that call returns; the next cycle then
reads it afresh. At most one call per mount point is ever outstanding, and at most
``MAX_REMOTE_MOUNTS`` mount points are read (each holds a thread): a host with more (per-user
FUSE mounts, an automounter's) reports the first of them by mount point, says so once in the
log, and is better served by ``OTEL_GPU_FILESYSTEM_EXCLUDE``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from otel_gpu.config import DEFAULT_FILESYSTEM_INCLUDE, filesystem_exclude, filesystem_include
from otel_gpu.snapshot import Filesystem, NfsIo
from otel_gpu.sources._text import parse_count

NFS_TYPES = frozenset({"nfs", "nfs4"})
STATVFS_TIMEOUT_S = 2.0
MAX_REMOTE_MOUNTS = 64
UNRESPONSIVE = "Unresponsive"
_ESCAPE = re.compile(r"\\([0-7]{3})")
# include/linux/nfs_iostat.h, enum nfs_stat_bytecounters: the order of the eight numbers of the
# "bytes:" line that fs/nfs/super.c nfs_show_stats writes (normal read, normal write, direct
# read, direct write, server read, server write, pages read, pages written).
_BYTES_FIELDS = 8
_SERVER_READ, _SERVER_WRITE = 4, 5


def _matches(pattern: str, fstype: str, mountpoint: str) -> bool:
    if pattern.startswith("/"):
        return fnmatchcase(mountpoint, pattern)
    return fnmatchcase(fstype, pattern)


@dataclass(frozen=True)
class FilesystemFilter:
    """Which filesystems are reported. Each pattern is a shell-style pattern; one that starts
    with ``/`` matches the mount point, any other the filesystem type. ``include`` adds mounts
    beyond the local disks; ``exclude`` removes any filesystem, local disks included."""

    include: tuple[str, ...] = DEFAULT_FILESYSTEM_INCLUDE
    exclude: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> FilesystemFilter:
        """The filter ``OTEL_GPU_FILESYSTEM_INCLUDE`` and ``OTEL_GPU_FILESYSTEM_EXCLUDE`` set."""
        return cls(filesystem_include(environ), filesystem_exclude(environ))

    def includes(self, fstype: str, mountpoint: str) -> bool:
        return any(_matches(p, fstype, mountpoint) for p in self.include) and \
            not self.excludes(fstype, mountpoint)

    def excludes(self, fstype: str, mountpoint: str) -> bool:
        return any(_matches(p, fstype, mountpoint) for p in self.exclude)


class Mount(NamedTuple):
    device: str
    mountpoint: str
    type: str
    mode: str  # rw / ro


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def parse_mounts(text: str) -> tuple[list[Mount], bool]:
    """The mounts of ``/proc/self/mounts`` and whether a line could not be parsed."""
    mounts: list[Mount] = []
    malformed = False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6:
            malformed = malformed or bool(fields)
            continue
        device, mountpoint, fstype, options = (_unescape(f) for f in fields[:4])
        mode = "ro" if "ro" in options.split(",") else "rw"
        mounts.append(Mount(device, mountpoint, fstype, mode))
    return mounts, malformed


def parse_mountstats(text: str) -> tuple[dict[str, tuple[int, int]], bool]:
    """Server read and written bytes per NFS mount point, from ``/proc/self/mountstats``
    (``device D mounted on M with fstype T statvers=1.1`` then, for NFS, the ``bytes:`` line of
    ``nfs_show_stats``), and whether a ``bytes:`` line could not be parsed."""
    found: dict[str, tuple[int, int]] = {}
    malformed = False
    mountpoint: str | None = None
    for line in text.splitlines():
        if line.startswith("device "):
            head = line.split(" mounted on ", 1)
            mountpoint = None
            if len(head) == 2 and " with fstype " in head[1]:
                mountpoint = _unescape(head[1].rsplit(" with fstype ", 1)[0])
            else:
                malformed = True
            continue
        label, _, values = line.strip().partition(":")
        if label != "bytes" or mountpoint is None:
            continue
        fields = values.split()
        try:
            if len(fields) != _BYTES_FIELDS:
                raise ValueError(line)
            found[mountpoint] = (parse_count(fields[_SERVER_READ]),
                                 parse_count(fields[_SERVER_WRITE]))
        except ValueError:
            malformed = True
        mountpoint = None
    return found, malformed


def filesystem_of(mount: Mount, result: Any) -> Filesystem | None:
    """A Filesystem from a ``statvfs`` answer, with psutil's ``disk_usage`` definitions; None
    for a filesystem that reports no size."""
    frsize = result.f_frsize or result.f_bsize
    total = result.f_blocks * frsize
    if total <= 0:
        return None
    free = result.f_bavail * frsize
    used = (result.f_blocks - result.f_bfree) * frsize
    return Filesystem(
        device=mount.device, mountpoint=mount.mountpoint, type=mount.type, mode=mount.mode,
        used_bytes=max(used, 0), free_bytes=max(free, 0),
        reserved_bytes=max(total - used - free, 0),
    )


def nfs_io(mounts: Iterable[Mount], counters: dict[str, tuple[int, int]]) -> tuple[NfsIo, ...]:
    """The NFS counters of ``mounts``; an export mounted twice shares one superblock and so
    one set of counters, reported once, at its first mount point."""
    out: list[NfsIo] = []
    seen: set[str] = set()
    for mount in mounts:
        pair = counters.get(mount.mountpoint)
        if mount.type not in NFS_TYPES or pair is None or mount.device in seen:
            continue
        seen.add(mount.device)
        out.append(NfsIo(mount.device, mount.mountpoint, mount.type, pair[0], pair[1]))
    return tuple(out)


class _Worker:
    """The thread that runs one mount point's ``statvfs`` calls, one at a time: kept between
    cycles (starting a thread costs more than the call), stopped when the mount goes away."""

    def __init__(self, statvfs: Callable[[str], Any], path: str) -> None:
        self._statvfs, self._path = statvfs, path
        self._changed = threading.Condition()
        self._asked = self._stopped = False
        self.done = True
        self.result: Any = None
        self.error: str | None = None
        threading.Thread(target=self._run, name="otel-gpu-statvfs", daemon=True).start()

    def ask(self) -> None:
        with self._changed:
            self.done, self._asked = False, True
            self._changed.notify_all()

    def wait(self, timeout_s: float) -> bool:
        """Whether the call asked for has returned within ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.done, timeout_s)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._asked or self._stopped)
                if not self._asked:
                    return
                self._asked = False
            result, error = None, None
            try:
                result = self._statvfs(self._path)
            except Exception as err:
                error = type(err).__name__
            with self._changed:
                self.result, self.error, self.done = result, error, True
                self._changed.notify_all()


class BoundedStatvfs:
    """``statvfs`` of many mount points at once, each waited for at most ``timeout_s`` (all
    together, not one after another); never blocks longer."""

    def __init__(
        self, statvfs: Callable[[str], Any] = os.statvfs, timeout_s: float = STATVFS_TIMEOUT_S
    ) -> None:
        self._statvfs = statvfs
        self._timeout_s = timeout_s
        self._workers: dict[str, _Worker] = {}

    @property
    def unresponsive(self) -> frozenset[str]:
        return frozenset(p for p, worker in self._workers.items() if not worker.done)

    def close(self) -> None:
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()

    def read(
        self, paths: Sequence[str], record: Callable[[str, str], None]
    ) -> dict[str, Any]:
        """The answers for ``paths`` that came in time; ``record(call, error_type)`` for each
        mount that failed or did not answer."""
        for path in self._workers.keys() - set(paths):
            self._workers.pop(path).stop()  # unmounted; a stuck call ends its thread later
        asked: dict[str, _Worker] = {}
        for path in paths:
            worker = self._workers.get(path)
            if worker is None:
                worker = self._workers[path] = _Worker(self._statvfs, path)
            elif not worker.done:
                record("statvfs", UNRESPONSIVE)  # still in the call an earlier cycle made
                continue
            worker.ask()
            asked[path] = worker
        deadline = time.monotonic() + self._timeout_s
        answers: dict[str, Any] = {}
        for path, worker in asked.items():
            if not worker.wait(max(deadline - time.monotonic(), 0.0)):
                record("statvfs", UNRESPONSIVE)
            elif worker.error is not None:
                record("statvfs", worker.error)
            else:
                answers[path] = worker.result
        return answers
