"""Who uses what: GPU processes joined with /proc, cgroups, the container runtime and the kubelet.

One ``Attributor.attribute(gpus)`` per cycle turns the GPU and MIG processes NVML reported (host
pids) into workloads (the processes of one user in one container on one device), the devices
given to containers and pods with the user each is held for, and the cgroup figures of the
containers that hold GPU processes or devices (a Docker container that runs no GPU process through
its init process, Docker's ``State.Pid``; a pod container where the kubelet puts its cgroup):

    processes (pid, device, memory) x procfs (uid, cgroup -> container id)
        x docker (name, image, labels, devices) x kubelet (pod names, devices) -> workloads
    a process in no container x its Slurm job step (from its cgroup path) and account (its
        SLURM_JOB_ACCOUNT, where its environ is readable) -> workloads

The readers keep the caches: ``ProcfsReader`` by (pid, start time), ``DockerClient`` by container
id, the kubelet clients for a few seconds; each forgets what was not asked for in the last cycle.
Nothing here reads or keeps a command line, an argument or an environment (but a Slurm task's one
variable, its account), and no pid leaves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from otel_gpu.collect.container_reads import shared_environments, with_networks, with_storage
from otel_gpu.snapshot import (
    ContainerUsage,
    DeviceAssignment,
    Gpu,
    GpuProcess,
    SharedEnvironment,
    SourceError,
    Workload,
    each_device,
)
from otel_gpu.sources._text import clean_value, passwd_name
from otel_gpu.sources.cgroup import (
    CgroupReader,
    ContainerRef,
    SlurmStep,
    cgroup_lines_for,
    container_from_cgroup_lines,
    pod_container_paths,
    slurm_step_from_cgroup_lines,
)
from otel_gpu.sources.container_disk import ContainerDiskReader
from otel_gpu.sources.docker import ContainerMeta, DockerClient
from otel_gpu.sources.environments import EnvironmentScanner
from otel_gpu.sources.kubelet import (
    KubeletPod,
    PodContainer,
    PodDevices,
    PodListClient,
    PodResourcesClient,
    device_uuid,
)
from otel_gpu.sources.netns import NetnsReader
from otel_gpu.sources.procfs import ProcessInfo, ProcfsReader

Attrs = dict[str, str]
UserLookup = Callable[[int], "str | None"]
# A process in a Slurm job step, named like a pod (the conventions have no Slurm names yet).
SLURM_JOB_ID = "otel_gpu.slurm.job.id"
SLURM_STEP_ID = "otel_gpu.slurm.step.id"
SLURM_ACCOUNT = "otel_gpu.slurm.account.name"

_LABEL_PREFIX = "container.label."
# Labels cri-dockerd sets on the Docker containers of pods: the pod without asking the kubelet.
_K8S_LABELS = (
    ("io.kubernetes.pod.name", "k8s.pod.name"),
    ("io.kubernetes.pod.namespace", "k8s.namespace.name"),
    ("io.kubernetes.pod.uid", "k8s.pod.uid"),
    ("io.kubernetes.container.name", "k8s.container.name"),
)


def passwd_user_name(uid: int) -> str | None:
    """The user name of ``uid`` in the passwd database, or None when it has none."""
    return passwd_name(uid)


@dataclass(frozen=True)
class Attribution:
    """What one cycle's join found, and what it cost."""

    workloads: tuple[Workload, ...] = ()
    assignments: tuple[DeviceAssignment, ...] = ()
    containers: tuple[ContainerUsage, ...] = ()
    errors: tuple[SourceError, ...] = ()
    durations_s: dict[str, float] = field(default_factory=dict)
    environments: tuple[SharedEnvironment, ...] = ()


