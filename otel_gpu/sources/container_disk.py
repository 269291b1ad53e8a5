"""A container's own disk and shared memory: its writable layer, its ``/dev/shm``, and whether
DataLoader workers share that ``/dev/shm``.

- **Writable layer**, on a slow cadence (``interval_s``, default 300 s,
  ``OTEL_GPU_DISK_INTERVAL``, whose 0 turns this whole reader off): Docker's ``SizeRw``
  (inspect with ``size=true``, which makes the daemon walk the layer) for a Docker container,
  the kubelet Summary's container ``rootfs.usedBytes`` (and the pod's
  ``ephemeral-storage.usedBytes``) for a pod container. Each container is sampled when its last
  sample is ``interval_s`` old, so a new container is sampled at once and the cost of many
  spreads over the cycles; one Summary answers every pod that is due. The samples of the last
  hour (``history_s``) give the layer's growth rate.
- **/dev/shm**, every cycle (one ``statvfs``): through ``/proc/<pid>/root/dev/shm`` of one of its
  processes (the host's pid namespace), where the container's own ``/dev/shm`` is mounted; and
  Docker's ``HostConfig.ShmSize`` and ``IpcMode``. A ``dev`` or ``dev/shm`` that is a symbolic
  link is not followed: it would resolve in the agent's root, not the container's (one swapped
  in between the check and the ``statvfs`` gives the size of a host filesystem, never a file's
  content). The kernel lets only a holder of CAP_SYS_PTRACE into the root of another uid's
  process (proc(5), ptrace access mode): a denied read is counted and not tried again for that
  container for ``worker_interval_s``.
- **DataLoader workers**, every ``worker_interval_s`` (default 60 s): the children of the
  container's GPU process (``/proc/<pid>/task/<pid>/children``, proc(5), kernels built with
  CONFIG_PROC_CHILDREN) named ``pt_data_worker``, the name PyTorch's DataLoader gives each worker
  process (``torch.multiprocessing._set_thread_name("pt_data_worker")`` in
  ``torch/utils/data/_utils/worker.py``); where none has that name (an older PyTorch, another
  loader), its children named ``python*``, the workers a forked loader leaves with the parent's
  name. A container with no GPU process has no count (None).

State is per container id and dropped as soon as a container is not asked about.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from otel_gpu.snapshot import ContainerStorage, ErrorLog
from otel_gpu.sources._files import read_bytes
from otel_gpu.sources.docker import ContainerMeta, DockerClient
from otel_gpu.sources.kubelet_stats import PodDisk, PodKey, StatsSummaryClient

DEFAULT_INTERVAL_S = 300.0
DEFAULT_WORKER_INTERVAL_S = 60.0
HISTORY_S = 3600.0
WORKER_NAME = "pt_data_worker"
MAX_CHILDREN = 256
_MAX_CHILDREN_BYTES = 1 << 16
_MAX_SAMPLES = 64  # an hour of samples at one a minute, the shortest cadence worth having

StatVfs = Callable[[str], os.statvfs_result]


@dataclass(frozen=True)
class DiskTarget:
    """One container to read: its id, a process of it (host pid), whether that process is a GPU
    process, its Docker metadata, and for a pod container its (namespace, pod, container)."""

    container_id: str
    pid: int | None = None
    gpu_process: bool = False
    meta: ContainerMeta | None = None
    pod: tuple[str, str, str] | None = None


@dataclass
class _State:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_MAX_SAMPLES))
    due: float = float("-inf")
    ephemeral: int | None = None
    workers: int | None = None
    workers_due: float = float("-inf")
    shm_due: float = float("-inf")  # after a denied read


class ContainerDiskReader(ErrorLog):
    """Reads ``ContainerStorage`` for the containers asked about; never raises."""

    source = "procfs"

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        docker: DockerClient | None = None,
        summary: StatsSummaryClient | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        worker_interval_s: float = DEFAULT_WORKER_INTERVAL_S,
        history_s: float = HISTORY_S,
        clock: Callable[[], float] = time.monotonic,
        statvfs: StatVfs = os.statvfs,
    ) -> None:
        super().__init__()
        self.proc_root = proc_root
        self.docker = docker
        self.summary = summary
        self.interval_s = interval_s
        self.worker_interval_s = worker_interval_s
        self.history_s = history_s
        self._clock = clock
        self._statvfs = statvfs
        self._states: dict[str, _State] = {}
        self.size_requests = 0  # writable-layer sizes asked of Docker or the kubelet, in all

    @property
    def tracked(self) -> frozenset[str]:
        return frozenset(self._states)

    def read(self, targets: Sequence[DiskTarget]) -> dict[str, ContainerStorage]:
        """Each target's figures, by container id."""
        now = self._clock()
        wanted = {t.container_id for t in targets}
        for cid in self._states.keys() - wanted:
            del self._states[cid]
        summary: dict[PodKey, PodDisk] | None = None
        asked_summary = False
        out = {}
        for target in targets:
            state = self._states.get(target.container_id)
            if state is None:
                state = self._states[target.container_id] = _State()
            if self.interval_s > 0 and now >= state.due:
                size = None
                if target.meta is not None and self.docker is not None:
                    size = self.docker.writable_size(target.container_id)
                    self.size_requests += 1
                elif target.pod is not None and self.summary is not None:
                    if not asked_summary:
                        summary, asked_summary = self.summary.summary(), True
                        self.size_requests += 1
                    size, state.ephemeral = _pod_figures(summary, target.pod)
                if size is not None:
                    state.samples.append((now, size))
                state.due = now + self.interval_s
            while state.samples and now - state.samples[0][0] > self.history_s:
                state.samples.popleft()
            if target.gpu_process and target.pid is not None and now >= state.workers_due:
                state.workers = self._workers(target.pid)
                state.workers_due = now + self.worker_interval_s
            elif not target.gpu_process:
                state.workers = None
            out[target.container_id] = self._storage(target, state, now)
        return out

    def _storage(self, target: DiskTarget, state: _State, now: float) -> ContainerStorage:
        shm = None
        if target.pid is not None and now >= state.shm_due:
            try:
                shm = self.shm(target.pid)
            except PermissionError:
                self.record("dev/shm", "PermissionError")
                state.shm_due = now + self.worker_interval_s
        meta = target.meta
        writable = sampled = growth = None
        if state.samples:
            sampled, writable = state.samples[-1]
            first_at, first = state.samples[0]
            if sampled > first_at:
                growth = (writable - first) / (sampled - first_at)
        return ContainerStorage(
            writable_bytes=writable,
            writable_sampled_at=sampled,
            writable_growth_bytes_per_s=growth,
            pod_ephemeral_bytes=state.ephemeral,
            shm_size_bytes=shm[0] if shm else None,
            shm_used_bytes=shm[1] if shm else None,
            shm_configured_bytes=meta.shm_size if meta is not None else None,
            ipc_host=meta.ipc_host if meta is not None else None,
            data_workers=state.workers,
        )

    def shm(self, pid: int) -> tuple[int, int] | None:
        """(size, used) of the process's /dev/shm, or None (a process gone, no tmpfs there, a
        failure recorded); raises PermissionError when the kernel denies its root."""
        dev = f"{self.proc_root}/{pid}/root/dev"
        shm = dev + "/shm"
        try:
            if stat.S_ISLNK(os.lstat(dev).st_mode) or stat.S_ISLNK(os.lstat(shm).st_mode):
                self.record("dev/shm", "SymbolicLink")
                return None
            vfs = self._statvfs(shm)
        except (FileNotFoundError, ProcessLookupError):
            return None
        except PermissionError:
            raise
        except OSError as e:
            self.record("dev/shm", type(e).__name__)
            return None
        size = vfs.f_blocks * vfs.f_frsize
        if size <= 0:
            return None
        return size, max(vfs.f_blocks - vfs.f_bfree, 0) * vfs.f_frsize

    def _workers(self, pid: int) -> int | None:
        path = os.path.join(self.proc_root, str(pid), "task", str(pid), "children")
        try:
            text = read_bytes(path, _MAX_CHILDREN_BYTES).decode("ascii")
            children = [int(c) for c in text.split()[:MAX_CHILDREN]]
        except (FileNotFoundError, ProcessLookupError):
            return None  # the process exited, or the kernel has no children file
        except (ValueError, UnicodeDecodeError):
            self.record("children", "Malformed")
            return None
        except OSError as e:
            self.record("children", type(e).__name__)
            return None
        named = python = 0
        for child in children:
            try:
                comm = read_bytes(os.path.join(self.proc_root, str(child), "comm"), 64)
            except OSError:
                continue  # it exited meanwhile
            comm = comm.rstrip(b"\n")
            if comm == WORKER_NAME.encode():
                named += 1
            elif comm.startswith(b"python"):
                python += 1
        return named or python


def _pod_figures(
    summary: dict[PodKey, PodDisk] | None, pod: tuple[str, str, str]
) -> tuple[int | None, int | None]:
    """(the container's rootfs bytes, the pod's ephemeral-storage bytes) from a Summary."""
    if summary is None:
        return None, None
    found = summary.get((pod[0], pod[1]))
    if found is None:
        return None, None
    return found.rootfs_bytes.get(pod[2]), found.ephemeral_bytes
