"""The simulated server's network and FUSE mounts: ``<proc>/self/mounts`` and
``<proc>/self/mountstats`` as the kernel writes them, and a ``statvfs`` stand-in that answers
each mount's size and use, or blocks while the scenario says the mount does not respond (as
``statvfs`` does on a hard NFS mount whose server is gone), until a cycle where it does, or
``close()``."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from otel_gpu.simulate.spec import MountSpec, at_cycle

BLOCK_SIZE = 4096
# What the kernel shows of the host's own root beside the scenario's mounts.
_ROOT_LINE = "/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n"


class SimulatedMounts:
    """The scenario's mounts under ``proc_root/self``; ``statvfs`` is the stand-in to hand the
    host source."""

    def __init__(self, proc_root: str, mounts: Sequence[MountSpec], interval_s: float) -> None:
        self._mounts = {m.mountpoint: m for m in mounts}
        self._interval_s = interval_s
        self._dir = os.path.join(proc_root, "self")
        self._cycle = 0
        self._closed = False
        self._changed = threading.Condition()
        self._bytes: dict[str, list[int]] = {m.mountpoint: [0, 0] for m in mounts}
        self._last_cycle = -1
        os.makedirs(self._dir, exist_ok=True)
        lines = [_ROOT_LINE]
        for m in mounts:
            options = "rw,relatime,vers=4.2,hard,proto=tcp" if m.type.startswith("nfs") \
                else "rw,nosuid,nodev,relatime"
            lines.append(f"{m.device} {m.mountpoint} {m.type} {options} 0 0\n")
        _write(os.path.join(self._dir, "mounts"), "".join(lines))

    def begin_cycle(self, cycle: int) -> None:
        for k in range(self._last_cycle + 1, cycle + 1):
            for m in self._mounts.values():
                counts = self._bytes[m.mountpoint]
                counts[0] += int((at_cycle(m.read_bytes_per_s, k) or 0) * self._interval_s)
                counts[1] += int((at_cycle(m.write_bytes_per_s, k) or 0) * self._interval_s)
        self._last_cycle = max(self._last_cycle, cycle)
        _write(os.path.join(self._dir, "mountstats"), self._mountstats())
        with self._changed:
            self._cycle = cycle
            self._changed.notify_all()

    def _mountstats(self) -> str:
        """fs/proc_namespace.c show_vfsstat's lines, with fs/nfs/super.c nfs_show_stats' for NFS
        (abridged to the lines a reader needs and a few it must step over)."""
        out = ["device /dev/nvme0n1p2 mounted on / with fstype ext4\n"]
        for m in self._mounts.values():
            if not m.type.startswith("nfs"):
                out.append(f"device {m.device} mounted on {m.mountpoint} with fstype {m.type}\n")
                continue
            read, written = self._bytes[m.mountpoint]
            out.append(
                f"device {m.device} mounted on {m.mountpoint} with fstype {m.type} "
                "statvers=1.1\n"
                "\topts:\trw,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp\n"
                "\tage:\t86400\n"
                "\tevents:\t0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
                # normal read/write, direct read/write, server read/write, pages read/written
                f"\tbytes:\t{read} {written} 0 0 {read} {written} {read // BLOCK_SIZE} "
                f"{written // BLOCK_SIZE}\n"
                "\tRPC iostats version: 1.1  p/v: 100003/4 (nfs)\n"
                "\tper-op statistics\n"
                "\t        NULL: 1 1 0 44 24 0 0 0 0\n"
            )
        return "".join(out)

    def statvfs(self, path: str) -> Any:
        """``os.statvfs``'s answer for a scenario mount: blocks while it is unresponsive."""
        mount = self._mounts.get(path)
        if mount is None:
            raise FileNotFoundError(path)
        with self._changed:
            while not self._closed and not at_cycle(mount.responsive, self._cycle):
                self._changed.wait()
            cycle = self._cycle
        if self._closed:
            raise OSError("the simulated server is gone")
        blocks = int(at_cycle(mount.size_bytes, cycle)) // BLOCK_SIZE
        used = min(int(at_cycle(mount.used_bytes, cycle)) // BLOCK_SIZE, blocks)
        return SimpleNamespace(f_bsize=BLOCK_SIZE, f_frsize=BLOCK_SIZE, f_blocks=blocks,
                               f_bfree=blocks - used, f_bavail=blocks - used)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
