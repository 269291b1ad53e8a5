"""Steps written to a StepBuffer and replayed elsewhere come out as recorded directly."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from otel_gpu.session import tracker as training
from otel_gpu.session.child_main import TrainingFeed
from otel_gpu.session.protocol import StepReport
from otel_gpu.session.steps import StepBatch, StepBuffer, merge, replay
from otel_gpu.session.tracker import TrainingTracker
from otel_gpu.snapshot import SourceError, TrainingSignals
from otel_gpu.telemetry.instruments import (
    DATA_WAIT_DURATION,
    DATA_WAIT_RATIO,
    SAMPLES,
    STEP_DURATION,
    STEPS,
    TrainingInstruments,
)

MS = 1_000_000


def _context(n: int) -> SpanContext:
    return SpanContext(trace_id=0xABC0 + n, span_id=0x10 + n, is_remote=False)


def _steps(batch: StepBatch | None) -> list[int]:
    assert batch is not None
    return list(batch.step_ns)


def test_a_drain_returns_what_was_written_since_the_last_one() -> None:
    buffer = StepBuffer({"run": "r"}, capacity=8)
    assert buffer.drain() is None
    for n in range(5):
        buffer.add(n * MS, n, n / 10, n or None, _context(n) if n == 3 else None)
    batch = buffer.drain()
    assert batch is not None
    assert list(batch.step_ns) == [0, MS, 2 * MS, 3 * MS, 4 * MS]
    assert list(batch.wait_ns) == [0, 1, 2, 3, 4]
    assert list(batch.ratio) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert list(batch.samples) == [0, 1, 2, 3, 4]
    assert batch.traced == ((3, 0xABC3, 0x13),)
    assert batch.attributes == {"run": "r"} and batch.dropped == 0
    assert buffer.drain() is None
    # Across the end of the ring.
    for n in range(5, 11):
        buffer.add(n, 0, 0.0, None, _context(n) if n == 9 else None)
    batch = buffer.drain()
    assert _steps(batch) == [5, 6, 7, 8, 9, 10]
    assert batch is not None and batch.traced == ((4, 0xABC9, 0x19),)
    # A batch crosses a pipe as it is.
    assert _steps(pickle.loads(pickle.dumps(batch))) == [5, 6, 7, 8, 9, 10]


def test_steps_written_past_the_capacity_are_dropped_oldest_first_and_counted() -> None:
    buffer = StepBuffer(capacity=4)
    for n in range(11):
        buffer.add(n, 0, 0.0, None, _context(n) if n in (2, 9) else None)
    for n in range(11, 20):  # undrained spans are bounded like the steps
        buffer.add(n, 0, 0.0, None, _context(n))
    assert len(buffer._traced) == 4
    buffer = StepBuffer(capacity=4)
    for n in range(11):
        buffer.add(n, 0, 0.0, None, _context(n) if n in (2, 9) else None)
    batch = buffer.drain()
    assert _steps(batch) == [7, 8, 9, 10]
    assert batch is not None and batch.dropped == 7 and buffer.dropped == 7
    assert batch.traced == ((2, 0xABC9, 0x19),)  # the span of a dropped step goes with it
    buffer.add(11, 0, 0.0, None, None)
    batch = buffer.drain()
    assert _steps(batch) == [11] and batch is not None and batch.dropped == 0
    # Exactly full is not an overflow.
    for n in range(4):
        buffer.add(n, 0, 0.0, None, None)
    batch = buffer.drain()
    assert _steps(batch) == [0, 1, 2, 3] and batch is not None and batch.dropped == 0


def test_the_capacity_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        StepBuffer(capacity=6)


def test_a_drain_racing_the_writer_loses_and_repeats_nothing() -> None:
    buffer = StepBuffer(capacity=1 << 16)
    total = 200_000
    drained: list[int] = []
    done = threading.Event()

    dropped = 0

    def drain() -> None:
        nonlocal dropped
        while not done.is_set():
            if (batch := buffer.drain()) is not None:
                drained.extend(batch.step_ns)
                dropped += batch.dropped

    thread = threading.Thread(target=drain)
    thread.start()
    for n in range(total):
        buffer.add(n, 0, 0.0, None, None)
    done.set()
    thread.join()
    if (batch := buffer.drain()) is not None:
        drained.extend(batch.step_ns)
        dropped += batch.dropped
    # A drainer kept off the CPU for longer than the buffer holds finds the overwritten steps
    # counted as dropped: each step is drained once, in order, or counted; none is repeated.
    assert drained == sorted(set(drained))
    assert set(drained) <= set(range(total))
    assert len(drained) + dropped == total
    if dropped == 0:
        assert drained == list(range(total))


class Telemetry:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader],
                                            exemplar_filter=TraceBasedExemplarFilter())
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                assert sm.scope.name == "otel_gpu.training"
                for metric in sm.metrics:
                    found[metric.name] = list(metric.data.data_points)
        return found


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000 * MS

    def __call__(self) -> int:
        return self.now


def _run_loop(tracker: TrainingTracker, clock: FakeClock) -> None:
    """Twelve steps, each with a known data wait and compute, some with a batch size."""
    def batches() -> Any:
        for n in range(12):
            clock.now += (n % 4) * MS  # data wait
            yield [0] * (n % 3)

    for batch in tracker.track(batches()):
        clock.now += (10 + len(batch)) * MS  # compute


def _summary(points: dict[str, list[Any]]) -> dict[str, Any]:
    def hist(name: str) -> tuple[Any, ...]:
        (p,) = points[name]
        return (p.count, round(p.sum, 9), tuple(p.bucket_counts), dict(p.attributes),
                sorted((e.trace_id, e.span_id) for e in p.exemplars))

    (ratio,) = points[DATA_WAIT_RATIO]
    (steps,) = points[STEPS]
    (samples,) = points[SAMPLES]
    return {
        "step": hist(STEP_DURATION),
        "wait": hist(DATA_WAIT_DURATION),
        "ratio": (ratio.value, dict(ratio.attributes)),
        "steps": (steps.value, sorted((e.trace_id, e.span_id) for e in steps.exemplars)),
        "samples": samples.value,
    }


def test_a_deferred_tracker_replayed_elsewhere_reports_what_a_direct_one_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(training, "_clock", clock)
    direct, deferred = Telemetry(), Telemetry()
    _run_loop(TrainingTracker(direct.meter_provider, direct.tracer_provider,
                              attributes={"run": "a"}, span_every=5), clock)

    tracker = TrainingTracker(deferred.meter_provider, deferred.tracer_provider,
                              attributes={"run": "a"}, span_every=5, defer=True)
    _run_loop(tracker, clock)
    # The deferred tracker recorded nothing on its own MeterProvider ...
    assert deferred.metrics() == {}
    assert tracker.buffer is not None
    batch = tracker.buffer.drain()
    assert batch is not None and len(batch) == 12
    # ... another process, with its own MeterProvider, records the batch.
    elsewhere = Telemetry()
    replay(pickle.loads(pickle.dumps(batch)), TrainingInstruments(elsewhere.meter_provider))

    want, got = _summary(direct.metrics()), _summary(elsewhere.metrics())
    # The same values; the exemplars point at each run's own step spans.
    for key in ("step", "wait"):
        assert want[key][:4] == got[key][:4]
    assert want["ratio"] == got["ratio"] and want["samples"] == got["samples"] == 12
    assert want["steps"][0] == got["steps"][0] == 12
    step_spans = {(s.context.trace_id, s.context.span_id)
                  for s in deferred.exporter.get_finished_spans()
                  if s.name == "otel_gpu.training.step"}
    assert len(step_spans) == 3  # steps 0, 5 and 10
    # The SDK's reservoirs keep one exemplar per histogram bucket, one for a counter.
    assert got["step"][4] and set(got["step"][4]) <= step_spans
    assert got["steps"][1] and set(got["steps"][1]) <= step_spans
    assert len(want["step"][4]) == len(got["step"][4])
    assert len(want["steps"][1]) == len(got["steps"][1])


def test_the_collector_process_side_records_batches_and_counts_overflow() -> None:
    telemetry = Telemetry()
    box = TrainingFeed(TrainingInstruments(telemetry.meter_provider), {"run": "b"})
    buffer = StepBuffer({"run": "b"}, capacity=2)
    for _ in range(5):
        buffer.add(20 * MS, 5 * MS, 0.25, 8, None)
    box.put(StepReport(buffer.drain()))
    points = telemetry.metrics()
    assert points[STEPS][0].value == 2  # three were dropped before the drain
    assert points[SAMPLES][0].value == 16
    assert dict(points[STEPS][0].attributes) == {"run": "b"}
    assert box.dropped_steps == 3
    assert list(box.take_errors()) == [SourceError("training", "step_buffer", "Overflow")]
    box.put(StepReport(None))  # a report without steps
    assert telemetry.metrics()[STEPS][0].value == 2
    # The training signals the insight rules read are derived from the steps received.
    assert box.read() == TrainingSignals(0.25, 2, {"run": "b"})
    # Whether the training process imported nvidia.dali comes with its reports, and stays.
    box.put(StepReport(None, (), dali=True))
    box.put(StepReport(None))
    assert box.read() == TrainingSignals(0.25, 2, {"run": "b"}, dali=True)


def test_a_step_the_buffer_cannot_hold_is_a_counted_failure_not_a_crash() -> None:
    telemetry = Telemetry()
    tracker = TrainingTracker(telemetry.meter_provider, telemetry.tracer_provider, defer=True)
    assert list(tracker.track(range(3), batch_size=2**70)) == [0, 1, 2]  # not an int64
    assert tracker.errors == 3
    assert {e.error_type for e in tracker.take_errors()} == {"OverflowError"}
    assert tracker.buffer is not None and tracker.buffer.drain() is None


def test_steps_that_could_not_be_sent_go_first_in_the_next_batch() -> None:
    buffer = StepBuffer({"run": "c"})
    for n in range(3):
        buffer.add(n, 0, 0.0, None, _context(n) if n == 1 else None)
    unsent = buffer.drain()
    for n in range(3, 6):
        buffer.add(n, 0, 0.0, None, _context(n) if n == 4 else None)
    batch = merge(unsent, buffer.drain())
    assert _steps(batch) == [0, 1, 2, 3, 4, 5]
    assert batch is not None and batch.traced == ((1, 0xABC1, 0x11), (4, 0xABC4, 0x14))
    assert merge(None, unsent) is unsent and merge(unsent, None) is unsent
    # Never more than the limit: the oldest go, counted.
    kept = merge(unsent, batch, limit=4)
    assert _steps(kept) == [2, 3, 4, 5]
    assert kept is not None and kept.dropped == 5 and kept.traced == ((2, 0xABC4, 0x14),)
