"""The metric catalog: one table, from which instruments are registered and docs/metrics.md is made.

Each row names an instrument and says how to read its points off a Snapshot; the rows are
written next to their observe functions, one module per part of the page (gpu, workloads, host,
self). Rows without an ``observe`` function are synchronous instruments recorded elsewhere
(training signals); they stand here so that their names, units and descriptions have one home.
"""

from __future__ import annotations

from collections.abc import Iterable

from otel_gpu.telemetry.catalog import container_disk, gpu, host, self, workloads
from otel_gpu.telemetry.catalog.metric import (
    CONTAINER_ATTRIBUTES,
    COUNTER,
    GAUGE,
    GPU_IDENTITY,
    HISTOGRAM,
    MIG_IDENTITY,
    UPDOWNCOUNTER,
    WORKLOAD_ATTRIBUTES,
    Metric,
    Point,
)

__all__ = [
    "BY_NAME",
    "CATALOG",
    "CONTAINER_ATTRIBUTES",
    "COUNTER",
    "GAUGE",
    "GPU_IDENTITY",
    "HISTOGRAM",
    "MIG_IDENTITY",
    "UPDOWNCOUNTER",
    "WORKLOAD_ATTRIBUTES",
    "Metric",
    "Point",
    "observed_metrics",
    "render_markdown",
]

SECTIONS = (
    gpu.GPUS,
    gpu.LINKS,
    gpu.MIG_LAYOUT,
    workloads.WHO,
    workloads.CONTAINERS,
    container_disk.ENVIRONMENTS,
    host.HOST,
    self.INSIGHTS,
    self.SELF,
)
CATALOG: tuple[Metric, ...] = tuple(m for section in SECTIONS for m in section.metrics)
BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}


def observed_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in CATALOG if m.observe is not None)


def render_markdown(metrics: Iterable[Metric] = CATALOG) -> str:
    """The docs page of metrics, generated from the table
    (``python -m otel_gpu.telemetry.catalog``)."""
    lines = [
        "# Metrics",
        "",
        "Generated from `otel_gpu/telemetry/catalog/` by",
        "`python -m otel_gpu.telemetry.catalog > docs/metrics.md`;",
        "a test fails when this page and the table differ.",
        "",
        "Device identity on every GPU point: "
        + ", ".join(f"`{a}`" for a in GPU_IDENTITY)
        + "; MIG devices add `hw.parent` and `nvidia.gpu.mig.profile`.",
        "Ratios are 0..1. A value the hardware cannot give is absent, never 0.",
        "",
        "Counters count from their series' start time, so that start time and value agree: a",
        "counter whose source holds a lifetime total (energy since the driver loaded, ECC",
        "errors, a container's or the host's CPU time, disk and network bytes) is exported as",
        "what it counted since the agent first read it, which is the series' start time; its",
        "first point is 0. Through cumulative_to_delta, or a Prometheus `rate()`, an agent",
        "restart is a new start, never a lifetime total in one interval. When a new",
        "MeterProvider generation starts (see the README, Series and cardinality), a counter",
        "starts over with a new start time, its first point the increase over the last",
        "interval. An int beyond int64 or a non-finite",
        "float is dropped for its point alone and counted in `otel_gpu.collection.errors`.",
        "",
        "Workload attributes, each present only when known: "
        + ", ".join(f"`{a}`" for a in WORKLOAD_ATTRIBUTES)
        + " (`process.owner` is the user name, or the numeric uid when it has none;"
        " `container.label.<key>` for each allow-listed label). No process id on any metric.",
    ]
    section = None
    for metric in metrics:
        if metric.section != section:
            section = metric.section
            lines += [
                "",
                f"## {section}",
                "",
                "| metric | instrument | unit | attributes | description | name from |",
                "|---|---|---|---|---|---|",
            ]
        attrs = ", ".join(f"`{a}`" for a in metric.attributes) or "none"
        origin = "semantic conventions" if metric.semconv else "otel-gpu"
        lines.append(
            f"| `{metric.name}` | {metric.instrument} | `{metric.unit}` | {attrs} | "
            f"{metric.description} | {origin} |"
        )
    return "\n".join(lines) + "\n"
