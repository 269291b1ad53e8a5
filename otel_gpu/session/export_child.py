"""GPU, MIG and host metrics collected and exported by a child of the training process.

A session's own cost inside the training process is what competes with the training loop for
the interpreter: turning a Snapshot into hundreds of points and encoding them is milliseconds of
CPU every interval. When the session builds its own providers, a child process (see
``otel_gpu.remote``) does all of that with the same resource and the same ``OTEL_*`` settings,
and exports it itself. The training process keeps its spans and its training tracker, which only
writes each step into a buffer (``otel_gpu.training_metrics``). Twice per interval it sends the
child the steps written since the last time, which the child records into the training
instruments, and its training signals (data-wait ratio, steps, recorded failures) for the
insight rules: a few kilobytes through a pipe. It also hands the child its own metric and span
exports to send (``otel_gpu.relay``).

When the child dies, the training process starts a new one, waiting longer after each failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from otel_gpu.insights.engine import Thresholds
from otel_gpu.session.steps import StepBatch, merge, replay
from otel_gpu.snapshot import SourceError, TrainingSignals
from otel_gpu.telemetry.instruments import TrainingInstruments

log = logging.getLogger("otel_gpu")

CLOSE_TIMEOUT_S = 40.0
RESTART_BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 300.0)

SignalReader = Callable[[], tuple[TrainingSignals | None, Sequence[SourceError],
                                  StepBatch | None]]
Payload = tuple[TrainingSignals | None, tuple[SourceError, ...], StepBatch | None]


@dataclass(frozen=True)
class ExportSettings:
    """What the child needs beyond the environment it inherits."""

    simulate: str | None
    interval_s: float
    attribution: bool
    devices: tuple[str, ...] | None
    report_host: bool
    resource: dict[str, Any]
    schema_url: str = ""
    thresholds: Thresholds | None = None


def signal_period_s(interval_s: float) -> float:
    """How often the training process sends its signals: twice per interval, within bounds."""
    return min(max(interval_s / 2.0, 0.05), 5.0)


class ExportingProcess:
    """The child that collects and exports, and the thread that feeds it training signals."""

    def __init__(self, settings: ExportSettings, read_signals: SignalReader) -> None:
        from otel_gpu.session.child import ChildProcess

        self._spawn = lambda: ChildProcess(("export", settings))
        self._read_signals = read_signals
        self._period_s = signal_period_s(settings.interval_s)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.restarts = 0
        self.failures = 0
        # Steps drained for a child that was gone by the time they were sent.
        self._unsent: StepBatch | None = None
        self._pid = os.getpid()
        self._child = self._spawn()
        self.message = self._child.message
        self._thread = threading.Thread(target=self._pump, name="otel-gpu-signals", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.process.pid

    def send(self, kind: str, payload: Any) -> bool:
        """Hand the child a relayed export (``metrics`` or ``spans``); False when it is gone, and
        in a fork of the training process (a DataLoader worker), whose writes would interleave
        with the training process's own on the same pipe."""
        if os.getpid() != self._pid:
            return False
        with self._lock:
            child = self._child
            if child is None:
                return False
            try:
                child.conn.send((kind, payload))
            except (OSError, ValueError):
                return False
            except Exception as err:  # something in the export that does not pickle
                log.warning("otel-gpu: could not hand %s to the collector process (%s)", kind,
                            err)
                return False
            return True

    def _payload(self) -> Payload:
        unsent, self._unsent = self._unsent, None
        try:
            signals, errors, steps = self._read_signals()
            return signals, tuple(errors), merge(unsent, steps)
        except Exception as err:
            return (None, (SourceError("insights", "training_source", type(err).__name__),),
                    unsent)

    def _pump(self) -> None:
        backoff = 0
        retry_at = 0.0
        while not self._stopping.wait(self._period_s):
            if self._child is None:
                if time.monotonic() < retry_at:
                    continue
                try:
                    child = self._spawn()
                except Exception as err:
                    retry_at = time.monotonic() + _backoff_s(backoff)
                    backoff += 1
                    log.warning("otel-gpu: the collector process did not restart (%s)", err)
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        child.close(wait_s=5.0)
                        return
                    self._child = child
                self.restarts += 1
                log.warning("otel-gpu: the collector process restarted")
            with self._lock:
                child = self._child
                if self._stopping.is_set() or child is None:
                    continue
                payload = self._payload()
                try:
                    child.conn.send(("signals", payload))
                    backoff = 0
                except (OSError, ValueError) as err:
                    self._unsent = payload[2]
                    self.failures += 1
                    log.warning("otel-gpu: the collector process is gone (%s, exit status %s); "
                                "GPU and host metrics pause until it restarts", err,
                                child.process.poll())
                    child.close(wait_s=1.0)
                    self._child = None
                    retry_at = time.monotonic() + _backoff_s(backoff)
                    backoff += 1
                except Exception as err:  # e.g. run attributes that do not pickle
                    self.failures += 1
                    log.warning("otel-gpu: could not send training signals to the collector "
                                "process (%s)", err)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send the last signals; the child collects and exports once more, then exits."""
        self._stopping.set()
        self._thread.join(timeout=timeout_s)
        child = self._child
        if self._thread.is_alive() and child is not None:
            child.process.kill()  # a child that stopped reading: the blocked send fails now
            self._thread.join(timeout=5.0)
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        try:
            child.conn.send(("close", self._payload()))
            child.receive(timeout_s)
        except Exception as err:
            log.warning("otel-gpu: the collector process did not finish cleanly (%s)", err)
        child.close(wait_s=5.0)


def _backoff_s(failures: int) -> float:
    return RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]


class _RelayWorker:
    """Sends what the training process relayed, in order, from a thread of the child, so that a
    slow backend never holds up the training signals."""

    QUEUE_SIZE = 256

    def __init__(self, resource: Any, schema_url: str,
                 on_drop: Callable[[str], None] = lambda kind: None) -> None:
        from otel_gpu.telemetry.providers import env_list, otlp_exporter

        self._on_drop = on_drop
        self._resource = resource
        self._schema_url = schema_url
        self._exporters: dict[str, Any] = {}
        if "otlp" in env_list("OTEL_METRICS_EXPORTER", "otlp"):
            self._exporters["metrics"] = otlp_exporter("metrics")
        if "otlp" in env_list("OTEL_TRACES_EXPORTER", "otlp"):
            self._exporters["spans"] = otlp_exporter("traces")
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(self.QUEUE_SIZE)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="otel-gpu-relay", daemon=True)
        self._thread.start()

    def put(self, kind: str, payload: Any) -> None:
        try:
            self._queue.put_nowait((kind, payload))
        except queue.Full:
            self.dropped += 1
            self._on_drop(kind)
            if self.dropped == 1:
                log.warning("otel-gpu: the backend is not keeping up; relayed exports dropped")

    def _run(self) -> None:
        from otel_gpu.session.relay import metrics_from_wire, span_from_wire

        while (item := self._queue.get()) is not None:
            kind, payload = item
            exporter = self._exporters.get(kind)
            if exporter is None:
                continue
            try:
                if kind == "metrics":
                    exporter.export(metrics_from_wire(payload, self._resource, self._schema_url))
                else:
                    exporter.export([span_from_wire(s, self._resource) for s in payload])
            except Exception:
                log.warning("otel-gpu: relayed %s export failed", kind, exc_info=True)

    def close(self, timeout_s: float) -> None:
        """Send what is queued (within ``timeout_s``), then shut the exporters down."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout=timeout_s)
        for exporter in self._exporters.values():
            with contextlib.suppress(Exception):
                exporter.shutdown()


