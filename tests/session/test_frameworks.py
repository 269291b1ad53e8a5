from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_gpu import frameworks
from otel_gpu.session import tracker as training
from otel_gpu.session.tracker import (
    DATA_WAIT_DURATION,
    EPOCH_ATTRIBUTE,
    EPOCH_SPAN,
    SAMPLES,
    STEP_DURATION,
    STEP_SPAN,
    STEPS,
    TrainingTracker,
)

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


class Shaped:
    def __init__(self, *shape: int) -> None:
        self.shape = shape


class Setup:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracker = TrainingTracker(self.meter_provider, self.tracer_provider, span_every=1)

    def value(self, name: str) -> Any:
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        (point,) = metric.data.data_points
                        return point
        raise AssertionError(f"{name} not recorded")

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    clock = FakeClock()
    monkeypatch.setattr(training, "_clock", clock)
    s = Setup(clock)
    yield s
    s.meter_provider.shutdown()
    s.tracer_provider.shutdown()


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


class LightningCallback:
    """Stands in for lightning.pytorch.Callback: every hook exists and does nothing."""

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        raise AssertionError("the subclass must override this hook")


class TrainerCallback:
    """Stands in for transformers.TrainerCallback."""


def drive_lightning(cb: Any, clock: FakeClock) -> None:
    trainer = types.SimpleNamespace(current_epoch=0)
    module = object()
    cb.on_validation_start(trainer, module)  # sanity check before training
    cb.on_validation_end(trainer, module)
    for epoch in range(2):
        trainer.current_epoch = epoch
        cb.on_train_epoch_start(trainer, module)
        for i in range(3):
            clock.advance(10 * MS)  # dataloader fetch, transfer
            batch = (Shaped(16, 3), Shaped(16))
            cb.on_train_batch_start(trainer, module, batch, i)
            clock.advance(30 * MS)  # forward, backward, optimizer
            cb.on_train_batch_end(trainer, module, {"loss": 0.1}, batch, i)
            if i == 1:
                cb.on_validation_start(trainer, module)
                clock.advance(500 * MS)
                cb.on_validation_end(trainer, module)
        cb.on_train_epoch_end(trainer, module)
    cb.on_train_end(trainer, module)


def test_lightning_callback_drives_the_tracker(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_module(monkeypatch, "lightning")
    fake_module(monkeypatch, "lightning.pytorch", Callback=LightningCallback)
    cb = frameworks.lightning_callback(setup.tracker)
    assert isinstance(cb, LightningCallback)
    assert cb.tracker is setup.tracker

    drive_lightning(cb, setup.clock)

    assert setup.tracker.steps == 6
    assert setup.value(STEPS).value == 6
    assert setup.value(SAMPLES).value == 6 * 16
    assert setup.value(STEP_DURATION).sum == pytest.approx(6 * 0.040)
    assert setup.value(DATA_WAIT_DURATION).sum == pytest.approx(6 * 0.010)
    assert setup.tracker.data_wait_ratio == pytest.approx(0.25)
    epochs = setup.spans(EPOCH_SPAN)
    assert sorted(e.attributes[EPOCH_ATTRIBUTE] for e in epochs) == [0, 1]
    epoch_ids = {e.context.span_id for e in epochs}
    assert all(s.parent.span_id in epoch_ids for s in setup.spans(STEP_SPAN))


def test_lightning_falls_back_to_pytorch_lightning(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lightning", None)
    fake_module(monkeypatch, "pytorch_lightning", Callback=LightningCallback)
    cb = frameworks.lightning_callback(setup.tracker)
    assert isinstance(cb, LightningCallback)


def test_lightning_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(ImportError, match="pip install lightning"):
        frameworks.lightning_callback()


def test_huggingface_callback_drives_the_tracker(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_module(monkeypatch, "transformers", TrainerCallback=TrainerCallback)
    cb = frameworks.huggingface_callback(setup.tracker)
    assert isinstance(cb, TrainerCallback)

    clock = setup.clock
    args = types.SimpleNamespace(train_batch_size=8, gradient_accumulation_steps=2)
    state = types.SimpleNamespace(epoch=0.0, global_step=0)
    control = object()
    for epoch in range(2):
        state.epoch = float(epoch)
        cb.on_epoch_begin(args, state, control)
        for _ in range(4):
            clock.advance(20 * MS)
            cb.on_step_begin(args, state, control)
            clock.advance(60 * MS)
            state.global_step += 1
            cb.on_step_end(args, state, control, model=object())
            if state.global_step == 2:
                clock.advance(5 * MS)
                cb.on_log(args, state, control, logs={})
                clock.advance(400 * MS)
                cb.on_evaluate(args, state, control, metrics={})
                clock.advance(300 * MS)
                cb.on_save(args, state, control)
        cb.on_epoch_end(args, state, control)
    cb.on_train_end(args, state, control)

    assert setup.tracker.steps == 8
    assert setup.value(SAMPLES).value == 8 * 16
    assert setup.value(DATA_WAIT_DURATION).sum == pytest.approx(8 * 0.020)
    assert setup.value(STEP_DURATION).sum == pytest.approx(8 * 0.080)
    epochs = setup.spans(EPOCH_SPAN)
    assert sorted(e.attributes[EPOCH_ATTRIBUTE] for e in epochs) == [0, 1]


def test_huggingface_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        frameworks.huggingface_callback()


def test_default_tracker_uses_global_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "transformers", TrainerCallback=TrainerCallback)
    cb = frameworks.huggingface_callback()
    assert isinstance(cb.tracker, TrainingTracker)
