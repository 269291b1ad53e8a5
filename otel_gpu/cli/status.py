"""``otel-gpu status``: the tenant's view of a shared GPU server.

Who I am (user, container, pod), what I was given (GPUs or MIG devices, my cgroup's CPU and
memory limits), what I use now, and the insights that apply to me, for a person at a terminal or,
with ``--format json``, for scripts (the shape is in ``status_document``).

Who "I" am:

- ``--as-user NAME``: the workloads whose ``process.owner`` is NAME (or that uid);
- on the host as root: every workload; as another user: that user's (name or uid);
- in a container: that container's (or pod's) workloads when we share the host's pid namespace;
  otherwise NVML's host pids cannot be mapped to ours, so the view falls back to the devices the
  container was given (``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES``) and its own cgroup;
- under ``--simulate``: root sees every workload, anyone else their own user's.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from otel_gpu.snapshot import (
    SEVERITY_RANK,
    ContainerResources,
    Gpu,
    Insight,
    MigDevice,
    Snapshot,
    Workload,
    cpu_rates,
    each_device,
    format_gib,
)
from otel_gpu.sources.identity import SelfInfo, detect_self

SCHEMA = "otel-gpu.status/1"
WIDTH = 80
_WORKLOAD_KEYS = ("container.id", "k8s.pod.uid", "k8s.pod.name", "process.owner")
_MIG_ACTIVITY_NOTE = "not reported: MIG without GPM (Hopper and later)"


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
    activity_source: str | None = None  # gpm_sm, process_sm, gpu_utilization
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
    insights: list[Any] = field(default_factory=list)

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
    other_insights: list[Any]  # about the host or my devices, not a workload


def _devices(snapshot: Snapshot) -> dict[str, tuple[Gpu, MigDevice | None]]:
    return {(mig or gpu).uuid: (gpu, mig) for gpu, mig in each_device(snapshot.gpus)}


def _device_view(gpu: Gpu, mig: MigDevice | None, given: bool) -> DeviceView:
    if mig is not None:
        gpm = mig.gpm.sm_utilization if mig.gpm is not None else None
        return DeviceView(
            uuid=mig.uuid, name=mig.name, model=gpu.model, profile=mig.profile,
            parent=gpu.uuid, state="failed" if gpu.lost else "ok", given=given,
            memory_total_bytes=mig.memory_total_bytes, memory_used_bytes=mig.memory_used_bytes,
            activity=gpm, activity_source="gpm_sm" if gpm is not None else None,
            note=None if gpm is not None or gpu.lost else _MIG_ACTIVITY_NOTE,
        )
    view = DeviceView(
        uuid=gpu.uuid, name=gpu.name, model=gpu.model, profile=None, parent=None,
        state="failed" if gpu.lost else "ok", given=given,
        memory_total_bytes=gpu.memory_total_bytes, memory_used_bytes=gpu.memory_used_bytes,
    )
    if gpu.gpm is not None and gpu.gpm.sm_utilization is not None:
        view.activity, view.activity_source = gpu.gpm.sm_utilization, "gpm_sm"
    elif gpu.utilization_general is not None:
        view.activity, view.activity_source = gpu.utilization_general, "gpu_utilization"
    if gpu.lost:
        view.note = "the driver lost this GPU"
    return view


def _add_workload(view: DeviceView, workload: Workload) -> None:
    view.processes += workload.processes
    if workload.memory_bytes is not None:
        view.my_memory_bytes = (view.my_memory_bytes or 0) + workload.memory_bytes
    if workload.sm_utilization is not None and view.activity_source != "gpm_sm":
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
    host: str = "",
    simulated: bool = False,
    cycles: int = 1,
    interval_s: float = 0.0,
) -> StatusView:
    """What ``status`` shows of ``snapshot`` for ``me``; ``previous`` gives CPU rates."""
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
                        assignment.attributes)):
                    groups[key] = GroupView(attributes=dict(assignment.attributes))
                else:
                    continue
            device_of(key, groups[key], assignment.device_uuid, given=True)
        before = {
            c.attributes.get("container.id"): c.resources
            for c in (previous.containers if previous is not None else ())
        }
        seconds = snapshot.timestamp - previous.timestamp if previous is not None else 0.0
        for usage in snapshot.containers:
            cid = usage.attributes.get("container.id")
            if cid in groups:
                group = groups[cid]
                group.resources = usage.resources
                group.cpu_used, group.cpu_throttled_ratio = cpu_rates(
                    before.get(cid), usage.resources, seconds
                )
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


def _group_order(group: GroupView) -> tuple[int, str]:
    name = _group_title(group)
    return (0 if group.owners else 1, name)


def _insight_order(insight: Insight) -> tuple[int, str]:
    return (-SEVERITY_RANK.get(insight.severity, -1), insight.rule)


# -- JSON -----------------------------------------------------------------------------------


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def status_document(view: StatusView) -> dict[str, Any]:
    """The stable JSON shape of ``otel-gpu status --format json`` (``schema`` names its version;
    fields are only ever added). Absent values are ``null``; ratios are 0..1."""
    me = view.me
    snapshot = view.snapshot
    groups = []
    for group in view.groups:
        res = group.resources
        groups.append({
            "attributes": dict(group.attributes),
            "owners": list(group.owners),
            "devices": [
                {
                    "hw.id": d.uuid,
                    "hw.name": d.name,
                    "hw.model": d.model,
                    "hw.parent": d.parent,
                    "mig_profile": d.profile,
                    "state": d.state,
                    "given": d.given,
                    "processes": d.processes,
                    "memory_total_bytes": d.memory_total_bytes,
                    "memory_used_bytes": d.memory_used_bytes,
                    "my_memory_bytes": d.my_memory_bytes,
                    "activity": d.activity,
                    "activity_source": d.activity_source,
                    "note": d.note,
                }
                for d in group.devices
            ],
            "cpu": {
                "limit": res.cpu_limit if res else None,
                "used": group.cpu_used,
                "ratio": _ratio(group.cpu_used, res.cpu_limit if res else None),
                "throttled_ratio": group.cpu_throttled_ratio,
            },
            "memory": {
                "limit_bytes": res.memory_limit_bytes if res else None,
                "used_bytes": res.memory_usage_bytes if res else None,
                "ratio": _ratio(res.memory_usage_bytes if res else None,
                                res.memory_limit_bytes if res else None),
                "oom_kills": res.oom_kills if res else None,
            },
            "insights": [i.to_dict() for i in group.insights],
        })
    return {
        "schema": SCHEMA,
        "host": {
            "name": view.host,
            "simulated": view.simulated,
            "driver_available": snapshot.driver_available,
            "driver_version": snapshot.driver_version,
            "timestamp": snapshot.timestamp,
            "cycles": view.cycles,
            "interval_s": view.interval_s,
        },
        "me": {
            "scope": me.scope,
            "user": me.user,
            "uid": me.uid,
            "container.id": me.container_id,
            "k8s.pod.uid": me.pod_uid,
            "k8s.pod.name": me.pod_name,
            "k8s.namespace.name": me.pod_namespace,
            "devices": list(me.devices) if me.devices is not None else None,
            "host_pid_namespace": me.host_pid_namespace,
            "attribution": me.attribution,
            "note": me.note,
        },
        "workloads": groups,
        "insights": [i.to_dict() for i in view.other_insights],
    }


# -- the terminal ---------------------------------------------------------------------------


class _Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text

    def level(self, ratio: float | None) -> str:
        if ratio is None:
            return ""
        return "31" if ratio >= 0.9 else "33" if ratio >= 0.75 else "32"


_SEVERITY_STYLE = {"critical": "1;31", "warning": "33", "info": "36"}
_BAR = 20
_LABEL = 18


def _gib(value: int | None) -> str:
    return "?" if value is None else format_gib(value)


def _cpus(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _bar(ratio: float | None, style: _Style) -> str:
    if ratio is None:
        return " " * (_BAR + 2)
    filled = round(max(0.0, min(1.0, ratio)) * _BAR)
    inner = style("#" * filled, style.level(ratio)) + "-" * (_BAR - filled)
    return f"[{inner}]"


def _plain(text: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", text)


def _row(label: str, ratio: float | None, text: str, style: _Style) -> list[str]:
    """One usage line: a label, a bar and a percentage when there is a ratio, then the text;
    text that does not fit in 80 columns goes on under it."""
    head = f"  {label:<{_LABEL}}"
    if ratio is not None:
        head += f"{_bar(ratio, style)} {ratio * 100:4.0f}%  "
    visible = len(_plain(head))
    lines = _wrap(text, " " * visible, WIDTH)
    return [head + lines[0][visible:], *lines[1:]]


def _short(cid: str | None) -> str:
    return cid[:12] if cid else ""


def _group_title(group: GroupView) -> str:
    attrs = group.attributes
    pod = attrs.get("k8s.pod.name")
    if pod:
        container = attrs.get("k8s.container.name")
        return f"{pod}/{container}" if container else pod
    if attrs.get("container.name"):
        return attrs["container.name"]
    if attrs.get("container.id"):
        return _short(attrs["container.id"])
    if group.owners:
        return "processes of " + ", ".join(group.owners)
    return "this container"


def _group_subtitle(group: GroupView) -> str:
    attrs = group.attributes
    parts = []
    if attrs.get("k8s.namespace.name"):
        parts.append(f"namespace {attrs['k8s.namespace.name']}")
    runtime = attrs.get("container.runtime.name")
    if attrs.get("container.id"):
        parts.append(f"{runtime or 'container'} {_short(attrs['container.id'])}")
    elif "k8s.pod.name" not in attrs and not group.owners:
        parts.append("container")
    elif "k8s.pod.name" not in attrs:
        parts.append("no container")
    if group.owners:
        parts.append("user " + ", ".join(group.owners))
    return ", ".join(parts)


def _wrap(text: str, indent: str, width: int = WIDTH) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=True, break_on_hyphens=False) or [indent.rstrip()]


def _device_given(d: DeviceView) -> str:
    model = (d.model or "GPU").removeprefix("NVIDIA ")
    what = f"MIG {d.profile} on {model}" if d.profile else model
    return f"{d.name}  {what}, {_gib(d.memory_total_bytes)}"


def _insight_lines(insights: Sequence[Any], style: _Style, indent: str = "  ") -> list[str]:
    lines = []
    for insight in insights:
        severity = str(getattr(insight, "severity", "info"))
        rule = str(getattr(insight, "rule", "?"))
        head = style(f"{severity.upper()}", _SEVERITY_STYLE.get(severity, ""))
        message = str(getattr(insight, "message", "") or "")
        first = f"{indent}{head} {rule}: "
        width = WIDTH + len(head) - len(severity)  # the escape codes take no columns
        lines += textwrap.wrap(message, width=width, initial_indent=first,
                               subsequent_indent=indent + "  ",
                               break_on_hyphens=False) or [first.rstrip()]
        remedy = getattr(insight, "remedy", None)
        if remedy:
            lines += _wrap(f"fix: {remedy}", indent + "  ")
    return lines


def status_table(view: StatusView, colour: bool = False) -> str:
    """The terminal view, at most 80 columns wide."""
    style = _Style(colour)
    me, snap = view.me, view.snapshot
    who = {"all": "all users", "user": f"user {me.user or me.uid}",
           "container": "this container"}[me.scope]
    host = f"{view.host} (simulated)" if view.simulated else view.host
    driver = f"driver {snap.driver_version}" if snap.driver_version else (
        "driver ?" if snap.driver_available else "no NVIDIA driver")
    lines = _wrap(f"otel-gpu status: {who} on {host}, {driver}", "")
    if me.note:
        lines += _wrap(f"note: {me.note}", "")
    if not view.groups:
        lines += ["", f"No GPU workloads of {who} on this host."]
    for group in view.groups:
        lines.append("")
        title = style(_group_title(group), "1")
        subtitle = _group_subtitle(group)
        lines += textwrap.wrap(f"{title}  ({subtitle})" if subtitle else title,
                               width=WIDTH + len(title) - len(_group_title(group)),
                               subsequent_indent="  ")
        image = group.attributes.get("container.image.name")
        if image:
            lines += _wrap(f"image {image}", "  ")
        given = [d for d in group.devices if d.given]
        shown, label = (given, "given") if given else (group.devices, "using")
        if shown:
            lines.append(f"  {label:<8}" + _device_given(shown[0]))
            lines += ["          " + _device_given(d) for d in shown[1:]]
        res = group.resources
        limits = []
        if res is not None:
            limits.append(f"{_cpus(res.cpu_limit)} CPUs" if res.cpu_limit else "no CPU limit")
            limits.append(f"{_gib(res.memory_limit_bytes)} memory" if res.memory_limit_bytes
                          else "no memory limit")
            lines.append("  limits  " + ", ".join(limits))
        lines.append("  usage")
        for d in group.devices:
            if d.state == "failed":
                lines.append(f"  {d.name:<{_LABEL}}" + style("lost by the driver", "1;31"))
                continue
            kind = "SM" if d.activity_source in ("gpm_sm", "process_sm") else "util"
            if d.activity is not None:
                source = {"process_sm": "my processes", "gpm_sm": "GPM",
                          "gpu_utilization": "whole GPU"}.get(d.activity_source or "", "")
                lines += _row(f"{d.name} {kind}", d.activity, source, style)
            else:
                lines += _row(f"{d.name} {kind}", None, d.note or "not reported", style)
            used = d.my_memory_bytes if d.my_memory_bytes is not None else d.memory_used_bytes
            text = f"{_gib(used)} of {_gib(d.memory_total_bytes)}"
            if (d.my_memory_bytes is not None and d.memory_used_bytes is not None
                    and d.memory_used_bytes - d.my_memory_bytes > 2**28):
                text += f" ({_gib(d.memory_used_bytes)} in all)"
            lines += _row(f"{d.name} memory", _ratio(used, d.memory_total_bytes), text, style)
        if res is not None:
            cpu_ratio = _ratio(group.cpu_used, res.cpu_limit)
            if group.cpu_used is None:
                cpu_text = "needs two cycles"
            elif res.cpu_limit:
                cpu_text = f"{_cpus(group.cpu_used)} of {_cpus(res.cpu_limit)} CPUs"
            else:
                cpu_text = f"{_cpus(group.cpu_used)} CPUs, no limit"
            if group.cpu_throttled_ratio:
                cpu_text += f", throttled {group.cpu_throttled_ratio * 100:.0f}%"
            lines += _row("CPU", cpu_ratio, cpu_text, style)
            mem_text = f"{_gib(res.memory_usage_bytes)} of {_gib(res.memory_limit_bytes)}" \
                if res.memory_limit_bytes else f"{_gib(res.memory_usage_bytes)}, no limit"
            if res.oom_kills:
                mem_text += f", {res.oom_kills} OOM kills"
            lines += _row("memory", _ratio(res.memory_usage_bytes, res.memory_limit_bytes),
                          mem_text, style)
        if group.insights:
            lines.append("  insights")
            lines += _insight_lines(group.insights, style, indent="  ")
        elif getattr(snap, "insights", None) is not None:
            lines.append("  insights: none")
    if view.other_insights:
        lines += ["", style("host and devices", "1")]
        lines += _insight_lines(view.other_insights, style, indent="  ")
    return "\n".join(lines) + "\n"


def use_colour(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in env and env.get("TERM") != "dumb"


# -- the command ----------------------------------------------------------------------------


def _own_cgroup() -> ContainerResources | None:
    from otel_gpu.sources.cgroup import CgroupReader

    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return None
    return CgroupReader().read(lines)


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
    from otel_gpu.collect.build import build_collector

    info = detect_self() if info is None else info
    me = resolve_me(simulate=simulate is not None, as_user=as_user, info=info)
    interval = interval_s or (10.0 if simulate is not None else 1.0)
    collector = build_collector(simulate, interval, attribution=me.attribution,
                                **dict(collector_options or {}))
    try:
        message = collector.start()
        previous = snapshot = None
        own_before = own_now = None
        for i in range(max(1, cycles)):
            if i and simulate is None:
                sleep(interval)
            previous, snapshot = snapshot, collector.collect()
            if not me.attribution:
                own_before, own_now = own_now, _own_cgroup()
        assert snapshot is not None
        world = getattr(getattr(collector.sources, "simulation", None), "scenario", None)
        host = str(getattr(world, "name", None) or simulate) if simulate is not None \
            else socket.gethostname()
        view = build_view(snapshot, me, previous=previous, own_resources=(own_now, own_before),
                          host=host, simulated=simulate is not None, cycles=max(1, cycles),
                          interval_s=interval)
        return view, message
    finally:
        collector.close()


def print_status(view: StatusView, fmt: str, stream: IO[str] | None = None) -> None:
    import json

    out = sys.stdout if stream is None else stream
    if fmt == "json":
        json.dump(status_document(view), out, indent=1)
        out.write("\n")
    else:
        out.write(status_table(view, colour=use_colour(out)))
