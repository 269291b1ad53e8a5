"""OpenTelemetry wiring: resource, exporters and readers, and instruments from the catalog."""

from __future__ import annotations

import importlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Exemplar,
    ExemplarFilter,
    ExemplarReservoir,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from otel_gpu import config
from otel_gpu._version import __version__
from otel_gpu.config import AGENT_EXPORTERS, ConfigError, env_list
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


#: The OTLP exporter names the SDK's configurator knows, and the protocol each one fixes.
OTLP_NAMES: dict[str, str | None] = {"otlp": None, "otlp_proto_grpc": "grpc",
                                     "otlp_proto_http": "http/protobuf"}


# The command line refuses a bad setting (``otel_gpu.config``'s readers); a training session
# reads the same settings leniently, as the SDK does: a warning and the default.


def otlp_protocol(signal: str = "metrics", *, strict: bool = False) -> str:
    """``grpc`` or ``http/protobuf`` (``config.otlp_protocol``). Any other value raises
    ConfigError when ``strict`` (the command line), else is logged and grpc used (a misspelt
    protocol must not stop a training run)."""
    try:
        return config.otlp_protocol(signal)
    except ConfigError as err:
        if strict:
            raise
        _warn_once(f"{err}; using grpc")
        return "grpc"


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


def otlp_class_name(signal: str, name: str) -> tuple[str, str]:
    """The module and class of the SDK's OTLP exporter that ``name`` (``otlp`` and the
    protocol variables, or ``otlp_proto_grpc`` / ``otlp_proto_http``) stands for."""
    return _OTLP_CLASSES[(signal, OTLP_NAMES.get(name) or otlp_protocol(signal))]


