"""The host side of a simulated server, materialised so that the real readers and clients read it.

For a :class:`SimulatedServer`, ``SimulatedWorld`` keeps in a temporary directory a procfs tree
of the scenario's running processes (``<pid>/stat``, ``status``, ``cgroup``, and a ``cmdline``
that nothing of ours reads) and a cgroup v2 tree for each container, both rewritten at every
``begin_cycle``; it serves the scenario's containers through the Docker Engine API stand-in and
its pods through the kubelet stand-ins. ``otel_gpu.collect.build`` points the production readers
at its paths and sockets. ``close()`` stops the servers and removes the directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid as uuidlib
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otel_gpu.simulate.server import HostOverrides, SimulatedServer
from otel_gpu.simulate.spec import ClaimSpec, ContainerSpec, PodSpec, ProcessSpec, at_cycle
from otel_gpu.simulate.storage import SimulatedMounts
from otel_gpu.simulate.world_storage import ContainerTrees
from otel_gpu.sources.cgroup import container_from_cgroup_lines
from otel_gpu.sources.kubelet import (
    GPU_RESOURCE,
    MIG_RESOURCE_PREFIX,
)

if TYPE_CHECKING:
    from otel_gpu.simulate.docker_api import DockerApiServer
    from otel_gpu.simulate.kubelet_api import PodListServer, PodResourcesServer

CPU_PERIOD_US = 100_000
USER_SHARE = 0.8
_BOOT_TICKS = 100_000  # a process's start time: this plus its pid, in clock ticks after boot
_MAX_SOCKET_DIR = 80  # AF_UNIX paths are limited to 107 bytes
_SHM = "/dev/shm"
_SHM_MIN_FREE = 256 << 20


HOST_NET_INODE = 4026531840  # an inode the host namespace often has: the kernel picks it at boot
HOST_NET_NS = f"net:[{HOST_NET_INODE}]"
HOST_NET_BYTES = 10**12  # the whole host's traffic, seen from a host-network container


@dataclass
class _CgroupState:
    """A container's cumulative counters, advanced once per cycle."""

    path: str
    resources: Any  # the scenario's Resources
    usage_us: float = 0.0
    periods: int = 0
    throttled: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    host_network: bool = False
    rx_bytes: int = 0
    tx_bytes: int = 0
    pressure_us: dict[str, float] = field(default_factory=dict)  # e.g. io_pressure_some -> µs


