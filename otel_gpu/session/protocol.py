"""The messages between a training process and its collector process, named once.

Every message is a pair ``(Kind, payload)`` pickled through the socket pair (see
``otel_gpu.session`` for the story). The first message is always the child's ``Task``; the child
answers ``READY`` with a ``Ready`` or ``ERROR`` with a text, then serves its role until ``CLOSE``
or the end of the pipe. An export child answers ``CLOSE`` with ``SUMMARY`` (its ``RunFigures``,
for the end-of-run summary the training process writes) and then ``CLOSED``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.session.steps import StepBatch
from otel_gpu.snapshot import Insight, SourceError


class Role(str, Enum):
    """What a child does."""

    #: collect, run the insight rules and export on the interval; record the training steps
    EXPORT = "export"
    #: answer each ``COLLECT`` with the sources' Snapshot, for providers in the training process
    SOURCES = "sources"


class Kind(str, Enum):
    """Every kind of message, with its payload."""

    # training process -> child
    TASK = "task"            # Task (the first message)
    STEPS = "steps"          # StepReport (export role)
    METRICS = "metrics"      # a relayed metric export, in relay wire form (export role)
    SPANS = "spans"          # relayed spans, in relay wire form (export role)
    COLLECT = "collect"      # a sequence number (sources role)
    CLOSE = "close"          # the last StepReport, or None
    # child -> training process
    READY = "ready"          # Ready
    ERROR = "error"          # text: the child could not start its role
    SNAPSHOT = "snapshot"    # (sequence number, Snapshot)
    FAILED = "failed"        # the name of the exception a COLLECT raised
    SUMMARY = "summary"      # RunFigures, after the last export (export role)
    CLOSED = "closed"        # None: the last export is done


Message = tuple[Kind, Any]


@dataclass(frozen=True)
class SourceSettings:
    """The sources role: what to read."""

    simulate: str | None
    interval_s: float
    attribution: bool


@dataclass(frozen=True)
class StepTotals:
    """Steps and samples a training process's earlier children counted, so that a successor
    continues the cumulative counters instead of starting again at 0."""

    steps: int = 0
    samples: int = 0


@dataclass(frozen=True)
class ExportSettings:
    """The export role: what the child needs beyond the environment it inherits.

    ``resource`` holds the attributes the session made or was given; with ``detect`` the child
    puts the detected identity of the process (container, pod, user, devices) under them and
    returns the result in ``Ready.resource``. The devices this rank reports are worked out from
    the same environment (``LOCAL_RANK``, ``CUDA_VISIBLE_DEVICES``).
    """

    simulate: str | None
    interval_s: float
    resource: dict[str, Any]
    schema_url: str = ""
    detect: bool = True
    thresholds: Thresholds | None = None
    run_attributes: dict[str, str] = field(default_factory=dict)
    carried: StepTotals = StepTotals()
    #: ``system.*`` names the contrib system-metrics instrumentation reports in the parent
    stand_down: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    role: Role
    settings: SourceSettings | ExportSettings


@dataclass(frozen=True)
class Ready:
    """The child is serving. ``message``: why there are no GPU metrics, if so."""

    message: str | None = None
    #: the export role's resource attributes (``ExportSettings.detect``)
    resource: dict[str, Any] | None = None
    #: why attribution is off in this container, to log in the training process
    note: str | None = None
    #: the temporality and histogram aggregation the child's OTLP exporter asks for, for the
    #: training process's relay exporter (which loads no OTLP code of its own)
    temporality: dict[type, Any] | None = None
    aggregation: dict[type, Any] | None = None


@dataclass(frozen=True)
class StepReport:
    """The training steps written since the last report and the tracker's recorded failures."""

    steps: StepBatch | None
    errors: tuple[SourceError, ...] = ()
    dali: bool | None = None  # nvidia.dali imported in the training process
    #: the ``system.*`` names the contrib system-metrics instrumentation reports there now
    stand_down: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DeviceFigures:
    """One device this process used, over the run's collections."""

    name: str  # hw.name, e.g. gpu0 or gpu0/mig1
    model: str | None
    #: mean device activity (0..1) over the collections that reported it; None when none did
    activity_mean: float | None
    memory_peak_bytes: int | None
    memory_total_bytes: int | None


@dataclass(frozen=True)
class RunFigures:
    """What the collecting side knows of a run, for its end-of-run summary: the devices in
    this process's scope and the insights that fired in it."""

    collections: int = 0
    devices: tuple[DeviceFigures, ...] = ()
    #: the first firing of each rule (and subject) during the run, in order
    insights: tuple[Insight, ...] = ()
