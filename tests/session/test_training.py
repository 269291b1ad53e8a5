from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otel_gpu.session import tracker as training
from otel_gpu.session.tracker import (
    COMPUTE_SPAN,
    DATA_WAIT_DURATION,
    DATA_WAIT_RATIO,
    DATA_WAIT_SPAN,
    EPOCH_ATTRIBUTE,
    EPOCH_SPAN,
    SAMPLES,
    STEP_ATTRIBUTE,
    STEP_DURATION,
    STEP_SPAN,
    STEPS,
    TrainingTracker,
    batch_size_of,
)

MS = 1_000_000


class Telemetry:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(
            metric_readers=[self.reader], exemplar_filter=TraceBasedExemplarFilter()
        )
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def tracker(self, **kwargs: Any) -> TrainingTracker:
        kwargs.setdefault("attributes", {"run": "test"})
        return TrainingTracker(self.meter_provider, self.tracer_provider, **kwargs)

    def collect(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def points(self, name: str) -> list[Any]:
        return self.collect().get(name, [])

    def point(self, name: str) -> Any:
        points = self.points(name)
        assert len(points) == 1, (name, points)
        return points[0]

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.meter_provider.shutdown()
    t.tracer_provider.shutdown()


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000 * MS

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(training, "_clock", c)
    return c


def timed_batches(clock: FakeClock, waits: list[int], size: int = 3) -> Iterator[list[int]]:
    for i, wait in enumerate(waits):
        clock.advance(wait)
        yield [i] * size


def test_ratio_matches_real_sleeps(otel: Telemetry) -> None:
    tracker = otel.tracker()
    waited: list[float] = []
    computed: list[float] = []

    def loader() -> Iterator[int]:
        for i in range(20):
            t0 = time.perf_counter()
            time.sleep(0.030)
            waited.append(time.perf_counter() - t0)
            yield i

    for _ in tracker.track(loader()):
        t0 = time.perf_counter()
        time.sleep(0.070)
        computed.append(time.perf_counter() - t0)

    expected = sum(waited) / (sum(waited) + sum(computed))
    assert tracker.data_wait_ratio is not None
    assert abs(tracker.data_wait_ratio - expected) < 0.05
    assert otel.point(DATA_WAIT_RATIO).value == pytest.approx(tracker.data_wait_ratio)
    assert otel.point(STEP_DURATION).count == 20
    assert otel.point(DATA_WAIT_DURATION).count == 20
    assert otel.point(STEPS).value == 20
    # The measured wait window encloses each sleep.
    assert otel.point(DATA_WAIT_DURATION).sum >= sum(waited) * 0.999
    assert otel.point(STEP_DURATION).sum >= (sum(waited) + sum(computed)) * 0.999


def test_exact_durations_window_and_samples(otel: Telemetry, clock: FakeClock) -> None:
    tracker = otel.tracker(ratio_window=4)
    assert tracker.data_wait_ratio is None
    waits = [10 * MS] * 4 + [30 * MS] * 4
    computes = iter([30 * MS] * 4 + [10 * MS] * 4)
    for batch in tracker.track(timed_batches(clock, waits, size=3)):
        assert batch_size_of(batch) == 3
        clock.advance(next(computes))

    assert tracker.steps == 8
    assert tracker.data_wait_ratio == pytest.approx(0.75)
    assert otel.point(DATA_WAIT_RATIO).value == pytest.approx(0.75)
    step = otel.point(STEP_DURATION)
    assert step.count == 8
    assert step.sum == pytest.approx(8 * 0.040)
    assert dict(step.attributes) == {"run": "test"}
    wait = otel.point(DATA_WAIT_DURATION)
    assert wait.count == 8
    assert wait.sum == pytest.approx(4 * 0.010 + 4 * 0.030)
    assert otel.point(STEPS).value == 8
    assert otel.point(SAMPLES).value == 24

    for _ in tracker.track(timed_batches(clock, [MS] * 2), batch_size=16):
        clock.advance(MS)
    assert otel.point(STEPS).value == 10
    assert otel.point(SAMPLES).value == 24 + 32


def test_samples_not_recorded_without_a_size(otel: Telemetry) -> None:
    tracker = otel.tracker()
    assert list(tracker.track(iter(range(5)))) == [0, 1, 2, 3, 4]
    assert otel.point(STEPS).value == 5
    assert otel.points(SAMPLES) == []


def test_spans_nest_epoch_step_wait_compute(otel: Telemetry, clock: FakeClock) -> None:
    tracker = otel.tracker(span_every=5)
    for _ in tracker.track(timed_batches(clock, [10 * MS] * 20)):
        clock.advance(30 * MS)

    (epoch,) = otel.spans(EPOCH_SPAN)
    assert epoch.attributes[EPOCH_ATTRIBUTE] == 0
    steps = sorted(otel.spans(STEP_SPAN), key=lambda s: s.attributes[STEP_ATTRIBUTE])
    assert [s.attributes[STEP_ATTRIBUTE] for s in steps] == [0, 5, 10, 15]
    waits = otel.spans(DATA_WAIT_SPAN)
    computes = otel.spans(COMPUTE_SPAN)
    assert len(waits) == len(computes) == 4
    for step in steps:
        assert step.parent.span_id == epoch.context.span_id
        assert step.context.trace_id == epoch.context.trace_id
        assert step.attributes["run"] == "test"
        (wait,) = [w for w in waits if w.parent.span_id == step.context.span_id]
        (compute,) = [c for c in computes if c.parent.span_id == step.context.span_id]
        assert wait.start_time == step.start_time
        assert wait.end_time == compute.start_time
        assert compute.end_time == step.end_time
        assert wait.end_time - wait.start_time == 10 * MS
        assert compute.end_time - compute.start_time == 30 * MS
        assert epoch.start_time <= step.start_time and step.end_time <= epoch.end_time

    step_ids = {s.context.span_id for s in steps}
    # Exemplars are cleared by each collection: read both histograms from one.
    collected = otel.collect()
    for name in (STEP_DURATION, DATA_WAIT_DURATION):
        (point,) = collected[name]
        exemplars = point.exemplars
        assert exemplars
        assert {e.span_id for e in exemplars} <= step_ids
        assert all(e.trace_id == epoch.context.trace_id for e in exemplars)


def test_each_pass_is_an_epoch_when_none_is_open(otel: Telemetry) -> None:
    tracker = otel.tracker(span_every=1)
    for _ in range(3):
        list(tracker.track(range(2)))
    epochs = sorted(otel.spans(EPOCH_SPAN), key=lambda s: s.attributes[EPOCH_ATTRIBUTE])
    assert [e.attributes[EPOCH_ATTRIBUTE] for e in epochs] == [0, 1, 2]
    assert len(otel.spans(STEP_SPAN)) == 6
    for step in otel.spans(STEP_SPAN):
        assert step.parent.span_id in {e.context.span_id for e in epochs}


def test_track_inside_an_epoch_marker(otel: Telemetry, clock: FakeClock) -> None:
    tracker = otel.tracker(span_every=2)
    with tracker.epoch(7):
        for _ in tracker.track(timed_batches(clock, [MS] * 4)):
            clock.advance(MS)
    (epoch,) = otel.spans(EPOCH_SPAN)
    assert epoch.attributes[EPOCH_ATTRIBUTE] == 7
    steps = otel.spans(STEP_SPAN)
    assert len(steps) == 2
    assert all(s.parent.span_id == epoch.context.span_id for s in steps)


def test_exception_from_the_iterable_propagates(otel: Telemetry) -> None:
    tracker = otel.tracker(span_every=1)
    error = ValueError("corrupt shard")

    def loader() -> Iterator[int]:
        yield from range(3)
        raise error

    seen = []
    with pytest.raises(ValueError) as info:
        for item in tracker.track(loader()):
            seen.append(item)
    assert info.value is error
    assert seen == [0, 1, 2]
    assert tracker.steps == 3
    assert tracker.errors == 0
    (epoch,) = otel.spans(EPOCH_SPAN)
    assert epoch.status.status_code is StatusCode.ERROR


def test_breaking_out_closes_the_last_step(otel: Telemetry) -> None:
    tracker = otel.tracker()
    with contextlib.closing(tracker.track(range(10))) as batches:
        for item in batches:
            if item == 3:
                break
    assert tracker.steps == 4
    assert len(otel.spans(EPOCH_SPAN)) == 1


class Broken:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("exporter on fire")

        return fail


def test_recording_failures_do_not_reach_the_loop(otel: Telemetry) -> None:
    tracker = otel.tracker(span_every=1)
    tracker._instruments = Broken()
    tracker._tracer = Broken()
    assert list(tracker.track(range(5), batch_size=2)) == [0, 1, 2, 3, 4]
    with tracker.epoch(1), tracker.step(), tracker.data_wait():
        pass
    assert tracker.errors >= 5
    errors = tracker.take_errors()
    assert len(errors) == tracker.errors
    assert {(e.source, e.error_type) for e in errors} == {("training", "RuntimeError")}
    assert tracker.take_errors() == ()


def test_manual_markers(otel: Telemetry, clock: FakeClock) -> None:
    tracker = otel.tracker(span_every=2)
    user_tracer = otel.tracer_provider.get_tracer("user")
    with tracker.epoch(2):
        with user_tracer.start_as_current_span("user.work"):
            pass
        for _ in range(3):
            with tracker.data_wait():
                clock.advance(10 * MS)
            with tracker.step(samples=8):
                clock.advance(30 * MS)

    epoch_mark = tracker.epoch(3)
    step = tracker.step()
    clock.advance(5 * MS)
    wait = tracker.data_wait()
    clock.advance(20 * MS)
    wait.end()
    clock.advance(15 * MS)
    step.end(samples=4)
    step.end(samples=4)
    epoch_mark.end()

    with pytest.raises(KeyError), tracker.step(samples=100):
        raise KeyError("not a step")

    assert tracker.steps == 4
    assert otel.point(STEPS).value == 4
    assert otel.point(SAMPLES).value == 3 * 8 + 4
    assert otel.point(STEP_DURATION).sum == pytest.approx(4 * 0.040)
    assert otel.point(DATA_WAIT_DURATION).sum == pytest.approx(3 * 0.010 + 0.020)
    assert tracker.data_wait_ratio == pytest.approx(0.050 / 0.160)

    epochs = {s.attributes[EPOCH_ATTRIBUTE]: s for s in otel.spans(EPOCH_SPAN)}
    assert set(epochs) == {2, 3}
    (user,) = otel.spans("user.work")
    assert user.parent.span_id == epochs[2].context.span_id

    steps = {s.attributes[STEP_ATTRIBUTE]: s for s in otel.spans(STEP_SPAN)}
    assert set(steps) == {0, 2}
    assert steps[0].parent.span_id == epochs[2].context.span_id
    assert steps[2].parent.span_id == epochs[2].context.span_id
    # A wait marked before the step opens it.
    first = steps[0]
    (w0,) = [s for s in otel.spans(DATA_WAIT_SPAN) if s.parent.span_id == first.context.span_id]
    assert w0.start_time == first.start_time
    assert first.end_time - first.start_time == 40 * MS

    assert trace.get_current_span() is trace.INVALID_SPAN


def test_manual_wait_inside_a_step_splits_compute(otel: Telemetry, clock: FakeClock) -> None:
    tracker = otel.tracker(span_every=1)
    step = tracker.step()
    clock.advance(5 * MS)
    wait = tracker.data_wait()
    clock.advance(20 * MS)
    wait.end()
    clock.advance(15 * MS)
    step.end()
    (span,) = otel.spans(STEP_SPAN)
    children = sorted(
        (s for s in otel.exporter.get_finished_spans() if s.parent is not None
         and s.parent.span_id == span.context.span_id),
        key=lambda s: s.start_time,
    )  # fmt: skip
    assert [c.name for c in children] == [COMPUTE_SPAN, DATA_WAIT_SPAN, COMPUTE_SPAN]
    assert [c.end_time - c.start_time for c in children] == [5 * MS, 20 * MS, 15 * MS]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_records_nothing(otel: Telemetry) -> None:
    tracker = otel.tracker(span_every=1)
    list(tracker.track(range(5), batch_size=4))
    spans_before = len(otel.exporter.get_finished_spans())
    assert otel.point(STEPS).value == 5

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                items = list(tracker.track(range(7), batch_size=4))
                with tracker.epoch(9), tracker.step(samples=3), tracker.data_wait():
                    pass
                report: dict[str, Any] = {
                    "items": items,
                    "steps": tracker.steps,
                    "errors": tracker.errors,
                    "counter": otel.point(STEPS).value,
                    "samples": otel.point(SAMPLES).value,
                    "spans": len(otel.exporter.get_finished_spans()),
                }
            except BaseException as exc:
                report = {"failure": repr(exc)}
            os.write(write_fd, json.dumps(report).encode())
            os.close(write_fd)
        finally:
            os._exit(0)

    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks))

    assert report == {
        "items": list(range(7)),
        "steps": 5,
        "errors": 0,
        "counter": 5,
        "samples": 20,
        "spans": spans_before,
    }
    assert tracker.steps == 5
    assert otel.point(STEPS).value == 5
    assert otel.point(SAMPLES).value == 20
    assert len(otel.exporter.get_finished_spans()) == spans_before


class Shaped:
    def __init__(self, *shape: int) -> None:
        self.shape = shape


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (Shaped(32, 3, 224, 224), 32),
        ((Shaped(16, 10), Shaped(16)), 16),
        ([Shaped(8, 4), Shaped(8)], 8),
        ({"input_ids": Shaped(4, 128), "labels": Shaped(4)}, 4),
        (["a sentence", "another one"], 2),
        ([], 0),
        (Shaped(), None),
        (object(), None),
        (iter([1, 2]), None),
    ],
)
def test_batch_size_of(batch: Any, expected: int | None) -> None:
    assert batch_size_of(batch) == expected


def test_importing_does_not_pull_in_frameworks() -> None:
    code = (
        "import sys, otel_gpu.session.tracker, otel_gpu.frameworks; "
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        TrainingTracker(span_every=-1)
    with pytest.raises(ValueError):
        TrainingTracker(ratio_window=0)
