"""The collector process's program: ``python -m otel_gpu.session.child_main --fd N``.

It reads its ``Task`` from the socket pair and serves one role (see ``otel_gpu.session``):
``sources`` answers each ``COLLECT`` with the sources' Snapshot; ``export`` assembles the
pipeline, records the training process's steps, derives its training signals from them, sends
its relayed exports, and exports on the interval. It ends on ``CLOSE`` or when the pipe closes
(the training process ended).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from otel_gpu.collect.build import build_collector
from otel_gpu.session.delivery import Backend, guarded_otlp
from otel_gpu.session.protocol import (
    ExportSettings,
    Kind,
    Ready,
    Role,
    SourceSettings,
    StepReport,
    StepTotals,
    Task,
)
from otel_gpu.session.recorder import RunRecorder
from otel_gpu.session.relay import metrics_from_wire, span_from_wire
from otel_gpu.session.scope import ScopedCache, rank_devices
from otel_gpu.session.steps import StepBatch, replay
from otel_gpu.snapshot import SourceError, TrainingSignals
from otel_gpu.sources.sessions import SessionBeacon

log = logging.getLogger("otel_gpu")

RELAY_CLOSE_TIMEOUT_S = 20.0


def _fail(conn: Connection, err: BaseException) -> None:
    with contextlib.suppress(OSError, ValueError):
        conn.send((Kind.ERROR, f"{type(err).__name__}: {err}"))


def serve_sources(conn: Connection, settings: SourceSettings) -> None:
    try:
        collector = build_collector(settings.simulate, settings.interval_s,
                                    attribution=settings.attribution)
        message = collector.start()
    except Exception as err:
        _fail(conn, err)
        return
    try:
        conn.send((Kind.READY, Ready(message)))
    except (OSError, ValueError):  # the training process is gone already
        collector.close()
        return
    try:
        while True:
            try:
                kind, seq = conn.recv()
            except (EOFError, OSError):
                break
            if kind is not Kind.COLLECT:
                break
            try:
                snapshot = collector.sources.read()
            except Exception as err:
                reply: tuple[Kind, Any] = (Kind.FAILED, type(err).__name__)
            else:
                reply = (Kind.SNAPSHOT, (seq, snapshot))
            try:
                conn.send(reply)
            except (OSError, ValueError):
                break
    finally:
        collector.close()


class RelayWorker:
    """Sends what the training process relayed, in order, from a thread of its own, so that a
    slow backend never holds up the training steps."""

    QUEUE_SIZE = 256

    def __init__(self, resource: Any, schema_url: str,
                 on_drop: Callable[[Kind], None] = lambda kind: None,
                 backend: Backend | None = None) -> None:
        from otel_gpu.telemetry.providers import OTLP_NAMES, exporter_names

        backend = backend if backend is not None else Backend()
        self._on_drop = on_drop
        self._resource = resource
        self._schema_url = schema_url
        self._exporters: dict[Kind, Any] = {}
        for kind, kind_signal in ((Kind.METRICS, "metrics"), (Kind.SPANS, "traces")):
            # The relay stands for the OTLP exporter the training process was asked for.
            otlp = next((n for n in exporter_names(kind_signal) if n in OTLP_NAMES), None)
            if otlp is not None:
                self._exporters[kind] = guarded_otlp(kind_signal, backend, otlp)
        self._queue: queue.Queue[tuple[Kind, Any] | None] = queue.Queue(self.QUEUE_SIZE)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="otel-gpu-relay", daemon=True)
        self._thread.start()

    def put(self, kind: Kind, payload: Any) -> None:
        try:
            self._queue.put_nowait((kind, payload))
        except queue.Full:
            self.dropped += 1
            self._on_drop(kind)
            if self.dropped == 1:
                log.warning("otel-gpu: the backend is not keeping up; relayed exports dropped")

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, payload = item
            exporter = self._exporters.get(kind)
            if exporter is None:
                continue
            try:
                if kind is Kind.METRICS:
                    exporter.export(metrics_from_wire(payload, self._resource, self._schema_url))
                else:
                    exporter.export([span_from_wire(s, self._resource) for s in payload])
            except Exception:
                log.warning("otel-gpu: relayed %s export failed", kind.value, exc_info=True)

    def close(self, timeout_s: float) -> None:
        """Send what is queued (within ``timeout_s``), then shut the exporters down."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout=timeout_s)
        for exporter in self._exporters.values():
            with contextlib.suppress(Exception):
                exporter.shutdown()


