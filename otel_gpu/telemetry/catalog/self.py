"""The agent about itself and what it found: insights, training signals, collection."""

from __future__ import annotations

from collections.abc import Iterator

from otel_gpu.snapshot import Snapshot
from otel_gpu.telemetry.catalog.metric import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    MIG_IDENTITY,
    WORKLOAD_ATTRIBUTES,
    Point,
    Section,
)

INSIGHTS = Section("Insights")
SELF = Section("Training and self-telemetry")

_TRAINING = ("otel_gpu.training.run",)


@INSIGHTS.observed_by(
    name="otel_gpu.insight.active",
    instrument=GAUGE,
    unit="1",
    description="1 for each active insight (a finding with a remedy) about its subject.",
    attributes=(
        "otel_gpu.insight.rule",
        "otel_gpu.insight.severity",
        *MIG_IDENTITY,
        *WORKLOAD_ATTRIBUTES,
        "nvidia.gpu.xid",
        "system.device",
        "system.filesystem.mountpoint",
        *_TRAINING,
    ),
)
def _insights(snap: Snapshot) -> Iterator[Point]:
    for insight in snap.insights:
        yield 1, insight.point_attributes()


# Recorded by the training session's instruments, not observed off a Snapshot.
SELF.add(
    name="otel_gpu.training.step.duration",
    instrument=HISTOGRAM,
    unit="s",
    description="Time of one training step: waiting for the batch plus computing on it.",
    attributes=_TRAINING,
)
SELF.add(
    name="otel_gpu.training.data_wait.duration",
    instrument=HISTOGRAM,
    unit="s",
    description="Time blocked waiting for the next batch.",
    attributes=_TRAINING,
)
SELF.add(
    name="otel_gpu.training.data_wait.ratio",
    instrument=GAUGE,
    unit="1",
    description="Data wait over step time across the last window of steps.",
    attributes=_TRAINING,
)
SELF.add(
    name="otel_gpu.training.steps",
    instrument=COUNTER,
    unit="{step}",
    description="Training steps completed.",
    attributes=_TRAINING,
)
SELF.add(
    name="otel_gpu.training.samples",
    instrument=COUNTER,
    unit="{sample}",
    description="Training samples consumed.",
    attributes=_TRAINING,
)


@SELF.observed_by(
    name="otel_gpu.collection.duration",
    instrument=GAUGE,
    unit="s",
    description="Time each source took in the last cycle.",
    attributes=("otel_gpu.source",),
)
def _collection_duration(snap: Snapshot) -> Iterator[Point]:
    for source, seconds in snap.durations_s.items():
        yield seconds, {"otel_gpu.source": source}


@SELF.observed_by(
    name="otel_gpu.collection.errors",
    instrument=COUNTER,
    unit="{error}",
    description="Failed reads, values no OTLP point can carry (value_out_of_range, "
                "value_not_finite) and export failures (source export) since start, by source "
                "and error (NVML codes such as "
    "NOT_SUPPORTED).",
    attributes=("otel_gpu.source", "error.type"),
)
def _collection_errors(snap: Snapshot) -> Iterator[Point]:
    for (source, error_type), count in snap.error_counts.items():
        yield count, {"otel_gpu.source": source, "error.type": error_type}
