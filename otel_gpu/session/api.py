"""``otel_gpu.start()`` inside a training script: the agent's pipeline, the script's lifecycle.

Collection and export never run in the training loop. When the session builds its own providers,
GPU, MIG and host metrics are collected and exported by a child process
(``otel_gpu.export_process``); when the application brings its own, they go through those, read
in the metric reader's thread from sources that still run in a child process
(``otel_gpu.remote``). Either way an exporter that is slow or down costs the loop nothing.

One session per process: a second ``start()`` returns the first session, and a forked child
(a DataLoader worker) or a ``multiprocessing`` child neither starts a collector nor exports what
its parent recorded.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

from otel_gpu.collect.build import build_collector
from otel_gpu.collect.collector import Collector, SnapshotCache
from otel_gpu.insights.engine import InsightEngine, Thresholds, load_thresholds
from otel_gpu.session.child import SourceProcess
from otel_gpu.session.export_child import ExportingProcess, ExportSettings, SignalReader
from otel_gpu.session.relay import RelayMetricExporter, RelaySpanExporter
from otel_gpu.session.scope import ScopedCache, rank_devices
from otel_gpu.session.steps import StepBatch
from otel_gpu.session.tracker import TrainingTracker
from otel_gpu.snapshot import SourceError, TrainingSignals
from otel_gpu.sources.identity import detect_self
from otel_gpu.sources.nvml import NvmlSource
from otel_gpu.telemetry.insight_log import InsightLogEmitter, build_logger_provider
from otel_gpu.telemetry.instruments import register_catalog
from otel_gpu.telemetry.providers import (
    build_resource,
    env_export_interval_ms,
    env_exporters,
    get_meter,
    observable_views,
    self_resource,
)

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


# -- the session -----------------------------------------------------------------------------


class Session:
    """What ``start()`` set up; a context manager that stops it on exit."""

    def __init__(self, *, collector: Collector | None, cache: ScopedCache | None,
                 tracker: TrainingTracker, meter_provider: Any, tracer_provider: Any,
                 owns_meter_provider: bool, owns_tracer_provider: bool,
                 driver_message: str | None = None, logger_provider: Any = None,
                 owns_logger_provider: bool = False,
                 exporting: ExportingProcess | None = None) -> None:
        #: GPU, MIG and host metrics through this process's providers (``collector``), or
        #: collected and exported by a child process (``exporting``); neither in a worker.
        self.collector = collector
        self.exporting = exporting
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
        return not self.stopped and self.pid == os.getpid() and \
            (self.collector is not None or self.exporting is not None)

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
        if self.exporting is not None:
            # After our providers' last export, which is relayed through it.
            self.exporting.close()
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
    interval_ms = env_export_interval_ms(DEFAULT_EXPORT_INTERVAL_MS) \
        if export_interval_s is None else export_interval_s * 1e3
    thresholds = load_thresholds(os.environ.get("OTEL_GPU_THRESHOLDS") or None)
    for signal in ("metrics", "traces", "logs"):  # a misspelt exporter fails before anything
        env_exporters(signal, console=lambda: None, otlp=lambda: None)
    info = detect_self()
    if resource is None:
        # Detected attributes first, so that OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win.
        resource = self_resource(info).merge(build_resource(DEFAULT_SERVICE_NAME)).merge(
            Resource({"process.pid": os.getpid()}))
    simulate = simulate or os.environ.get("OTEL_GPU_SIMULATE") or None
    # NVML reports host pids: inside a container without the host pid namespace they would be
    # joined to the wrong local processes, so only the devices are reported there.
    attribution = simulate is not None or not info.in_container or bool(info.host_pid_namespace)
    if info.attribution_note:
        log.info("otel-gpu: %s", info.attribution_note)
    devices, host = rank_devices()
    signals = _SignalSource()
    exporting = None
    # GPU, MIG and host metrics leave from a child process when the providers are ours, built
    # from the environment the child inherits; the application's own providers get them here.
    if meter_provider is None and metric_exporters is None and \
            not _is_sdk_meter_provider(metrics.get_meter_provider()) and \
            not _app_logger_provider() and not _env_true("OTEL_GPU_COLLECT_IN_PROCESS"):
        settings = ExportSettings(simulate, interval_ms / 1e3, attribution,
                                  None if devices is None else tuple(devices), host,
                                  dict(resource.attributes), resource.schema_url, thresholds)
        exporting = _exporting_process(settings, signals.read)
    relay = exporting.send if exporting is not None else None

    owns_meter = owns_tracer = False
    if meter_provider is None and _is_sdk_meter_provider(metrics.get_meter_provider()):
        meter_provider = metrics.get_meter_provider()
    if meter_provider is None:
        exporters = list(metric_exporters) if metric_exporters is not None else env_exporters(
            "metrics", ConsoleMetricExporter,
            otlp=None if relay is None else lambda: RelayMetricExporter(relay))
        readers: list[MetricReader] = [_OwnerOnlyReader(e, interval_ms) for e in exporters]
        meter_provider = MeterProvider(metric_readers=readers, resource=resource,
                                       views=observable_views())
        _set_global(metrics.set_meter_provider, metrics.get_meter_provider, meter_provider)
        owns_meter = True
    if tracer_provider is None and _is_sdk_tracer_provider(trace.get_tracer_provider()):
        tracer_provider = trace.get_tracer_provider()
    if tracer_provider is None:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in env_exporters("traces", ConsoleSpanExporter,
                                      otlp=None if relay is None else
                                      lambda: RelaySpanExporter(relay)):
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        _set_global(trace.set_tracer_provider, trace.get_tracer_provider, tracer_provider)
        owns_tracer = True

    # With a collector process, the tracker's steps are recorded there, off the training thread.
    tracker = TrainingTracker(meter_provider, tracer_provider, attributes=attributes,
                              defer=exporting is not None)
    run_attributes = dict(attributes or {})
    signals.read_training = lambda: TrainingSignals(tracker.data_wait_ratio, tracker.steps,
                                                    run_attributes)
    signals.take_errors = tracker.take_errors
    if tracker.buffer is not None:
        signals.drain_steps = tracker.buffer.drain
    if exporting is not None:
        if exporting.message:
            log.warning("otel-gpu: %s; reporting host metrics only", exporting.message)
        return Session(collector=None, cache=None, tracker=tracker,
                       meter_provider=meter_provider, tracer_provider=tracer_provider,
                       owns_meter_provider=owns_meter, owns_tracer_provider=owns_tracer,
                       driver_message=exporting.message, exporting=exporting)
    try:
        return _in_process(simulate, interval_ms, attribution, thresholds, devices, host,
                           resource, signals, tracker, meter_provider, tracer_provider,
                           owns_meter, owns_tracer)
    except BaseException:
        # Nothing half-started stays behind: not our providers as the globals of a later start.
        for provider, owned in ((meter_provider, owns_meter), (tracer_provider, owns_tracer)):
            if owned:
                with contextlib.suppress(Exception):
                    provider.shutdown()
                _retired.add(provider)
        raise


class _SignalSource:
    """The tracker's signals for the insight rules and its steps not yet sent, bound once the
    tracker exists."""

    def __init__(self) -> None:
        self.read_training: Callable[[], TrainingSignals | None] = lambda: None
        self.take_errors: Callable[[], Sequence[SourceError]] = tuple
        self.drain_steps: Callable[[], StepBatch | None] = lambda: None

    def read(self) -> tuple[TrainingSignals | None, Sequence[SourceError], StepBatch | None]:
        return self.read_training(), self.take_errors(), self.drain_steps()


def _in_process(simulate: str | None, interval_ms: float, attribution: bool,
                thresholds: Thresholds, devices: Sequence[str] | None, host: bool,
                resource: Resource, signals: _SignalSource, tracker: TrainingTracker,
                meter_provider: Any, tracer_provider: Any, owns_meter: bool,
                owns_tracer: bool) -> Session:
    """GPU, MIG and host metrics through this process's providers (sources in a child)."""
    collector = _session_collector(simulate, interval_ms / 1e3, attribution, thresholds)
    message = collector.start()
    if message:
        log.warning("otel-gpu: %s; reporting host metrics only", message)
    cache = ScopedCache(SnapshotCache(collector, max_age_s=min(1.0, interval_ms / 2e3)),
                        devices, host)
    register_catalog(get_meter(meter_provider), cache)
    collector.add_error_source(tracker.take_errors)
    collector.add_training_source(signals.read_training)
    logger_provider, owns_logger = _insight_logger_provider(resource)
    if logger_provider is not None:
        collector.add_insight_listener(InsightLogEmitter(logger_provider))
    return Session(collector=collector, cache=cache, tracker=tracker,
                   meter_provider=meter_provider, tracer_provider=tracer_provider,
                   owns_meter_provider=owns_meter, owns_tracer_provider=owns_tracer,
                   driver_message=message, logger_provider=logger_provider,
                   owns_logger_provider=owns_logger)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _app_logger_provider() -> bool:
    current = _logs.get_logger_provider()
    return isinstance(current, LoggerProvider) and current not in _retired


