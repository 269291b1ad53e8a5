"""Exporters that hand a training process's metrics and spans to its collector process.

When the collector process exports (see ``otel_gpu.session``), the training process's OTLP
exporters are these relays: each export is pickled through the pipe, and the child sends it with
the SDK's OTLP exporter, which reads every ``OTEL_EXPORTER_OTLP_*`` variable there as it would
here. The training process then loads neither gRPC nor protobuf: no gRPC threads next to the
loop, no encoding on its threads, and nothing of gRPC's own for a DataLoader's ``fork`` to copy.

SDK resources and scopes hold locks and do not pickle, so they travel as plain values; the child
puts its own resource (the same attributes) back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link

from otel_gpu.session.protocol import Kind

log = logging.getLogger("otel_gpu")

Send = Callable[[Kind, Any], bool]
Scope = tuple[str, str | None, str | None, dict[str, Any]]


def _scope_to_wire(scope: InstrumentationScope | None) -> Scope | None:
    if scope is None:
        return None
    return (scope.name, scope.version, scope.schema_url, dict(scope.attributes or {}))


def _scope_from_wire(wire: Scope | None) -> InstrumentationScope | None:
    if wire is None:
        return None
    name, version, schema_url, attributes = wire
    return InstrumentationScope(name, version, schema_url, attributes or None)


def metrics_to_wire(data: MetricsData) -> list[tuple[Scope | None, str, list[Any]]]:
    return [(_scope_to_wire(sm.scope), sm.schema_url, list(sm.metrics))
            for rm in data.resource_metrics for sm in rm.scope_metrics]


def metrics_from_wire(wire: Sequence[tuple[Scope | None, str, list[Any]]], resource: Resource,
                      schema_url: str = "") -> MetricsData:
    scopes = [ScopeMetrics(scope=_scope_from_wire(scope), metrics=metrics, schema_url=url)
              for scope, url, metrics in wire]
    return MetricsData(resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=scopes,
                                                         schema_url=schema_url)])


def span_to_wire(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name, "context": span.context, "parent": span.parent,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "kind": span.kind, "status": span.status, "start_time": span.start_time,
        "end_time": span.end_time, "scope": _scope_to_wire(span.instrumentation_scope),
    }


def span_from_wire(wire: dict[str, Any], resource: Resource) -> ReadableSpan:
    return ReadableSpan(
        name=wire["name"], context=wire["context"], parent=wire["parent"], resource=resource,
        attributes=wire["attributes"],
        events=[Event(name, attributes, timestamp) for name, attributes, timestamp
                in wire["events"]],
        links=[Link(context, attributes) for context, attributes in wire["links"]],
        kind=wire["kind"], status=wire["status"], start_time=wire["start_time"],
        end_time=wire["end_time"], instrumentation_scope=_scope_from_wire(wire["scope"]),
    )


class RelayMetricExporter(MetricExporter):
    """Hands each export to the collector process, which sends it over OTLP."""

    def __init__(self, send: Send, temporality: dict[type, Any] | None = None,
                 aggregation: dict[type, Any] | None = None) -> None:
        # The preferences of the OTLP exporter that sends, which the child reads from the
        # environment (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` and
        # ``..._DEFAULT_HISTOGRAM_AGGREGATION``) and hands over as it starts.
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)
        self._send = send

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        if self._send(Kind.METRICS, metrics_to_wire(metrics_data)):
            return MetricExportResult.SUCCESS
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class RelaySpanExporter(SpanExporter):
    """Hands each batch of spans to the collector process, which sends it over OTLP."""

    def __init__(self, send: Send) -> None:
        self._send = send

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._send(Kind.SPANS, [span_to_wire(span) for span in spans]):
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE

