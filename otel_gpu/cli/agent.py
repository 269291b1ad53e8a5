"""``otel-gpu agent`` and ``otel-gpu snapshot``: the pipeline run every interval until a signal,
or for a number of cycles with the last one printed (the SDK's own points as JSON, or a table)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, MetricsData, Sum

from otel_gpu.cli.status_server import StatusServer, in_group, user_name
from otel_gpu.cli.terminal import WIDTH, percent, short_gib, whole, wrap
from otel_gpu.config import operator_group, status_socket
from otel_gpu.insights.thresholds_file import load_thresholds
from otel_gpu.snapshot import Snapshot, device_activity
from otel_gpu.telemetry.node_agent import AGENT_FILE_ENV, Announcement
from otel_gpu.telemetry.pipeline import Pipeline, build_pipeline
from otel_gpu.telemetry.providers import exemplar_filter_note

EXIT_OK = 0


def _pipeline(args: argparse.Namespace, default_exporter: str, in_memory: bool) -> Pipeline:
    exporters = args.exporter or [default_exporter]
    thresholds = load_thresholds(args.thresholds)
    pipeline = build_pipeline(
        simulate=args.simulate,
        exporters=exporters,
        interval_s=args.interval,
        in_memory=in_memory,
        thresholds=thresholds,
    )
    if pipeline.driver_message:
        print(f"otel-gpu: {pipeline.driver_message}; reporting host metrics only", file=sys.stderr)
    note = exemplar_filter_note()
    if note:
        print(f"otel-gpu: {note}", file=sys.stderr)
    return pipeline


# Allocations less deallocations between the collector's youngest passes (CPython's default:
# 700; https://docs.python.org/3/library/gc.html#gc.set_threshold). A cycle makes and drops tens
# of thousands of short-lived objects per thousand GPU processes (readings, Snapshot parts, the
# SDK's measurements and points), nearly all freed by their reference counts; at 700 the
# youngest pass runs dozens of times a cycle and promotes what is still in use mid-cycle, which
# feeds the older generations' passes. Measured at 5,000 processes: the collector's time in a
# cycle 114 ms at 700, 15 ms at 10,000 (benchmarks/README.md, bench_scale.py).
YOUNGEST_GC_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """After start-up: what it built (modules, the catalog, the SDK's instruments) lives as long
    as the process, so it is kept out of the collector's passes (``gc.freeze``), and the
    youngest pass waits for ``YOUNGEST_GC_THRESHOLD`` allocations."""
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNGEST_GC_THRESHOLD, middle, oldest)


def run_agent(
    args: argparse.Namespace, stop: threading.Event, wait: Callable[[float], Any] | None = None
) -> int:
    """Collect and export every interval until ``stop`` is set (by a signal), then export the
    state at shutdown once more. ``stop`` may already be set: one export still goes out. Each
    cycle's Snapshot goes to the status socket too. ``wait`` sleeps between cycles (default:
    until the interval is up or ``stop`` is set)."""
    pipeline = _pipeline(args, "otlp", in_memory=False)
    settle_garbage_collector()
    announcement = _announcement(args, pipeline)
    server = _status_server(args, pipeline)
    wait = stop.wait if wait is None else wait
    try:
        done = 0
        while not stop.is_set():
            started = time.monotonic()
            snapshot = pipeline.collect_and_export()
            if server is not None:
                server.publish(snapshot)
            if announcement is not None:
                announcement.beat()
            done += 1
            if args.cycles and done >= args.cycles:
                break
            wait(max(0.0, args.interval - (time.monotonic() - started)))
        if stop.is_set():
            pipeline.collect_and_export()  # the state at shutdown goes out too
    finally:
        try:
            if server is not None:
                server.close()
            if announcement is not None:
                announcement.close()
        finally:
            pipeline.shutdown()
    return EXIT_OK


def _status_server(args: argparse.Namespace, pipeline: Pipeline) -> StatusServer | None:
    """The status socket (``OTEL_GPU_STATUS_SOCKET``), serving; None when it is off or cannot
    be bound (said in one line: the agent runs on without it)."""
    path = status_socket()
    if path is None:
        return None
    scenario = getattr(getattr(pipeline.collector.sources, "simulation", None), "scenario", None)
    server = StatusServer(
        path,
        is_operator=in_group(operator_group()),
        owner_name=scenario.users.get if scenario is not None else user_name,
        host=str(scenario.name) if scenario is not None else socket.gethostname(),
        simulated=scenario is not None,
        interval_s=args.interval,
    )
    try:
        server.start()
    except OSError as err:
        print(f"otel-gpu: not serving status on {path}: {err}", file=sys.stderr)
        return None
    return server


def _announcement(args: argparse.Namespace, pipeline: Pipeline) -> Announcement | None:
    """The agent tells training sessions on this node that it runs (see ``node_agent``); a
    simulated one only where ``OTEL_GPU_AGENT_FILE`` names a file for it."""
    if args.simulate is not None and not os.environ.get(AGENT_FILE_ENV):
        return None
    host = pipeline.resource.attributes.get("host.name")
    return Announcement(str(host) if host else None, args.interval)


def run_snapshot(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args, "none", in_memory=True)
    try:
        cycles = max(1, args.cycles)
        snapshot = None
        for i in range(cycles):
            if i and args.simulate is None:
                time.sleep(args.interval)
            snapshot = pipeline.collect_and_export()
        assert pipeline.memory_reader is not None and snapshot is not None
        data = pipeline.memory_reader.get_metrics_data()
        if args.format == "json":
            insights = [insight.to_dict() for insight in snapshot.insights]
            json.dump(snapshot_document(data, insights), sys.stdout, indent=1, sort_keys=False)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(snapshot_table(snapshot, simulated=args.simulate is not None))
    finally:
        pipeline.shutdown()
    return EXIT_OK


# -- what snapshot prints -------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def metrics_points(data: MetricsData | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Flatten what the SDK produced into the document's ``resource`` and ``points``: each
    point with its name, unit, kind and attributes, and a value or histogram buckets."""
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
    """What ``snapshot --format json`` prints: the resource, the points, the insights."""
    resource, points = metrics_points(data)
    return {"resource": resource, "points": points, "insights": insights or []}


