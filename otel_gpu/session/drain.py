"""The in-process modes' replay of the training steps (see ``otel_gpu.session``).

When the training process's own providers hold the training instruments (the application's
providers, ``opentelemetry-instrument``, ``OTEL_GPU_COLLECT_IN_PROCESS``), the tracker still only
writes each step into its ``StepBuffer``, as in the default mode, and a thread of its own drains
the buffer twice per export interval and replays the steps into ``TrainingInstruments`` on those
providers; ``close()`` replays what is left before the providers' last export. Exemplars link
to the step spans as with direct recording (each traced step carries its span's ids).
"""

from __future__ import annotations

import logging
import threading

from otel_gpu.session.steps import StepBuffer, replay
from otel_gpu.snapshot import ErrorLog
from otel_gpu.telemetry.instruments import TrainingInstruments

log = logging.getLogger("otel_gpu")


def drain_period_s(interval_s: float) -> float:
    """Twice per interval, within bounds (as the default mode's child is fed)."""
    return min(max(interval_s / 2.0, 0.05), 5.0)


class StepDrain:
    """Replays a tracker's buffer into training instruments from a daemon thread."""

    def __init__(self, buffer: StepBuffer, instruments: TrainingInstruments, interval_s: float,
                 errors: ErrorLog) -> None:
        self._buffer = buffer
        self._instruments = instruments
        self._errors = errors
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, args=(drain_period_s(interval_s),),
                                        name="otel-gpu-steps", daemon=True)
        self._thread.start()

    def _run(self, period_s: float) -> None:
        while not self._stopping.wait(period_s):
            self.drain()

    def drain(self) -> int:
        """Replay the steps written since the last drain; how many there were."""
        with self._lock:
            try:
                batch = self._buffer.drain()
                if batch is None:
                    return 0
                if batch.dropped:
                    if not self.dropped:
                        log.warning("otel-gpu: the training loop wrote steps faster than they "
                                    "were replayed; %d dropped", batch.dropped)
                    self.dropped += batch.dropped
                    self._errors.record("step_buffer", "Overflow")
                replay(batch, self._instruments)
                return len(batch)
            except Exception as err:
                self._errors.record("record", type(err).__name__)
                return 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and replay what is left."""
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=timeout_s)
        self.drain()
