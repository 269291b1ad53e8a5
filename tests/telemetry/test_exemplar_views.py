"""Observable instruments get no exemplars; the training histograms keep theirs.

Run against the installed SDK with the ``always_on`` exemplar filter, under which the SDK's
default would give every point an exemplar: a plain MeterProvider is the control.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from opentelemetry import context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_gpu.telemetry.instruments import STEP_DURATION, TrainingInstruments
from otel_gpu.telemetry.providers import build_meter_provider

ATTRS = {"hw.id": "GPU-0"}


def _observe(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(1.5, ATTRS)]


def _exemplars(data: MetricsData | None) -> dict[str, int]:
    assert data is not None
    found: dict[str, int] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                found[metric.name] = sum(len(p.exemplars) for p in metric.data.data_points)
    return found


def _record(provider: MeterProvider) -> int:
    """Three observable instruments and one training step inside a sampled span: its trace."""
    meter = provider.get_meter("test")
    meter.create_observable_gauge("test.gauge", callbacks=[_observe])
    meter.create_observable_counter("test.counter", callbacks=[_observe])
    meter.create_observable_up_down_counter("test.updown", callbacks=[_observe])
    tracer = TracerProvider().get_tracer("test")
    instruments = TrainingInstruments(provider)
    with tracer.start_as_current_span("step") as span:
        instruments.record(2_000_000, 1_000_000, 0.5, 8, {"step": "train"}, context.get_current())
        return span.get_span_context().trace_id


@pytest.fixture
def always_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")


def test_the_sdk_default_would_give_observable_points_exemplars(always_on: None) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _record(provider)
    found = _exemplars(reader.get_metrics_data())
    assert found["test.gauge"] == 1
    assert found["test.counter"] == 1
    provider.shutdown()


def test_observable_points_carry_no_exemplars_and_training_histograms_keep_theirs(
    always_on: None,
) -> None:
    reader = InMemoryMetricReader()
    provider = build_meter_provider([reader], Resource({"service.name": "test"}))
    trace_id = _record(provider)
    data = reader.get_metrics_data()
    found = _exemplars(data)
    assert found["test.gauge"] == 0
    assert found["test.counter"] == 0
    assert found["test.updown"] == 0
    assert found[STEP_DURATION] >= 1
    assert data is not None
    step = next(
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == STEP_DURATION
    )
    exemplar = step.data.data_points[0].exemplars[0]
    assert exemplar.trace_id == trace_id
    # Observable points still aggregate as before: the view changes the reservoir only.
    gauge = next(
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "test.gauge"
    )
    assert [(p.value, dict(p.attributes)) for p in gauge.data.data_points] == [(1.5, ATTRS)]
    provider.shutdown()
