"""OpenTelemetry wiring: resource, exporters and readers, and instruments from the catalog."""

from __future__ import annotations

import importlib
import logging
import math
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import (
    Exemplar,
    ExemplarReservoir,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
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

if TYPE_CHECKING:  # the training process needs no source to build its providers
    from otel_gpu.sources.identity import SelfInfo

log = logging.getLogger("otel_gpu")

EXPORTERS = AGENT_EXPORTERS
METER_NAME = "otel_gpu"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"


def build_resource(service_name: str = "otel-gpu-agent", *,
                   stable_instance: bool = False) -> Resource:
    """Our defaults, overridden by ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``.

    ``stable_instance``: a node agent's ``service.instance.id`` is derived from its service and
    host names instead of drawn at random, so that a restart continues the same series.
    """
    ours = Resource(
        {
            "service.name": service_name,
            "host.name": socket.gethostname(),
            "service.version": __version__,
        }
    )
    env = OTELResourceDetector().detect()
    resource = Resource.create({}).merge(ours).merge(env)
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


def otlp_exporter(signal: str = "metrics") -> Any:
    """The SDK's OTLP exporter for a signal; it reads every OTEL_EXPORTER_OTLP_* variable
    itself (endpoint, headers, timeout, compression, TLS, temporality preference)."""
    module, name = _OTLP_CLASSES[(signal, otlp_target(signal=signal).protocol)]
    return getattr(importlib.import_module(module), name)()


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


def _prometheus_reader() -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError as err:
        raise ConfigError(
            f"the prometheus exporter needs opentelemetry-exporter-prometheus ({err})"
        ) from err
    host, port = prometheus_address()
    try:
        start_http_server(port=port, addr=host)
    except OSError as err:
        raise ConfigError(f"prometheus exporter: cannot listen on {host}:{port}: {err}") from err
    return PrometheusMetricReader()


def build_readers(exporters: Sequence[str], interval_s: float | None) -> list[MetricReader]:
    """One reader per exporter. ``interval_s`` None: the caller drives collection itself."""
    millis = math.inf if interval_s is None else interval_s * 1000.0
    readers: list[MetricReader] = []
    for name in dict.fromkeys(exporters):
        if name == "otlp":
            readers.append(
                PeriodicExportingMetricReader(
                    otlp_exporter("metrics"), export_interval_millis=millis
                )
            )
        elif name == "console":
            readers.append(
                PeriodicExportingMetricReader(
                    ConsoleMetricExporter(), export_interval_millis=millis
                )
            )
        elif name == "prometheus":
            readers.append(_prometheus_reader())
        elif name != "none":
            raise ConfigError(
                f"--exporter: unknown exporter {name!r} (choose from {', '.join(EXPORTERS)})"
            )
    return readers


def build_meter_provider(readers: Sequence[MetricReader], resource: Resource) -> MeterProvider:
    return MeterProvider(metric_readers=list(readers), resource=resource, shutdown_on_exit=False,
                         views=observable_views())


class _NoExemplars(ExemplarReservoir):
    """A reservoir that keeps nothing: stateless, so one instance serves every point."""

    def offer(self, value: float, time_unix_nano: int, attributes: Any, context: Context) -> None:
        pass

    def collect(self, point_attributes: Any) -> list[Exemplar]:
        return []


_NO_EXEMPLARS = _NoExemplars()


def _no_exemplars(aggregation_type: type) -> Callable[..., ExemplarReservoir]:
    return lambda **_: _NO_EXEMPLARS


def observable_views() -> list[View]:
    """Views that give observable instruments no exemplar reservoir.

    Their callbacks run at collection time, outside any span, so an exemplar could only point
    at the collection itself; yet the SDK's default keeps a reservoir per point and collects it
    every cycle. Synchronous instruments (the training histograms, whose exemplars link to step
    spans) keep the SDK's default reservoirs.
    """
    return [
        View(instrument_type=kind, exemplar_reservoir_factory=_no_exemplars)
        for kind in (ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    ]


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
