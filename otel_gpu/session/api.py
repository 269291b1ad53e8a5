"""``otel_gpu.start()`` and ``stop()``: the mode chosen once, the session, its lifecycle.

How the work is shared between the training process and its collector process is told in
``otel_gpu.session``. One session per process: a second ``start()`` returns the first session,
and a forked child (a DataLoader worker) or a ``multiprocessing`` child neither starts a
collector nor exports what its parent recorded.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource

from otel_gpu.config import (
    collect_in_process,
    env_flag,
    export_from,
    simulated_scenario,
    thresholds_file,
)
from otel_gpu.insights.thresholds_file import load_thresholds
from otel_gpu.session.child import ChildError, CollectorChild
from otel_gpu.session.modes import FALLBACK_NOTES, Mode, Request, choose_mode
from otel_gpu.session.protocol import ExportSettings, Role, StepReport, Task
from otel_gpu.session.providers import app_meter_provider, retired, session_providers
from otel_gpu.session.relay import RelayMetricExporter, RelaySpanExporter
from otel_gpu.session.steps import StepBuffer, dali_loaded
from otel_gpu.session.summary import LoopFigures, render, summary_enabled
from otel_gpu.session.tracker import TrainingTracker
from otel_gpu.snapshot import ErrorLog
from otel_gpu.telemetry.providers import (
    DEFAULT_EXPORT_INTERVAL_MS,
    build_resource,
    env_export_interval_ms,
    exemplar_filter_note,
    unknown_exporters,
)
from otel_gpu.telemetry.system_metrics import StandDown

T = TypeVar("T")
log = logging.getLogger("otel_gpu")

DEFAULT_SERVICE_NAME = "otel-gpu-training"


class Session:
    """What ``start()`` set up; a context manager that stops it on exit."""

    def __init__(self, *, tracker: TrainingTracker, meter_provider: Any, tracer_provider: Any,
                 owns_meter_provider: bool = False, owns_tracer_provider: bool = False,
                 mode: Mode | None = None, driver_message: str | None = None,
                 child: CollectorChild | None = None, pipeline: Any = None,
                 view: Any = None, recorder: Any = None, drain: Any = None,
                 beacon: Any = None,
                 summary: bool = False) -> None:
        self.mode = mode
        #: the export role's collector process (``Mode.EXPORT_CHILD``)
        self.child = child
        #: collection through this process's providers (the other modes)
        self.pipeline = pipeline
        self._view = view
        self._recorder = recorder
        #: replays the tracker's steps into the instruments (the in-process modes)
        self._drain = drain
        self._beacon = beacon  # this session's file for ``otel-gpu status --watch``
        #: write the end-of-run summary on stderr at ``stop()`` (``OTEL_GPU_SUMMARY``)
        self.summary = summary
        self.tracker = tracker
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self._owns_meter = owns_meter_provider
        self._owns_tracer = owns_tracer_provider
        self.driver_message = driver_message
        self.pid = os.getpid()
        self.stopped = False

    @property
    def collector(self) -> Any:
        return None if self.pipeline is None else self.pipeline.collector

    @property
    def logger_provider(self) -> Any:
        return None if self.pipeline is None else self.pipeline.logger_provider

    @property
    def active(self) -> bool:
        return not self.stopped and self.pid == os.getpid() and \
            (self.pipeline is not None or self.child is not None)

    def track(self, iterable: Iterable[T], *, batch_size: int | None = None) -> Iterator[T]:
        return self.tracker.track(iterable, batch_size=batch_size)

    def stop(self) -> None:
        """Flush everything; shut down the providers this session made. Idempotent."""
        if self.stopped or self.pid != os.getpid():
            return
        self.stopped = True
        try:
            self._flush()
        except KeyboardInterrupt:
            # A Ctrl-C while flushing gives up the last export; nothing of ours stays behind,
            # and the interrupt goes on without the frames it came through.
            if self.child is not None:
                self.child.kill()
            if self._beacon is not None:
                self._beacon.remove()
            raise KeyboardInterrupt from None
        if self.summary:
            self._write_summary()

    def _flush(self) -> None:
        if self._drain is not None:
            self._drain.close()  # the last steps, before the providers' last export
        # A provider this session made exports one last time as it shuts down; one the
        # application owns is flushed and left running.
        for provider, owned in ((self.meter_provider, self._owns_meter),
                                (self.tracer_provider, self._owns_tracer)):
            try:
                if owned:
                    provider.shutdown()
                    retired.add(provider)
                else:
                    provider.force_flush()
            except Exception:
                log.warning("otel-gpu: flush failed", exc_info=True)
        if self.child is not None:
            # After our providers' last export, which is relayed through it.
            self.child.close()
        if self._view is not None:
            self._view.closed = True
        if self.pipeline is not None:
            try:
                self.pipeline.shutdown(done=(self.meter_provider,))
            except Exception:
                log.warning("otel-gpu: flush failed", exc_info=True)
            if self.pipeline.owns_logger_provider and self.pipeline.logger_provider is not None:
                retired.add(self.pipeline.logger_provider)
        if self._beacon is not None:
            self._beacon.remove()

    def _write_summary(self) -> None:
        try:
            steps, samples, step_ns, wait_ns = self.tracker.totals
            figures = self.child.figures if self.child is not None else \
                self._recorder.figures() if self._recorder is not None else None
            lines = render(LoopFigures(steps, samples, step_ns / 1e9, wait_ns / 1e9), figures)
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
        except Exception:
            log.debug("otel-gpu: no run summary", exc_info=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        except KeyboardInterrupt:
            if exc_type is None:
                raise
            # A second Ctrl-C while stopping: the first one, in flight, is the one to report.


_lock = threading.Lock()
_session: Session | None = None


def _in_worker_process() -> bool:
    """A ``multiprocessing`` child (e.g. a spawned DataLoader worker) that is not a rank."""
    return multiprocessing.parent_process() is not None and "LOCAL_RANK" not in os.environ


def _worker_session() -> Session:
    """A worker's: its training signals (if any) go nowhere, and nothing is collected."""
    return Session(tracker=TrainingTracker(metrics.NoOpMeterProvider(),
                                           trace.NoOpTracerProvider()),
                   meter_provider=metrics.NoOpMeterProvider(),
                   tracer_provider=trace.NoOpTracerProvider())


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
                env_flag("OTEL_SDK_DISABLED"):
            return _worker_session()
        request = _request(simulate, meter_provider, tracer_provider, metric_exporters,
                           export_interval_s, attributes, resource)
        request, mirrored = _mirrored(request)
        _session = _start(request, choose_mode(meter_provider=meter_provider,
                                               metric_exporters=metric_exporters,
                                               mirrored=mirrored))
        _stop_at_exit.register()
        return _session


