"""``otel_gpu.start()`` inside a training script: the agent's pipeline, the script's lifecycle.

Collection runs in the metric reader's own thread, never in the training loop; an exporter that
is slow or down costs the loop nothing. One session per process: a second ``start()`` returns the
first session, and a forked child (a DataLoader worker) or a ``multiprocessing`` child neither
starts a collector nor exports what its parent recorded.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

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

from otel_gpu.collector import Collector, SnapshotCache
from otel_gpu.embedded import detect_self, self_resource, visible_devices
from otel_gpu.insight_log import InsightLogEmitter, build_logger_provider
from otel_gpu.insights import Insight, TrainingSignals
from otel_gpu.pipeline import build_collector
from otel_gpu.remote import SourceProcess
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.nvml import NvmlSource
from otel_gpu.telemetry import (
    ConfigError,
    build_resource,
    get_meter,
    otlp_exporter,
    register_catalog,
)
from otel_gpu.training import TrainingTracker

T = TypeVar("T")
log = logging.getLogger("otel_gpu")

DEFAULT_SERVICE_NAME = "otel-gpu-training"
DEFAULT_EXPORT_INTERVAL_MS = 60_000.0


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


def _env_list(name: str, default: str) -> list[str]:
    raw = os.environ.get(name, default)
    return [item.strip().lower() for item in raw.split(",") if item.strip()]


def _export_interval_ms() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL")
    if raw is None:
        return DEFAULT_EXPORT_INTERVAL_MS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: {raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: {raw!r} must be positive")
    return value


def _exporters(signal: str, console: Callable[[], Any]) -> list[Any]:
    """Exporters named by ``OTEL_<SIGNAL>_EXPORTER`` (default otlp): otlp, console or none."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    exporters: list[Any] = []
    for name in _env_list(variable, "otlp"):
        if name == "otlp":
            exporters.append(otlp_exporter(signal))
        elif name == "console":
            exporters.append(console())
        elif name != "none":
            raise ConfigError(f"{variable}: {name!r} is not supported (otlp, console or none)")
    return exporters


# Providers a stopped session made and shut down; they stay the globals (the API allows setting
# them once) but must not be reused by a later session.
_retired: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_sdk_meter_provider(provider: Any) -> bool:
    return isinstance(provider, MeterProvider) and provider not in _retired


def _is_sdk_tracer_provider(provider: Any) -> bool:
    return isinstance(provider, TracerProvider) and provider not in _retired


def _set_global(setter: Any, getter: Any, provider: Any) -> None:
    current = getter()
    if isinstance(current, (MeterProvider, TracerProvider)):
        return  # already set once; the API refuses a second one
    setter(provider)


# -- which devices this process reports ------------------------------------------------------


def rank_devices(environ: Mapping[str, str] | None = None) -> tuple[list[str] | None, bool]:
    """The devices this rank reports and whether it reports the host.

    Under torchrun-style jobs (``LOCAL_RANK`` set) each rank reports its own device, the
    ``LOCAL_RANK``-th visible one, and only local rank 0 reports the host, so that every device
    and the host are reported once per node.
    """
    env = os.environ if environ is None else environ
    devices = visible_devices(env)
    local_rank = env.get("LOCAL_RANK")
    if local_rank is None or not local_rank.strip().isdigit():
        return devices, True
    rank = int(local_rank)
    if devices is None:
        return [str(rank)], rank == 0
    return (devices[rank:rank + 1] if rank < len(devices) else []), rank == 0


def scope_snapshot(snapshot: Snapshot, devices: Sequence[str] | None,
                   report_host: bool) -> Snapshot:
    """The part of a Snapshot this process reports."""
    if devices is None and report_host:
        return snapshot
    gpus = snapshot.gpus
    if devices is not None:
        wanted = set(devices)
        kept = []
        for gpu in gpus:
            if str(gpu.index) in wanted or gpu.uuid in wanted:
                kept.append(gpu)
                continue
            migs = tuple(m for m in gpu.mig_devices if m.uuid in wanted)
            if migs:
                kept.append(replace(gpu, mig_devices=migs,
                                    processes=tuple(p for m in migs for p in m.processes)))
        gpus = tuple(kept)
    kept_ids = {g.uuid for g in gpus} | {m.uuid for g in gpus for m in g.mig_devices}
    insights = tuple(i for i in snapshot.insights if _insight_in_scope(i, kept_ids, report_host))
    return replace(snapshot, gpus=gpus, host=snapshot.host if report_host else None,
                   insights=insights)


def _insight_in_scope(insight: Insight, device_ids: set[str], report_host: bool) -> bool:
    """Device insights go with their device; the others (host, containers) with the host, and
    a training run's with the process that trains."""
    device = insight.attributes.get("hw.id")
    if device is not None:
        return device in device_ids
    return report_host or (insight.rule == "input_bound" and not _is_container(insight))


def _is_container(insight: Insight) -> bool:
    return any(key.startswith(("container.", "k8s.")) for key in insight.attributes)