def otlp_exporter(signal: str = "metrics", name: str = "otlp", *, strict: bool = False,
                  default_timeout_s: float | None = None) -> Any:
    """The SDK's OTLP exporter for a signal; it reads every OTEL_EXPORTER_OTLP_* variable
    itself (endpoint, headers, timeout, compression, TLS, temporality preference).
    ``name``: ``otlp`` (the protocol variables choose), ``otlp_proto_grpc`` or ``..._http``.
    ``default_timeout_s``: the time one export may take (its retries included) when neither
    ``OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`` nor ``OTEL_EXPORTER_OTLP_TIMEOUT`` says."""
    if strict:
        protocol = config.otlp_target(signal=signal).protocol  # a bad endpoint refused too
    else:
        protocol = OTLP_NAMES.get(name) or otlp_protocol(signal)
    module, cls = _OTLP_CLASSES[(signal, OTLP_NAMES.get(name) or protocol)]
    exporter_class = getattr(importlib.import_module(module), cls)
    kwargs: dict[str, float] = {} if strict else _lenient_timeout(signal)
    configured = (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT")
                  or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT"))
    if default_timeout_s is not None and not configured:
        kwargs = {"timeout": default_timeout_s}
    return exporter_class(**kwargs)


def agent_export_timeout_s(interval_s: float) -> float:
    """An agent's export waits at most one interval (1 to 10 s, the SDK's default) unless a
    timeout is configured, so that a backend back from an outage gets data within about one
    interval instead of after the exporter's retry schedule."""
    return min(max(interval_s, 1.0), 10.0)


OTLP_TIMEOUT_S = 10.0  # the SDK exporters' default for OTEL_EXPORTER_OTLP_TIMEOUT, in seconds


def _lenient_timeout(signal: str) -> dict[str, float]:
    """``timeout=`` the default when ``OTEL_EXPORTER_OTLP_TIMEOUT`` is not a number (and no
    per-signal timeout overrides it): the SDK's HTTP exporters warn and use the default, its
    gRPC exporters would raise."""
    if os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT") is not None:
        return {}
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    if raw is None:
        return {}
    try:
        float(raw)
        return {}
    except ValueError:
        _warn_once(f"OTEL_EXPORTER_OTLP_TIMEOUT: {raw!r} is not a number of seconds; "
                   f"using {OTLP_TIMEOUT_S:g}")
        return {"timeout": OTLP_TIMEOUT_S}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("otel-gpu: %s", message)


def exporter_names(signal: str) -> list[str]:
    """The names in ``OTEL_<SIGNAL>_EXPORTER`` (default otlp), without ``none``."""
    return [n for n in dict.fromkeys(env_list(f"OTEL_{signal.upper()}_EXPORTER", "otlp"))
            if n != "none"]


def exporter_class(signal: str, name: str) -> type | None:
    """What the entry point ``name`` of the group ``opentelemetry_<signal>_exporter`` names, as
    the SDK's configurator resolves it; None when no installed package registers it."""
    from importlib.metadata import entry_points

    group = f"opentelemetry_{signal}_exporter"
    for point in entry_points(group=group, name=name):
        return point.load()  # type: ignore[no-any-return]
    return None


def unknown_exporters() -> list[str]:
    """A line for each exporter name in the ``OTEL_*_EXPORTER`` variables that no installed
    package registers (the SDK's configurator would refuse to start; a session goes on)."""
    notes = []
    for signal in ("metrics", "traces", "logs"):
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        for name in exporter_names(signal):
            if name in OTLP_NAMES or name in ("console", "prometheus"):
                continue
            try:
                found = exporter_class(signal, name) is not None
            except Exception as err:  # a broken package
                notes.append(f"{variable}: {name!r} cannot be loaded ({err}); ignored")
                continue
            if not found:
                notes.append(f"{variable}: no installed package provides the exporter {name!r} "
                             f"(entry point group opentelemetry_{signal}_exporter); ignored")
    return notes


def env_exporters(signal: str, console: Callable[[], Any],
                  otlp: Callable[[str], Any] | None = None, *, pull: bool = True) -> list[Any]:
    """Exporters named by ``OTEL_<SIGNAL>_EXPORTER`` (default otlp), resolved as the SDK's
    configurator resolves them: ``otlp`` (and ``otlp_proto_grpc``, ``otlp_proto_http``),
    ``console``, ``none``, ``prometheus`` (metrics) and any name a package registers in the
    ``opentelemetry_<signal>_exporter`` entry point group. For metrics the list may hold pull
    readers (``MetricReader``) next to exporters; ``pull`` False leaves them out (another
    process serves the scrape endpoint). ``otlp(name)`` makes the exporter an OTLP name stands
    for, instead of the SDK's. A name nothing provides, or an exporter that fails to start, is
    skipped (``unknown_exporters`` says which, once)."""
    exporters: list[Any] = []
    for name in exporter_names(signal):
        try:
            if name in OTLP_NAMES:
                exporters.append(otlp(name) if otlp is not None else otlp_exporter(signal, name))
            elif name == "console":
                exporters.append(console())
            elif name == "prometheus" and signal == "metrics":
                if pull:
                    exporters.append(prometheus_reader(default_host="localhost", strict=False))
            else:
                cls = exporter_class(signal, name)
                if cls is None:
                    log.debug("otel-gpu: no exporter %r for %s", name, signal)
                elif pull or not issubclass(cls, MetricReader):
                    exporters.append(cls())
        except Exception as err:
            _warn_once(f"OTEL_{signal.upper()}_EXPORTER: the exporter {name!r} did not start "
                       f"({err}); going on without it")
    return exporters


def metric_readers(exporters: Sequence[Any],
                   periodic: Callable[[Any], MetricReader]) -> list[MetricReader]:
    """``env_exporters("metrics", ...)``'s list as readers: pull readers as they are, each push
    exporter in ``periodic(exporter)``."""
    return [e if isinstance(e, MetricReader) else periodic(e) for e in exporters]


DEFAULT_EXPORT_INTERVAL_MS = 60_000.0  # the SDK's default for OTEL_METRIC_EXPORT_INTERVAL


def env_export_interval_ms(default_ms: float = DEFAULT_EXPORT_INTERVAL_MS) -> float:
    """``OTEL_METRIC_EXPORT_INTERVAL`` in milliseconds (``config.export_interval_ms``). A value
    that is not a positive number is logged and ``default_ms`` used, as the SDK's periodic
    reader does."""
    try:
        return config.export_interval_ms(default_ms)
    except ConfigError as err:
        _warn_once(f"{err}; using the default {default_ms:g} ms")
        return default_ms


def prometheus_reader(default_host: str = config.DEFAULT_PROMETHEUS_HOST, *,
                      strict: bool = True) -> MetricReader:
    """Our Prometheus reader (``telemetry/prometheus.py``) with its scrape endpoint started."""
    prometheus_server(default_host, strict=strict)
    return _prometheus_reader()


def prometheus_server(default_host: str = config.DEFAULT_PROMETHEUS_HOST, *,
                      strict: bool = True) -> None:
    """The scrape endpoint where ``config.prometheus_address`` says
    (``OTEL_EXPORTER_PROMETHEUS_HOST``, default ``default_host``, and
    ``OTEL_EXPORTER_PROMETHEUS_PORT``, default 9464); raises ConfigError when it cannot serve
    there. Not ``strict``: a port that is not a port is logged and the default used."""
    try:
        from prometheus_client import start_http_server
    except ImportError as err:
        raise ConfigError(
            f"the prometheus exporter needs prometheus-client ({err})"
        ) from err
    host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST") or default_host
    try:
        port = config.prometheus_address().port
    except ConfigError as err:
        if strict:
            raise
        _warn_once(f"{err}; using {config.DEFAULT_PROMETHEUS_PORT}")
        port = config.DEFAULT_PROMETHEUS_PORT
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
                exporter = otlp_exporter("metrics", strict=True,
                                         default_timeout_s=export_timeout_s)
                if tally is not None:
                    exporter = QueuedExporter(exporter, tally)
                self._push.append(exporter)
            elif name == "console":
                self._push.append(ConsoleMetricExporter())
            elif name == "prometheus":
                prometheus_server()
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
            readers.append(
                PeriodicExportingMetricReader(
                    otlp_exporter("metrics", strict=True), export_interval_millis=millis
                )
            )
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(),
                                                         export_interval_millis=millis))
        elif name == "prometheus":
            readers.append(prometheus_reader())
        elif name != "none":
            raise ConfigError(
                f"--exporter: unknown exporter {name!r} (choose from {', '.join(EXPORTERS)})"
            )
    return readers