def _request(simulate: str | None, meter_provider: Any, tracer_provider: Any,
             metric_exporters: Sequence[MetricExporter] | None, export_interval_s: float | None,
             attributes: Mapping[str, str] | None, resource: Resource | None) -> Request:
    interval_ms = env_export_interval_ms(DEFAULT_EXPORT_INTERVAL_MS) \
        if export_interval_s is None else export_interval_s * 1e3
    thresholds = load_thresholds(thresholds_file())
    export_from()  # refused here, naming the variable, before anything starts
    # Said once here; the collector process skips them too.
    for note in [*unknown_exporters(), exemplar_filter_note()]:
        if note:
            log.warning("otel-gpu: %s", note)
    detect = resource is None
    if resource is None:
        resource = build_resource(DEFAULT_SERVICE_NAME).merge(
            Resource({"process.pid": os.getpid()}))
    return Request(simulate or simulated_scenario(), interval_ms,
                   thresholds, resource, detect, dict(attributes or {}), meter_provider,
                   tracer_provider, metric_exporters, summary=summary_enabled())


def _mirrored(request: Request) -> tuple[Request, bool]:
    """The request as the collector process exports it when the application's MeterProvider
    is mirrored there (``otel_gpu.session.mirror``): its resource as it is, its interval."""
    if request.metric_exporters is not None or collect_in_process():
        return request, False
    provider = request.meter_provider if request.meter_provider is not None \
        else app_meter_provider()
    if provider is None:
        return request, False
    from otel_gpu.session.mirror import mirror_of

    mirror = mirror_of(provider)
    if mirror is None:
        return request, False
    log.info("otel-gpu: the application's MeterProvider exports over OTLP as the environment "
             "says; GPU, MIG, host and training metrics go out from the collector process "
             "under its resource (OTEL_GPU_EXPORT_FROM=application keeps them here)")
    return replace(request, base_resource=mirror.resource, detect=False,
                   interval_ms=mirror.interval_ms, meter_provider=provider,
                   stand_down=mirror.stand_down), True


