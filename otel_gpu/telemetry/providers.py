"""OpenTelemetry wiring: resource, exporters and readers, and instruments from the catalog."""

from __future__ import annotations

import importlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from otel_gpu._version import __version__
from otel_gpu.config import (
    AGENT_EXPORTERS,
    ConfigError,
    export_interval_ms,
    otlp_target,
    prometheus_address,
    signal_exporters,
)
from otel_gpu.telemetry.export_queue import Borrowed, QueuedExporter
from otel_gpu.telemetry.failures import FailureTally
from otel_gpu.telemetry.node_agent import in_container, node_host_name

if TYPE_CHECKING:  # the training process needs no source to build its providers
    from otel_gpu.sources.identity import SelfInfo

log = logging.getLogger("otel_gpu")

EXPORTERS = AGENT_EXPORTERS
METER_NAME = "otel_gpu"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"


def build_resource(service_name: str = "otel-gpu-agent", *,
                   stable_instance: bool = False) -> Resource:
    """Our defaults, overridden by ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``.

    ``host.name`` is the node's name (``node_host_name``): inside a container, never the
    container's own host name, which is its id. ``stable_instance``: a node agent's
    ``service.instance.id`` is derived from its service and host names instead of drawn at
    random, so that a restart continues the same series.
    """
    defaults: dict[str, str] = {"service.name": service_name, "service.version": __version__}
    host = node_host_name(in_container())
    if host:
        defaults["host.name"] = host
    env = OTELResourceDetector().detect()
    resource = Resource.create({}).merge(Resource(defaults)).merge(env)
    if stable_instance and "service.instance.id" not in env.attributes:
        attrs = resource.attributes
        name = f"{attrs.get('service.name')}/{attrs.get('host.name')}"
        resource = resource.merge(Resource({"service.instance.id": str(
            uuid.uuid5(uuid.NAMESPACE_DNS, name))}))
    return resource


_OTLP_CLASSES = {
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
                          "OTLPMetricExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                                   "OTLPMetricExporter"),
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                         "OTLPSpanExporter"),
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                                  "OTLPSpanExporter"),
    ("logs", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter",
                       "OTLPLogExporter"),
    ("logs", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http._log_exporter",
                                "OTLPLogExporter"),
}


