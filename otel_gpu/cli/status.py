"""``otel-gpu status``: the tenant's view of a shared GPU server.

Who I am (user, container, pod), what I was given (GPUs or MIG devices, my cgroup's CPU and
memory limits), what I use now, and the insights that apply to me, for a person at a terminal or,
with ``--format json``, for scripts (the shape is in ``status_render.status_document``).

When an agent answers on its status socket (``OTEL_GPU_STATUS_SOCKET``), the view is of its
latest Snapshot, and the agent decides who "I" am from the socket's peer credentials
(``status_server``); otherwise ``status`` collects by itself, and who "I" am is:

- ``--as-user NAME``: the workloads whose ``process.owner`` is NAME (or that uid);
- on the host as root: every workload; as another user: that user's (name or uid);
- in a container: that container's (or pod's) workloads when we share the host's pid namespace;
  otherwise NVML's host pids cannot be mapped to ours, so the view falls back to the devices the
  container was given (``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES``) and its own cgroup;
- under ``--simulate``: root sees every workload, anyone else their own user's.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_gpu.snapshot import (
    SEVERITY_RANK,
    ContainerNetwork,
    ContainerResources,
    ContainerStorage,
    DeviceAssignment,
    Gpu,
    Insight,
    MigDevice,
    Snapshot,
    Workload,
    cpu_rates,
    device_activity,
    each_device,
)
from otel_gpu.sources.identity import SelfInfo, detect_self

_WORKLOAD_KEYS = ("container.id", "k8s.pod.uid", "k8s.pod.name", "process.owner")
# A MIG device without GPM (before Hopper) has activity only through DCGM; doctor says more.
_MIG_ACTIVITY_NOTE = "not reported: needs DCGM (nv-hostengine, or dcgm-exporter)"


# -- who I am -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Me:
    """Whose workloads the view shows."""

    scope: str  # all, user, container
    user: str | None = None
    uid: int | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    devices: tuple[str, ...] | None = None  # the devices given, when the environment says
    host_pid_namespace: bool | None = None
    attribution: bool = True  # whether NVML's pids can be joined to users and containers
    note: str | None = None

    def owns(self, attributes: Mapping[str, str]) -> bool:
        if self.scope == "all":
            return True
        if self.scope == "user":
            owner = attributes.get("process.owner")
            return owner is not None and owner in (self.user, str(self.uid))
        if self.container_id and attributes.get("container.id") == self.container_id:
            return True
        return bool(self.pod_uid) and attributes.get("k8s.pod.uid") == self.pod_uid

    def holds(self, assignment: DeviceAssignment) -> bool:
        """Whether a device given to a container or pod is held for this user."""
        if self.scope == "all":
            return True
        if self.scope == "user":
            return (assignment.owner is not None
                    and assignment.owner in (self.user, str(self.uid))) or (
                self.uid is not None and assignment.owner_uid == self.uid)
        return self.owns(assignment.attributes)


def resolve_me(
    *, simulate: bool, as_user: str | None, info: SelfInfo, euid: int | None = None
) -> Me:
    uid = os.geteuid() if euid is None and hasattr(os, "geteuid") else euid
    if as_user is not None:
        return Me("user", user=as_user, uid=int(as_user) if as_user.isdigit() else None)
    if simulate or not info.in_container:
        if uid == 0:
            return Me("all", user=info.user, uid=0)
        return Me("user", user=info.user, uid=info.uid)
    shared = info.host_pid_namespace is True
    return Me(
        "container",
        user=info.user,
        uid=info.uid,
        container_id=info.container_id,
        pod_uid=info.pod_uid,
        pod_name=info.pod_name,
        pod_namespace=info.pod_namespace,
        devices=info.devices,
        host_pid_namespace=info.host_pid_namespace,
        attribution=shared,
        note=None if shared else info.attribution_note,
    )


# -- what the view holds --------------------------------------------------------------------


@dataclass
class DeviceView:
    uuid: str
    name: str
    model: str | None
    profile: str | None  # MIG profile; None for a whole GPU
    parent: str | None
    state: str  # ok, failed
    given: bool  # the runtime or the kubelet gave it to this workload
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None  # by every process on the device
    my_memory_bytes: int | None = None  # by this workload's processes
    processes: int = 0
    activity: float | None = None
    activity_source: str | None = None  # gpm_sm, dcgm_sm, process_sm, gpu_utilization
    note: str | None = None


@dataclass
class GroupView:
    """One container (or pod container), or one user's processes outside containers."""

    attributes: dict[str, str]  # container.* and k8s.* attributes
    owners: list[str] = field(default_factory=list)
    devices: list[DeviceView] = field(default_factory=list)
    resources: ContainerResources | None = None
    cpu_used: float | None = None  # CPUs, over the last cycle
    cpu_throttled_ratio: float | None = None
    storage: ContainerStorage | None = None  # /dev/shm and the writable layer
    network_rx_per_s: float | None = None  # bytes, over the last cycle
    network_tx_per_s: float | None = None
    insights: list[Insight] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.attributes.get("container.id") or "user:" + ",".join(self.owners)