@dataclass
class _Devices:
    """The Snapshot's devices, and every name a runtime may give them."""

    mig: dict[str, bool] = field(default_factory=dict)  # uuid -> is a MIG device
    refs: dict[str, str] = field(default_factory=dict)  # index, "i:j", hw.name, uuid -> uuid
    whole: list[str] = field(default_factory=list)  # the physical GPUs' uuids

    @classmethod
    def of(cls, gpus: Sequence[Gpu]) -> _Devices:
        devices = cls()
        for gpu, mig in each_device(gpus):
            if mig is None:
                devices.mig[gpu.uuid] = False
                devices.whole.append(gpu.uuid)
                for ref in (gpu.uuid, str(gpu.index), gpu.name):
                    devices.refs[ref] = gpu.uuid
            else:
                devices.mig[mig.uuid] = True
                for ref in (mig.uuid, f"{gpu.index}:{mig.index}", mig.name):
                    devices.refs[ref] = mig.uuid
        return devices

    def resolve(self, ref: str) -> str | None:
        return self.refs.get(device_uuid(ref.strip()))


@dataclass
class _Group:
    processes: int = 0
    memory_bytes: int | None = None
    sm_utilization: float | None = None
    dali: bool | None = None

    def add(self, process: GpuProcess, info: ProcessInfo | None = None) -> None:
        self.processes += 1
        if info is not None and info.dali is not None:
            self.dali = bool(self.dali) or info.dali
        if process.used_memory_bytes is not None:
            self.memory_bytes = (self.memory_bytes or 0) + process.used_memory_bytes
        if process.sm_utilization is not None:
            self.sm_utilization = (self.sm_utilization or 0.0) + process.sm_utilization


