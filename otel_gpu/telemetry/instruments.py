"""Instruments: the catalog's observable instruments over a Snapshot source, and the training
loop's synchronous ones."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_gpu._version import __version__
from otel_gpu.snapshot import Snapshot
from otel_gpu.telemetry.catalog import (
    BY_NAME,
    COUNTER,
    GAUGE,
    HISTOGRAM,
    UPDOWNCOUNTER,
    Metric,
    observed_metrics,
)
from otel_gpu.telemetry.failures import FailureTally, ValueCheck
from otel_gpu.telemetry.series import SeriesLedger

log = logging.getLogger("otel_gpu")


class SnapshotSource(Protocol):
    def get(self) -> Snapshot: ...


COLLECTION_ERRORS = "otel_gpu.collection.errors"

# Which source a metric's values come from, for counting the values OTLP cannot carry.
_SOURCE_BY_PREFIX = (
    ("hw.", "nvml"),
    ("nvidia.", "nvml"),
    ("otel_gpu.workload.", "attribution"),
    ("otel_gpu.device.", "attribution"),
    ("container.", "cgroup"),
    ("otel_gpu.container.", "cgroup"),
    ("system.", "host"),
)


def value_source(metric_name: str) -> str:
    """The source whose values ``metric_name`` exports (``collector`` for our own)."""
    for prefix, source in _SOURCE_BY_PREFIX:
        if metric_name.startswith(prefix):
            return source
    return "collector"


def _observe(metric: Metric, tally: FailureTally) -> Any:
    """The metric's observe function; ``otel_gpu.collection.errors`` adds the failures counted
    after collection (dropped values, exports) to the sources' own."""
    observe = metric.observe
    assert observe is not None
    if metric.name != COLLECTION_ERRORS:
        return observe

    def with_tally(snapshot: Snapshot) -> Iterable[tuple[float, dict[str, Any]]]:
        counts = dict(snapshot.error_counts)
        for key, count in tally.counts().items():
            counts[key] = counts.get(key, 0) + count
        for (source, error_type), count in counts.items():
            yield count, {"otel_gpu.source": source, "error.type": error_type}

    return with_tally


StandDown = Callable[[], Collection[str]]


def _callback(metric: Metric, cache: SnapshotSource, tally: FailureTally,
              ledger: SeriesLedger, stand_down: StandDown | None) -> Any:
    observe = _observe(metric, tally)
    source = value_source(metric.name)
    counter = metric.instrument == COUNTER
    name = metric.name
    check = ValueCheck(name, source, tally)

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        try:
            if stand_down is not None and name in stand_down():
                return []
            snapshot = cache.get()
            return ledger.observe(name, counter, observe(snapshot), snapshot.cycle, Observation,
                                  check)
        except Exception:
            log.exception("otel-gpu: could not observe %s", metric.name)
            return []

    return callback


def register_catalog(
    meter: Meter,
    cache: SnapshotSource,
    metrics: Iterable[Metric] | None = None,
    tally: FailureTally | None = None,
    ledger: SeriesLedger | None = None,
    stand_down: StandDown | None = None,
) -> list[Any]:
    """Create one observable instrument per catalog entry; all read the cached Snapshot.

    A value OTLP cannot carry (an int beyond int64, a non-finite float) is dropped for its point
    alone and counted in ``tally``, which ``otel_gpu.collection.errors`` reports. ``ledger``
    records the series reported and gives counters their baselines (see ``SeriesLedger``).
    ``stand_down``: the names that report nothing at a collection (another instrumentation
    reports them), asked at each one.
    """
    tally = tally if tally is not None else FailureTally()
    ledger = ledger if ledger is not None else SeriesLedger()
    instruments = []
    for metric in observed_metrics() if metrics is None else metrics:
        create = {
            COUNTER: meter.create_observable_counter,
            UPDOWNCOUNTER: meter.create_observable_up_down_counter,
            GAUGE: meter.create_observable_gauge,
        }[metric.instrument]
        instruments.append(
            create(
                metric.name,
                callbacks=[_callback(metric, cache, tally, ledger, stand_down)],
                unit=metric.unit,
                description=metric.description,
            )
        )
    return instruments


STEP_DURATION = "otel_gpu.training.step.duration"
DATA_WAIT_DURATION = "otel_gpu.training.data_wait.duration"
DATA_WAIT_RATIO = "otel_gpu.training.data_wait.ratio"
STEPS = "otel_gpu.training.steps"
SAMPLES = "otel_gpu.training.samples"

SCOPE = "otel_gpu.training"

# Seconds; the SDK's default boundaries (0, 5, 10, 25, ...) are meant for milliseconds.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip

def _instrument(meter: metrics.Meter, name: str) -> Any:
    """A synchronous instrument named, typed and described by the catalog."""
    spec = BY_NAME[name]
    if spec.instrument == HISTOGRAM:
        return meter.create_histogram(name, unit=spec.unit, description=spec.description,
                                      explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
    if spec.instrument == GAUGE:
        return meter.create_gauge(name, unit=spec.unit, description=spec.description)
    return meter.create_counter(name, unit=spec.unit, description=spec.description)


class TrainingInstruments:
    """The five training instruments of one MeterProvider, under the ``otel_gpu.training``
    scope."""

    def __init__(self, meter_provider: metrics.MeterProvider) -> None:
        meter = meter_provider.get_meter(SCOPE, __version__)
        self.step = _instrument(meter, STEP_DURATION)
        self.wait = _instrument(meter, DATA_WAIT_DURATION)
        self.ratio = _instrument(meter, DATA_WAIT_RATIO)
        self.steps = _instrument(meter, STEPS)
        self.samples = _instrument(meter, SAMPLES)

    def record(self, step_ns: int, wait_ns: int, ratio: float, samples: int | None,
               attributes: Mapping[str, str], context: Context | None) -> None:
        """One step; ``context`` (a sampled step span's) links the points to its trace."""
        self.step.record(step_ns / 1e9, attributes=attributes, context=context)
        self.wait.record(wait_ns / 1e9, attributes=attributes, context=context)
        self.ratio.set(ratio, attributes=attributes, context=context)
        self.steps.add(1, attributes=attributes, context=context)
        if samples:
            self.samples.add(samples, attributes=attributes, context=context)



    def carry(self, steps: int, samples: int, attributes: Mapping[str, str]) -> None:
        """Start the counters where an earlier process's left off, so that a cumulative series
        continues across a restart of the process that records."""
        if steps:
            self.steps.add(steps, attributes=attributes)
        if samples:
            self.samples.add(samples, attributes=attributes)
