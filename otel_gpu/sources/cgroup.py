"""Containers from cgroups: which container a process runs in, and what its cgroup allows and uses.

``parse_cgroup_path`` recognises the cgroup paths that Docker, containerd, CRI-O and Podman create,
under both cgroup drivers and every Kubernetes QoS class. ``CgroupReader`` reads a cgroup's CPU,
memory and I/O accounting on cgroup v2 or v1 (hybrid hosts are read through their v1 controllers).
Paths are as ``/proc/<pid>/cgroup`` shows them, i.e. relative to the reader's cgroup namespace:
the agent needs the host's cgroup namespace to see other containers' paths whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from otel_gpu.snapshot import ContainerResources, ErrorLog
from otel_gpu.sources._files import read_bytes
from otel_gpu.sources._text import FULL_CONTAINER_ID, INT64_MAX, parse_count, parse_signed

__all__ = [
    "CgroupReader",
    "ContainerRef",
    "ContainerResources",
    "SlurmStep",
    "container_from_cgroup_lines",
    "parse_cgroup_path",
    "parse_slurm_path",
    "slurm_step_from_cgroup_lines",
]

_ID = FULL_CONTAINER_ID
_SCOPED_ID = re.compile(rf"^(docker|cri-containerd|crio|libpod)-({_ID})(?:\.scope)?$")
_MONITOR = re.compile(rf"^(?:crio|libpod)-conmon-{_ID}(?:\.scope)?$")
_BARE_ID = re.compile(rf"^{_ID}$")
# kubepods-burstable-pod<uid_>.slice (systemd driver) and pod<uid> (cgroupfs driver); static pods
# have a 32-hex uid without dashes.
_POD = re.compile(
    r"^(?:(?:.*-)?kubepods-(?:(burstable|besteffort)-)?)?pod([0-9a-f][0-9a-f_-]{31,})(?:\.slice)?$"
)
_QOS = re.compile(r"^(?:.*-)?kubepods-(burstable|besteffort)\.slice$")
_PODMAN_ROOTLESS = re.compile(r"^podman-\d+\.scope$")
_RUNTIMES = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "containerd": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}


@dataclass(frozen=True)
class ContainerRef:
    """A container as its cgroup path names it."""

    id: str  # 64 hex
    runtime: str | None  # docker, containerd, cri-o, podman; None when the path does not tell
    pod_uid: str | None = None  # with dashes, as the Kubernetes API writes it
    qos_class: str | None = None  # guaranteed, burstable, besteffort


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """The container a cgroup path belongs to, or None (host process, user session, Slurm job)."""
    parts = [p for p in path.strip().split("/") if p and p != ".."]
    pod_uid, qos = _pod_of(parts)
    for i in range(len(parts) - 1, -1, -1):
        found = _container_of(parts, i, pod_uid is not None)
        if found is not None:
            container_id, runtime = found
            return ContainerRef(container_id, runtime, pod_uid, qos)
    return None


def _pod_of(parts: Sequence[str]) -> tuple[str | None, str | None]:
    qos: str | None = None
    for part in parts:
        part = part.split(":", 1)[0]
        if m := _QOS.match(part):
            qos = m.group(1)
        elif part in ("burstable", "besteffort"):
            qos = part
        elif m := _POD.match(part):
            return m.group(2).replace("_", "-"), m.group(1) or qos or "guaranteed"
    return None, None


def _container_of(parts: Sequence[str], i: int, in_pod: bool) -> tuple[str, str | None] | None:
    part = parts[i]
    if _MONITOR.match(part):
        return None
    if m := _SCOPED_ID.match(part):
        return m.group(2), _RUNTIMES[m.group(1)]
    if part.count(":") == 2:  # kubepods-...-pod<uid>.slice:cri-containerd:<id>, no systemd scope
        _, prefix, cid = part.split(":")
        if _BARE_ID.match(cid):
            return cid, _RUNTIMES.get(prefix)
        return None
    if _BARE_ID.match(part):
        parent = parts[i - 1] if i > 0 else ""
        if parent == "docker":
            return part, "docker"
        if _PODMAN_ROOTLESS.match(parent):
            return part, "podman"
        if in_pod or parent == "":
            return part, None
    return None


@dataclass(frozen=True)
class SlurmStep:
    """The Slurm job step a process runs in, as its cgroup path names it."""

    job_id: str  # digits: an array task or a het-job component has its own job id
    step_id: str  # digits, or batch, extern, interactive


# slurmd's proctrack/cgroup and task/cgroup plugins: cgroup v1 puts a step at
# /slurm[_<node>]/uid_<uid>/job_<id>/step_<step>[/task_<n>]; cgroup/v2 (Slurm 22.05 and later) at
# /system.slice/[<node>_]slurmstepd.scope/job_<id>/step_<step>[/user/task_<n>]
# (Slurm's cgroup_v1 and cgroup_v2 plugin sources, and its "Control Group v2" guide).
_SLURM_PARENT = re.compile(r"^(?:uid_\d+|(?:.+_)?slurmstepd\.scope)$")
_SLURM_JOB = re.compile(r"^job_(\d+)$")
_SLURM_STEP = re.compile(r"^step_(\d+|batch|extern|interactive)$")


def parse_slurm_path(path: str) -> SlurmStep | None:
    """The Slurm job step a cgroup path belongs to, or None. A path that stops at the job
    (slurmstepd's own processes) has no step: None too."""
    parts = [p for p in path.strip().split("/") if p]
    for i in range(1, len(parts) - 1):
        job = _SLURM_JOB.match(parts[i])
        if job and _SLURM_PARENT.match(parts[i - 1]):
            step = _SLURM_STEP.match(parts[i + 1])
            if step:
                return SlurmStep(job.group(1), step.group(1))
    return None


def slurm_step_from_cgroup_lines(lines: Iterable[str]) -> SlurmStep | None:
    """The Slurm job step named by /proc/<pid>/cgroup lines: the v2 line, else a v1 one (Slurm's
    v1 plugins create the same path in the freezer, cpuset, memory and devices hierarchies)."""
    paths = []
    for line in lines:
        fields = line.strip().split(":", 2)
        if len(fields) == 3:
            paths.append((fields[0] != "0", fields[2]))
    for _, path in sorted(paths, key=lambda p: p[0]):
        step = parse_slurm_path(path)
        if step is not None:
            return step
    return None


def container_from_cgroup_lines(lines: Iterable[str]) -> ContainerRef | None:
    """The container named by /proc/<pid>/cgroup lines (v1, v2 or hybrid).

    The v2 line wins, then the memory and cpu hierarchies, then any other line: on hybrid hosts the
    v2 line is often just ``0::/`` while the v1 controllers carry the container's path.
    """
    ranked: list[tuple[int, str]] = []
    for line in lines:
        fields = line.strip().split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        names = controllers.split(",")
        rank = 0 if hierarchy == "0" else 1 if "memory" in names else 2 if "cpu" in names else 3
        ranked.append((rank, path))
    for _, path in sorted(ranked, key=lambda r: r[0]):
        ref = parse_cgroup_path(path)
        if ref is not None:
            return ref
    return None


_SCOPE_PREFIXES = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}


