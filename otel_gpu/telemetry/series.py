"""The series a generation of instruments has reported, and what their counters count from.

The SDK keeps every attribute set an observable instrument ever reported, for as long as its
MeterProvider lives (opentelemetry-sdk 1.45: ``_ViewInstrumentMatch`` never forgets an
asynchronous series, and past the cardinality limit, 2000 by default, every new one merges into
an ``otel.metric.overflow=true`` point). The ledger mirrors that state: one entry per series the
current generation reported, with the cycle it was last seen in. ``MeterGenerations`` reads it
to decide when to start a fresh MeterProvider, which is the one way the SDK's public API has of
letting go of gone series.

Counters: the SDK gives an asynchronous series the time of its first observation as start time.
A counter whose source counts over a lifetime (energy since the driver loaded, CPU time since the
container started) is exported as what it counted since that start: the first value seen is the
baseline. So start time and value agree, and a consumer that turns cumulative into delta
(cumulative_to_delta, a Prometheus ``rate()``) never sees a lifetime total as one interval's
increase, after an agent restart or a new generation alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from otel_gpu.snapshot import Attributes
from otel_gpu.telemetry.catalog.metric import SeriesAttributes
from otel_gpu.telemetry.failures import INT64_MAX, INT64_MIN

# Counters that start at zero when the agent starts: their first value is already what was
# counted since the start time.
SINCE_AGENT_START = frozenset({
    "otel_gpu.collection.errors",
    "nvidia.gpu.xid.errors",
    "nvidia.gpu.mig.reconfigurations",
    # the agent's accounting: what it counted over the cycles it ran
    "otel_gpu.workload.gpu.time",
    "otel_gpu.workload.mig.slice.time",
    "otel_gpu.workload.energy",
})

Key = frozenset[tuple[str, Any]]


def series_key(attributes: Attributes) -> Key:
    return frozenset(attributes.items())


class _Counter:
    __slots__ = ("baseline", "last", "seen")

    def __init__(self, seen: int, baseline: float, last: float) -> None:
        self.seen = seen  # the cycle of its last observation
        self.baseline = baseline
        self.last = last  # the source's last value


_INF = float("inf")


class SeriesLedger:
    """One generation's series, per instrument; counters' baselines."""

    def __init__(self, carried: dict[tuple[str, Key], float] | None = None) -> None:
        # per instrument: a gauge's series -> the cycle it was last seen in; a counter's ->
        # its entry
        self._gauges: dict[str, dict[Key, int]] = {}
        self._counters: dict[str, dict[Key, _Counter]] = {}
        # Counters alive when the previous generation ended: their last value is the baseline,
        # so that the first point of the new generation is the increase over one interval.
        self._carried = carried or {}

    def observe(self, name: str, counter: bool, points: Iterable[tuple[float, Attributes]],
                cycle: int, make: Callable[[float, Attributes], Any] = lambda v, a: (v, a),
                check: Callable[[object], bool] | None = None) -> list[Any]:
        """``points`` as exported, each made by ``make(value, attributes)``: counters relative
        to their baseline. ``check``: asked about each value that is not a finite float or an
        int within int64, and the point is dropped when it answers False (``ValueCheck``)."""
        gauges: dict[Key, int] = {}
        counters: dict[Key, _Counter] = {}
        if counter:
            counters = self._counters.setdefault(name, counters)
        else:
            gauges = self._gauges.setdefault(name, gauges)
        out = []
        for value, attributes in points:
            kind = type(value)  # finite floats and int64s need no call to ``check``
            if (not ((kind is float and -_INF < value < _INF)
                     or (kind is int and INT64_MIN <= value <= INT64_MAX))
                    and check is not None and not check(value)):
                continue
            key = (attributes.key if type(attributes) is SeriesAttributes
                   else frozenset(attributes.items()))
            if counter:
                entry = counters.get(key)
                if entry is None:
                    entry = counters[key] = _Counter(cycle, self._baseline(name, key, value),
                                                     value)
                else:
                    entry.seen = cycle
                    if value < entry.last:  # the source started over (driver reload, restart)
                        entry.baseline = 0
                    entry.last = value
                value -= entry.baseline
            else:
                gauges[key] = cycle
            out.append(make(value, attributes))
        return out

    def _baseline(self, name: str, key: Key, value: float) -> float:
        carried = self._carried.pop((name, key), None)
        if carried is not None and carried <= value:
            return carried
        return 0 if name in SINCE_AGENT_START else value

    def sizes(self) -> dict[str, int]:
        """Series held per instrument."""
        return {name: len(table) for tables in (self._gauges, self._counters)
                for name, table in tables.items()}

    def stale(self, cycle: int, after: int) -> dict[str, int]:
        """Series per instrument not seen in the last ``after`` cycles before ``cycle``."""
        horizon = cycle - after
        stale = {name: sum(1 for seen in table.values() if seen < horizon)
                 for name, table in self._gauges.items()}
        stale.update((name, sum(1 for s in table.values() if s.seen < horizon))
                     for name, table in self._counters.items())
        return stale

    def next_generation(self, cycle: int) -> SeriesLedger:
        """A ledger for a fresh MeterProvider: the counters seen in ``cycle`` go on from their
        last value."""
        carried = {(name, key): entry.last for name, table in self._counters.items()
                   for key, entry in table.items() if entry.seen >= cycle}
        return SeriesLedger(carried)