class _SignalBox:
    """The training signals last received, and the failures not yet taken by a cycle; the
    training process's steps go straight into the training instruments."""

    def __init__(self, instruments: TrainingInstruments | None = None) -> None:
        self._lock = threading.Lock()
        self.signals: TrainingSignals | None = None
        self._errors: list[SourceError] = []
        self.instruments = instruments
        self.dropped_steps = 0

    def put(self, payload: Any) -> None:
        signals, errors, steps = payload
        with self._lock:
            self.signals = signals if isinstance(signals, TrainingSignals) else None
            self._errors.extend(e for e in errors if isinstance(e, SourceError))
        if isinstance(steps, StepBatch):
            self._record(steps)

    def _record(self, steps: StepBatch) -> None:
        if steps.dropped:
            if not self.dropped_steps:
                log.warning("otel-gpu: the training process wrote steps faster than they were "
                            "collected; %d dropped", steps.dropped)
            self.dropped_steps += steps.dropped
            self.add_error(SourceError("training", "step_buffer", "Overflow"))
        if self.instruments is None:
            return
        try:
            replay(steps, self.instruments)
        except Exception as err:
            self.add_error(SourceError("training", "record", type(err).__name__))

    def add_error(self, error: SourceError) -> None:
        with self._lock:
            self._errors.append(error)

    def read(self) -> TrainingSignals | None:
        return self.signals

    def take_errors(self) -> Iterable[SourceError]:
        with self._lock:
            errors, self._errors = self._errors, []
        return errors


