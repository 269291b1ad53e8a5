"""The providers a session reports through: the application's, or its own built from the
standard ``OTEL_*`` variables and set as the globals."""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from otel_gpu.telemetry.insight_log import build_logger_provider
from otel_gpu.telemetry.providers import (
    env_exemplar_filter,
    env_exporters,
    metric_readers,
    observable_views,
)


class _OwnerOnlyReader(PeriodicExportingMetricReader):
    """A periodic reader that exports from the process that made it, never from a fork of it.

    The SDK restarts a periodic reader's thread in a forked child, which would export the
    parent's cumulative values a second time under the same resource.
    """

    def __init__(self, exporter: MetricExporter, export_interval_millis: float) -> None:
        self._owner_pid = os.getpid()
        super().__init__(exporter, export_interval_millis=export_interval_millis)

    def _at_fork_reinit(self) -> None:
        pass

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        if os.getpid() == self._owner_pid:
            super()._receive_metrics(metrics_data, timeout_millis=timeout_millis, **kwargs)


# Providers a stopped session made and shut down; they stay the globals (the API allows setting
# them once) but must not be reused by a later session.
retired: weakref.WeakSet[Any] = weakref.WeakSet()


def app_meter_provider() -> MeterProvider | None:
    """The application's global SDK MeterProvider, if it set one."""
    provider = metrics.get_meter_provider()
    return provider if isinstance(provider, MeterProvider) and provider not in retired else None


def app_tracer_provider() -> TracerProvider | None:
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) and provider not in retired \
        else None


def app_logger_provider() -> LoggerProvider | None:
    provider = _logs.get_logger_provider()
    return provider if isinstance(provider, LoggerProvider) and provider not in retired \
        else None


def _set_global(setter: Any, getter: Any, provider: Any) -> None:
    if isinstance(getter(), (MeterProvider, TracerProvider)):
        return  # already set once; the API refuses a second one
    setter(provider)


@dataclass
class Providers:
    meter: Any
    tracer: Any
    owns_meter: bool
    owns_tracer: bool

    def retire(self) -> None:
        """Shut down the providers made here, after a start that failed half-way."""
        for provider, owned in ((self.meter, self.owns_meter), (self.tracer, self.owns_tracer)):
            if owned:
                with contextlib.suppress(Exception):
                    provider.shutdown()
                retired.add(provider)


def session_providers(meter_provider: Any, tracer_provider: Any,
                      metric_exporters: Sequence[MetricExporter] | None, interval_ms: float,
                      resource: Resource, *, otlp_metrics: Callable[[str], Any] | None = None,
                      otlp_spans: Callable[[str], Any] | None = None,
                      pull: bool = True) -> Providers:
    """The providers given, else the application's globals, else new ones (set as the globals).
    ``otlp_metrics`` and ``otlp_spans`` make the exporter an OTLP name stands for (the relays);
    ``pull`` False: a Prometheus scrape endpoint is served by the collector process, not here."""
    owns_meter = owns_tracer = False
    if meter_provider is None:
        meter_provider = app_meter_provider()
    if meter_provider is None:
        exporters = list(metric_exporters) if metric_exporters is not None else env_exporters(
            "metrics", ConsoleMetricExporter, otlp=otlp_metrics, pull=pull)
        readers: list[MetricReader] = metric_readers(
            exporters, lambda exporter: _OwnerOnlyReader(exporter, interval_ms))
        meter_provider = MeterProvider(metric_readers=readers, resource=resource,
                                       views=observable_views(),
                                       exemplar_filter=env_exemplar_filter())
        _set_global(metrics.set_meter_provider, metrics.get_meter_provider, meter_provider)
        owns_meter = True
    if tracer_provider is None:
        tracer_provider = app_tracer_provider()
    if tracer_provider is None:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in env_exporters("traces", ConsoleSpanExporter, otlp=otlp_spans):
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        _set_global(trace.set_tracer_provider, trace.get_tracer_provider, tracer_provider)
        owns_tracer = True
    return Providers(meter_provider, tracer_provider, owns_meter, owns_tracer)


def insight_logger_provider(resource: Resource, *, otlp: Callable[[str], Any] | None = None
                            ) -> tuple[Any, bool]:
    """Where insight log records go: the application's SDK LoggerProvider, else one built from
    ``OTEL_LOGS_EXPORTER`` (default otlp); ``(None, False)`` when that names no exporter.
    ``otlp(name)`` makes the exporter an OTLP name stands for, instead of the SDK's."""
    current = app_logger_provider()
    if current is not None:
        return current, False
    exporters = env_exporters("logs", ConsoleLogRecordExporter, otlp=otlp)
    if not exporters:
        return None, False
    return build_logger_provider(exporters, resource), True