@dataclass
class StatusView:
    me: Me
    host: str
    simulated: bool
    snapshot: Snapshot
    cycles: int
    interval_s: float
    groups: list[GroupView]
    other_insights: list[Insight]  # about the host or my devices, not a workload


def _devices(snapshot: Snapshot) -> dict[str, tuple[Gpu, MigDevice | None]]:
    return {(mig or gpu).uuid: (gpu, mig) for gpu, mig in each_device(snapshot.gpus)}


def _device_view(gpu: Gpu, mig: MigDevice | None, given: bool) -> DeviceView:
    if mig is not None:
        sm, source = device_activity(mig, "sm_utilization")
        return DeviceView(
            uuid=mig.uuid, name=mig.name, model=gpu.model, profile=mig.profile,
            parent=gpu.uuid, state="failed" if gpu.lost else "ok", given=given,
            memory_total_bytes=mig.memory_total_bytes, memory_used_bytes=mig.memory_used_bytes,
            activity=sm, activity_source=f"{source}_sm" if source is not None else None,
            note=None if sm is not None or gpu.lost else _MIG_ACTIVITY_NOTE,
        )
    view = DeviceView(
        uuid=gpu.uuid, name=gpu.name, model=gpu.model, profile=None, parent=None,
        state="failed" if gpu.lost else "ok", given=given,
        memory_total_bytes=gpu.memory_total_bytes, memory_used_bytes=gpu.memory_used_bytes,
    )
    sm, source = device_activity(gpu, "sm_utilization")
    if sm is not None:
        view.activity, view.activity_source = sm, f"{source}_sm"
    elif gpu.utilization_general is not None:
        view.activity, view.activity_source = gpu.utilization_general, "gpu_utilization"
    if gpu.lost:
        view.note = "the driver lost this GPU"
    return view


def _add_workload(view: DeviceView, workload: Workload) -> None:
    view.processes += workload.processes
    if workload.memory_bytes is not None:
        view.my_memory_bytes = (view.my_memory_bytes or 0) + workload.memory_bytes
    if workload.sm_utilization is not None and view.activity_source not in ("gpm_sm", "dcgm_sm"):
        mine = (view.activity if view.activity_source == "process_sm" else 0.0) or 0.0
        view.activity = min(1.0, mine + workload.sm_utilization)
        view.activity_source = "process_sm"


def _container_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in attributes.items() if k != "process.owner"}


def _matches_group(attributes: Mapping[str, str], group: GroupView) -> bool:
    cid = group.attributes.get("container.id")
    if cid is not None:
        if attributes.get("container.id") == cid:
            return True
        pod = group.attributes.get("k8s.pod.uid")
        return bool(pod) and "container.id" not in attributes and \
            attributes.get("k8s.pod.uid") == pod
    owner = attributes.get("process.owner")
    return "container.id" not in attributes and owner is not None and owner in group.owners


def build_view(
    snapshot: Snapshot,
    me: Me,
    *,
    previous: Snapshot | None = None,
    own_resources: tuple[ContainerResources | None, ContainerResources | None] = (None, None),
    own_storage: ContainerStorage | None = None,
    own_network: tuple[ContainerNetwork | None, ContainerNetwork | None] = (None, None),
    host: str = "",
    simulated: bool = False,
    cycles: int = 1,
    interval_s: float = 0.0,
) -> StatusView:
    """What ``status`` shows of ``snapshot`` for ``me``; ``previous`` gives CPU and network
    rates. ``own_*``: this container's own figures (now, before), where NVML's pids cannot be
    joined to it."""
    devices = _devices(snapshot)
    groups: dict[str, GroupView] = {}
    views: dict[tuple[str, str], DeviceView] = {}

    def group_of(attributes: Mapping[str, str]) -> GroupView:
        attrs = _container_attributes(attributes)
        key = attrs.get("container.id") or "user:" + attributes.get("process.owner", "?")
        if key not in groups:
            groups[key] = GroupView(attributes=attrs)
        return groups[key]

    def device_of(group_key: str, group: GroupView, uuid: str, given: bool) -> DeviceView | None:
        if (group_key, uuid) in views:
            view = views[(group_key, uuid)]
            view.given = view.given or given
            return view
        if uuid not in devices:
            return None
        view = views[(group_key, uuid)] = _device_view(*devices[uuid], given=given)
        group.devices.append(view)
        return view

    if me.attribution:
        for workload in snapshot.workloads:
            if not me.owns(workload.attributes):
                continue
            group = group_of(workload.attributes)
            owner = workload.attributes.get("process.owner")
            if owner is not None and owner not in group.owners:
                group.owners.append(owner)
            key = next(k for k, g in groups.items() if g is group)
            view = device_of(key, group, workload.device_uuid, given=False)
            if view is not None:
                _add_workload(view, workload)
        for assignment in snapshot.assignments:
            cid = assignment.attributes.get("container.id")
            key = cid or "pod:" + "/".join(
                assignment.attributes.get(k, "")
                for k in ("k8s.namespace.name", "k8s.pod.name", "k8s.container.name")
            )
            if key not in groups:
                if me.scope == "all" or (me.scope == "container" and me.owns(
                        assignment.attributes)) or (me.scope == "user" and me.holds(assignment)):
                    groups[key] = GroupView(attributes=dict(assignment.attributes))
                else:
                    continue
            if assignment.owner is not None and assignment.owner not in groups[key].owners:
                groups[key].owners.append(assignment.owner)
            device_of(key, groups[key], assignment.device_uuid, given=True)
        earlier = {c.attributes.get("container.id"): c
                   for c in (previous.containers if previous is not None else ())}
        seconds = snapshot.timestamp - previous.timestamp if previous is not None else 0.0
        for usage in snapshot.containers:
            cid = usage.attributes.get("container.id")
            if cid in groups:
                group = groups[cid]
                before = earlier.get(cid)
                group.resources = usage.resources
                group.cpu_used, group.cpu_throttled_ratio = cpu_rates(
                    before.resources if before is not None else None, usage.resources, seconds
                )
                group.storage = usage.storage
                group.network_rx_per_s, group.network_tx_per_s = network_rates(
                    before.network if before is not None else None, usage.network, seconds)
    else:
        attrs: dict[str, str] = {}
        for key, value in (("container.id", me.container_id), ("k8s.pod.uid", me.pod_uid),
                           ("k8s.pod.name", me.pod_name),
                           ("k8s.namespace.name", me.pod_namespace)):
            if value:
                attrs[key] = value
        group = GroupView(attributes=attrs, owners=[me.user] if me.user else [])
        groups["self"] = group
        wanted = None if me.devices is None else set(me.devices)
        for gpu in snapshot.gpus:
            if wanted is None or str(gpu.index) in wanted or gpu.uuid in wanted:
                if gpu.mig_devices:
                    for mig in gpu.mig_devices:
                        device_of("self", group, mig.uuid, given=True)
                else:
                    device_of("self", group, gpu.uuid, given=True)
                continue
            for mig in gpu.mig_devices:
                if mig.uuid in wanted:
                    device_of("self", group, mig.uuid, given=True)
        now, before_self = own_resources
        group.resources = now
        seconds = snapshot.timestamp - previous.timestamp if previous is not None else 0.0
        group.cpu_used, group.cpu_throttled_ratio = cpu_rates(before_self, now, seconds)
        group.storage = own_storage
        group.network_rx_per_s, group.network_tx_per_s = network_rates(
            own_network[1], own_network[0], seconds)

    ordered = sorted(groups.values(), key=_group_order)
    mine = {d.uuid for g in ordered for d in g.devices} | {
        d.parent for g in ordered for d in g.devices if d.parent
    }
    other = []
    for insight in sorted(getattr(snapshot, "insights", ()) or (), key=_insight_order):
        attributes = insight.attributes
        placed = False
        for group in ordered:
            if _matches_group(attributes, group):
                group.insights.append(insight)
                placed = True
                break
        if placed:
            continue
        about_workload = any(k in attributes for k in _WORKLOAD_KEYS)
        device = attributes.get("hw.id")
        if me.scope == "all" or (not about_workload and (device is None or device in mine)):
            other.append(insight)
    return StatusView(me, host, simulated, snapshot, cycles, interval_s, ordered, other)