class SimulatedWorld:
    """/proc, cgroups, Docker and kubelet of a simulated server; a ``Simulation`` for the
    Collector (``begin_cycle``, ``clock``, ``host_overrides``, ``close``)."""

    def __init__(self, server: SimulatedServer) -> None:
        self.server = server
        self.scenario = server.scenario
        self.root = _temp_dir()
        self.proc_root = os.path.join(self.root, "proc")
        self.cgroup_root = os.path.join(self.root, "cgroup")
        os.makedirs(self.proc_root)
        os.makedirs(self.cgroup_root)
        os.makedirs(os.path.join(self.proc_root, "1", "ns"))
        os.symlink(HOST_NET_NS, os.path.join(self.proc_root, "1", "ns", "net"))
        _write(os.path.join(self.cgroup_root, "cgroup.controllers"), "cpuset cpu io memory pids\n")
        self._closers: list[Callable[[], Any]] = []
        self._finalizer = weakref.finalize(self, _cleanup, self.root, self._closers, os.getpid())
        self._closers.append(server.close)
        host = self.scenario.host
        self.mounts = SimulatedMounts(self.proc_root, host.mounts if host else (),
                                      server.interval_s)
        self._closers.append(self.mounts.close)
        self._pids: set[int] = set()
        self._last_cycle = -1
        self._cgroups = self._cgroup_states()
        self.trees = ContainerTrees(self.root, self.proc_root, self._all_containers())
        self._entries: dict[str, dict[str, Any]] = {}  # container id -> its API answer's entry
        self.docker_socket: str | None = None
        self.pod_resources_socket: str | None = None
        self.pod_list_url: str | None = None
        self.docker_api: DockerApiServer | None = None
        self.pod_resources_api: PodResourcesServer | None = None
        self.pod_list_api: PodListServer | None = None
        self._serve()

    # -- Simulation --

    @property
    def nvml(self) -> Any:
        return self.server.nvml

    def begin_cycle(self, cycle: int) -> None:
        self.server.begin_cycle(cycle)
        self._write_processes(cycle)
        self._write_cgroups(cycle)
        self._write_networks(cycle)
        self._update_entries(cycle)
        self.mounts.begin_cycle(cycle)

    def clock(self, cycle: int) -> float:
        return self.server.clock(cycle)

    def now(self) -> float:
        """The simulated time of the cycle being collected."""
        return self.server.clock(max(self.server.cycle, 0))

    def statvfs(self, path: str) -> os.statvfs_result:
        """``os.statvfs`` as the simulated kernel answers it (containers' /dev/shm)."""
        return self.trees.statvfs(path)

    def _all_containers(self) -> list[ContainerSpec]:
        return [*self.scenario.containers, *(c for p in self.scenario.pods for c in p.containers)]

    def _update_entries(self, cycle: int) -> None:
        """The figures the APIs answer that change over time: the writable layers' sizes."""
        for container in self._all_containers():
            entry = self._entries.get(container.id)
            size = at_cycle(container.resources.writable_layer_bytes, cycle)
            if entry is not None and size is not None:
                entry["size_rw"] = int(size)

    def host_overrides(self, cycle: int) -> HostOverrides | None:
        return self.server.host_overrides(cycle)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SimulatedWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the servers --

    def _serve(self) -> None:
        # The servers' modules (http.server, socketserver, gRPC's server) are imported here, so
        # that an agent whose stand-ins run in another process does not load them.
        from otel_gpu.simulate.docker_api import serve_docker_api
        from otel_gpu.simulate.kubelet_api import serve_pod_list, serve_pod_resources

        scenario = self.scenario
        if scenario.containers:
            self.docker_socket = os.path.join(self.root, "docker.sock")
            containers = [self._docker_entry(c) for c in scenario.containers]
            self.docker_api = serve_docker_api(self.docker_socket, containers)
            self._closers.append(self.docker_api.close)
        if scenario.pods:
            pods = [self._pod_entry(p) for p in scenario.pods]
            if scenario.kubelet.pod_resources:
                self.pod_resources_socket = os.path.join(self.root, "kubelet.sock")
                self.pod_resources_api = serve_pod_resources(self.pod_resources_socket, pods)
                self._closers.append(self.pod_resources_api.close)
            status = 200 if scenario.kubelet.pod_list else 503
            self.pod_list_api = serve_pod_list(pods, status=status)
            self._closers.append(self.pod_list_api.close)
            self.pod_list_url = self.pod_list_api.url

    def _docker_entry(self, container: ContainerSpec) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": container.id,
            "name": container.name,
            "labels": dict(container.labels),
            "devices": list(container.device_uuids),
            "shm_size": container.shm_size_bytes,
            "ipc_mode": "host" if container.ipc_host else "private",
            "image_id": _image_id(container.image or container.id),
        }
        self._entries[container.id] = entry
        if container.image:
            entry["image"] = container.image
        if container.user is not None:
            entry["user"] = container.user
        if container.pid is not None:
            entry["pid"] = container.pid
        for process in self._all_processes():
            if self._container_of(process) == container.id:
                entry["cmdline"] = list(process.cmdline)
                break
        return entry

    def _claim_entry(self, pod: PodSpec, claim: ClaimSpec) -> dict[str, Any]:
        """A DRA claim as NVIDIA's DRA driver allocates it: device ``gpu-<index>`` (MIG:
        ``gpu-<index>-mig-<n>``) in the node's pool, CDI id ``k8s.<driver>/claim=<uid>-<name>``."""
        names = {}
        for gpu in self.scenario.gpus:
            names[gpu.uuid] = f"gpu-{gpu.index}"
            for layout in gpu.mig.layouts if gpu.mig else ():
                for instance in layout.instances:
                    names[instance.uuid] = f"gpu-{gpu.index}-mig-{instance.index}"
        claim_uid = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{pod.uid}/{claim.name}"))
        return {
            "name": claim.name,
            "namespace": pod.namespace,
            "devices": [
                {
                    "driver": claim.driver,
                    "pool": self.scenario.name,
                    "device": names[uuid],
                    "cdi": [f"k8s.{claim.driver}/claim={claim_uid}-{names[uuid]}"],
                }
                for uuid in claim.device_uuids
            ],
        }

    def _pod_entry(self, pod: PodSpec) -> dict[str, Any]:
        profiles = {
            instance.uuid: instance.profile.name
            for gpu in self.scenario.gpus
            for layout in (gpu.mig.layouts if gpu.mig else ())
            for instance in layout.instances
        }
        containers = []
        for container in pod.containers:
            entry: dict[str, Any] = {
                "name": container.name,
                "id": container.id,
                "devices": list(container.device_uuids),
                "image_id": _image_id(container.image or container.id),
            }
            self._entries[container.id] = entry
            if container.image:
                entry["image"] = container.image
            migs = [profiles[d] for d in container.device_uuids if d in profiles]
            entry["resource_name"] = MIG_RESOURCE_PREFIX + migs[0] if migs else GPU_RESOURCE
            if container.claims:
                entry["claims"] = [
                    self._claim_entry(pod, claim) for claim in container.claims
                ]
            containers.append(entry)
        return {
            "namespace": pod.namespace,
            "name": pod.name,
            "uid": pod.uid,
            "containers": containers,
            "run_as_user": pod.run_as_user,
        }

    # -- /proc --

    def _all_processes(self) -> Iterable[ProcessSpec]:
        for gpu in self.scenario.gpus:
            yield from gpu.processes
            for layout in gpu.mig.layouts[1:] if gpu.mig else ():
                yield from layout.processes

    @staticmethod
    def _container_of(process: ProcessSpec) -> str | None:
        ref = container_from_cgroup_lines([process.cgroup])
        return ref.id if ref is not None else None

    def _write_processes(self, cycle: int) -> None:
        running: dict[int, ProcessSpec] = {}
        for gpu in self.scenario.gpus:
            for process in gpu.processes_at(cycle):
                running.setdefault(process.pid, process)
        for pid, process in self._init_processes().items():
            running.setdefault(pid, process)
        for pid in self._pids - running.keys():
            shutil.rmtree(os.path.join(self.proc_root, str(pid)), ignore_errors=True)
        for pid in running.keys() - self._pids:
            _write_process(self.proc_root, running[pid])
        self._pids = set(running)

    def _init_processes(self) -> dict[int, ProcessSpec]:
        """The init processes of the containers that name one (``pid``), in their cgroups."""
        found = {}
        for container in self.scenario.containers:
            state = self._cgroups.get(container.id)
            if container.pid is not None and state is not None:
                found[container.pid] = ProcessSpec(
                    pid=container.pid, uid=container.uid, comm="init",
                    cgroup=f"0::{state.path}", cmdline=("init",), used_memory_bytes=0,
                )
        return found

    # -- cgroups --

    def _cgroup_states(self) -> dict[str, _CgroupState]:
        paths: dict[str, str] = {}
        for process in self._all_processes():
            fields = process.cgroup.split(":", 2)
            cid = self._container_of(process)
            if cid is not None and len(fields) == 3 and fields[0] == "0":
                paths.setdefault(cid, fields[2])
        states = {}
        for container in self.scenario.containers:
            path = paths.get(container.id, f"/system.slice/docker-{container.id}.scope")
            states[container.id] = _CgroupState(path, container.resources,
                                                host_network=container.host_network)
        for pod in self.scenario.pods:
            pod_slice = "kubepods-burstable-pod" + pod.uid.replace("-", "_") + ".slice"
            for container in pod.containers:
                default = (
                    f"/kubepods.slice/kubepods-burstable.slice/{pod_slice}"
                    f"/cri-containerd-{container.id}.scope"
                )
                path = paths.get(container.id, default)
                states[container.id] = _CgroupState(path, container.resources,
                                                    host_network=container.host_network)
        return states

    def _write_cgroups(self, cycle: int) -> None:
        interval = self.server.interval_s
        for state in self._cgroups.values():
            res = state.resources
            limit = at_cycle(res.cpu_limit, cycle)
            for k in range(self._last_cycle + 1, cycle + 1):
                cpus = at_cycle(res.cpu_limit, k) or 1.0
                state.usage_us += (at_cycle(res.cpu_utilization, k) or 0.0) * cpus * interval * 1e6
                if at_cycle(res.cpu_limit, k):
                    periods = round(interval * 1e6 / CPU_PERIOD_US)
                    state.periods += periods
                    ratio = at_cycle(res.cpu_throttled_ratio, k) or 0.0
                    state.throttled += round(ratio * periods)
                state.read_bytes += int((at_cycle(res.disk_read_bytes_per_s, k) or 0) * interval)
                state.write_bytes += int((at_cycle(res.disk_write_bytes_per_s, k) or 0) * interval)
                state.rx_bytes += int((at_cycle(res.network_rx_bytes_per_s, k) or 0) * interval)
                state.tx_bytes += int((at_cycle(res.network_tx_bytes_per_s, k) or 0) * interval)
                for name in _PRESSURES:
                    share = at_cycle(getattr(res, name), k)
                    if share is not None:
                        state.pressure_us[name] = state.pressure_us.get(name, 0.0) + \
                            share * interval * 1e6
            usage = round(state.usage_us)
            user = round(usage * USER_SHARE)
            memory_limit = at_cycle(res.memory_limit_bytes, cycle)
            files = {
                "cpu.max": (
                    f"{round(limit * CPU_PERIOD_US)} {CPU_PERIOD_US}\n"
                    if limit
                    else f"max {CPU_PERIOD_US}\n"
                ),
                "cpu.stat": (
                    f"usage_usec {usage}\nuser_usec {user}\nsystem_usec {usage - user}\n"
                    f"nr_periods {state.periods}\nnr_throttled {state.throttled}\n"
                    f"throttled_usec {state.throttled * CPU_PERIOD_US // 5}\n"
                ),
                "memory.current": f"{at_cycle(res.memory_used_bytes, cycle) or 0}\n",
                "memory.max": f"{memory_limit}\n" if memory_limit else "max\n",
                "memory.events": (
                    f"low 0\nhigh 0\nmax 0\noom 0\noom_kill {at_cycle(res.oom_kills, cycle) or 0}\n"
                ),
                "io.stat": (
                    f"259:0 rbytes={state.read_bytes} wbytes={state.write_bytes} "
                    "rios=0 wios=0 dbytes=0 dios=0\n"
                ),
            }
            files |= _pressure_files(state.pressure_us)
            base = os.path.join(self.cgroup_root, state.path.lstrip("/"))
            os.makedirs(base, exist_ok=True)
            for name, text in files.items():
                _write(os.path.join(base, name), text)
        self._last_cycle = max(self._last_cycle, cycle)


    def _write_networks(self, cycle: int) -> None:
        """``/proc/<pid>/net/dev`` and ``ns/net`` of every running process in a container: its
        container's namespace (the host's for one on the host network, whose traffic is then
        written as the whole host's: a reader must skip it); and its ``root``."""
        inits = {c.pid for c in self.scenario.containers if c.pid is not None}
        self.trees.begin_cycle(cycle, self._pids)
        for pid in self._pids:
            base = os.path.join(self.proc_root, str(pid))
            ref = container_from_cgroup_lines(_read(os.path.join(base, "cgroup")).splitlines())
            state = self._cgroups.get(ref.id) if ref is not None else None
            if state is None or ref is None:
                continue
            self.trees.attach(pid, ref.id, pid not in inits)
            if state.host_network:
                link, rx, tx = HOST_NET_NS, HOST_NET_BYTES, HOST_NET_BYTES
            else:
                inode = HOST_NET_INODE + 1 + int(ref.id[:8], 16)
                link, rx, tx = f"net:[{inode}]", state.rx_bytes, state.tx_bytes
            os.makedirs(os.path.join(base, "ns"), exist_ok=True)
            os.makedirs(os.path.join(base, "net"), exist_ok=True)
            ns = os.path.join(base, "ns", "net")
            if not os.path.islink(ns):
                os.symlink(link, ns)
            _write(os.path.join(base, "net", "dev"), _net_dev(rx, tx))


