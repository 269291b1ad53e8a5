"""Host processes from /proc: owner uid, command name, start time and cgroup lines.

Only ``stat``, ``status`` and ``cgroup`` are read, all world-readable, and ``maps``, once per
process, to tell whether it has NVIDIA DALI's library (``libdali``) mapped; command lines are
never read, and environments only as below. ``maps`` needs ptrace-read access (root, or the
process's owner); where it is refused, ``dali`` is None and the refusal is recorded. A process
may exit between being listed and being read: that gives None, not an error. Under ``hidepid=``
mounts other users' files fail with PermissionError: the reader then returns what it could read
(``complete=False``) and records the failure.

For a process in a Slurm job step, ``slurm_account`` reads one variable of its ``environ``,
``SLURM_JOB_ACCOUNT`` (which slurmstepd sets in every task's environment: Slurm's sbatch and
srun "OUTPUT ENVIRONMENT VARIABLES"), once per (pid, start time); nothing else of the
environment is kept, and none of it is logged. ``environ`` needs the same access as ``maps``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace

from otel_gpu.snapshot import ErrorLog
from otel_gpu.sources._files import read_bytes
from otel_gpu.sources._text import MAX_TEXT, clean_value, parse_count, parse_uid

SOURCE = "procfs"
_MAX_FILE_BYTES = 1 << 16
# A PyTorch process maps a few thousand regions (~150 bytes a line); libdali comes in with
# nvidia.dali's import, early, so a long tail of later mappings is not needed to see it.
_MAX_MAPS_BYTES = 4 << 20
_DALI = b"/libdali"
# An environment is at most a quarter of the stack limit (execve(2)); slurmstepd adds its
# SLURM_* variables to what the job was started with, so the one wanted may sit far in.
_MAX_ENVIRON_BYTES = 2 << 20
_SLURM_ACCOUNT = b"SLURM_JOB_ACCOUNT="


@dataclass(frozen=True)
class ProcessInfo:
    """One host process. ``None`` fields could not be read (see ``complete``)."""

    pid: int
    start_time_ticks: int | None  # field 22 of /proc/<pid>/stat, clock ticks after boot
    comm: str | None  # control characters replaced by "?"
    uid: int | None  # real uid, from the Uid: line of /proc/<pid>/status
    cgroup_lines: tuple[str, ...]  # /proc/<pid>/cgroup as the reader's cgroup namespace shows it
    complete: bool = True  # False when a file could not be read (permission)
    dali: bool | None = None  # libdali in /proc/<pid>/maps; None when maps could not be read


class _Gone(Exception):
    """The process exited while it was being read."""


class ProcfsReader(ErrorLog):
    """Reads processes under ``root``.

    uid and cgroup are read once per process, keyed by (pid, start time) so that a reused pid is
    read afresh; comm comes from ``stat``, read every time to check the start time anyway.
    """

    source = SOURCE

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._cache: dict[int, ProcessInfo] = {}
        # pid -> (start time, account): a Slurm task's account, read once per process.
        self._accounts: dict[int, tuple[int, str | None]] = {}
        super().__init__()

    @property
    def cached_pids(self) -> frozenset[int]:
        return frozenset(self._cache)

    def read(self, pid: int) -> ProcessInfo | None:
        """The process ``pid``, or None if there is no such process (any more)."""
        try:
            return self._read(pid)
        except _Gone:
            self._cache.pop(pid, None)
            return None

    def read_many(self, pids: Iterable[int]) -> dict[int, ProcessInfo]:
        """Every process of ``pids`` that still exists; forgets cached pids not in ``pids``."""
        wanted = set(pids)
        for pid in self._cache.keys() - wanted:
            del self._cache[pid]
        for pid in self._accounts.keys() - wanted:
            del self._accounts[pid]
        found = {}
        for pid in wanted:
            info = self.read(pid)
            if info is not None:
                found[pid] = info
        return found

    def _read(self, pid: int) -> ProcessInfo:
        stat = self._file(pid, "stat")
        start, comm = _parse_stat(stat) if stat is not None else (None, None)
        if stat is not None and start is None:
            self.record("stat", "Malformed")
        cached = self._cache.get(pid)
        if cached is not None and start is not None and cached.start_time_ticks == start:
            # comm changes on exec, which keeps the pid and start time; stat is read anyway.
            if cached.comm != comm:
                cached = self._cache[pid] = replace(cached, comm=comm)
            return cached
        status = self._file(pid, "status")
        cgroup = self._file(pid, "cgroup")
        info = ProcessInfo(
            pid=pid,
            start_time_ticks=start,
            comm=comm,
            uid=parse_uid(status) if status is not None else None,
            cgroup_lines=tuple(cgroup.splitlines()) if cgroup is not None else (),
            complete=None not in (stat, status, cgroup),
            dali=self._dali(pid),
        )
        if status is not None and info.uid is None:
            self.record("status", "Malformed")
        if info.complete and start is not None:
            self._cache[pid] = info
        else:
            self._cache.pop(pid, None)
        return info

    def slurm_account(self, info: ProcessInfo) -> str | None:
        """``SLURM_JOB_ACCOUNT`` from the environment of ``info``'s process, or None (not set,
        not readable, or a process without a start time to key it by)."""
        start = info.start_time_ticks
        if start is None:
            return None
        cached = self._accounts.get(info.pid)
        if cached is not None and cached[0] == start:
            return cached[1]
        account = self._environ_value(info.pid, _SLURM_ACCOUNT)
        self._accounts[info.pid] = (start, account)
        return account

    def _environ_value(self, pid: int, prefix: bytes) -> str | None:
        path = os.path.join(self.root, str(pid), "environ")
        try:
            data = read_bytes(path, _MAX_ENVIRON_BYTES)
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError as e:
            self.record("environ", type(e).__name__)
            return None
        at = data.find(b"\0" + prefix)
        if at < 0 and not data.startswith(prefix):
            return None
        start = at + 1 + len(prefix) if at >= 0 else len(prefix)
        end = data.find(b"\0", start)
        value = data[start:end if end >= 0 else len(data)]
        return clean_value(value.decode("utf-8", errors="replace"))

    def _dali(self, pid: int) -> bool | None:
        """Whether the process maps libdali. Read once per process: the cache keeps the answer
        for as long as the (pid, start time) lives."""
        path = os.path.join(self.root, str(pid), "maps")
        try:
            return _DALI in read_bytes(path, _MAX_MAPS_BYTES)
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError as e:
            self.record("maps", type(e).__name__)
            return None

    def _file(self, pid: int, name: str) -> str | None:
        path = os.path.join(self.root, str(pid), name)
        try:
            data = read_bytes(path, _MAX_FILE_BYTES)
        except (FileNotFoundError, ProcessLookupError) as e:
            raise _Gone from e
        except OSError as e:
            self.record(name, type(e).__name__)
            return None
        return data.decode("utf-8", errors="replace")


def _parse_stat(text: str) -> tuple[int | None, str | None]:
    """Start time and comm from ``pid (comm) state ppid ...``; comm may hold spaces and parens."""
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        return None, None
    # The kernel cuts comm to 15 bytes (TASK_COMM_LEN); a longer one is cut like any outside text.
    comm = "".join(
        c if c.isprintable() else "?" for c in text[open_paren + 1 : close_paren][:MAX_TEXT]
    )
    fields = text[close_paren + 1 :].split()
    # fields[0] is field 3 (state), so field 22 (starttime) is fields[19]; see proc_pid_stat(5).
    try:
        return parse_count(fields[19]), comm
    except (IndexError, ValueError):
        return None, comm

