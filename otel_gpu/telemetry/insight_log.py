"""Insights as OpenTelemetry log records: one record each time an insight fires or clears."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from otel_gpu._version import __version__
from otel_gpu.insights.engine import InsightUpdate
from otel_gpu.snapshot import CRITICAL, INFO, WARNING, Insight, Snapshot

LOGGER_NAME = "otel_gpu"
EVENT_NAME = "otel_gpu.insight"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
FIRED, CLEARED = "fired", "cleared"

_SEVERITY = {
    INFO: (SeverityNumber.INFO, "INFO"),
    WARNING: (SeverityNumber.WARN, "WARN"),
    CRITICAL: (SeverityNumber.ERROR, "ERROR"),
}


def log_attributes(insight: Insight, state: str) -> dict[str, Any]:
    return {
        **insight.point_attributes(),
        "otel_gpu.insight.state": state,
        "otel_gpu.insight.remedy": insight.remedy,
    }


def log_body(insight: Insight, state: str) -> str:
    return insight.message if state == FIRED else f"Cleared: {insight.message}"


class InsightLogEmitter:
    """A Collector insight listener that writes one log record per state change."""

    def __init__(self, logger_provider: Any) -> None:
        self._logger = logger_provider.get_logger(
            LOGGER_NAME, __version__, schema_url=SCHEMA_URL
        )

    def __call__(self, update: InsightUpdate, snapshot: Snapshot) -> None:
        timestamp = int(snapshot.timestamp * 1e9)
        for state, insights in ((CLEARED, update.cleared), (FIRED, update.fired)):
            for insight in insights:
                number, text = _SEVERITY[insight.severity] if state == FIRED \
                    else (SeverityNumber.INFO, "INFO")
                self._logger.emit(
                    timestamp=timestamp,
                    severity_number=number,
                    severity_text=text,
                    body=log_body(insight, state),
                    attributes=log_attributes(insight, state),
                    event_name=EVENT_NAME,
                )


def build_logger_provider(exporters: Iterable[Any], resource: Resource) -> LoggerProvider:
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    return provider