def pod_container_paths(
    pod_uid: str, container_id: str, runtime: str | None = None
) -> tuple[str, ...]:
    """Where a pod container's cgroup may be, for a container that runs no process the agent
    saw: the kubelet's layout with the systemd driver (``kubepods[-<qos>]-pod<uid>.slice`` with
    the uid's dashes as underscores, then ``<runtime>-<id>.scope``) and with the cgroupfs driver
    (``kubepods[/<qos>]/pod<uid>/<id>``), in each QoS class (guaranteed pods sit directly under
    ``kubepods``). Each candidate still names ``container_id`` when parsed back."""
    if not _BARE_ID.match(container_id):
        return ()
    escaped = pod_uid.replace("-", "_")
    prefixes = [_SCOPE_PREFIXES[runtime]] if runtime in _SCOPE_PREFIXES else \
        list(_SCOPE_PREFIXES.values())
    paths = []
    for qos in ("burstable", "besteffort", None):
        slice_dir = "/kubepods.slice" + (f"/kubepods-{qos}.slice" if qos else "")
        pod_slice = f"kubepods-{qos}-pod{escaped}.slice" if qos else f"kubepods-pod{escaped}.slice"
        paths += [f"{slice_dir}/{pod_slice}/{prefix}-{container_id}.scope" for prefix in prefixes]
        paths.append("/kubepods" + (f"/{qos}" if qos else "") + f"/pod{pod_uid}/{container_id}")
    return tuple(p for p in paths if (ref := parse_cgroup_path(p)) and ref.id == container_id)


def cgroup_lines_for(path: str) -> tuple[str, ...]:
    """/proc/<pid>/cgroup lines of a process in ``path`` on v2 and on v1 hierarchies alike."""
    return (f"0::{path}", f"1:cpu,cpuacct:{path}", f"2:memory:{path}", f"3:blkio:{path}")


