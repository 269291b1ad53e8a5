"""OTLP exporters that know when there is no collector to deliver to.

The SDK's exporters retry a refused connection with back-off until their timeout (10 s by
default, ``OTEL_EXPORTER_OTLP_TIMEOUT``), logging each attempt. A training script started
without a collector would then wait that long at ``stop()`` and print a screen of retries. So the
collector process's exporters (and the OTLP exporters of providers an in-process session makes)
look first: while the backend has never answered, an export to an
endpoint that refuses connections fails at once, and one line on stderr says what to do. Once the
backend has answered, exports go to the SDK's exporter, retries included, until one fails; after
that, only while the endpoint accepts connections.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_gpu.config import ConfigError, otlp_target
from otel_gpu.telemetry.providers import OTLP_NAMES, otlp_exporter, otlp_protocol

log = logging.getLogger("otel_gpu")

PROBE_TIMEOUT_S = 0.5

def otlp_address(signal: str, protocol: str, environ: Mapping[str, str] | None = None
                 ) -> tuple[str, int] | None:
    """The host and port the OTLP exporter of ``signal`` connects to over ``protocol``, by the
    endpoint rules of ``otel_gpu.config.otlp_target``; None for an address that is not host and
    port (a Unix socket) or an endpoint the exporter cannot use either."""
    env = dict(os.environ if environ is None else environ)
    env[f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"] = protocol
    try:
        target = otlp_target(env, signal)
    except ConfigError:
        return None
    return (target.host, target.port) if target.port else None


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


class Backend:
    """Whether anything was ever delivered, shared by the exporters of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = False
        self.failing = False
        self.told = False

    def deliverable(self, address: tuple[str, int] | None) -> bool:
        """Worth handing an export to the SDK: the last export went through, or the address
        accepts connections now. (A backend that goes away costs one export its retries; the
        exports after it fail at once while the address refuses connections.)"""
        if (self.answered and not self.failing) or address is None or _accepts(address):
            return True
        if self.answered:
            return False
        with self._lock:
            if not self.told:
                self.told = True
                host, port = address
                log.warning("otel-gpu: no OTLP collector at %s:%d; set OTEL_METRICS_EXPORTER="
                            "console or start one", host, port)
        return False

    def delivered(self, ok: bool) -> None:
        if ok:
            self.answered = True
        self.failing = not ok


def _succeeded(result: Any) -> bool:
    return getattr(result, "name", None) == "SUCCESS"


class GuardedExporter:
    """A span or log exporter that fails at once while there is no backend to deliver to."""

    def __init__(self, inner: Any, backend: Backend, address: tuple[str, int] | None,
                 failure: Any) -> None:
        self._inner = inner
        self._backend = backend
        self._address = address
        self._failure = failure

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._backend.deliverable(self._address):
            return self._failure
        result = self._inner.export(batch, *args, **kwargs)
        self._backend.delivered(_succeeded(result))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedMetricExporter(MetricExporter):
    """The metric exporter of ``GuardedExporter``, with the inner exporter's preferences."""

    def __init__(self, inner: MetricExporter, backend: Backend,
                 address: tuple[str, int] | None) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._backend = backend
        self._address = address

    def export(self, metrics_data: Any, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        if not self._backend.deliverable(self._address):
            return MetricExportResult.FAILURE
        result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self._backend.delivered(_succeeded(result))
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def guarded_otlp(signal: str, backend: Backend, name: str = "otlp") -> Any:
    """The SDK's OTLP exporter for ``signal`` (metrics, traces or logs), guarded; ``name`` is
    the exporter's name in ``OTEL_<SIGNAL>_EXPORTER`` (``otlp``, ``otlp_proto_grpc``, ...)."""
    inner = otlp_exporter(signal, name)
    address = otlp_address(signal, OTLP_NAMES.get(name) or otlp_protocol(signal))
    if signal == "metrics":
        return GuardedMetricExporter(inner, backend, address)
    failure = SpanExportResult.FAILURE if signal == "traces" else LogRecordExportResult.FAILURE
    return GuardedExporter(inner, backend, address, failure)
