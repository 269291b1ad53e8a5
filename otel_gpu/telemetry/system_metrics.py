"""Host metrics next to the contrib system-metrics instrumentation.

``opentelemetry-bootstrap`` installs ``opentelemetry-instrumentation-system-metrics`` wherever
psutil is installed (it is one of our dependencies), and ``opentelemetry-instrument`` then
reports ``system.cpu.time``, ``system.memory.usage``, ``system.disk.io`` and more from that
instrumentation's own instruments, with attribute sets of its own. While it is instrumented in
this process, ours stand down for every name it reports, so each ``system.*`` name comes from
one of the two; ours that it does not report (filesystems, paging, the memory limit and
available memory, the CPU count, dropped packets) stay.

``opentelemetry-instrument`` may run our instrumentor before that one (entry points load in
installation order), and a collection can come in between. So while auto-instrumentation is
loading an enabled system-metrics instrumentation that has not instrumented yet, ours stand
down for its default names, for at most ``GRACE_S`` (after that, if it never instrumented, they
report again).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping

from otel_gpu.config import disabled_instrumentations

CONTRIB_MODULE = "opentelemetry.instrumentation.system_metrics"
ENTRY_POINT = "system_metrics"  # in the opentelemetry_instrumentor group
AUTO_MODULE = "opentelemetry.instrumentation.auto_instrumentation"
GRACE_S = 60.0


def contrib_system_metrics() -> frozenset[str]:
    """The ``system.*`` names the contrib system-metrics instrumentation reports in this
    process now; empty when it is not loaded or not instrumented."""
    module = sys.modules.get(CONTRIB_MODULE)
    if module is None:
        return frozenset()
    # BaseInstrumentor is a singleton; calling the class again would reset its configuration.
    instance = getattr(getattr(module, "SystemMetricsInstrumentor", None), "_instance", None)
    if instance is None or not getattr(instance, "_is_instrumented_by_opentelemetry", False):
        return frozenset()
    config = getattr(instance, "_config", None) or {}
    return frozenset(name for name in config if name.startswith("system."))


def contrib_expected(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``opentelemetry-instrument`` is running here and will instrument the contrib
    system-metrics instrumentation: installed, not disabled, and with its dependencies met (it
    is skipped otherwise)."""
    if AUTO_MODULE not in sys.modules:
        return False
    disabled = disabled_instrumentations(environ)
    if ENTRY_POINT in disabled or "*" in disabled:
        return False
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_instrumentor", name=ENTRY_POINT))
    if not found:
        return False
    try:
        from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts
    except ImportError:
        return True
    return any(ep.dist is None or get_dist_dependency_conflicts(ep.dist) is None
               for ep in found)


def contrib_names(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The ``system.*`` names the contrib system-metrics instrumentation reports in this
    process, or will once ``opentelemetry-instrument`` instruments it (its default
    configuration); empty when it is not there."""
    active = contrib_system_metrics()
    if active:
        return active
    return _default_names() if contrib_expected(environ) else frozenset()


def _default_names() -> frozenset[str]:
    try:
        from opentelemetry.instrumentation.system_metrics import _DEFAULT_CONFIG
    except Exception:
        return frozenset()
    return frozenset(name for name in _DEFAULT_CONFIG if name.startswith("system."))


class StandDown:
    """The names our host instruments leave to the contrib instrumentation, asked at each
    collection (see the module's story)."""

    def __init__(self, *, grace_s: float = GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expected_until = clock() + grace_s if contrib_expected() else None
        self._expected: frozenset[str] | None = None

    def __call__(self) -> frozenset[str]:
        active = contrib_system_metrics()
        if active or self._expected_until is None:
            self._expected_until = None
            return active
        if self._clock() >= self._expected_until:
            self._expected_until = None
            return active
        if self._expected is None:
            self._expected = _default_names()
        return self._expected
