"""What ``otel-gpu snapshot`` prints: the SDK's own points as JSON, or a table for people."""

from __future__ import annotations

import textwrap
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, MetricsData, Sum

from otel_gpu.snapshot import Snapshot, format_gib


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def metrics_points(data: MetricsData | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Flatten what the SDK produced into the contract's ``resource`` and ``points``."""
    resource: dict[str, Any] = {}
    points: list[dict[str, Any]] = []
    if data is None:
        return resource, points
    for resource_metrics in data.resource_metrics:
        resource.update({k: _plain(v) for k, v in resource_metrics.resource.attributes.items()})
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.extend(_metric_points(metric))
    points.sort(key=lambda p: (p["name"], sorted(p["attributes"].items(), key=str)))
    return resource, points


def _metric_points(metric: Any) -> list[dict[str, Any]]:
    data = metric.data
    if isinstance(data, Sum):
        kind = "sum"
    elif isinstance(data, Gauge):
        kind = "gauge"
    elif isinstance(data, Histogram):
        kind = "histogram"
    else:
        kind = type(data).__name__.lower()
    out = []
    for dp in data.data_points:
        point: dict[str, Any] = {
            "name": metric.name,
            "unit": metric.unit,
            "kind": kind,
            "attributes": {k: _plain(v) for k, v in (dp.attributes or {}).items()},
        }
        if kind == "histogram":
            bounds = [*dp.explicit_bounds, "+Inf"]
            point.update(
                count=dp.count,
                sum=dp.sum,
                buckets=[
                    {"le": b, "count": c}
                    for b, c in zip(bounds, dp.bucket_counts, strict=True)
                ],
            )
        else:
            point["value"] = dp.value
        out.append(point)
    return out


def snapshot_document(
    data: MetricsData | None, insights: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    resource, points = metrics_points(data)
    return {"resource": resource, "points": points, "insights": insights or []}


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return format_gib(value, unit="G")


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


def snapshot_table(snapshot: Snapshot) -> str:
    """A terminal view of one Snapshot, 80 columns wide."""
    header = (
        f"{'device':<11} {'model / profile':<22} {'util':>5} {'memory':>13} {'power':>6} "
        f"{'temp':>5} {'procs':>5} {'state':<6}"
    )
    lines = [header, "-" * len(header)]
    for gpu in snapshot.gpus:
        if gpu.lost:
            lines.append(
                f"{gpu.name:<11} {(gpu.model or '?')[:22]:<22} {'':>5} {'':>13} "
                f"{'':>6} {'':>5} {'':>5} failed"
            )
            continue
        util = "mig" if gpu.mig_enabled else _fmt_ratio(gpu.utilization_general)
        memory = f"{_fmt_bytes(gpu.memory_used_bytes)}/{_fmt_bytes(gpu.memory_total_bytes)}"
        lines.append(
            f"{gpu.name:<11} {(gpu.model or '?')[:22]:<22} {util:>5} {memory:>13} "
            f"{_fmt(gpu.power_watts, 'W'):>6} {_fmt(gpu.temperature_gpu_celsius, 'C'):>5} "
            f"{len(gpu.processes):>5} ok"
        )
        for mig in gpu.mig_devices:
            sm = mig.gpm.sm_utilization if mig.gpm else None
            memory = f"{_fmt_bytes(mig.memory_used_bytes)}/{_fmt_bytes(mig.memory_total_bytes)}"
            lines.append(
                f"  {mig.name:<9} {'MIG ' + (mig.profile or '?'):<22} "
                f"{_fmt_ratio(sm):>5} {memory:>13} {'':>6} {'':>5} "
                f"{len(mig.processes):>5} ok"
            )
    if not snapshot.gpus:
        lines.append("no GPUs" if snapshot.driver_available else "no NVIDIA driver: host only")
    host = snapshot.host
    if host is not None:
        busy = 1.0 - host.cpu_utilization["idle"] if "idle" in host.cpu_utilization else None
        lines += [
            "",
            f"host: {host.cpu_logical_count or '?'} CPUs, cpu busy {_fmt_ratio(busy)}, "
            f"memory used {_fmt_ratio(host.memory_used_ratio)} of "
            f"{_fmt_bytes(host.memory_total_bytes)}",
        ]
        for fs in host.filesystems[:8]:
            used = fs.used_bytes / fs.size_bytes if fs.size_bytes else None
            lines.append(
                f"  {fs.mountpoint[:40]:<40} {_fmt_ratio(used):>5} of {_fmt_bytes(fs.size_bytes)}"
            )
    if snapshot.insights:
        lines += ["", f"insights ({len(snapshot.insights)} active):"]
        for insight in snapshot.insights:
            lines += textwrap.wrap(
                f"{insight.severity.upper():<8} {insight.rule}: {insight.message}",
                80, initial_indent="  ", subsequent_indent=" " * 11,
            )
            lines += textwrap.wrap(
                f"remedy: {insight.remedy}", 80, initial_indent=" " * 11,
                subsequent_indent=" " * 11,
            )
    if snapshot.errors:
        kinds = sorted({f"{e.source}:{e.error_type}" for e in snapshot.errors})
        lines += ["", f"read errors this cycle: {len(snapshot.errors)} ({', '.join(kinds)[:60]})"]
    return "\n".join(lines) + "\n"
