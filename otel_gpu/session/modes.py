"""The mode of a session, chosen once from what the application brought (see
``otel_gpu.session``), and what ``start()`` was asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource

from otel_gpu.config import collect_in_process
from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.session.providers import app_logger_provider, app_meter_provider


class Mode(Enum):
    """Where GPU, MIG and host metrics are collected and exported from."""

    #: the session builds its providers: a child process collects, exports and records steps
    EXPORT_CHILD = "export child"
    #: the application's providers (or ``metric_exporters=``): the sources run in a child, the
    #: instruments on those providers here
    SOURCES_CHILD = "sources child"
    #: everything in the training process (``OTEL_GPU_COLLECT_IN_PROCESS=true``, or no child)
    IN_PROCESS = "in process"


#: What is logged when a mode's child cannot start and the next mode is tried.
FALLBACK_NOTES = {Mode.EXPORT_CHILD: "exporting from the training process",
                  Mode.SOURCES_CHILD: "collecting in the training process"}


def choose_mode(*, meter_provider: Any, metric_exporters: Any, mirrored: bool = False,
                environ: Mapping[str, str] | None = None) -> list[Mode]:
    """The modes to try, in order: the first that starts is the session's. ``mirrored``: the
    application's MeterProvider exports as the session's own would (``session.mirror``)."""
    if collect_in_process(environ):
        return [Mode.IN_PROCESS]
    if mirrored:
        return [Mode.EXPORT_CHILD, Mode.SOURCES_CHILD, Mode.IN_PROCESS]
    if meter_provider is not None or metric_exporters is not None or \
            app_meter_provider() is not None or app_logger_provider() is not None:
        return [Mode.SOURCES_CHILD, Mode.IN_PROCESS]
    return [Mode.EXPORT_CHILD, Mode.SOURCES_CHILD, Mode.IN_PROCESS]


@dataclass(frozen=True)
class Request:
    """What ``start()`` was asked for, validated."""

    simulate: str | None
    interval_ms: float
    thresholds: Thresholds | None
    base_resource: Resource  # what the session makes or was given, before detection
    detect: bool  # put the detected identity of the process under ``base_resource``
    attributes: dict[str, str] = field(default_factory=dict)
    meter_provider: Any = None
    tracer_provider: Any = None
    metric_exporters: Sequence[MetricExporter] | None = None
    summary: bool = True  # the end-of-run summary on stderr (``OTEL_GPU_SUMMARY``)
    #: the ``system.*`` names the collector process leaves to the contrib instrumentation
    stand_down: frozenset[str] = frozenset()