def network_rates(
    before: ContainerNetwork | None, now: ContainerNetwork | None, seconds: float
) -> tuple[float | None, float | None]:
    """Bytes per second received and sent between two reads ``seconds`` apart; None without two
    reads, or when the counters went back (a new namespace)."""
    if before is None or now is None or seconds <= 0:
        return None, None
    rx, tx = now.rx_bytes - before.rx_bytes, now.tx_bytes - before.tx_bytes
    if rx < 0 or tx < 0:
        return None, None
    return rx / seconds, tx / seconds


def _group_order(group: GroupView) -> tuple[int, str]:
    name = group_title(group)
    return (0 if group.owners else 1, name)


def _insight_order(insight: Insight) -> tuple[int, str]:
    return (-SEVERITY_RANK.get(insight.severity, -1), insight.rule)


def short_id(cid: str | None) -> str:
    """A container id as people read it: its first 12 hex digits."""
    return cid[:12] if cid else ""


def group_title(group: GroupView) -> str:
    """What a group is called: its pod/container, its container, or its users."""
    attrs = group.attributes
    pod = attrs.get("k8s.pod.name")
    if pod:
        container = attrs.get("k8s.container.name")
        return f"{pod}/{container}" if container else pod
    if attrs.get("container.name"):
        return attrs["container.name"]
    if attrs.get("container.id"):
        return short_id(attrs["container.id"])
    if group.owners:
        return "processes of " + ", ".join(group.owners)
    return "this container"


# -- the command ----------------------------------------------------------------------------


def _own_cgroup() -> ContainerResources | None:
    from otel_gpu.sources.cgroup import CgroupReader

    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return None
    return CgroupReader().read(lines)


def _own_storage_network() -> tuple[ContainerStorage | None, ContainerNetwork | None]:
    """This container's /dev/shm and network counters, read from inside it."""
    from otel_gpu.sources.container_disk import ContainerDiskReader
    from otel_gpu.sources.netns import parse_net_dev

    try:
        shm = ContainerDiskReader().shm(os.getpid())
    except PermissionError:
        shm = None
    storage = ContainerStorage(shm_size_bytes=shm[0], shm_used_bytes=shm[1]) if shm else None
    try:
        with open("/proc/self/net/dev", encoding="ascii") as f:
            network = parse_net_dev(f.read(1 << 20))
    except (OSError, ValueError):
        network = None
    return storage, network


