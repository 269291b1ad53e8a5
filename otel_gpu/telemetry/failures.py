"""Failures that happen after a Snapshot is taken: values OTLP cannot carry, failed exports.

They are counted here and reported with the sources' failures in ``otel_gpu.collection.errors``,
keyed like them by ``(otel_gpu.source, error.type)``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Iterator

from otel_gpu.snapshot import Attributes

log = logging.getLogger("otel_gpu")

# OTLP NumberDataPoint carries ``as_int`` as sfixed64 and ``as_double`` as a double
# (opentelemetry-proto, metrics/v1/metrics.proto). A larger int makes the encoder raise for the
# whole request; a non-finite double is not a measurement.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_FINITE = float("inf")

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


def carried(points: Iterable[tuple[float, Attributes]], metric: str, source: str,
            tally: FailureTally) -> Iterator[tuple[float, Attributes]]:
    """The points OTLP can carry; each other one is dropped alone, counted and logged once."""
    for value, attributes in points:
        if type(value) is float and -_FINITE < value < _FINITE:  # the common case, quickly
            yield value, attributes
            continue
        problem = value_problem(value)
        if problem is None:
            yield value, attributes
            continue
        first = (source, problem) not in tally.counts()
        tally.add(source, problem)
        if first:
            log.warning("dropped a point of %s: %r cannot be exported (%s); "
                        "counted in otel_gpu.collection.errors", metric, value, problem)