EXEMPLAR_FILTERS: dict[str, Callable[[], ExemplarFilter]] = {
    "trace_based": TraceBasedExemplarFilter, "always_on": AlwaysOnExemplarFilter,
    "always_off": AlwaysOffExemplarFilter}


def exemplar_filter_note(environ: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with ``OTEL_METRICS_EXEMPLAR_FILTER``, if anything. The SDK's MeterProvider
    raises on a name it does not know; the specification's rule for an unrecognised enum value
    is a warning and the default (OpenTelemetry specification, "Environment Variable
    Specification", enum values)."""
    raw = (os.environ if environ is None else environ).get("OTEL_METRICS_EXEMPLAR_FILTER")
    if raw is None or raw.strip().lower() in EXEMPLAR_FILTERS:
        return None
    return (f"OTEL_METRICS_EXEMPLAR_FILTER: {raw!r} is not one of "
            f"{', '.join(EXEMPLAR_FILTERS)}; using trace_based")


def env_exemplar_filter() -> ExemplarFilter:
    """``OTEL_METRICS_EXEMPLAR_FILTER`` (default ``trace_based``); an unknown name is the
    default (``exemplar_filter_note`` says so)."""
    raw = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower()
    return EXEMPLAR_FILTERS.get(raw, TraceBasedExemplarFilter)()


def build_meter_provider(readers: Sequence[MetricReader], resource: Resource) -> MeterProvider:
    return MeterProvider(metric_readers=list(readers), resource=resource, shutdown_on_exit=False,
                         views=observable_views(), exemplar_filter=env_exemplar_filter())


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