def snapshot_table(snapshot: Snapshot, simulated: bool = False) -> str:
    """A terminal view of one Snapshot, 80 columns wide: the devices, who uses them, the host,
    the insights, and what could not be read."""
    header = (
        f"{'device':<11} {'model / profile':<22} {'util':>5} {'memory':>13} {'power':>6} "
        f"{'temp':>5} {'procs':>5} {'state'}"
    )
    lines = [header, "-" * len(header)]
    for gpu in snapshot.gpus:
        if gpu.lost:
            lines.append(
                f"{gpu.name:<11} {(gpu.model or '?')[:22]:<22} {'':>5} {'':>13} "
                f"{'':>6} {'':>5} {'':>5} failed"
            )
            continue
        util = "mig" if gpu.mig_enabled else percent(gpu.utilization_general)
        memory = f"{short_gib(gpu.memory_used_bytes)}/{short_gib(gpu.memory_total_bytes)}"
        lines.append(
            f"{gpu.name:<11} {(gpu.model or '?')[:22]:<22} {util:>5} {memory:>13} "
            f"{whole(gpu.power_watts, 'W'):>6} {whole(gpu.temperature_gpu_celsius, 'C'):>5} "
            f"{len(gpu.processes):>5} ok"
        )
        for mig in gpu.mig_devices:
            sm = device_activity(mig, "sm_utilization")[0]  # GPM, else DCGM
            memory = f"{short_gib(mig.memory_used_bytes)}/{short_gib(mig.memory_total_bytes)}"
            lines.append(
                f"  {mig.name:<9} {'MIG ' + (mig.profile or '?'):<22} "
                f"{percent(sm):>5} {memory:>13} {'':>6} {'':>5} "
                f"{len(mig.processes):>5} ok"
            )
    if not snapshot.gpus:
        lines.append("no GPUs" if snapshot.driver_available else "no NVIDIA driver: host only")
    lines += _holders(snapshot)
    host = snapshot.host
    if host is not None:
        busy = 1.0 - host.cpu_utilization["idle"] if "idle" in host.cpu_utilization else None
        if busy is not None:
            cpu = f"cpu busy {percent(busy)}"
        elif simulated:
            cpu = "cpu busy not measured in simulated time"
        else:
            cpu = "cpu busy - (needs a second cycle)"
        lines += [
            "",
            *wrap(f"host: {host.cpu_logical_count or '?'} CPUs, {cpu}, "
                  f"memory used {percent(host.memory_used_ratio)} of "
                  f"{short_gib(host.memory_total_bytes)}", ""),
        ]
        for fs in host.filesystems[:8]:
            used = fs.used_bytes / fs.size_bytes if fs.size_bytes else None
            lines.append(
                f"  {fs.mountpoint[:40]:<40} {percent(used):>5} of {short_gib(fs.size_bytes)}"
            )
    if snapshot.insights:
        lines += ["", f"insights ({len(snapshot.insights)} active):"]
        for insight in snapshot.insights:
            lines += textwrap.wrap(
                f"{insight.severity.upper():<8} {insight.rule}: {insight.message}",
                80, initial_indent="  ", subsequent_indent=" " * 11, break_on_hyphens=False,
            )
            lines += textwrap.wrap(
                f"remedy: {insight.remedy}", 80, initial_indent=" " * 11,
                subsequent_indent=" " * 11, break_on_hyphens=False,
            )
    lines += _read_problems(snapshot)
    return "\n".join(lines) + "\n"


