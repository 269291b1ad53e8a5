"""The training process's handle on its collector process (see ``otel_gpu.session``).

``CollectorChild`` spawns ``python -m otel_gpu.session.child_main``, hands it its ``Task`` and
waits for ``READY``; then it sends, and, in the sources role, asks for Snapshots. Whatever the
role, a child found dead is started again after a back-off of 1 s, 5 s, 30 s, 2 min, then every
5 min, counted in ``failures`` and ``restarts``. With a ``feed`` (the export role), a thread
sends the feed's ``StepReport`` twice per interval and restarts the child when it is due.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from otel_gpu.session.protocol import (
    ExportSettings,
    Kind,
    Message,
    Ready,
    RunFigures,
    StepReport,
    StepTotals,
    Task,
)
from otel_gpu.session.steps import StepBatch, merge
from otel_gpu.snapshot import Snapshot, SourceError

log = logging.getLogger("otel_gpu")

READY_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 40.0
SNAPSHOT_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 300.0)

Feed = Callable[[], StepReport]


class ChildError(RuntimeError):
    """The collector process could not start, or failed to answer."""


def child_environment() -> dict[str, str]:
    """Ours, with the SDK and auto-instrumentation off while the child starts, so that an
    ``opentelemetry-instrument`` wrapper around the training script starts no session there."""
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "OTEL_GPU_CHILD": "1",
           "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "*"}
    env.pop("OTEL_GPU_SIMULATE", None)
    return env


def signal_period_s(interval_s: float) -> float:
    """How often the feed is sent: twice per interval, within bounds."""
    return min(max(interval_s / 2.0, 0.05), 5.0)


def backoff_s(failures: int) -> float:
    return RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]


class _Process:
    """One running child: the process and our end of its socket pair."""

    def __init__(self, task: Task, ready_timeout_s: float) -> None:
        parent, child = socket.socketpair()
        command = [sys.executable, "-m", "otel_gpu.session.child_main",
                   "--fd", str(child.fileno())]
        try:
            # Its own session: a Ctrl-C meant for the training script is not its to handle.
            self.process = subprocess.Popen(command, pass_fds=(child.fileno(),),
                                            env=child_environment(), stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        try:
            self.conn.send((Kind.TASK, task))
            kind, payload = self.receive(ready_timeout_s)
        except BaseException:
            self.close(wait_s=1.0)
            raise
        if kind is not Kind.READY or not isinstance(payload, Ready):
            self.close(wait_s=1.0)
            raise ChildError(payload)
        self.ready: Ready = payload

    def receive(self, timeout_s: float) -> Message:
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"the collector process did not answer in {timeout_s:g} s")
        return self.conn.recv()

    def close(self, wait_s: float = 10.0) -> None:
        """Ask the child to finish, give it ``wait_s`` to do so, then kill it."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send((Kind.CLOSE, None))
        self.conn.close()
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CollectorChild:
    """A collector process for either role, restarted with back-off when it dies.

    Raises ``ChildError`` (or ``OSError``, ``TimeoutError``) when the first child does not start:
    the session then chooses its next mode.
    """

    def __init__(self, task: Task, *, feed: Feed | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self._task = task
        self._ready_timeout_s = ready_timeout_s
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.restarts = 0
        self.failures = 0
        self._backoff = 0
        self._retry_at = 0.0
        self._seq = 0
        self._feed = feed
        # Steps taken from the feed for a child that was gone by the time they were sent.
        self._unsent: StepBatch | None = None
        self._totals = StepTotals()
        #: the export child's figures for the end-of-run summary, once it has closed
        self.figures: RunFigures | None = None
        self._current: _Process | None = _Process(task, ready_timeout_s)
        self._closing: _Process | None = None  # the child ``close`` waits for
        self.ready = self._current.ready
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if feed is not None:
            interval = task.settings.interval_s
            self._thread = threading.Thread(target=self._pump, args=(signal_period_s(interval),),
                                            name="otel-gpu-signals", daemon=True)
            self._thread.start()

    @property
    def message(self) -> str | None:
        return self.ready.message

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        current = self._current
        return None if current is None else current.process

    # -- restarts ----------------------------------------------------------------------------

    def _lost(self, current: _Process, why: BaseException) -> None:
        """Note a dead child (the lock held); it is started again once its back-off has passed."""
        self.failures += 1
        log.warning("otel-gpu: the collector process is gone (%s, exit status %s); "
                    "GPU and host metrics pause until it restarts", str(why) or type(why).__name__,
                    current.process.poll())
        current.close(wait_s=1.0)
        self._current = None
        self._retry_at = time.monotonic() + backoff_s(self._backoff)
        self._backoff += 1

    def _ensure(self) -> _Process | None:
        """The running child, started again if it is gone and its back-off has passed (the lock
        held)."""
        if self._current is not None or self._stopping.is_set():
            return self._current
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._current = _Process(self._successor_task(), self._ready_timeout_s)
        except Exception as err:
            self._retry_at = time.monotonic() + backoff_s(self._backoff)
            self._backoff += 1
            log.warning("otel-gpu: the collector process did not restart (%s)", err)
            return None
        self.restarts += 1
        log.warning("otel-gpu: the collector process restarted")
        return self._current

    def _last_successor(self) -> None:
        """A child gone at ``close``, its back-off not over: one more, for the last steps."""
        try:
            self._current = _Process(self._successor_task(), self._ready_timeout_s)
        except Exception as err:
            log.warning("otel-gpu: the last training steps were not exported (%s)", err)

    def _successor_task(self) -> Task:
        settings = self._task.settings
        if isinstance(settings, ExportSettings):
            return replace(self._task, settings=replace(settings, carried=self._totals))
        return self._task

    # -- sending -----------------------------------------------------------------------------

    def send(self, kind: Kind, payload: Any) -> bool:
        """Hand the child one message; False when it is gone, and in a fork of the training
        process (a DataLoader worker), whose writes would interleave with ours on the pipe."""
        if os.getpid() != self._pid:
            return False
        with self._lock:
            current = self._current
            if current is None:
                return False
            try:
                current.conn.send((kind, payload))
            except (OSError, ValueError) as err:
                self._lost(current, err)
                return False
            except Exception as err:  # something in the payload that does not pickle
                log.warning("otel-gpu: could not hand %s to the collector process (%s)",
                            kind.value, err)
                return False
            return True

    def read_snapshot(self, timeout_s: float = SNAPSHOT_TIMEOUT_S) -> Snapshot:
        """The sources role: one Snapshot of the child's sources. Raises ``ChildError`` while
        the child is gone (it restarts after its back-off)."""
        with self._lock:
            current = self._ensure()
            if current is None:
                raise ChildError("the collector process is restarting")
            self._seq += 1
            try:
                current.conn.send((Kind.COLLECT, self._seq))
                while True:
                    kind, payload = current.receive(timeout_s)
                    if kind is Kind.SNAPSHOT and payload[0] == self._seq:
                        self._backoff = 0
                        return payload[1]
                    if kind is Kind.FAILED:
                        raise ChildError(payload)
            except (OSError, EOFError, TimeoutError) as err:
                self._lost(current, err)
                raise ChildError(str(err) or type(err).__name__) from err

    def _report(self) -> StepReport:
        """The feed's report with the steps a lost child never got in front (the lock held)."""
        assert self._feed is not None
        unsent, self._unsent = self._unsent, None
        try:
            report = self._feed()
        except Exception as err:
            return StepReport(unsent, (SourceError("training", "feed", type(err).__name__),))
        return replace(report, steps=merge(unsent, report.steps))

    def _deliver(self, kind: Kind, current: _Process, report: StepReport) -> bool:
        """Send a report; a lost child keeps its steps for its successor (the lock held)."""
        try:
            current.conn.send((kind, report))
        except (OSError, ValueError) as err:
            self._unsent = report.steps
            self._lost(current, err)
            return False
        except Exception as err:  # e.g. run attributes that do not pickle
            self.failures += 1
            log.warning("otel-gpu: could not send training steps to the collector process (%s)",
                        err)
            return False
        self._backoff = 0
        if report.steps is not None:
            self._totals = StepTotals(self._totals.steps + len(report.steps),
                                      self._totals.samples + sum(report.steps.samples))
        return True

    def _pump(self, period_s: float) -> None:
        while not self._stopping.wait(period_s):
            with self._lock:
                current = self._ensure()
                if current is not None and not self._stopping.is_set():
                    self._deliver(Kind.STEPS, current, self._report())

    def kill(self) -> None:
        """End the child now, without its last export."""
        self._stopping.set()
        current, self._current = self._current, None
        for process in (current, self._closing):
            if process is not None:
                with contextlib.suppress(OSError):
                    process.process.kill()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send the last report; the child collects and exports once more, then exits. A
        Ctrl-C meanwhile gives up that export: the child is killed, the KeyboardInterrupt goes
        on."""
        try:
            self._close(timeout_s)
        except KeyboardInterrupt:
            self.kill()
            raise
        finally:
            self._closing = None

    def _close(self, timeout_s: float) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            current = self._current
            if self._thread.is_alive() and current is not None:
                current.process.kill()  # a child that stopped reading: the blocked send fails
                self._thread.join(timeout=5.0)
        with self._lock:
            if self._feed is None:
                current, self._current = self._current, None
                if current is not None:
                    current.close(wait_s=5.0)
                return
            report = self._report()
            for _ in range(2):  # the child, else one successor when it is found gone
                if self._current is None:
                    self._last_successor()
                current = self._current
                if current is None:
                    return
                try:
                    current.conn.send((Kind.CLOSE, report))
                except (OSError, ValueError) as err:
                    self._lost(current, err)
                    continue
                except Exception as err:  # e.g. run attributes that do not pickle
                    log.warning("otel-gpu: could not send the last training steps (%s)", err)
                    with contextlib.suppress(OSError, ValueError):
                        current.conn.send((Kind.CLOSE, None))
                self._current, self._closing = None, current
                try:
                    kind, payload = current.receive(timeout_s)
                    if kind is Kind.SUMMARY:
                        self.figures = payload if isinstance(payload, RunFigures) else None
                        current.receive(timeout_s)  # CLOSED
                except Exception as err:
                    log.warning("otel-gpu: the collector process did not finish cleanly (%s)",
                                err)
                current.close(wait_s=5.0)
                return
