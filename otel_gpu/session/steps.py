"""The training loop's metric instruments, recorded directly or deferred through a step buffer.

Recording one step through the SDK's synchronous instruments costs five ``record``/``add`` calls,
each a few microseconds with warm caches and tens of microseconds right after a long step has
evicted the SDK's code and data, all of it on the training thread. So in a session the training
thread only writes each step into a ``StepBuffer`` (preallocated arrays, so a step allocates
nothing that outlives it), and the buffer is drained twice per export interval. When a
collector process exports the GPU metrics (see ``otel_gpu.session``), the session sends the
``StepBatch`` through the pipe, and that process replays it into ``TrainingInstruments`` on its
own MeterProvider, which exports with the training process's resource; on the training
process's own providers a drain thread replays it there (``drain``).

What differs from direct recording: a point's and an exemplar's timestamps are those of the
replay, up to half an export interval after the step; everything else (names, values,
attributes, the trace and span ids of exemplars) is the same.
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_gpu.telemetry.instruments import TrainingInstruments

# Steps a buffer holds between two drains: at two drains a second, enough for 32 768 steps a
# second; beyond that the oldest are dropped and counted.
BUFFER_CAPACITY = 1 << 14


@dataclass(frozen=True)
class StepBatch:
    """The steps written to a buffer between two drains, in order; picklable."""

    attributes: dict[str, str]
    step_ns: array  # type: ignore[type-arg]
    wait_ns: array  # type: ignore[type-arg]
    ratio: array  # type: ignore[type-arg]
    samples: array  # type: ignore[type-arg]  # 0 where the step's samples are not known
    #: (index in this batch, trace id, span id) of each step that has a step span
    traced: tuple[tuple[int, int, int], ...]
    #: steps overwritten before a drain reached them
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.step_ns)


def merge(first: StepBatch | None, then: StepBatch | None,
          limit: int = BUFFER_CAPACITY) -> StepBatch | None:
    """``first``'s steps followed by ``then``'s, at most the ``limit`` newest (the others are
    counted as dropped): for steps that could not be sent and go with the next batch."""
    if first is None or then is None:
        return then if first is None else first
    offset = len(first)
    traced = first.traced + tuple((i + offset, t, s) for i, t, s in then.traced)
    columns = [a + b for a, b in ((first.step_ns, then.step_ns), (first.wait_ns, then.wait_ns),
                                  (first.ratio, then.ratio), (first.samples, then.samples))]
    excess = max(0, len(columns[0]) - limit)
    if excess:
        columns = [column[excess:] for column in columns]
        traced = tuple((i - excess, t, s) for i, t, s in traced if i >= excess)
    return StepBatch(then.attributes, *columns, traced=traced,
                     dropped=first.dropped + then.dropped + excess)


class StepBuffer:
    """A ring of the steps not yet drained, written by the training thread and drained by
    another.

    ``add`` is the only method on the training thread's path: it stores a step's values into
    preallocated arrays and publishes it by advancing the write count, which ``drain`` reads
    first, so a drain never sees a half-written step. Drains are serialized by a lock that
    ``add`` never takes.
    """

    def __init__(self, attributes: Mapping[str, str] | None = None,
                 capacity: int = BUFFER_CAPACITY) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two")
        self.attributes = dict(attributes or {})
        self._mask = capacity - 1
        self._capacity = capacity
        self._step = array("q", bytes(8 * capacity))
        self._wait = array("q", bytes(8 * capacity))
        self._ratio = array("d", bytes(8 * capacity))
        self._samples = array("q", bytes(8 * capacity))
        # At most one entry per step the ring holds: older ones would be dropped anyway.
        self._traced: deque[tuple[int, int, int]] = deque(maxlen=capacity)
        self._written = 0
        self._drained = 0
        self._drain_lock = threading.Lock()
        self.dropped = 0

    def add(self, step_ns: int, wait_ns: int, ratio: float, samples: int | None,
            span_context: SpanContext | None) -> None:
        """Write one step (the training thread only)."""
        n = self._written
        pos = n & self._mask
        self._step[pos] = step_ns
        self._wait[pos] = wait_ns
        self._ratio[pos] = ratio
        self._samples[pos] = samples or 0
        if span_context is not None:
            self._traced.append((n, span_context.trace_id, span_context.span_id))
        self._written = n + 1

    def drain(self) -> StepBatch | None:
        """The steps written since the last drain, oldest first; None when there are none."""
        with self._drain_lock:
            end = self._written
            start = self._drained
            if end == start:
                return None
            start = max(start, end - self._capacity)
            columns = [self._copy(column, start, end)
                       for column in (self._step, self._wait, self._ratio, self._samples)]
            # Steps written while copying may have overwritten the oldest copied ones.
            overwritten = self._written - self._capacity - start
            if overwritten > 0:
                columns = [column[overwritten:] for column in columns]
                start += overwritten
            dropped = start - self._drained
            self._drained = end
            traced = []
            while self._traced and self._traced[0][0] < end:
                index, trace_id, span_id = self._traced.popleft()
                if index >= start:
                    traced.append((index - start, trace_id, span_id))
            self.dropped += dropped
            return StepBatch(dict(self.attributes), *columns, traced=tuple(traced),
                             dropped=dropped)

    def _copy(self, column: array, start: int, end: int) -> array:  # type: ignore[type-arg]
        first, last = start & self._mask, end & self._mask
        if end - start == self._capacity or last <= first:
            return column[first:] + column[:last]
        return column[first:last]


def replay(batch: StepBatch, instruments: TrainingInstruments) -> None:
    """Record a drained batch, step by step, as the training thread would have."""
    contexts = {index: trace.set_span_in_context(NonRecordingSpan(SpanContext(
        trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        for index, trace_id, span_id in batch.traced}
    attributes = batch.attributes
    for k, (step_ns, wait_ns, ratio, samples) in enumerate(zip(
            batch.step_ns, batch.wait_ns, batch.ratio, batch.samples, strict=True)):
        instruments.record(step_ns, wait_ns, ratio, samples or None, attributes,
                           contexts.get(k))


def dali_loaded() -> bool:
    """Whether NVIDIA DALI's Python package is imported in this process (a dict lookup: cheap
    enough for every report)."""
    return "nvidia.dali" in sys.modules