_PRESSURES = ("io_pressure_some", "io_pressure_full", "memory_pressure_some",
              "memory_pressure_full")


def _pressure_files(totals: dict[str, float]) -> dict[str, str]:
    """io.pressure and memory.pressure in PSI's format (Documentation/accounting/psi.rst), for
    the resources the scenario gives stall shares of; the averages are left at 0."""
    files = {}
    for resource in ("io", "memory"):
        some = totals.get(f"{resource}_pressure_some")
        full = totals.get(f"{resource}_pressure_full")
        if some is None and full is None:
            continue
        files[f"{resource}.pressure"] = "".join(
            f"{kind} avg10=0.00 avg60=0.00 avg300=0.00 total={round(total or 0)}\n"
            for kind, total in (("some", some), ("full", full)))
    return files


def _net_dev(rx_bytes: int, tx_bytes: int) -> str:
    """proc_net(5) ``/proc/net/dev`` for a namespace with ``lo`` and one veth end, ``eth0``;
    packets are full 1500-byte Ethernet frames."""
    header = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast"
        "|bytes    packets errs drop fifo colls carrier compressed\n"
    )
    lo = "    lo:    4096      64    0    0    0     0          0         0     4096      64"
    lo += "    0    0    0     0       0          0\n"
    eth = (f"  eth0: {rx_bytes} {-(-rx_bytes // 1500)} 0 0 0 0 0 0 "
           f"{tx_bytes} {-(-tx_bytes // 1500)} 0 0 0 0 0 0\n")
    return header + lo + eth