# cgroup v1 reports "no memory limit" as PAGE_COUNTER_MAX pages, 9223372036854771712 with 4 KiB
# pages; anything this large is no limit on any page size.
_V1_UNLIMITED = 1 << 62


class CgroupReader(ErrorLog):
    """Reads cgroup accounting files under ``root``; never raises, records what failed."""

    source = "cgroup"

    def __init__(self, root: str = "/sys/fs/cgroup") -> None:
        self.root = root
        super().__init__()

    def is_v2(self) -> bool:
        return os.path.exists(os.path.join(self.root, "cgroup.controllers"))

    def read(self, cgroup_lines: Iterable[str]) -> ContainerResources | None:
        """Resources of the cgroup that /proc/<pid>/cgroup lines name; None if it is gone."""
        by_controller: dict[str, str] = {}
        for line in cgroup_lines:
            fields = line.strip().split(":", 2)
            if len(fields) == 3:
                for name in fields[1].split(",") if fields[1] else [""]:
                    by_controller[name] = fields[2]
        if self.is_v2():
            path = by_controller.get("")
            return None if path is None else self._read_v2(path)
        return self._read_v1(by_controller)

    def read_path(self, path: str) -> ContainerResources | None:
        """Resources of one cgroup path, the same in every v1 hierarchy; None if it is gone."""
        if self.is_v2():
            return self._read_v2(path)
        return self._read_v1({c: path for c in ("cpu", "cpuacct", "memory", "blkio")})

    def _read_v2(self, path: str) -> ContainerResources | None:
        base = os.path.join(self.root, path.lstrip("/"))
        if not os.path.isdir(base):
            return None
        cpu = self._keyed(base, "cpu.stat")
        quota, period = self._cpu_max(base)
        events = self._keyed(base, "memory.events")
        io = self._io_v2(base)
        io_some, io_full = self._pressure(base, "io.pressure")
        memory_some, memory_full = self._pressure(base, "memory.pressure")
        return ContainerResources(
            cgroup_version=2,
            cpu_user_s=_scaled(cpu.get("user_usec"), 1e-6),
            cpu_system_s=_scaled(cpu.get("system_usec"), 1e-6),
            cpu_limit=quota / period if quota is not None and period else None,
            cpu_periods=cpu.get("nr_periods"),
            cpu_throttled_periods=cpu.get("nr_throttled"),
            cpu_throttled_s=_scaled(cpu.get("throttled_usec"), 1e-6),
            memory_usage_bytes=self._int(base, "memory.current"),
            memory_limit_bytes=self._limit_v2(base),
            oom_kills=events.get("oom_kill"),
            disk_read_bytes=io[0] if io else None,
            disk_write_bytes=io[1] if io else None,
            io_pressure_some_s=io_some,
            io_pressure_full_s=io_full,
            memory_pressure_some_s=memory_some,
            memory_pressure_full_s=memory_full,
        )

    def _read_v1(self, paths: dict[str, str]) -> ContainerResources | None:
        dirs = {c: self._v1_dir(c, p) for c, p in paths.items() if c in _V1_CONTROLLERS}
        if not any(d is not None and os.path.isdir(d) for d in dirs.values()):
            return None
        cpu, cpuacct = dirs.get("cpu"), dirs.get("cpuacct")
        memory, blkio = dirs.get("memory"), dirs.get("blkio")
        stat = self._keyed(cpu, "cpu.stat") if cpu else {}
        quota = self._int(cpu, "cpu.cfs_quota_us", signed=True) if cpu else None
        period = self._int(cpu, "cpu.cfs_period_us") if cpu else None
        limit = self._int(memory, "memory.limit_in_bytes") if memory else None
        oom = self._keyed(memory, "memory.oom_control") if memory else {}
        io = self._io_v1(blkio) if blkio else None
        user = self._int(cpuacct, "cpuacct.usage_user") if cpuacct else None
        system = self._int(cpuacct, "cpuacct.usage_sys") if cpuacct else None
        return ContainerResources(
            cgroup_version=1,
            cpu_user_s=_scaled(user, 1e-9),
            cpu_system_s=_scaled(system, 1e-9),
            cpu_limit=quota / period if quota is not None and quota > 0 and period else None,
            cpu_periods=stat.get("nr_periods"),
            cpu_throttled_periods=stat.get("nr_throttled"),
            cpu_throttled_s=_scaled(stat.get("throttled_time"), 1e-9),
            memory_usage_bytes=self._int(memory, "memory.usage_in_bytes") if memory else None,
            memory_limit_bytes=limit if limit is not None and limit < _V1_UNLIMITED else None,
            oom_kills=oom.get("oom_kill"),
            disk_read_bytes=io[0] if io else None,
            disk_write_bytes=io[1] if io else None,
        )

    def _v1_dir(self, controller: str, path: str) -> str | None:
        for mount in (controller, *_V1_JOINT_MOUNTS.get(controller, ())):
            base = os.path.join(self.root, mount)
            if os.path.isdir(base):
                return os.path.join(base, path.lstrip("/"))
        return None

    def _text(self, base: str, name: str) -> str | None:
        path = os.path.join(base, name)
        try:
            return read_bytes(path, 1 << 16).decode("ascii", errors="replace")
        except FileNotFoundError:
            return None  # controller not enabled here, or the cgroup went away
        except OSError as e:
            self.record(name, type(e).__name__)
            return None

    def _malformed(self, name: str) -> None:
        self.record(name, "Malformed")

    def _int(self, base: str, name: str, signed: bool = False) -> int | None:
        text = self._text(base, name)
        if text is None:
            return None
        try:
            return (parse_signed if signed else parse_count)(text)
        except ValueError:
            self._malformed(name)
            return None

    def _keyed(self, base: str, name: str) -> dict[str, int]:
        """``key value`` lines (cpu.stat, memory.events, memory.oom_control)."""
        text = self._text(base, name)
        out: dict[str, int] = {}
        if text is None:
            return out
        for line in text.splitlines():
            fields = line.split()
            if len(fields) != 2:
                continue
            try:
                out[fields[0]] = parse_count(fields[1])
            except ValueError:
                self._malformed(name)
        return out

    def _cpu_max(self, base: str) -> tuple[int | None, int | None]:
        text = self._text(base, "cpu.max")
        if text is None:
            return None, None
        fields = text.split()
        if len(fields) == 2 and fields[0] == "max":
            return None, None
        try:
            quota, period = (parse_count(f) for f in fields)
        except ValueError:
            self._malformed("cpu.max")
            return None, None
        return quota, period

    def _limit_v2(self, base: str) -> int | None:
        text = self._text(base, "memory.max")
        if text is None or text.strip() == "max":
            return None
        try:
            return parse_count(text)
        except ValueError:
            self._malformed("memory.max")
            return None

    def _io_v2(self, base: str) -> tuple[int, int] | None:
        """io.stat: ``MAJ:MIN rbytes=N wbytes=N rios=N ...`` per device."""
        text = self._text(base, "io.stat")
        if text is None:
            return None
        read = write = 0
        for line in text.splitlines():
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if key in ("rbytes", "wbytes"):
                    try:
                        n = parse_count(value)
                    except ValueError:
                        self._malformed("io.stat")
                        return None
                    if key == "rbytes":
                        read += n
                    else:
                        write += n
        return min(read, INT64_MAX), min(write, INT64_MAX)

    def _pressure(self, base: str, name: str) -> tuple[float | None, float | None]:
        """PSI's ``some`` and ``full`` stall times in seconds from ``total=`` (microseconds), as
        Documentation/accounting/psi.rst writes them: ``some avg10=0.00 avg60=0.00 avg300=0.00
        total=0`` and a ``full`` line alike. Absent without PSI (CONFIG_PSI, psi=0)."""
        text = self._text(base, name)
        if text is None:
            return None, None
        some = full = None
        for line in text.split("\n"):
            if not line:
                continue
            kind, at = line[:5], line.rfind(" total=")
            try:
                if at < 0 or kind not in ("some ", "full "):
                    raise ValueError(line)
                seconds = parse_count(line[at + 7:]) * 1e-6
            except ValueError:
                self._malformed(name)
                return None, None
            if kind == "some ":
                some = seconds
            else:
                full = seconds
        return some, full

    def _io_v1(self, base: str) -> tuple[int, int] | None:
        """blkio.throttle.io_service_bytes: ``MAJ:MIN Read N`` / ``Write`` lines and a Total."""
        name = "blkio.throttle.io_service_bytes"
        text = self._text(base, name)
        if text is None:
            return None
        read = write = 0
        for line in text.splitlines():
            fields = line.split()
            if len(fields) != 3 or fields[1] not in ("Read", "Write"):
                continue
            try:
                n = parse_count(fields[2])
            except ValueError:
                self._malformed(name)
                return None
            if fields[1] == "Read":
                read += n
            else:
                write += n
        return min(read, INT64_MAX), min(write, INT64_MAX)


_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio")
_V1_JOINT_MOUNTS = {"cpu": ("cpu,cpuacct",), "cpuacct": ("cpu,cpuacct", "cpuacct,cpu")}


def _scaled(value: int | None, factor: float) -> float | None:
    return None if value is None else value * factor