class _ScopedCache:
    """The SnapshotCache as this process sees it: its devices only, nothing after stop or fork."""

    def __init__(self, cache: SnapshotCache, devices: Sequence[str] | None, host: bool) -> None:
        self._cache = cache
        self._devices = devices
        self._host = host
        self._pid = os.getpid()
        self.closed = False
        self._empty: Snapshot | None = None
        self._scoped: tuple[Snapshot, Snapshot] | None = None  # (cycle's Snapshot, our part)

    def get(self) -> Snapshot:
        if self.closed or os.getpid() != self._pid:
            if self._empty is None:
                self._empty = Snapshot(cycle=-1, timestamp=0.0, driver_available=False)
            return self._empty
        base = self._cache.get()
        scoped = self._scoped
        if scoped is None or scoped[0] is not base:
            # Scoped once per cycle, not once per instrument callback.
            scoped = (base, scope_snapshot(base, self._devices, self._host))
            self._scoped = scoped
        return scoped[1]


# -- the session -----------------------------------------------------------------------------


class Session:
    """What ``start()`` set up; a context manager that stops it on exit."""

    def __init__(self, *, collector: Collector | None, cache: _ScopedCache | None,
                 tracker: TrainingTracker, meter_provider: Any, tracer_provider: Any,
                 owns_meter_provider: bool, owns_tracer_provider: bool,
                 driver_message: str | None = None, logger_provider: Any = None,
                 owns_logger_provider: bool = False) -> None:
        self.collector = collector
        self._cache = cache
        self.tracker = tracker
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self._owns_meter = owns_meter_provider
        self._owns_tracer = owns_tracer_provider
        self.driver_message = driver_message
        self.logger_provider = logger_provider
        self._owns_logger = owns_logger_provider
        self.pid = os.getpid()
        self.stopped = False

    @property
    def active(self) -> bool:
        return not self.stopped and self.pid == os.getpid() and self.collector is not None

    def track(self, iterable: Iterable[T], *, batch_size: int | None = None) -> Iterator[T]:
        return self.tracker.track(iterable, batch_size=batch_size)

    def stop(self) -> None:
        """Flush everything; shut down the providers this session made. Idempotent."""
        if self.stopped or self.pid != os.getpid():
            return
        self.stopped = True
        # A provider this session made exports one last time as it shuts down; one the
        # application owns is flushed and left running.
        for provider, owned in ((self.meter_provider, self._owns_meter),
                                (self.tracer_provider, self._owns_tracer),
                                (self.logger_provider, self._owns_logger)):
            if provider is None:
                continue
            try:
                if owned:
                    provider.shutdown()
                    _retired.add(provider)
                else:
                    provider.force_flush()
            except Exception:
                log.warning("otel-gpu: flush failed", exc_info=True)
        if self._cache is not None:
            self._cache.closed = True
        if self.collector is not None:
            self.collector.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_lock = threading.Lock()
_session: Session | None = None


def _in_worker_process() -> bool:
    """A ``multiprocessing`` child (e.g. a spawned DataLoader worker) that is not a rank."""
    return multiprocessing.parent_process() is not None and "LOCAL_RANK" not in os.environ


def start(*, simulate: str | None = None, meter_provider: Any = None,
          tracer_provider: Any = None, metric_exporters: Sequence[MetricExporter] | None = None,
          export_interval_s: float | None = None, attributes: Mapping[str, str] | None = None,
          resource: Resource | None = None) -> Session:
    """Start reporting GPUs, MIG devices, the host and the training loop; idempotent.

    Providers: the ones given, else the application's global SDK providers, else new ones built
    from the standard variables (``OTEL_METRICS_EXPORTER``, ``OTEL_TRACES_EXPORTER``,
    ``OTEL_EXPORTER_OTLP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``) and set as the globals. ``simulate`` (or ``OTEL_GPU_SIMULATE``)
    reads a simulated GPU server instead of the driver. ``metric_exporters`` replaces the
    exporters the variables would give.
    """
    global _session
    with _lock:
        if _session is not None and _session.pid == os.getpid() and not _session.stopped:
            return _session
        inherited = _session is not None and _session.pid != os.getpid()
        if inherited or _in_worker_process() or \
                os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            # A worker: its training signals (if any) go nowhere, and nothing is collected.
            return Session(collector=None, cache=None,
                           tracker=TrainingTracker(metrics.NoOpMeterProvider(),
                                                   trace.NoOpTracerProvider()),
                           meter_provider=metrics.NoOpMeterProvider(),
                           tracer_provider=trace.NoOpTracerProvider(),
                           owns_meter_provider=False, owns_tracer_provider=False)
        _session = _start(simulate, meter_provider, tracer_provider, metric_exporters,
                          export_interval_s, attributes, resource)
        return _session


