"""otel-gpu: OpenTelemetry metrics for GPU servers: GPUs, MIG devices, host, and who uses what.

In a training script::

    import otel_gpu

    with otel_gpu.start():
        for batch in otel_gpu.track(loader):
            train(batch)

Importing the package does no work; ``start()`` builds the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otel_gpu._version import __version__

__all__ = ["__version__", "data_wait", "epoch", "session", "start", "step", "stop", "track"]

if TYPE_CHECKING:
    from otel_gpu.session.api import Session


def start(**kwargs: Any) -> Session:
    """Start reporting; see ``otel_gpu.session.api.start`` for the options. Idempotent."""
    from otel_gpu.session.api import start as _start

    return _start(**kwargs)


def stop() -> None:
    """Flush everything and stop this process's session."""
    from otel_gpu.session.api import stop as _stop

    _stop()


def session() -> Session | None:
    from otel_gpu.session.api import session as _session

    return _session()


def track(iterable: Any, *, batch_size: int | None = None) -> Any:
    """Yield the items of a data loader (any iterable), measuring data wait per step."""
    from otel_gpu.session.api import track as _track

    return _track(iterable, batch_size=batch_size)


def step(samples: int | None = None) -> Any:
    """Mark one training step by hand (a context manager, or a handle with ``end()``)."""
    from otel_gpu.session.api import current_tracker

    return current_tracker().step(samples)


def epoch(n: int) -> Any:
    """Mark one epoch by hand (a context manager, or a handle with ``end()``)."""
    from otel_gpu.session.api import current_tracker

    return current_tracker().epoch(n)


def data_wait() -> Any:
    """Mark the part of a hand-marked step that waits for data (a context manager)."""
    from otel_gpu.session.api import current_tracker

    return current_tracker().data_wait()