def _holder(attributes: dict[str, str]) -> str:
    pod = attributes.get("k8s.pod.name")
    if pod:
        where = f"pod {attributes.get('k8s.namespace.name', '?')}/{pod}"
        container = attributes.get("k8s.container.name")
        return f"{where} {container}" if container else where
    name = attributes.get("container.name") or attributes.get("container.id", "")[:12]
    return f"container {name}" if name else "no container"


def _holders(snapshot: Snapshot) -> list[str]:
    """Who holds which GPU or MIG device: the users and containers of its processes, and the
    containers and pods it was given to that run nothing on it."""
    names: dict[str, str] = {}
    for gpu in snapshot.gpus:
        names[gpu.uuid] = gpu.name
        names.update({mig.uuid: mig.name for mig in gpu.mig_devices})
    order = {uuid: i for i, uuid in enumerate(names)}
    rows: list[tuple[int, str, str, str, str]] = []
    busy: set[tuple[str, str]] = set()
    for w in snapshot.workloads:
        holder = _holder(w.attributes)
        busy.add((w.device_uuid, holder))
        procs = f"{w.processes} process{'' if w.processes == 1 else 'es'}"
        memory = f"{procs}, {short_gib(w.memory_bytes)}" if w.memory_bytes is not None else procs
        rows.append((order.get(w.device_uuid, len(order)), names.get(w.device_uuid, "?"),
                     w.attributes.get("process.owner", "?"), holder, memory))
    for a in snapshot.assignments:
        holder = _holder(a.attributes)
        if (a.device_uuid, holder) not in busy:
            busy.add((a.device_uuid, holder))
            rows.append((order.get(a.device_uuid, len(order)), names.get(a.device_uuid, "?"),
                         a.owner or "-", holder, "given, runs nothing"))
    if not rows:
        return []
    lines = ["", "who uses what (device, user, container or pod, its processes there):"]
    for _, device, user, holder, what in sorted(rows):
        lines.append(f"  {device:<9} {user[:10]:<10} {holder[:36]:<36} {what}"[:WIDTH])
    return lines


def _reading(call: str) -> str:
    """``nvmlDeviceGetFanSpeed`` -> ``fan speed``."""
    name = call.removeprefix("nvmlDeviceGet").removeprefix("nvml")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower() or call


def _devices_text(devices: list[str]) -> str:
    return ", ".join(devices) if len(devices) <= 3 else f"{devices[0]} to {devices[-1]}"


def _read_problems(snapshot: Snapshot) -> list[str]:
    """Values the hardware does not offer (NVML's NOT_SUPPORTED: a board without a fan, a
    feature of a later architecture), apart from reads that failed."""
    unsupported: dict[str, list[str]] = {}
    failed = []
    for e in snapshot.errors:
        if e.source == "nvml" and e.error_type == "NOT_SUPPORTED":
            devices = unsupported.setdefault(_reading(e.call), [])
            if e.device and e.device not in devices:
                devices.append(e.device)
        else:
            failed.append(e)
    lines: list[str] = []
    if unsupported:
        parts = [f"{what} ({_devices_text(devices)})" if devices else what
                 for what, devices in sorted(unsupported.items())]
        lines += ["", *wrap("not offered by this hardware (the driver answers NOT_SUPPORTED, "
                            "normal for this model, not a fault): " + "; ".join(parts), "")]
    if failed:
        kinds = sorted({f"{e.source}:{e.error_type}" for e in failed})
        lines += ["", *wrap(f"read errors this cycle: {len(failed)} ({', '.join(kinds)})", "")]
    return lines