def _exporting_process(settings: ExportSettings, read_signals: SignalReader
                       ) -> ExportingProcess | None:
    try:
        return ExportingProcess(settings, read_signals)
    except Exception as err:
        # Collection and export stay here; a bad scenario fails there with its own error.
        log.warning("otel-gpu: exporting from the training process (%s)", err)
        return None


def _insight_logger_provider(resource: Resource) -> tuple[Any, bool]:
    """Where insight log records go: the application's SDK LoggerProvider, else one built from
    ``OTEL_LOGS_EXPORTER`` (default otlp); ``(None, False)`` when that names no exporter."""
    if _app_logger_provider():
        return _logs.get_logger_provider(), False
    exporters = env_exporters("logs", ConsoleLogRecordExporter)
    if not exporters:
        return None, False
    return build_logger_provider(exporters, resource), True


def _session_collector(simulate: str | None, interval_s: float, attribution: bool,
                       thresholds: Thresholds | None = None) -> Collector:
    """The sources in a process of their own (see ``otel_gpu.remote``), unless
    ``OTEL_GPU_COLLECT_IN_PROCESS=true``; in this process when that process cannot start."""
    if not _env_true("OTEL_GPU_COLLECT_IN_PROCESS"):
        try:
            remote = SourceProcess(simulate, interval_s, attribution=attribution)
        except Exception as err:
            log.warning("otel-gpu: collecting in the training process (%s)", err)
        else:
            return Collector(NvmlSource(), None, remote=remote,
                             insights=InsightEngine(thresholds))
    return build_collector(simulate, interval_s, attribution=attribution, thresholds=thresholds)


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
