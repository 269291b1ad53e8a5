"""Exports on their own thread: a down, slow or hung backend never holds up collection.

``QueuedExporter`` stands between a reader and the SDK's exporter. ``export()`` only appends the
batch to a bounded queue and returns; one worker thread hands the batches to the real exporter
in order. A batch the exporter fails on (after its own retries) goes back to the head of the
queue and is tried again after ``retry_wait_s``, at most ``max_attempts`` times, so that the
last cycles of an outage reach the backend on its return. When the queue is full the oldest
batch is dropped. Every failed attempt and every dropped batch is counted in the
``FailureTally`` (``otel_gpu.source`` = ``export``), which ``otel_gpu.collection.errors``
reports.

Memory is bounded by ``max_batches`` batches (one cycle's metrics each) plus the one in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from otel_gpu.telemetry.failures import FailureTally

log = logging.getLogger("otel_gpu")

EXPORT = "export"
QUEUE_FULL = "export_queue_full"  # a batch dropped unsent, oldest first: the queue was full
EXPORT_FAILED = "export_failed"  # one attempt failed (the exporter's own retries included)
ABANDONED = "export_abandoned"  # a batch dropped after max_attempts failed attempts
SHUTDOWN_TIMEOUT = "export_shutdown_timeout"  # batches still queued when shutdown ran out of time

DEFAULT_MAX_BATCHES = 32
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_WAIT_S = 1.0
DEFAULT_SHUTDOWN_S = 5.0


@dataclass
class _Entry:
    batch: MetricsData
    attempts: int = 0


class QueuedExporter(MetricExporter):
    """A bounded queue and one worker thread in front of ``exporter``."""

    def __init__(self, exporter: MetricExporter, tally: FailureTally, *,
                 max_batches: int = DEFAULT_MAX_BATCHES,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 retry_wait_s: float = DEFAULT_RETRY_WAIT_S,
                 shutdown_s: float = DEFAULT_SHUTDOWN_S) -> None:
        if max_batches < 1 or max_attempts < 1:
            raise ValueError("max_batches and max_attempts must be at least 1")
        # The reader asks its exporter for these; keep the real exporter's choice
        # (e.g. OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE).
        super().__init__(
            preferred_temporality=getattr(exporter, "_preferred_temporality", None),
            preferred_aggregation=getattr(exporter, "_preferred_aggregation", None),
        )
        self.exporter = exporter
        self._tally = tally
        self._max_batches = max_batches
        self._max_attempts = max_attempts
        self._retry_wait_s = retry_wait_s
        self._shutdown_s = shutdown_s
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="otel-gpu-export", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        """Batches queued or in flight."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        with self._cond:
            if self._closing:
                return MetricExportResult.FAILURE
            if len(self._queue) >= self._max_batches:
                self._queue.popleft()
                self._tally.add(EXPORT, QUEUE_FULL)
            self._queue.append(_Entry(metrics_data))
            self._cond.notify_all()
        return MetricExportResult.SUCCESS

    def _send(self, entry: _Entry) -> bool:
        try:
            return self.exporter.export(entry.batch) is MetricExportResult.SUCCESS
        except Exception as err:
            log.warning("metrics export failed: %s: %s", type(err).__name__, err)
            return False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                entry = self._queue.popleft()
                self._busy = True
            sent = self._send(entry)
            with self._cond:
                self._busy = False
                if not sent:
                    self._tally.add(EXPORT, EXPORT_FAILED)
                    entry.attempts += 1
                    full = len(self._queue) >= self._max_batches
                    if entry.attempts >= self._max_attempts or full or self._closing:
                        self._tally.add(EXPORT, ABANDONED)
                    else:
                        self._queue.appendleft(entry)
                self._cond.notify_all()
                if not sent and not self._closing:
                    self._cond.wait(self._retry_wait_s)  # ended early by shutdown

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Wait until every queued batch went out (or failed), at most ``timeout_millis``."""
        deadline = time.monotonic() + timeout_millis / 1000.0
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Export what is queued within ``shutdown_s`` (and ``timeout_millis``), then close the
        exporter, which ends an export still waiting on the backend."""
        limit_ms = min(timeout_millis, self._shutdown_s * 1000.0)
        self.force_flush(limit_ms)
        with self._cond:
            self._closing = True
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if left:
            self._tally.add(EXPORT, SHUTDOWN_TIMEOUT, left)
        try:
            self.exporter.shutdown(timeout_millis=limit_ms)
        finally:
            self._worker.join(timeout=1.0)


class Borrowed(MetricExporter):
    """An exporter lent to one reader: the reader's shutdown leaves it open for the next
    generation's reader (see ``MeterGenerations``); its owner closes it."""

    def __init__(self, exporter: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=getattr(exporter, "_preferred_temporality", None),
            preferred_aggregation=getattr(exporter, "_preferred_aggregation", None),
        )
        self.exporter = exporter

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        return self.exporter.export(metrics_data, timeout_millis=timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass
