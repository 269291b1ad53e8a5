"""Training-loop signals: step time, data wait, throughput, and sampled step traces.

A step is the time from the request for a batch to the request for the next one. It has two parts:
the data wait (blocked until the batch arrives) and the compute (from the batch's arrival to the
next request). Per step the tracker records ``otel_gpu.training.step.duration``,
``otel_gpu.training.data_wait.duration``, ``otel_gpu.training.data_wait.ratio`` (data wait over
step time across the last ``ratio_window`` steps), ``otel_gpu.training.steps`` and
``otel_gpu.training.samples``.

Traces: one ``otel_gpu.training.epoch`` span per epoch, and every ``span_every``-th step (steps are
counted from 0, so the first step is always traced) an ``otel_gpu.training.step`` span under the
epoch with ``otel_gpu.training.data_wait`` and ``otel_gpu.training.compute`` children carrying the
measured start and end times. That step's measurements are recorded in the step span's context, so
the SDK's ``trace_based`` exemplar filter links them to the trace. With a ``buffer`` (every
session's tracker) the tracker only writes each step into it, and the session's collector
process or its drain thread records the measurements (see ``otel_gpu.session``).

Three ways to drive a tracker, one at a time per tracker (it is not meant to be shared between
threads or concurrent loops):

``track`` wraps an iterable::

    for batch in tracker.track(loader):
        train(batch)

``step`` and ``data_wait`` mark a loop by hand, as context managers::

    with tracker.epoch(n):
        while running:
            with tracker.step(samples=32):
                with tracker.data_wait():
                    batch = queue.get()
                train(batch)

or as call pairs: ``tracker.step()`` and ``tracker.data_wait()`` start timing when called and
return a handle whose ``end()`` stops it (``end(samples=...)`` for a step); ``tracker.epoch(n)``
returns a handle with ``end()`` as well. A handle that is never ended records nothing. Data waits
marked between two steps count towards the next step, which then starts where the first such wait
started; data waits inside a step count towards it. A step whose ``with`` block raises is not
recorded.

Recording never raises into the training loop: a failure is logged once, counted in ``errors`` and
in ``otel_gpu.collection.errors`` (``otel_gpu.source`` = ``training``). In a forked child (for
example a DataLoader worker started with fork) the tracker records nothing, so the parent's
numbers are not reported twice; ``track`` still yields every item there.
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from otel_gpu._version import __version__
from otel_gpu.session.steps import StepBuffer
from otel_gpu.snapshot import ErrorLog, SourceError
from otel_gpu.telemetry.instruments import (
    DATA_WAIT_DURATION,
    DATA_WAIT_RATIO,
    SAMPLES,
    SCOPE,
    STEP_DURATION,
    STEPS,
    TrainingInstruments,
)

__all__ = [
    "COMPUTE_SPAN",
    "DATA_WAIT_DURATION",
    "DATA_WAIT_RATIO",
    "DATA_WAIT_SPAN",
    "EPOCH_ATTRIBUTE",
    "EPOCH_SPAN",
    "SAMPLES",
    "STEPS",
    "STEP_ATTRIBUTE",
    "STEP_DURATION",
    "STEP_SPAN",
    "TrainingTracker",
    "batch_size_of",
]

T = TypeVar("T")

EPOCH_SPAN = "otel_gpu.training.epoch"
STEP_SPAN = "otel_gpu.training.step"
DATA_WAIT_SPAN = "otel_gpu.training.data_wait"
COMPUTE_SPAN = "otel_gpu.training.compute"

EPOCH_ATTRIBUTE = "otel_gpu.training.epoch"
STEP_ATTRIBUTE = "otel_gpu.training.step"

_logger = logging.getLogger(__name__)

# Read through the module so that tests can substitute a deterministic clock.
_clock = time.perf_counter_ns

# This process's id, kept current in a forked child, so that the check on every step that
# this is still the tracker's own process costs no system call.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def batch_size_of(batch: Any) -> int | None:
    """The number of samples in a batch, or None when it cannot be told.

    An array or tensor (anything with a non-empty ``shape``) gives its first dimension. A tuple,
    list or mapping whose first element is such an array, as in ``(inputs, labels)`` or a
    dictionary of tensors, gives that element's first dimension. Anything else with ``len()``
    gives its length.
    """
    try:
        shape = getattr(batch, "shape", None)
        if shape is not None:
            return int(shape[0]) if len(shape) else None
        first: Any = None
        if isinstance(batch, (tuple, list)):
            first = batch[0] if batch else None
        elif isinstance(batch, Mapping):
            first = next(iter(batch.values()), None)
        if first is not None:
            shape = getattr(first, "shape", None)
            if shape is not None and len(shape):
                return int(shape[0])
        return len(batch)
    except Exception:
        return None


# Types whose items never tell their size: asking costs two failed look-ups on every step.
_UNSIZED: set[type] = set()


def _samples_of(item: Any) -> int | None:
    kind = type(item)
    if kind in _UNSIZED:
        return None
    samples = batch_size_of(item)
    if samples is None and not hasattr(item, "__dict__") and not hasattr(kind, "shape") and \
            not hasattr(kind, "__len__") and not issubclass(kind, (tuple, list, Mapping)):
        _UNSIZED.add(kind)
    return samples


class TrainingTracker:
    """Measures a training loop's steps, data wait and samples, with sampled step traces."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        attributes: Mapping[str, str] | None = None,
        span_every: int = 100,
        ratio_window: int = 50,
        defer: bool = False,
        buffer: StepBuffer | None = None,
        error_log: ErrorLog | None = None,
    ) -> None:
        if span_every < 0:
            raise ValueError("span_every must be >= 0 (0 turns step spans off)")
        if ratio_window < 1:
            raise ValueError("ratio_window must be >= 1")
        self._pid = _pid
        self._attrs: dict[str, str] = dict(attributes or {})
        version = __version__
        if meter_provider is None:
            meter_provider = metrics.get_meter_provider()
        if tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
        self.meter_provider = meter_provider
        self._tracer = tracer_provider.get_tracer(SCOPE, version)
        #: With a ``buffer`` (``defer``: one of its own), steps are written there for another
        #: process to record (see ``otel_gpu.session``); else they are recorded on
        #: ``meter_provider``.
        if buffer is None and defer:
            buffer = StepBuffer(self._attrs)
        self.buffer = buffer
        self._instruments = None if buffer is not None else TrainingInstruments(meter_provider)
        self._error_log = error_log if error_log is not None else ErrorLog("training")

        self._span_every = span_every
        # Span timestamps are perf-counter readings shifted to the Unix epoch. The shift is taken
        # again at each epoch start, so a step of the wall clock misplaces spans for one epoch.
        self._offset = time.time_ns() - _clock()
        self._window = ratio_window
        self._win_wait = array("q", bytes(8 * ratio_window))
        self._win_step = array("q", bytes(8 * ratio_window))
        self._win_pos = 0
        self._win_wait_sum = 0
        self._win_step_sum = 0
        self._ratio: float | None = None
        self._steps = 0
        # Run totals, for the end-of-run summary.
        self._total_step = 0
        self._total_wait = 0
        self._total_samples = 0
        self._errors = 0
        self._auto_epochs = 0

        # Data waits marked by hand and not yet claimed by a step.
        self._pending_wait = 0
        self._pending_first: int | None = None
        self._pending_intervals: list[tuple[int, int]] = []

        # Parent context for step spans while an epoch span is open.
        self._epoch_ctx: otel_context.Context | None = None

    @property
    def data_wait_ratio(self) -> float | None:
        """Data wait over step time across the last ``ratio_window`` steps; None before any."""
        return self._ratio

    @property
    def steps(self) -> int:
        """Steps recorded so far by this process."""
        return self._steps

    @property
    def totals(self) -> tuple[int, int, int, int]:
        """Steps, samples, step time and data wait (ns) recorded so far by this process."""
        return self._steps, self._total_samples, self._total_step, self._total_wait

    @property
    def errors(self) -> int:
        """Failures caught in the recording path."""
        return self._errors

    def track(self, iterable: Iterable[T], *, batch_size: int | None = None) -> Iterator[T]:
        """Yield the items of ``iterable`` unchanged, recording one step per item.

        A step is recorded when the loop asks for the next item; the last one when the iterable
        is exhausted, or when the iterator is closed (a ``break`` closes it in CPython). The
        samples of a step are ``batch_size`` when given, else ``batch_size_of(item)`` (not
        recorded when None). When no epoch is open, each pass is traced as one epoch span.
        Exceptions from ``iterable`` propagate unchanged.
        """
        return self._track(iterable, batch_size)

    def step(self, samples: int | None = None) -> _StepMark:
        """Start a step now; end it with ``end()`` or use it as a context manager."""
        return _StepMark(self, samples)

    def data_wait(self) -> _WaitMark:
        """Start a data wait now; end it with ``end()`` or use it as a context manager."""
        return _WaitMark(self)

    def epoch(self, n: int) -> _EpochMark:
        """Open the span of epoch ``n``; end it with ``end()`` or use it as a context manager.

        As a context manager the epoch span is also the current span inside the block.
        """
        return _EpochMark(self, n)

    def _track(self, iterable: Iterable[T], batch_size: int | None) -> Iterator[T]:
        clock = _clock
        epoch_span = self._start_auto_epoch()
        has_open = False
        start = arrived = 0
        samples: int | None = None
        try:
            start = clock()
            iterator = iter(iterable)
            while True:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                arrived = clock()
                has_open = True
                samples = batch_size if batch_size is not None else _samples_of(item)
                yield item
                # The loop asked for the next batch: the step ends, the next one starts.
                has_open = False
                now = clock()
                if _pid == self._pid:  # _record_tracked, without a call on every step
                    self._record(start, arrived - start, now, samples, ((start, arrived),))
                # Recording time belongs to neither this step nor the next.
                start = clock()
        except GeneratorExit:
            # Closed before the end (the loop broke off): the last step ends now.
            if has_open:
                has_open = False
                self._record_tracked(start, arrived, clock(), samples)
            raise
        except Exception as exc:
            if epoch_span is not None:
                self._mark_error(epoch_span, exc)
            raise
        finally:
            if epoch_span is not None:
                self._end_auto_epoch(epoch_span)

    def _start_auto_epoch(self) -> Span | None:
        if self._epoch_ctx is not None or _pid != self._pid:
            return None
        try:
            n = self._auto_epochs
            self._auto_epochs = n + 1
            span = self._open_epoch_span(n)
            self._epoch_ctx = trace.set_span_in_context(span)
            return span
        except Exception as exc:
            self._failed(exc)
            return None

    def _open_epoch_span(self, n: int) -> Span:
        self._offset = time.time_ns() - _clock()
        return self._tracer.start_span(
            EPOCH_SPAN,
            attributes={**self._attrs, EPOCH_ATTRIBUTE: n},
            start_time=_clock() + self._offset,
        )

    def _end_auto_epoch(self, span: Span) -> None:
        try:
            self._epoch_ctx = None
            if _pid == self._pid:
                span.end(end_time=_clock() + self._offset)
        except Exception as exc:
            self._failed(exc)

    def _record_tracked(self, start: int, arrived: int, end: int, samples: int | None) -> None:
        if _pid != self._pid:
            return
        self._record(start, arrived - start, end, samples, ((start, arrived),))

    def _add_wait(self, start: int, end: int) -> None:
        if _pid != self._pid:
            return
        try:
            self._pending_wait += end - start
            if self._pending_first is None:
                self._pending_first = start
            if self._span_every and self._steps % self._span_every == 0:
                self._pending_intervals.append((start, end))
        except Exception as exc:
            self._failed(exc)

    def _record_marked(self, start: int, end: int, samples: int | None) -> None:
        if _pid != self._pid:
            return
        first = self._pending_first
        if first is not None and first < start:
            start = first
        wait = self._pending_wait
        intervals = self._pending_intervals
        self._pending_wait = 0
        self._pending_first = None
        if intervals:
            self._pending_intervals = []
        self._record(start, wait, end, samples, intervals)

    def _record(
        self,
        start: int,
        wait: int,
        end: int,
        samples: int | None,
        intervals: Iterable[tuple[int, int]],
    ) -> None:
        span: Span | None = None
        offset = self._offset
        try:
            step = end - start
            if step < 0:
                step = 0
            if wait > step:
                wait = step
            index = self._steps
            self._steps = index + 1
            self._total_step += step
            self._total_wait += wait
            if samples:
                self._total_samples += samples

            pos = self._win_pos
            self._win_wait_sum += wait - self._win_wait[pos]
            self._win_step_sum += step - self._win_step[pos]
            self._win_wait[pos] = wait
            self._win_step[pos] = step
            pos += 1
            self._win_pos = 0 if pos == self._window else pos
            ratio = self._win_wait_sum / self._win_step_sum if self._win_step_sum > 0 else 0.0
            self._ratio = ratio

            if self._span_every and index % self._span_every == 0:
                span = self._step_span(index, start, end, intervals, offset)
            buffer = self.buffer
            if buffer is not None:
                context = span.get_span_context() if span is not None else None
                buffer.add(step, wait, ratio, samples,
                           context if context is not None and context.trace_flags.sampled
                           else None)
            else:
                self._instruments.record(  # type: ignore[union-attr]
                    step, wait, ratio, samples, self._attrs,
                    None if span is None else trace.set_span_in_context(span))
        except Exception as exc:
            self._failed(exc)
        finally:
            if span is not None:
                try:
                    span.end(end_time=end + offset)
                except Exception as exc:
                    self._failed(exc)

    def _step_span(
        self, index: int, start: int, end: int, intervals: Iterable[tuple[int, int]], offset: int
    ) -> Span:
        span = self._tracer.start_span(
            STEP_SPAN,
            context=self._epoch_ctx,
            attributes={**self._attrs, STEP_ATTRIBUTE: index},
            start_time=start + offset,
        )
        if span.is_recording():
            ctx = trace.set_span_in_context(span)
            cursor = start
            for wait_start, wait_end in intervals:
                if wait_start > cursor:
                    self._child(COMPUTE_SPAN, ctx, cursor + offset, wait_start + offset)
                self._child(DATA_WAIT_SPAN, ctx, wait_start + offset, wait_end + offset)
                cursor = max(cursor, wait_end)
            if end > cursor:
                self._child(COMPUTE_SPAN, ctx, cursor + offset, end + offset)
        return span

    def _child(self, name: str, ctx: otel_context.Context, start: int, end: int) -> None:
        self._tracer.start_span(name, context=ctx, start_time=start).end(end_time=end)

    def _mark_error(self, span: Span, exc: BaseException) -> None:
        try:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        except Exception as inner:
            self._failed(inner)

    def _failed(self, exc: BaseException) -> None:
        try:
            self._errors += 1
            if self._errors == 1:
                _logger.warning("training telemetry failed; the loop goes on", exc_info=exc)
            else:
                _logger.debug("training telemetry failed", exc_info=exc)
            self._error_log.record("record", type(exc).__name__)
        except Exception:
            pass

    def take_errors(self) -> tuple[SourceError, ...]:
        """Recording failures since the last call, for ``otel_gpu.collection.errors``."""
        return self._error_log.take_errors()