def otlp_exporter(signal: str = "metrics", default_timeout_s: float | None = None) -> Any:
    """The SDK's OTLP exporter for a signal; it reads every OTEL_EXPORTER_OTLP_* variable
    itself (endpoint, headers, timeout, compression, TLS, temporality preference).

    ``default_timeout_s``: the time one export may take (its retries included) when neither
    ``OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`` nor ``OTEL_EXPORTER_OTLP_TIMEOUT`` says."""
    module, name = _OTLP_CLASSES[(signal, otlp_target(signal=signal).protocol)]
    cls = getattr(importlib.import_module(module), name)
    configured = (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT")
                  or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT"))
    if default_timeout_s is not None and not configured:
        return cls(timeout=default_timeout_s)
    return cls()


def agent_export_timeout_s(interval_s: float) -> float:
    """An agent's export waits at most one interval (1 to 10 s, the SDK's default) unless a
    timeout is configured, so that a backend back from an outage gets data within about one
    interval instead of after the exporter's retry schedule."""
    return min(max(interval_s, 1.0), 10.0)


def env_exporters(signal: str, console: Callable[[], Any],
                  otlp: Callable[[], Any] | None = None) -> list[Any]:
    """Exporters named by ``OTEL_<SIGNAL>_EXPORTER`` (default otlp): otlp, console or none.
    ``otlp`` makes the exporter that otlp names, instead of the SDK's."""
    exporters: list[Any] = []
    for name in signal_exporters(signal):
        if name == "otlp":
            exporters.append(otlp() if otlp is not None else otlp_exporter(signal))
        elif name == "console":
            exporters.append(console())
    return exporters


def env_export_interval_ms(default_ms: float) -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL`` in milliseconds, validated."""
    return export_interval_ms(default_ms)


def _prometheus_server() -> None:
    """The HTTP endpoint that Prometheus scrapes: ``OTEL_EXPORTER_PROMETHEUS_HOST`` (default
    ``localhost``, as the OpenTelemetry specification says) and ``_PORT`` (default 9464)."""
    try:
        from prometheus_client import start_http_server
    except ImportError as err:
        raise ConfigError(
            f"the prometheus exporter needs prometheus-client ({err})"
        ) from err
    host, port = prometheus_address()
    try:
        start_http_server(port=port, addr=host)
    except OSError as err:
        raise ConfigError(f"prometheus exporter: cannot listen on {host}:{port}: {err}") from err


def _prometheus_reader() -> MetricReader:
    from otel_gpu.telemetry.prometheus import PrometheusReader

    return PrometheusReader()


class ReaderFactory:
    """The exporters named, made once (an HTTP server for ``prometheus``), and a fresh reader
    for each whenever called: one set per MeterProvider generation (``MeterGenerations``).

    ``interval_s`` None: the caller drives collection itself. With a ``tally``, the OTLP
    exporter runs behind a ``QueuedExporter`` (its own thread, a bounded queue) whose dropped
    batches and failed exports are counted there. The readers borrow the exporters;
    ``close()`` shuts them down.
    """

    def __init__(self, exporters: Sequence[str], interval_s: float | None, *,
                 tally: FailureTally | None = None,
                 export_timeout_s: float | None = None) -> None:
        self._millis = math.inf if interval_s is None else interval_s * 1000.0
        self._push: list[MetricExporter] = []
        self._prometheus = False
        for name in dict.fromkeys(exporters):
            if name == "otlp":
                exporter = otlp_exporter("metrics", export_timeout_s)
                if tally is not None:
                    exporter = QueuedExporter(exporter, tally)
                self._push.append(exporter)
            elif name == "console":
                self._push.append(ConsoleMetricExporter())
            elif name == "prometheus":
                _prometheus_server()
                self._prometheus = True
            elif name != "none":
                raise ConfigError(
                    f"--exporter: unknown exporter {name!r} (choose from {', '.join(EXPORTERS)})"
                )

    def __call__(self) -> list[MetricReader]:
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(Borrowed(exporter), export_interval_millis=self._millis)
            for exporter in self._push
        ]
        if self._prometheus:
            readers.append(_prometheus_reader())
        return readers

    def close(self) -> None:
        for exporter in self._push:
            try:
                exporter.shutdown()
            except Exception:
                log.exception("otel-gpu: could not shut an exporter down")


def build_readers(exporters: Sequence[str], interval_s: float | None) -> list[MetricReader]:
    """One reader per exporter, owning it. ``interval_s`` None: the caller drives collection."""
    millis = math.inf if interval_s is None else interval_s * 1000.0
    readers: list[MetricReader] = []
    for name in dict.fromkeys(exporters):
        if name == "otlp":
            readers.append(PeriodicExportingMetricReader(otlp_exporter("metrics"),
                                                         export_interval_millis=millis))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(),
                                                         export_interval_millis=millis))
        elif name == "prometheus":
            _prometheus_server()
            readers.append(_prometheus_reader())
        elif name != "none":
            raise ConfigError(
                f"--exporter: unknown exporter {name!r} (choose from {', '.join(EXPORTERS)})"
            )
    return readers


def build_meter_provider(readers: Sequence[MetricReader], resource: Resource) -> MeterProvider:
    return MeterProvider(metric_readers=list(readers), resource=resource, shutdown_on_exit=False)


def get_meter(provider: Any) -> Meter:
    return provider.get_meter(METER_NAME, __version__, schema_url=SCHEMA_URL)


def self_resource(info: SelfInfo) -> Resource:
    """The resource attributes ``info`` supports."""
    pairs: dict[str, str | None] = {
        "container.id": info.container_id,
        "container.runtime.name": info.container_runtime,
        "k8s.pod.name": info.pod_name,
        "k8s.pod.uid": info.pod_uid,
        "k8s.namespace.name": info.pod_namespace,
        "k8s.container.name": info.k8s_container_name,
        "process.owner": info.user,
    }
    attributes: dict[str, str | tuple[str, ...]] = {k: v for k, v in pairs.items() if v}
    if info.devices is not None:
        attributes["otel_gpu.device.ids"] = info.devices
    return Resource(attributes)