def _image_id(image: str) -> str:
    """An image id as Docker writes it, the same for every container of one image."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_process(proc_root: str, process: ProcessSpec) -> None:
    pid = process.pid
    comm = process.comm[:15]  # the kernel keeps TASK_COMM_LEN - 1 bytes
    base = os.path.join(proc_root, str(pid))
    os.makedirs(base, exist_ok=True)
    # Fields 3-22 of proc_pid_stat(5); field 22 is the start time.
    fields = ["S", "1", pid, pid, 0, -1, 4194560, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 1, 0]
    rest = " ".join(str(f) for f in (*fields, _BOOT_TICKS + pid, 0, 0))
    _write(os.path.join(base, "stat"), f"{pid} ({comm}) {rest}\n")
    uid = process.uid
    _write(
        os.path.join(base, "status"),
        f"Name:\t{_escaped(comm)}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
        f"Pid:\t{pid}\nPPid:\t1\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
        f"Gid:\t{uid}\t{uid}\t{uid}\t{uid}\n",
    )
    _write(os.path.join(base, "cgroup"), process.cgroup + "\n")
    _write(os.path.join(base, "cmdline"), "\0".join(process.cmdline) + "\0")
    _write(os.path.join(base, "maps"), _maps(process.libraries))
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", **process.environ}
    _write(os.path.join(base, "environ"), "".join(f"{k}={v}\0" for k, v in environ.items()))


_SITE = "/usr/local/lib/python3.10/dist-packages"


def _maps(libraries: tuple[str, ...]) -> str:
    """``/proc/<pid>/maps`` in proc_pid_maps(5)'s layout: the interpreter, libc, and the given
    shared objects (a bare name is placed where pip puts a wheel's libraries)."""
    paths = ["/usr/bin/python3.10", "/usr/lib/x86_64-linux-gnu/libc.so.6",
             *(lib if "/" in lib else f"{_SITE}/{lib.split('.', 1)[0]}/{lib}" for lib in libraries)]
    lines = []
    for n, path in enumerate(paths):
        start = 0x7F0000000000 + n * 0x200000
        lines.append(f"{start:x}-{start + 0x1FF000:x} r-xp 00000000 08:01 {4000 + n:<9d}"
                     f"          {path}")
    return "\n".join(lines) + "\n"


def _escaped(comm: str) -> str:
    """``comm`` as the kernel writes it on the Name: line (proc_task_name escapes these two)."""
    return comm.replace("\\", "\\\\").replace("\n", "\\n")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _temp_dir() -> str:
    """A new directory, in memory where there is room: procfs and cgroupfs are in memory too,
    and creating thousands of small files on a disk would dwarf what reading them costs."""
    parent = None
    try:
        shm = os.statvfs(_SHM)
        if os.access(_SHM, os.W_OK) and shm.f_bavail * shm.f_frsize >= _SHM_MIN_FREE:
            parent = _SHM
    except OSError:
        pass
    root = tempfile.mkdtemp(prefix="otel-gpu-sim-", dir=parent)
    if len(root) > _MAX_SOCKET_DIR and os.path.isdir("/tmp"):
        os.rmdir(root)
        root = tempfile.mkdtemp(prefix="otel-gpu-sim-", dir="/tmp")
    return root


def _cleanup(root: str, closers: list[Callable[[], Any]], owner_pid: int) -> None:
    if os.getpid() != owner_pid:
        return  # a forked child: the servers' threads and the directory are its parent's
    try:
        while closers:
            closers.pop()()
    finally:
        shutil.rmtree(root, ignore_errors=True)