def _start(simulate: str | None, meter_provider: Any, tracer_provider: Any,
           metric_exporters: Sequence[MetricExporter] | None, export_interval_s: float | None,
           attributes: Mapping[str, str] | None, resource: Resource | None) -> Session:
    interval_ms = _export_interval_ms() if export_interval_s is None else export_interval_s * 1e3
    info = detect_self()
    if resource is None:
        # Detected attributes first, so that OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win.
        resource = self_resource(info).merge(build_resource(DEFAULT_SERVICE_NAME)).merge(
            Resource({"process.pid": os.getpid()}))
    owns_meter = owns_tracer = False
    if meter_provider is None and _is_sdk_meter_provider(metrics.get_meter_provider()):
        meter_provider = metrics.get_meter_provider()
    if meter_provider is None:
        exporters = list(metric_exporters) if metric_exporters is not None \
            else _exporters("metrics", ConsoleMetricExporter)
        readers: list[MetricReader] = [_OwnerOnlyReader(e, interval_ms) for e in exporters]
        meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        _set_global(metrics.set_meter_provider, metrics.get_meter_provider, meter_provider)
        owns_meter = True
    if tracer_provider is None and _is_sdk_tracer_provider(trace.get_tracer_provider()):
        tracer_provider = trace.get_tracer_provider()
    if tracer_provider is None:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in _exporters("traces", ConsoleSpanExporter):
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        _set_global(trace.set_tracer_provider, trace.get_tracer_provider, tracer_provider)
        owns_tracer = True

    simulate = simulate or os.environ.get("OTEL_GPU_SIMULATE") or None
    # NVML reports host pids: inside a container without the host pid namespace they would be
    # joined to the wrong local processes, so only the devices are reported there.
    attribution = simulate is not None or not info.in_container or bool(info.host_pid_namespace)
    collector = _session_collector(simulate, interval_ms / 1e3, attribution)
    message = collector.start()
    if message:
        log.warning("otel-gpu: %s; reporting host metrics only", message)
    if info.attribution_note:
        log.info("otel-gpu: %s", info.attribution_note)
    devices, host = rank_devices()
    cache = _ScopedCache(SnapshotCache(collector, max_age_s=min(1.0, interval_ms / 2e3)),
                         devices, host)
    register_catalog(get_meter(meter_provider), cache)
    tracker = TrainingTracker(meter_provider, tracer_provider, attributes=attributes)
    collector.add_error_source(tracker.take_errors)
    run_attributes = dict(attributes or {})
    collector.add_training_source(
        lambda: TrainingSignals(tracker.data_wait_ratio, tracker.steps, run_attributes)
    )
    logger_provider, owns_logger = _insight_logger_provider(resource)
    if logger_provider is not None:
        collector.add_insight_listener(InsightLogEmitter(logger_provider))
    return Session(collector=collector, cache=cache, tracker=tracker,
                   meter_provider=meter_provider, tracer_provider=tracer_provider,
                   owns_meter_provider=owns_meter, owns_tracer_provider=owns_tracer,
                   driver_message=message, logger_provider=logger_provider,
                   owns_logger_provider=owns_logger)


def _insight_logger_provider(resource: Resource) -> tuple[Any, bool]:
    """Where insight log records go: the application's SDK LoggerProvider, else one built from
    ``OTEL_LOGS_EXPORTER`` (default otlp); ``(None, False)`` when that names no exporter."""
    current = _logs.get_logger_provider()
    if isinstance(current, LoggerProvider) and current not in _retired:
        return current, False
    exporters = _exporters("logs", ConsoleLogRecordExporter)
    if not exporters:
        return None, False
    return build_logger_provider(exporters, resource), True


def _session_collector(simulate: str | None, interval_s: float, attribution: bool) -> Collector:
    """The sources in a process of their own (see ``otel_gpu.remote``), unless
    ``OTEL_GPU_COLLECT_IN_PROCESS=true``; in this process when that process cannot start."""
    if os.environ.get("OTEL_GPU_COLLECT_IN_PROCESS", "").strip().lower() != "true":
        try:
            remote = SourceProcess(simulate, interval_s, attribution=attribution)
        except Exception as err:
            log.warning("otel-gpu: collecting in the training process (%s)", err)
        else:
            return Collector(NvmlSource(), None, remote=remote)
    return build_collector(simulate, interval_s, attribution=attribution)


def stop() -> None:
    """Flush and stop the session of this process, if any."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None:
        session.stop()


def session() -> Session | None:
    """The running session of this process, if any."""
    current = _session
    return current if current is not None and current.active else None


def track(iterable: Iterable[T], *, batch_size: int | None = None) -> Iterator[T]:
    """Yield the items of ``iterable``, measuring data wait against compute per step.

    Uses the running session's tracker, or one on the global providers before ``start()``.
    """
    return current_tracker().track(iterable, batch_size=batch_size)


_fallback: TrainingTracker | None = None


def current_tracker() -> TrainingTracker:
    """The running session's tracker, or one on the global providers before ``start()``."""
    current = session()
    if current is not None:
        return current.tracker
    global _fallback
    if _fallback is None or _fallback._pid != os.getpid() or _fallback_retired():
        meter_provider = metrics.get_meter_provider()
        tracer_provider = trace.get_tracer_provider()
        if meter_provider in _retired:
            meter_provider = metrics.NoOpMeterProvider()
        if tracer_provider in _retired:
            tracer_provider = trace.NoOpTracerProvider()
        _fallback = TrainingTracker(meter_provider, tracer_provider)
    return _fallback


def _fallback_retired() -> bool:
    return _fallback is not None and _fallback.meter_provider in _retired