def serve_export(conn: Connection, settings: ExportSettings) -> None:
    """The child's side: collect and export on the interval until told to close or orphaned."""
    # Set by the parent so that nothing started while this interpreter came up; our own
    # providers below must be live.
    os.environ.pop("OTEL_SDK_DISABLED", None)
    from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    from otel_gpu.collect.build import build_collector
    from otel_gpu.collect.collector import SnapshotCache
    from otel_gpu.session.scope import ScopedCache
    from otel_gpu.telemetry.insight_log import InsightLogEmitter, build_logger_provider
    from otel_gpu.telemetry.instruments import register_catalog
    from otel_gpu.telemetry.providers import env_exporters, get_meter, observable_views

    box = _SignalBox()
    try:
        resource = Resource(settings.resource, settings.schema_url or None)
        collector = build_collector(settings.simulate, settings.interval_s,
                                    attribution=settings.attribution,
                                    thresholds=settings.thresholds)
        message = collector.start()
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    meter_provider = logger_provider = relay = None
    try:
        relay = _RelayWorker(resource, settings.schema_url, on_drop=lambda kind: box.add_error(
            SourceError("relay", kind, "QueueFull")))
        collector.add_training_source(box.read)
        collector.add_error_source(box.take_errors)
        log_exporters = env_exporters("logs", ConsoleLogRecordExporter)
        if log_exporters:
            logger_provider = build_logger_provider(log_exporters, resource)
            collector.add_insight_listener(InsightLogEmitter(logger_provider))
        readers = [PeriodicExportingMetricReader(e, export_interval_millis=settings.interval_s
                                                 * 1e3)
                   for e in env_exporters("metrics", ConsoleMetricExporter)]
        meter_provider = MeterProvider(metric_readers=readers, resource=resource,
                                       shutdown_on_exit=False, views=observable_views())
        cache = ScopedCache(SnapshotCache(collector, max_age_s=min(1.0, settings.interval_s / 2)),
                            settings.devices, settings.report_host)
        register_catalog(get_meter(meter_provider), cache)
        box.instruments = TrainingInstruments(meter_provider)
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        collector.close()
        return
    assert relay is not None
    conn.send(("ready", message))
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            if kind in ("metrics", "spans"):
                relay.put(kind, payload)
                continue
            if kind in ("signals", "close") and payload is not None:
                box.put(payload)
            if kind == "close":
                break
    finally:
        relay.close(timeout_s=20.0)
        for provider in (meter_provider, logger_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:
                    log.warning("otel-gpu: final export failed", exc_info=True)
        collector.close()
        with contextlib.suppress(OSError, ValueError):
            conn.send(("closed", None))
