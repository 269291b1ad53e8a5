"""How ``otel-gpu status`` shows its view: the stable JSON document and the 80-column table."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import IO, Any

from otel_gpu.cli.status import (
    DeviceView,
    GroupView,
    StatusView,
    group_title,
    short_id,
)
from otel_gpu.cli.terminal import WIDTH, Style, bar, cpus, emit, gib, mib, visible, wrap

SCHEMA = "otel-gpu.status/1"


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
        res, disk = group.resources, group.storage
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
            "shm": {
                "size_bytes": disk.shm_size_bytes if disk else None,
                "used_bytes": disk.shm_used_bytes if disk else None,
                "ratio": _ratio(disk.shm_used_bytes if disk else None,
                                disk.shm_size_bytes if disk else None),
                "configured_bytes": disk.shm_configured_bytes if disk else None,
                "ipc_host": disk.ipc_host if disk else None,
                "dataloader_workers": disk.data_workers if disk else None,
            },
            "disk": {
                "writable_layer_bytes": disk.writable_bytes if disk else None,
                "writable_layer_growth_bytes_per_s":
                    disk.writable_growth_bytes_per_s if disk else None,
                "sampled_at": disk.writable_sampled_at if disk else None,
                "pod_ephemeral_bytes": disk.pod_ephemeral_bytes if disk else None,
            },
            "network": {
                "receive_bytes_per_s": group.network_rx_per_s,
                "transmit_bytes_per_s": group.network_tx_per_s,
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


_SEVERITY_STYLE = {"critical": "1;31", "warning": "33", "info": "36"}
_LABEL = 18


def _row(label: str, ratio: float | None, text: str, style: Style) -> list[str]:
    """One usage line: a label, a bar and a percentage when there is a ratio, then the text;
    text that does not fit in 80 columns goes on under it."""
    head = f"  {label:<{_LABEL}}"
    if ratio is not None:
        head += f"{bar(ratio, style)} {ratio * 100:4.0f}%  "
    columns = len(visible(head))
    lines = wrap(text, " " * columns, WIDTH)
    return [head + lines[0][columns:], *lines[1:]]


def _group_subtitle(group: GroupView) -> str:
    attrs = group.attributes
    parts = []
    if attrs.get("k8s.namespace.name"):
        parts.append(f"namespace {attrs['k8s.namespace.name']}")
    runtime = attrs.get("container.runtime.name")
    if attrs.get("container.id"):
        parts.append(f"{runtime or 'container'} {short_id(attrs['container.id'])}")
    elif "k8s.pod.name" not in attrs and not group.owners:
        parts.append("container")
    elif "k8s.pod.name" not in attrs:
        parts.append("no container")
    if group.owners:
        parts.append("user " + ", ".join(group.owners))
    return ", ".join(parts)


def _device_given(d: DeviceView) -> str:
    model = (d.model or "GPU").removeprefix("NVIDIA ")
    what = f"MIG {d.profile} on {model}" if d.profile else model
    return f"{d.name}  {what}, {gib(d.memory_total_bytes)}"


def _insight_lines(insights: Sequence[Any], style: Style, indent: str = "  ") -> list[str]:
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
            lines += wrap(f"fix: {remedy}", indent + "  ")
    return lines


def _rate(value: float) -> str:
    return f"{value / 1e6:.1f} MB/s" if value >= 1e5 else f"{value / 1e3:.0f} kB/s"


def _storage_rows(group: GroupView, style: Style) -> list[str]:
    """The shm, disk (writable layer) and network lines of a group, where they are known."""
    lines: list[str] = []
    disk = group.storage
    if disk is not None and disk.shm_size_bytes:
        used = disk.shm_used_bytes
        text = f"{mib(used)} of {mib(disk.shm_size_bytes)}"
        if disk.ipc_host:
            text += ", the host's"
        elif disk.shm_size_bytes == 64 << 20:
            text += ", the default"
        if disk.data_workers:
            text += f", {disk.data_workers} workers"
        lines += _row("shm", _ratio(used, disk.shm_size_bytes), text, style)
    if disk is not None and disk.writable_bytes is not None:
        text = f"{gib(disk.writable_bytes)} in the container's own layer"
        growth = disk.writable_growth_bytes_per_s
        if growth is not None and abs(growth) * 3600 >= 1e8:
            text += f", {'+' if growth > 0 else ''}{growth * 3600 / 1e9:.1f} GB/h"
        if disk.pod_ephemeral_bytes is not None:
            text += f"; pod {gib(disk.pod_ephemeral_bytes)} in all"
        lines += _row("disk", None, text, style)
    if group.network_rx_per_s is not None and group.network_tx_per_s is not None:
        lines += _row("network", None, f"received {_rate(group.network_rx_per_s)}, sent "
                      f"{_rate(group.network_tx_per_s)}", style)
    return lines


def status_table(view: StatusView, colour: bool = False) -> str:
    """The terminal view, at most 80 columns wide."""
    style = Style(colour)
    me, snap = view.me, view.snapshot
    who = {"all": "all users", "user": f"user {me.user or me.uid}",
           "container": "this container"}[me.scope]
    host = f"{view.host} (simulated)" if view.simulated else view.host
    driver = f"driver {snap.driver_version}" if snap.driver_version else (
        "driver ?" if snap.driver_available else "no NVIDIA driver")
    lines = wrap(f"otel-gpu status: {who} on {host}, {driver}", "")
    if me.note:
        lines += wrap(f"note: {me.note}", "")
    if not view.groups:
        lines += ["", f"No GPU workloads of {who} on this host."]
    for group in view.groups:
        lines.append("")
        title = style(group_title(group), "1")
        subtitle = _group_subtitle(group)
        lines += textwrap.wrap(f"{title}  ({subtitle})" if subtitle else title,
                               width=WIDTH + len(title) - len(group_title(group)),
                               subsequent_indent="  ")
        image = group.attributes.get("container.image.name")
        if image:
            lines += wrap(f"image {image}", "  ")
        given = [d for d in group.devices if d.given]
        shown, label = (given, "given") if given else (group.devices, "using")
        if shown:
            lines.append(f"  {label:<8}" + _device_given(shown[0]))
            lines += ["          " + _device_given(d) for d in shown[1:]]
        res = group.resources
        limits = []
        if res is not None:
            limits.append(f"{cpus(res.cpu_limit)} CPUs" if res.cpu_limit else "no CPU limit")
            limits.append(f"{gib(res.memory_limit_bytes)} memory" if res.memory_limit_bytes
                          else "no memory limit")
            lines.append("  limits  " + ", ".join(limits))
        lines.append("  usage")
        for d in group.devices:
            if d.state == "failed":
                lines.append(f"  {d.name:<{_LABEL}}" + style("lost by the driver", "1;31"))
                continue
            kind = "SM" if d.activity_source in ("gpm_sm", "dcgm_sm", "process_sm") else "util"
            if d.activity is not None:
                source = {"process_sm": "my processes", "gpm_sm": "GPM", "dcgm_sm": "DCGM",
                          "gpu_utilization": "whole GPU"}.get(d.activity_source or "", "")
                lines += _row(f"{d.name} {kind}", d.activity, source, style)
            else:
                lines += _row(f"{d.name} {kind}", None, d.note or "not reported", style)
            used = d.my_memory_bytes if d.my_memory_bytes is not None else d.memory_used_bytes
            text = f"{gib(used)} of {gib(d.memory_total_bytes)}"
            if (d.my_memory_bytes is not None and d.memory_used_bytes is not None
                    and d.memory_used_bytes - d.my_memory_bytes > 2**28):
                text += f" ({gib(d.memory_used_bytes)} in all)"
            lines += _row(f"{d.name} memory", _ratio(used, d.memory_total_bytes), text, style)
        if res is not None:
            cpu_ratio = _ratio(group.cpu_used, res.cpu_limit)
            if group.cpu_used is None:
                cpu_text = "needs two cycles"
            elif res.cpu_limit:
                cpu_text = f"{cpus(group.cpu_used)} of {cpus(res.cpu_limit)} CPUs"
            else:
                cpu_text = f"{cpus(group.cpu_used)} CPUs, no limit"
            if group.cpu_throttled_ratio:
                cpu_text += f", throttled {group.cpu_throttled_ratio * 100:.0f}%"
            lines += _row("CPU", cpu_ratio, cpu_text, style)
            mem_text = f"{gib(res.memory_usage_bytes)} of {gib(res.memory_limit_bytes)}" \
                if res.memory_limit_bytes else f"{gib(res.memory_usage_bytes)}, no limit"
            if res.oom_kills:
                mem_text += f", {res.oom_kills} OOM kills"
            lines += _row("memory", _ratio(res.memory_usage_bytes, res.memory_limit_bytes),
                          mem_text, style)
        lines += _storage_rows(group, style)
        if group.insights:
            lines.append("  insights")
            lines += _insight_lines(group.insights, style, indent="  ")
        elif getattr(snap, "insights", None) is not None:
            lines.append("  insights: none")
    if view.other_insights:
        lines += ["", style("host and devices", "1")]
        lines += _insight_lines(view.other_insights, style, indent="  ")
    return "\n".join(lines) + "\n"


def print_status(view: StatusView, fmt: str, stream: IO[str] | None = None) -> None:
    """The view as ``--format`` asks: the JSON document, or the table (coloured on a terminal)."""
    emit(fmt, lambda: status_document(view), lambda colour: status_table(view, colour), stream)