class _HandMark:
    """A mark used as ``with``: ``end()`` on a clean exit, ``_abandon()`` when the block raised."""

    __slots__ = ()

    def end(self) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        self.end()

    def __enter__(self: _Mark) -> _Mark:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end()
        else:
            self._abandon()


_Mark = TypeVar("_Mark", bound=_HandMark)


class _StepMark(_HandMark):
    """One step marked by hand: started when created, recorded by ``end()``."""

    __slots__ = ("_done", "_start", "_tracker", "samples")

    def __init__(self, tracker: TrainingTracker, samples: int | None) -> None:
        self._tracker = tracker
        self.samples = samples
        self._done = False
        self._start = _clock()

    def end(self, samples: int | None = None) -> None:
        """Record the step; ``samples`` overrides the count given when it started."""
        end = _clock()
        if self._done:
            return
        self._done = True
        if samples is None:
            samples = self.samples
        self._tracker._record_marked(self._start, end, samples)

    def _abandon(self) -> None:
        self._done = True  # a step that raised is not counted


class _WaitMark(_HandMark):
    """One data wait marked by hand: started when created, counted by ``end()``."""

    __slots__ = ("_done", "_start", "_tracker")

    def __init__(self, tracker: TrainingTracker) -> None:
        self._tracker = tracker
        self._done = False
        self._start = _clock()

    def end(self) -> None:
        """Count the wait towards the open step, or the next one when none is open."""
        end = _clock()
        if self._done:
            return
        self._done = True
        self._tracker._add_wait(self._start, end)