class TrainingFeed:
    """The training process's steps, recorded into the training instruments as they arrive,
    and what the insight rules read of them: the data-wait ratio of the latest step and the
    steps counted so far (those of earlier children included)."""

    def __init__(self, instruments: Any, run_attributes: dict[str, str],
                 carried: StepTotals | None = None, stand_down: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._errors: list[SourceError] = []
        self.instruments = instruments
        self._attributes = dict(run_attributes)
        self.steps = carried.steps if carried is not None else 0
        self._ratio: float | None = None
        self._dali: bool | None = None
        self._stand_down = frozenset(stand_down)
        self.dropped_steps = 0

    def put(self, report: Any) -> None:
        if not isinstance(report, StepReport):
            return
        with self._lock:
            self._errors.extend(e for e in report.errors if isinstance(e, SourceError))
            if isinstance(report.dali, bool):
                self._dali = report.dali
            if isinstance(report.stand_down, tuple):
                self._stand_down = frozenset(n for n in report.stand_down if isinstance(n, str))
        if isinstance(report.steps, StepBatch):
            self._record(report.steps)

    def _record(self, steps: StepBatch) -> None:
        if steps.dropped:
            if not self.dropped_steps:
                log.warning("otel-gpu: the training process wrote steps faster than they were "
                            "collected; %d dropped", steps.dropped)
            self.dropped_steps += steps.dropped
            self.add_error(SourceError("training", "step_buffer", "Overflow"))
        if len(steps):
            with self._lock:
                self.steps += len(steps)
                self._ratio = steps.ratio[-1]
        if self.instruments is None:
            return
        try:
            replay(steps, self.instruments)
        except Exception as err:
            self.add_error(SourceError("training", "record", type(err).__name__))

    def add_error(self, error: SourceError) -> None:
        with self._lock:
            self._errors.append(error)

    def stand_down(self) -> frozenset[str]:
        """The host metric names the training process's contrib instrumentation reports."""
        return self._stand_down

    def read(self) -> TrainingSignals:
        with self._lock:
            return TrainingSignals(self._ratio, self.steps, self._attributes, self._dali)

    def take_errors(self) -> list[SourceError]:
        with self._lock:
            errors, self._errors = self._errors, []
        return errors


def _beacon(beacon: SessionBeacon, signals: TrainingSignals) -> None:
    beacon.write(signals.steps, signals.data_wait_ratio)


def _otlp_preferences() -> tuple[dict[type, Any], dict[type, Any]]:
    """The temporality and histogram aggregation the SDK's OTLP metric exporter asks for, read
    from the environment by the exporter's own code."""
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import (
        OTLPMetricExporterMixin,
    )

    mixin = OTLPMetricExporterMixin()
    return mixin._get_temporality({}), mixin._get_aggregation({})


def serve_export(conn: Connection, settings: ExportSettings) -> None:
    """Collect and export on the interval until told to close or orphaned."""
    # Set by the parent so that nothing started while this interpreter came up; our own
    # providers below must be live.
    os.environ.pop("OTEL_SDK_DISABLED", None)
    from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    from otel_gpu.sources.identity import detect_self
    from otel_gpu.telemetry.insight_log import build_logger_provider
    from otel_gpu.telemetry.instruments import TrainingInstruments
    from otel_gpu.telemetry.node_agent import agent_running
    from otel_gpu.telemetry.pipeline import assemble_pipeline
    from otel_gpu.telemetry.providers import env_exporters, metric_readers, self_resource

    pipeline = relay = None
    try:
        # The parent's identity: a direct child shares its cgroups, user and environment.
        info = detect_self()
        resource = Resource(settings.resource, settings.schema_url or None)
        if settings.detect:
            resource = self_resource(info).merge(resource)
        # NVML reports host pids: inside a container without the host pid namespace they would
        # be joined to the wrong local processes, so only the devices are reported there.
        attribution = settings.simulate is not None or not info.in_container or \
            bool(info.host_pid_namespace)
        devices, host = rank_devices()
        collector = build_collector(settings.simulate, settings.interval_s,
                                    attribution=attribution, thresholds=settings.thresholds)
        feed = TrainingFeed(None, settings.run_attributes, settings.carried, settings.stand_down)
        recorder = RunRecorder(devices, host)
        collector.add_insight_listener(recorder)
        # For ``otel-gpu status --watch``: the training process is our parent.
        beacon = SessionBeacon(os.getppid(), str(resource.attributes.get("service.name", "")))
        collector.add_insight_listener(lambda update, snapshot: _beacon(beacon, feed.read()))
        collector.add_training_source(feed.read)
        collector.add_error_source(feed.take_errors)
        backend = Backend()  # one line on stderr, whichever export finds no collector first
        log_exporters = env_exporters("logs", ConsoleLogRecordExporter,
                                      otlp=lambda name: guarded_otlp("logs", backend, name))
        # This process serves the Prometheus scrape endpoint when there is one: it holds the
        # GPU, host and training instruments.
        readers = metric_readers(
            env_exporters("metrics", ConsoleMetricExporter,
                          otlp=lambda name: guarded_otlp("metrics", backend, name)),
            lambda e: PeriodicExportingMetricReader(
                e, export_interval_millis=settings.interval_s * 1e3))
        pipeline = assemble_pipeline(
            collector, cache_max_age_s=min(1.0, settings.interval_s / 2), resource=resource,
            readers=readers, view=lambda cache: ScopedCache(cache, devices, host),
            own_only=agent_running(),
            stand_down=feed.stand_down,
            logger_provider=build_logger_provider(log_exporters, resource)
            if log_exporters else None)
        feed.instruments = TrainingInstruments(pipeline.provider)
        feed.instruments.carry(settings.carried.steps, settings.carried.samples,
                               settings.run_attributes)
        relay = RelayWorker(resource, settings.schema_url, on_drop=lambda kind: feed.add_error(
            SourceError("relay", kind.value, "QueueFull")), backend=backend)
        temporality, aggregation = _otlp_preferences()
    except Exception as err:
        _fail(conn, err)
        if pipeline is not None:
            pipeline.shutdown()
        return
    try:
        conn.send((Kind.READY, Ready(pipeline.driver_message, dict(resource.attributes),
                                     info.attribution_note, temporality, aggregation)))
    except (OSError, ValueError):  # the training process is gone already: nothing to serve
        relay.close(timeout_s=1.0)
        pipeline.shutdown()
        return
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            if kind in (Kind.METRICS, Kind.SPANS):
                relay.put(kind, payload)
            elif kind in (Kind.STEPS, Kind.CLOSE):
                feed.put(payload)
            if kind is Kind.CLOSE:
                break
    finally:
        relay.close(timeout_s=RELAY_CLOSE_TIMEOUT_S)
        try:
            pipeline.shutdown()
        except Exception:
            log.warning("otel-gpu: final export failed", exc_info=True)
        beacon.remove()  # after the last collection, which writes it once more
        with contextlib.suppress(OSError, ValueError):
            conn.send((Kind.SUMMARY, recorder.figures()))
            conn.send((Kind.CLOSED, None))


def main(argv: list[str] | None = None) -> int:
    # In a session of its own, Ctrl-C in the training script's terminal never reaches this
    # process; it ends with the pipe, when the training process has finished with it.
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m otel_gpu.session.child_main")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    conn = Connection(args.fd)
    try:
        try:
            kind, task = conn.recv()
        except (EOFError, OSError):
            return 0
        if kind is not Kind.TASK or not isinstance(task, Task):
            _fail(conn, ValueError(f"expected a task, got {kind!r}"))
        elif task.role is Role.SOURCES and isinstance(task.settings, SourceSettings):
            serve_sources(conn, task.settings)
        elif task.role is Role.EXPORT and isinstance(task.settings, ExportSettings):
            serve_export(conn, task.settings)
        else:
            _fail(conn, ValueError(f"unknown task {task.role!r}"))
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