def _start(request: Request, modes: list[Mode]) -> Session:
    for mode in modes:
        try:
            if mode is Mode.EXPORT_CHILD:
                return _start_export_child(request)
            from otel_gpu.session.in_process import start_in_process

            started = start_in_process(request, child=mode is Mode.SOURCES_CHILD)
            return Session(tracker=started.tracker, meter_provider=started.providers.meter,
                           tracer_provider=started.providers.tracer,
                           owns_meter_provider=started.providers.owns_meter,
                           owns_tracer_provider=started.providers.owns_tracer, mode=mode,
                           driver_message=started.pipeline.driver_message,
                           pipeline=started.pipeline, view=started.view,
                           recorder=started.recorder, drain=started.drain,
                           beacon=started.beacon,
                           summary=request.summary)
        except (ChildError, OSError, TimeoutError) as err:
            if mode not in FALLBACK_NOTES:
                raise
            # A bad scenario fails in the next mode with its own error.
            log.warning("otel-gpu: %s (%s)", FALLBACK_NOTES[mode], err)
    raise AssertionError("the last mode has no fallback")  # pragma: no cover


def _start_export_child(request: Request) -> Session:
    """``Mode.EXPORT_CHILD``: the child first, whose relays become our OTLP exporters; the
    tracker's buffer and error log exist before it, and it reads them twice per interval."""
    buffer = StepBuffer(request.attributes)
    errors = ErrorLog("training")
    # The contrib system-metrics instrumentation may instrument this process after start():
    # the child hears of it with every report.
    stand_down = StandDown()
    base = request.base_resource
    settings = ExportSettings(request.simulate, request.interval_ms / 1e3,
                              dict(base.attributes), base.schema_url or "", request.detect,
                              request.thresholds, request.attributes,
                              stand_down=tuple(sorted(request.stand_down)))
    child = CollectorChild(Task(Role.EXPORT, settings),
                           feed=lambda: StepReport(buffer.drain(), errors.take_errors(),
                                                   dali_loaded(), tuple(sorted(stand_down()))))
    ready = child.ready
    if ready.note:
        log.info("otel-gpu: %s", ready.note)
    resource = Resource(ready.resource, base.schema_url or None) \
        if request.detect and ready.resource is not None else base
    try:
        providers = session_providers(
            request.meter_provider, request.tracer_provider, request.metric_exporters,
            request.interval_ms, resource,
            otlp_metrics=lambda name: RelayMetricExporter(child.send, ready.temporality,
                                                     ready.aggregation),
            otlp_spans=lambda name: RelaySpanExporter(child.send), pull=False)
    except BaseException:
        child.close(timeout_s=5.0)
        raise
    tracker = TrainingTracker(providers.meter, providers.tracer, attributes=request.attributes,
                              buffer=buffer, error_log=errors)
    if child.message:
        log.warning("otel-gpu: %s; reporting host metrics only", child.message)
    return Session(tracker=tracker, meter_provider=providers.meter,
                   tracer_provider=providers.tracer, owns_meter_provider=providers.owns_meter,
                   owns_tracer_provider=providers.owns_tracer, mode=Mode.EXPORT_CHILD,
                   driver_message=child.message, child=child, summary=request.summary)


def stop() -> None:
    """Flush and stop the session of this process, if any."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None:
        session.stop()


class _AtExit:
    """``stop()`` when the interpreter exits, for a script that never calls it: every step
    written is exported. Registered once per process, after the session's providers, so that
    it runs before their own exit handlers."""

    def __init__(self) -> None:
        self._pid: int | None = None

    def register(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            atexit.register(self._run)

    def _run(self) -> None:
        current = _session
        try:
            stop()
        except KeyboardInterrupt:  # a second Ctrl-C while flushing: give up quietly
            if current is not None and current.child is not None:
                current.child.kill()


_stop_at_exit = _AtExit()


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
        if meter_provider in retired:
            meter_provider = metrics.NoOpMeterProvider()
        if tracer_provider in retired:
            tracer_provider = trace.NoOpTracerProvider()
        _fallback = TrainingTracker(meter_provider, tracer_provider)
    return _fallback


def _fallback_retired() -> bool:
    return _fallback is not None and _fallback.meter_provider in retired

