"""The containers' own trees in a simulated world: what ``/proc/<pid>/root`` shows of each, what
``statvfs`` answers for its ``/dev/shm``, and the DataLoader workers under its GPU processes.

Each container gets ``rootfs/<id>/`` with ``dev/shm/`` and its scenario ``environments`` (a conda
environment's ``conda-meta/<package>.json`` files, a pip one's ``<package>.dist-info/``
directories, and one sparse file of ``size_bytes``); every process of the container gets
``/proc/<pid>/root`` linking there. The kernel's ``statvfs`` of a tmpfs cannot be written into a
directory, so ``statvfs`` stands in for the system call: for ``<proc>/<pid>/root/dev/shm`` it
answers the container's ``shm_size_bytes`` (the host's ``/dev/shm`` for ``ipc_host``) with
``shm_used_bytes`` in use, in 4 KiB blocks; any other path goes to ``os.statvfs``. Each GPU
process of a container gets ``task/<pid>/children`` naming its ``data_workers`` worker processes
(none by default), whose ``comm`` is ``pt_data_worker`` as PyTorch names them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from otel_gpu.simulate.spec import ContainerSpec, at_cycle

HOST_SHM_BYTES = 64 << 30  # the host's /dev/shm (half of a 128 GiB host's memory, tmpfs' default)
_BLOCK = 4096
_WORKER_PIDS = 3_000_000  # above every scenario pid a test uses, below pid_max (2**22)
_SPARSE = "payload.bin"
_SHM_SUFFIX = "/root/dev/shm"


class ContainerTrees:
    """The trees of ``containers`` under ``root``, linked from the processes under ``proc_root``."""

    def __init__(self, root: str, proc_root: str, containers: Iterable[ContainerSpec]) -> None:
        self.root = os.path.join(root, "rootfs")
        self.proc_root = proc_root
        self._prefix = proc_root.rstrip("/") + "/"
        self.containers = {c.id: c for c in containers}
        self.cycle = 0
        self._pids: dict[int, str] = {}  # pid -> container id, this cycle
        self._workers: dict[str, tuple[int, ...]] = {}
        next_pid = _WORKER_PIDS
        for cid, container in self.containers.items():
            base = os.path.join(self.root, cid)
            os.makedirs(os.path.join(base, "dev", "shm"))
            for env in container.environments:
                _write_environment(base, env.kind, env.path, env.packages, env.size_bytes)
            workers = tuple(range(next_pid, next_pid + container.data_workers))
            next_pid += container.data_workers
            for pid in workers:
                os.makedirs(os.path.join(proc_root, str(pid)))
                _write(os.path.join(proc_root, str(pid), "comm"), "pt_data_worker\n")
            self._workers[cid] = workers

    def attach(self, pid: int, cid: str, gpu_process: bool) -> None:
        """Link ``pid``'s root to its container's tree; a GPU process gets its workers."""
        if cid not in self.containers:
            return
        self._pids[pid] = cid
        base = os.path.join(self.proc_root, str(pid))
        link = os.path.join(base, "root")
        if os.path.islink(link):
            return  # attached when it started: its tree and its workers do not change
        os.symlink(os.path.join(self.root, cid), link)
        if gpu_process:
            task = os.path.join(base, "task", str(pid))
            os.makedirs(task, exist_ok=True)
            workers = self._workers.get(cid, ())
            _write(os.path.join(task, "children"), "".join(f"{w} " for w in workers))

    def begin_cycle(self, cycle: int, running: set[int]) -> None:
        """Serve ``cycle``'s figures; forget the processes that are not ``running`` any more."""
        self.cycle = cycle
        for pid in self._pids.keys() - running:
            del self._pids[pid]

    def statvfs(self, path: str) -> os.statvfs_result:
        """What the kernel would answer for ``path``: a container's /dev/shm as the scenario
        gives it, anything else as the real host does."""
        pid = path.removeprefix(self._prefix).removesuffix(_SHM_SUFFIX)
        if path.startswith(self._prefix) and path.endswith(_SHM_SUFFIX) and pid.isdigit():
            cid = self._pids.get(int(pid))
            if cid is None:
                raise FileNotFoundError(path)
            container = self.containers[cid]
            size = HOST_SHM_BYTES if container.ipc_host else container.shm_size_bytes
            used = min(int(at_cycle(container.resources.shm_used_bytes, self.cycle) or 0), size)
            blocks, free = size // _BLOCK, (size - used) // _BLOCK
            return os.statvfs_result((_BLOCK, _BLOCK, blocks, free, free, 1 << 20, 1 << 20,
                                      1 << 20, 0, 255))
        return os.statvfs(path)


def _write_environment(base: str, kind: str, path: str, packages: tuple[str, ...],
                       size_bytes: int) -> None:
    prefix = os.path.join(base, path.lstrip("/"))
    if kind == "conda":
        meta = os.path.join(prefix, "conda-meta")
        os.makedirs(meta, exist_ok=True)
        for name in packages:
            _write(os.path.join(meta, f"{name}.json"), "{}\n")
    else:
        os.makedirs(prefix, exist_ok=True)
        for name in packages:
            os.makedirs(os.path.join(prefix, f"{name}.dist-info"), exist_ok=True)
    with open(os.path.join(prefix, _SPARSE), "wb") as f:
        f.truncate(size_bytes)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