class _EpochMark:
    """One epoch span: opened when created, ended by ``end()``."""

    __slots__ = ("_prev_ctx", "_span", "_token", "_tracker")

    def __init__(self, tracker: TrainingTracker, n: int) -> None:
        self._tracker = tracker
        self._span: Span | None = None
        self._token: object | None = None
        self._prev_ctx = tracker._epoch_ctx
        if _pid != tracker._pid:
            return
        try:
            self._span = tracker._open_epoch_span(int(n))
            tracker._epoch_ctx = trace.set_span_in_context(self._span)
        except Exception as exc:
            tracker._failed(exc)

    def end(self) -> None:
        """End the epoch span; later steps are no longer its children."""
        span, self._span = self._span, None
        if span is None:
            return
        tracker = self._tracker
        try:
            tracker._epoch_ctx = self._prev_ctx
            if _pid == tracker._pid:
                span.end(end_time=_clock() + tracker._offset)
        except Exception as exc:
            tracker._failed(exc)

    def __enter__(self) -> _EpochMark:
        if self._span is not None and self._tracker._epoch_ctx is not None:
            try:
                self._token = otel_context.attach(self._tracker._epoch_ctx)
            except Exception as exc:
                self._tracker._failed(exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                otel_context.detach(token)  # type: ignore[arg-type]
            except Exception as inner:
                self._tracker._failed(inner)
        if exc is not None and self._span is not None:
            self._tracker._mark_error(self._span, exc)
        self.end()