class Attributor:
    """Joins a cycle's GPU processes with the host's readers; never raises.

    ``procfs`` is required; every other source is optional (no Docker daemon, no kubelet). A
    source's failures come back in ``Attribution.errors`` and its time in ``durations_s``.
    """

    def __init__(
        self,
        procfs: ProcfsReader,
        cgroup: CgroupReader | None = None,
        docker: DockerClient | None = None,
        pod_resources: PodResourcesClient | None = None,
        pod_list: PodListClient | None = None,
        *,
        network: NetnsReader | None = None,
        disk: ContainerDiskReader | None = None,
        environments: EnvironmentScanner | None = None,
        user_name: UserLookup = passwd_user_name,
        user_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.procfs = procfs
        self.cgroup = cgroup
        self.docker = docker
        self.pod_resources = pod_resources
        self.pod_list = pod_list
        self.network = network
        self.disk = disk
        self.environments = environments
        self._user_name = user_name
        self._user_ttl_s = user_ttl_s
        self._clock = clock
        self._users: dict[int, tuple[float, str]] = {}
        # Parsed cgroup lines: the processes of one container share them. Kept for one cycle.
        self._parsed: dict[tuple[str, ...], ContainerRef | None] = {}
        self._pod_paths: dict[str, str] = {}  # pod container id -> its cgroup path, when idle

    def close(self) -> None:
        """Forget what was learnt; the readers and clients hold no connection between calls."""
        self._users.clear()
        self._parsed.clear()

    def attribute(self, gpus: Sequence[Gpu]) -> Attribution:
        """The workloads, device assignments and container figures of ``gpus``' processes."""
        try:
            return _Cycle(self, [g for g in gpus if not g.lost]).run()
        except Exception as err:  # a bug in the join costs this cycle's attribution only
            failure = SourceError("attribution", "attribute", type(err).__name__)
            return Attribution(errors=(failure,))

    def owner(self, uid: int) -> str:
        """``process.owner``: the user name, or the uid as a string when it has none."""
        now = self._clock()
        cached = self._users.get(uid)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            name = self._user_name(uid)
        except Exception:  # an NSS backend (LDAP, sssd) that fails must not stop the cycle
            name = None
        owner = clean_value(name) or str(uid)  # any lookup's answer is outside text
        self._users[uid] = (now + self._user_ttl_s, owner)
        return owner

    def _container_of(
        self, lines: tuple[str, ...], seen: dict[tuple[str, ...], ContainerRef | None]
    ) -> ContainerRef | None:
        """The container that cgroup lines name, parsed once while they stay in use."""
        if lines in seen:
            return seen[lines]
        ref = self._parsed[lines] if lines in self._parsed else container_from_cgroup_lines(lines)
        seen[lines] = ref
        return ref

    def _keep_parsed(self, seen: dict[tuple[str, ...], ContainerRef | None]) -> None:
        self._parsed = seen

    def _forget_users(self, keep: set[int]) -> None:
        for uid in self._users.keys() - keep:
            del self._users[uid]


class _Cycle:
    """The state of one join; thrown away at the end of the cycle."""

    def __init__(self, attributor: Attributor, gpus: list[Gpu]) -> None:
        self.a = attributor
        self.gpus = gpus
        self.devices = _Devices.of(gpus)
        self.errors: list[SourceError] = []
        self.durations: dict[str, float] = {}
        self.refs: dict[str, ContainerRef] = {}  # container id -> ref, from processes' cgroups
        self.process_refs: dict[int, ContainerRef | None] = {}  # pid -> its container
        self.metas: dict[str, ContainerMeta] = {}
        self.pods: dict[str, KubeletPod] | None = None
        self.by_container: dict[str, tuple[KubeletPod, PodContainer]] = {}
        self.container_attrs: dict[str, Attrs] = {}

    def run(self) -> Attribution:
        if not self.gpus:
            return Attribution()
        placed = list(self._gpu_processes())
        infos = self._timed("procfs", self.a.procfs, lambda: self._procfs(placed), {})
        seen: dict[tuple[str, ...], ContainerRef | None] = {}
        for pid, info in infos.items():
            ref = self.process_refs[pid] = self.a._container_of(info.cgroup_lines, seen)
            if ref is not None:
                self.refs.setdefault(ref.id, ref)
        self.a._keep_parsed(seen)
        self._timed("docker", self.a.docker, self._docker, None)
        self._timed("kubelet", self.a.pod_list, self._pod_list, None)
        pod_devices = self._timed("kubelet", self.a.pod_resources, self._pod_resources, None)
        workloads, holders = self._workloads(placed, infos)
        assignments = self._assignments(pod_devices or ())
        inits = self._timed("procfs", self.a.procfs, lambda: self._inits(assignments, holders), {})
        cgroups = {cid: info.cgroup_lines for cid, info in {**inits, **holders}.items()}
        cgroups |= self._timed("cgroup", self.a.cgroup,
                               lambda: self._pod_cgroups(assignments, cgroups), {})
        containers = self._timed(
            "cgroup", self.a.cgroup, lambda: self._container_usage(cgroups), ()
        )
        pids = {cid: info.pid for cid, info in {**inits, **holders}.items()}
        network, disk, envs = self.a.network, self.a.disk, self.a.environments
        containers = self._timed(
            "procfs", network, lambda: with_networks(network, containers, pids), containers
        )
        pods = {cid: (pod.namespace, pod.name, c.name) for cid, (pod, c) in
                self.by_container.items()}
        containers = self._timed("disk", disk, lambda: with_storage(
            disk, containers, pids, set(holders), self.metas, pods), containers)
        images = {cid: c.image_id for cid, (_, c) in self.by_container.items() if c.image_id}
        images |= {cid: m.image_id for cid, m in self.metas.items() if m.image_id}
        environments = self._timed("environments", envs, lambda: shared_environments(
            envs, containers, pids, images), ())
        runners = self._first_runners(infos)
        assignments = tuple(self._owned(a, runners, inits) for a in assignments)
        return Attribution(
            workloads=workloads,
            assignments=assignments,
            containers=containers,
            errors=tuple(self.errors),
            durations_s=self.durations,
            environments=environments,
        )

    # -- the sources --

    def _timed(self, source: str, reader: Any, step: Callable[[], Any], default: Any) -> Any:
        if reader is None:
            return default
        started = time.perf_counter()
        try:
            result = step()
        except Exception as err:  # a reader bug must cost its own part of the join only
            self.errors.append(SourceError(source, "attribute", type(err).__name__))
            result = default
        take = getattr(reader, "take_errors", None)
        if take is not None:
            self.errors.extend(take())
        self.durations[source] = self.durations.get(source, 0.0) + time.perf_counter() - started
        return result

    def _gpu_processes(self) -> Iterable[tuple[str, bool, GpuProcess]]:
        for gpu in self.gpus:
            if gpu.mig_devices:
                for mig in gpu.mig_devices:
                    for process in mig.processes:
                        yield mig.uuid, True, process
            else:
                for process in gpu.processes:
                    yield gpu.uuid, False, process

    def _procfs(self, placed: list[tuple[str, bool, GpuProcess]]) -> dict[int, ProcessInfo]:
        return self.a.procfs.read_many({p.pid for _, _, p in placed})

    def _docker(self) -> None:
        docker = self.a.docker
        assert docker is not None
        listed = docker.list_containers()
        wanted = set(listed or ())
        for cid, ref in self.refs.items():
            # Containers whose cgroup path names another runtime are not asked about: Docker
            # would answer 404 for every pod container of a containerd node.
            if ref.runtime == "docker" or (
                ref.runtime is None and listed is None and ref.pod_uid is None
            ):
                wanted.add(cid)
        self.metas = docker.inspect_many(wanted)

    def _pod_list(self) -> None:
        assert self.a.pod_list is not None
        self.pods = self.a.pod_list.pods()
        for pod in (self.pods or {}).values():
            for cid, container in pod.containers.items():
                self.by_container[cid] = (pod, container)

    def _pod_resources(self) -> tuple[PodDevices, ...] | None:
        assert self.a.pod_resources is not None
        return self.a.pod_resources.list_devices()

    # -- the join --

    def _attrs_of(self, cid: str) -> Attrs:
        """The container and k8s attributes of a container, the same on every metric."""
        cached = self.container_attrs.get(cid)
        if cached is not None:
            return cached
        ref, meta = self.refs.get(cid), self.metas.get(cid)
        pod, container = self.by_container.get(cid, (None, None))
        if pod is None and ref is not None and ref.pod_uid and self.pods:
            pod = self.pods.get(ref.pod_uid)
        attrs: Attrs = {"container.id": cid}
        if meta is not None:
            attrs["container.name"] = meta.name
        image = meta.image if meta is not None and meta.image else None
        image = image or (container.image if container is not None else None)
        if image:
            attrs["container.image.name"] = image
        runtime = ref.runtime if ref is not None else None
        runtime = runtime or (container.runtime if container is not None else None)
        if runtime is None and meta is not None:
            runtime = "docker"
        if runtime:
            attrs["container.runtime.name"] = runtime
        if pod is not None:
            attrs["k8s.pod.name"] = pod.name
            attrs["k8s.pod.uid"] = pod.uid
            attrs["k8s.namespace.name"] = pod.namespace
        elif ref is not None and ref.pod_uid:
            attrs["k8s.pod.uid"] = ref.pod_uid
        if container is not None:
            attrs["k8s.container.name"] = container.name
        if meta is not None:
            for label, key in _K8S_LABELS:
                if label in meta.labels and key not in attrs:
                    attrs[key] = meta.labels[label]
            for label, value in sorted(meta.labels.items()):
                attrs[_LABEL_PREFIX + label] = value
        self.container_attrs[cid] = attrs
        return attrs

    def _workloads(
        self, placed: list[tuple[str, bool, GpuProcess]], infos: dict[int, ProcessInfo]
    ) -> tuple[tuple[Workload, ...], dict[str, ProcessInfo]]:
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], _Group] = {}
        holders: dict[str, ProcessInfo] = {}  # container id -> one of its GPU processes
        uids: set[int] = set()
        # The processes of one user in one container share their attributes: built once.
        shared: dict[tuple[int | None, str | None, SlurmStep | None],
                     tuple[tuple[str, str], ...]] = {}
        steps: dict[tuple[str, ...], SlurmStep | None] = {}
        for uuid, _, process in placed:
            info = infos.get(process.pid)
            uid = cid = step = None
            if info is not None:
                uid = info.uid
                ref = self.process_refs.get(process.pid)
                if ref is not None:
                    cid = ref.id
                    holders.setdefault(cid, info)
                else:
                    lines = info.cgroup_lines
                    if lines not in steps:
                        steps[lines] = slurm_step_from_cgroup_lines(lines)
                    step = steps[lines]
            items = shared.get((uid, cid, step))
            if items is None:
                attrs: Attrs = {}
                if uid is not None:
                    uids.add(uid)
                    attrs["process.owner"] = self.a.owner(uid)
                if cid is not None:
                    attrs.update(self._attrs_of(cid))
                if step is not None:
                    attrs[SLURM_JOB_ID] = step.job_id
                    attrs[SLURM_STEP_ID] = step.step_id
                    account = self.a.procfs.slurm_account(info) if info is not None else None
                    if account is not None:
                        attrs[SLURM_ACCOUNT] = account
                items = shared[(uid, cid, step)] = tuple(sorted(attrs.items()))
            key = (uuid, items)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(process, info)
        self.a._forget_users(uids)
        workloads = tuple(
            Workload(
                device_uuid=uuid,
                mig=self.devices.mig.get(uuid, False),
                attributes=dict(attrs),
                processes=group.processes,
                memory_bytes=group.memory_bytes,
                sm_utilization=None
                if self.devices.mig.get(uuid, False) or group.sm_utilization is None
                else min(group.sm_utilization, 1.0),
                dali=group.dali,
            )
            for (uuid, attrs), group in groups.items()
        )
        return workloads, holders

    def _inits(
        self, assignments: Iterable[DeviceAssignment], holders: dict[str, ProcessInfo]
    ) -> dict[str, ProcessInfo]:
        """The init processes (Docker's ``State.Pid``) of the containers that hold a device but
        run no GPU process, where /proc still shows them in that container's cgroup."""
        found: dict[str, ProcessInfo] = {}
        for assignment in assignments:
            cid = assignment.attributes.get("container.id")
            meta = self.metas.get(cid) if cid is not None else None
            if cid is None or cid in holders or cid in found or meta is None or meta.pid is None:
                continue
            info = self.a.procfs.read(meta.pid)
            ref = container_from_cgroup_lines(info.cgroup_lines) if info is not None else None
            if info is not None and ref is not None and ref.id == cid:  # not a reused pid
                found[cid] = info
        return found

    def _pod_cgroups(
        self, assignments: Iterable[DeviceAssignment], known: dict[str, tuple[str, ...]]
    ) -> dict[str, tuple[str, ...]]:
        """The cgroups of pod containers that hold a device and run no GPU process, found where
        the kubelet puts them; a path found is kept while the container holds a device."""
        cgroup = self.a.cgroup
        assert cgroup is not None
        found: dict[str, tuple[str, ...]] = {}
        for assignment in assignments:
            cid = assignment.attributes.get("container.id")
            if cid is None or cid in known or cid in found or cid not in self.by_container:
                continue
            pod, container = self.by_container[cid]
            cached = self.a._pod_paths.get(cid)
            candidates = (cached,) if cached else pod_container_paths(
                pod.uid, cid, container.runtime)
            for path in candidates:
                if cgroup.read_path(path) is not None:
                    found[cid] = cgroup_lines_for(path)
                    self.a._pod_paths[cid] = path
                    break
        for cid in self.a._pod_paths.keys() - found.keys():
            del self.a._pod_paths[cid]
        return found

    def _first_runners(self, infos: dict[int, ProcessInfo]) -> dict[str, ProcessInfo]:
        """Per container, its GPU process of lowest pid whose user is known: one pass over the
        processes per cycle, however many containers hold devices."""
        runners: dict[str, ProcessInfo] = {}
        for pid, info in sorted(infos.items()):
            ref = self.process_refs.get(pid)
            if ref is not None and info.uid is not None and ref.id not in runners:
                runners[ref.id] = info
        return runners

    def _owned(
        self,
        assignment: DeviceAssignment,
        runners: dict[str, ProcessInfo],
        inits: dict[str, ProcessInfo],
    ) -> DeviceAssignment:
        """``assignment`` with the user it is held for, and where that answer came from."""
        owner: tuple[str, int | None, str] | None = None
        cid = assignment.attributes.get("container.id")
        runner = runners.get(cid) if cid is not None else None
        if runner is not None and runner.uid is not None:
            owner = (self.a.owner(runner.uid), runner.uid, "process")
        meta = self.metas.get(cid) if cid is not None else None
        if owner is None and meta is not None and meta.user:
            name = meta.user.split(":", 1)[0]
            if name.isdigit():
                owner = (self.a.owner(int(name)), int(name), "docker.config.user")
            elif name:
                owner = (name, None, "docker.config.user")
        init = inits.get(cid) if cid is not None else None
        if owner is None and init is not None and init.uid is not None:
            owner = (self.a.owner(init.uid), init.uid, "proc.init")
        if owner is None:
            uid = self._run_as_user(assignment.attributes)
            if uid is not None:
                owner = (self.a.owner(uid), uid, "k8s.run_as_user")
        if owner is None:
            return assignment
        return replace(assignment, owner=owner[0], owner_uid=owner[1], owner_source=owner[2])

    def _run_as_user(self, attrs: Attrs) -> int | None:
        cid = attrs.get("container.id")
        if cid is not None and cid in self.by_container:
            pod, container = self.by_container[cid]
            return pod.user_of(container.name)
        for pod in (self.pods or {}).values():
            if (pod.namespace, pod.name) == (attrs.get("k8s.namespace.name"),
                                             attrs.get("k8s.pod.name")):
                return pod.user_of(attrs.get("k8s.container.name"))
        return None

    def _container_usage(self, cgroups: dict[str, tuple[str, ...]]) -> tuple[ContainerUsage, ...]:
        cgroup = self.a.cgroup
        assert cgroup is not None
        usage = []
        for cid, lines in cgroups.items():
            resources = cgroup.read(lines)
            if resources is not None:
                usage.append(ContainerUsage(attributes=self._attrs_of(cid), resources=resources))
        return tuple(usage)

    def _assignments(self, pod_devices: Iterable[PodDevices]) -> tuple[DeviceAssignment, ...]:
        found: dict[tuple[str, tuple[str, ...]], Attrs] = {}

        def add(device: str | None, attrs: Attrs) -> None:
            if device is None:
                return
            if "container.id" in attrs:
                who: tuple[str, ...] = (attrs["container.id"],)
            else:
                who = tuple(
                    attrs.get(k, "")
                    for k in ("k8s.namespace.name", "k8s.pod.name", "k8s.container.name")
                )
            found.setdefault((device, who), attrs)

        for cid, meta in self.metas.items():
            attrs = self._attrs_of(cid)
            if meta.all_gpus:
                for uuid in self.devices.whole:
                    add(uuid, attrs)
            for ref in meta.gpu_ids:
                add(self.devices.resolve(ref), attrs)
        by_name = {
            (pod.namespace, pod.name, container.name): cid
            for cid, (pod, container) in self.by_container.items()
        }
        for entry in pod_devices:
            cid = by_name.get((entry.namespace, entry.pod_name, entry.container_name))
            if cid is not None:
                attrs = self._attrs_of(cid)
            else:
                attrs = {
                    "k8s.namespace.name": entry.namespace,
                    "k8s.pod.name": entry.pod_name,
                    "k8s.container.name": entry.container_name,
                }
            if entry.claim is not None:
                attrs = {**attrs, "otel_gpu.k8s.resourceclaim.name": entry.claim.name,
                         "otel_gpu.k8s.dra.driver.name": entry.claim.driver}
            for ref in entry.device_ids:
                uuid = self.devices.resolve(ref)
                if uuid is None and entry.claim is not None:
                    self.errors.append(SourceError("kubelet", "dra", "UnresolvedDevice"))
                add(uuid, attrs)
        return tuple(
            DeviceAssignment(device_uuid=uuid, mig=self.devices.mig[uuid], attributes=attrs)
            for (uuid, _), attrs in found.items()
        )
