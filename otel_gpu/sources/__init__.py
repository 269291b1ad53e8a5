"""Sources read the world into plain data; none of them knows OpenTelemetry."""

from __future__ import annotations

from collections import deque

from otel_gpu.snapshot import SourceError

MAX_PENDING_ERRORS = 1000


class ErrorLog:
    """The failures a reader records between two cycles; the Collector drains them once a cycle
    with ``take_errors()`` into ``otel_gpu.collection.errors``. At most 1000 are kept."""

    source = "unknown"

    def __init__(self, source: str | None = None) -> None:
        if source is not None:
            self.source = source
        self._errors: deque[SourceError] = deque(maxlen=MAX_PENDING_ERRORS)

    def take_errors(self) -> tuple[SourceError, ...]:
        """The failures recorded since the last call."""
        errors = tuple(self._errors)
        self._errors.clear()
        return errors

    def _record(self, call: str, error_type: str) -> None:
        self._errors.append(SourceError(self.source, call, error_type))
