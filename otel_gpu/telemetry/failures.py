"""Failures that happen after a Snapshot is taken: values OTLP cannot carry, failed exports.

They are counted here and reported with the sources' failures in ``otel_gpu.collection.errors``,
keyed like them by ``(otel_gpu.source, error.type)``.
"""

from __future__ import annotations

import logging
import math
import threading

log = logging.getLogger("otel_gpu")

# OTLP NumberDataPoint carries ``as_int`` as sfixed64 and ``as_double`` as a double
# (opentelemetry-proto, metrics/v1/metrics.proto). A larger int makes the encoder raise for the
# whole request; a non-finite double is not a measurement.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

OUT_OF_RANGE = "value_out_of_range"
NOT_FINITE = "value_not_finite"


class FailureTally:
    """Thread-safe counts since start, by ``(source, error_type)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, source: str, error_type: str, count: int = 1) -> None:
        with self._lock:
            key = (source, error_type)
            self._counts[key] = self._counts.get(key, 0) + count

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


def value_problem(value: object) -> str | None:
    """Why OTLP cannot carry ``value`` (an error.type), or None when it can."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else OUT_OF_RANGE
    if isinstance(value, float):
        return None if math.isfinite(value) else NOT_FINITE
    return OUT_OF_RANGE


class ValueCheck:
    """Drops the values of one metric that OTLP cannot carry: each is counted and the first of
    each kind logged. The series ledger answers the common cases (a finite float, an int
    within int64) itself and asks this about the others."""

    def __init__(self, metric: str, source: str, tally: FailureTally) -> None:
        self.metric = metric
        self.source = source
        self.tally = tally

    def __call__(self, value: object) -> bool:
        """Whether ``value`` can be exported; if not, it is counted (and logged the first
        time)."""
        problem = value_problem(value)
        if problem is None:
            return True
        first = (self.source, problem) not in self.tally.counts()
        self.tally.add(self.source, problem)
        if first:
            log.warning("dropped a point of %s: %r cannot be exported (%s); "
                        "counted in otel_gpu.collection.errors", self.metric, value, problem)
        return False