class ViewSource:
    """A collector for the status view, one view per ``next_view()`` (``--watch`` asks again and
    again; CPU rates come from the cycle before). Raises ``ScenarioError`` for a bad scenario."""

    def __init__(self, *, simulate: str | None, interval_s: float | None, as_user: str | None,
                 info: SelfInfo | None = None,
                 collector_options: Mapping[str, Any] | None = None) -> None:
        from otel_gpu.collect.build import build_collector

        info = detect_self() if info is None else info
        self.simulate = simulate
        self.me = resolve_me(simulate=simulate is not None, as_user=as_user, info=info)
        self.interval = interval_s or (10.0 if simulate is not None else 1.0)
        self._collector = build_collector(simulate, self.interval,
                                          attribution=self.me.attribution,
                                          **dict(collector_options or {}))
        try:
            self.message = self._collector.start()
        except BaseException:
            self._collector.close()
            raise
        self.cycles = 0
        self._previous: Snapshot | None = None
        self._snapshot: Snapshot | None = None
        self._own: tuple[ContainerResources | None, ContainerResources | None] = (None, None)
        self._own_storage: ContainerStorage | None = None
        self._own_network: tuple[ContainerNetwork | None, ContainerNetwork | None] = (None, None)

    def collect(self) -> None:
        """One cycle."""
        self._previous, self._snapshot = self._snapshot, self._collector.collect()
        if not self.me.attribution:
            self._own = (_own_cgroup(), self._own[0])
            self._own_storage, network = _own_storage_network()
            self._own_network = (network, self._own_network[0])
        self.cycles += 1

    def view(self) -> StatusView:
        """The view of the last cycle (collecting one first if there was none)."""
        if self._snapshot is None:
            self.collect()
        assert self._snapshot is not None
        world = getattr(getattr(self._collector.sources, "simulation", None), "scenario", None)
        host = str(getattr(world, "name", None) or self.simulate) if self.simulate is not None \
            else socket.gethostname()
        return build_view(self._snapshot, self.me, previous=self._previous,
                          own_resources=self._own, own_storage=self._own_storage,
                          own_network=self._own_network, host=host,
                          simulated=self.simulate is not None, cycles=self.cycles,
                          interval_s=self.interval)

    def close(self) -> None:
        self._collector.close()


def collect_view(
    *,
    simulate: str | None,
    interval_s: float | None,
    cycles: int,
    as_user: str | None,
    info: SelfInfo | None = None,
    sleep: Any = time.sleep,
    collector_options: Mapping[str, Any] | None = None,
) -> tuple[StatusView, str | None]:
    """Run the collector for ``cycles`` cycles and build the view of the last; also returns the
    message to show when there is no driver. ``collector_options`` go to ``build_collector``
    (``thresholds``). Raises ``ScenarioError`` for a bad scenario."""
    source = ViewSource(simulate=simulate, interval_s=interval_s, as_user=as_user, info=info,
                        collector_options=collector_options)
    try:
        for i in range(max(1, cycles)):
            if i and simulate is None:
                sleep(source.interval)
            source.collect()
        return source.view(), source.message
    finally:
        source.close()



# -- through the agent ----------------------------------------------------------------------


def view_from_agent(reply: Mapping[str, Any]) -> StatusView:
    """The view of an agent's status reply (``status_server``): its scope decides who "I" am.
    Raises ``NoAgent`` for a reply without a share."""
    from otel_gpu.cli.status_server import NoAgent
    from otel_gpu.cli.status_share import ALL, CONTAINER, USER, DecodeError, Scope, decode_snapshot

    raw_scope = reply.get("scope")
    scope = Scope.from_dict(raw_scope if isinstance(raw_scope, dict) else {})
    if reply.get("snapshot") is None:
        why = "cannot tell who asks" if scope.kind not in (ALL, USER, CONTAINER) \
            else "has no snapshot yet"
        raise NoAgent(f"the agent {why}")
    try:
        snapshot = decode_snapshot(reply["snapshot"])
        previous = decode_snapshot(reply["previous"]) if reply.get("previous") else None
    except DecodeError as err:
        raise NoAgent(str(err)) from None
    if scope.kind == ALL:
        me = Me("all", user=scope.user, uid=scope.uid)
    elif scope.kind == CONTAINER:
        me = Me("container", user=scope.user, uid=scope.uid, container_id=scope.container_id,
                pod_uid=scope.pod_uid)
    else:
        me = Me("user", user=scope.user, uid=scope.uid)
    agent = reply.get("agent") if isinstance(reply.get("agent"), dict) else {}
    interval = agent.get("interval_s")
    return build_view(
        snapshot, me, previous=previous, host=str(agent.get("host") or ""),
        simulated=agent.get("simulated") is True, cycles=snapshot.cycle + 1,
        interval_s=float(interval) if isinstance(interval, (int, float)) else 0.0,
    )
