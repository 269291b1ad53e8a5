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
from dataclasses import dataclass
from typing import Any

from otel_gpu.snapshot import Attributes

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


@dataclass
class _Series:
    seen: int  # the cycle of its last observation
    baseline: float = 0
    last: float = 0  # the source's last value (counters)


class SeriesLedger:
    """One generation's series, per instrument; counters' baselines."""

    def __init__(self, carried: dict[tuple[str, Key], float] | None = None) -> None:
        self._series: dict[str, dict[Key, _Series]] = {}
        self._counters: set[str] = set()
        # Counters alive when the previous generation ended: their last value is the baseline,
        # so that the first point of the new generation is the increase over one interval.
        self._carried = carried or {}

    def observe(self, name: str, counter: bool, points: Iterable[tuple[float, Attributes]],
                cycle: int, make: Callable[[float, Attributes], Any] = lambda v, a: (v, a),
                ) -> list[Any]:
        """``points`` as exported, each made by ``make(value, attributes)``: counters relative
        to their baseline."""
        table = self._series.get(name)
        if table is None:
            table = self._series[name] = {}
        if counter:
            self._counters.add(name)
        out = []
        for value, attributes in points:
            key = frozenset(attributes.items())
            entry = table.get(key)
            if entry is None:
                entry = _Series(seen=cycle, baseline=self._baseline(name, counter, key, value),
                                last=value)
                table[key] = entry
            entry.seen = cycle
            if counter:
                if value < entry.last:  # the source started over (driver reload, restart)
                    entry.baseline = 0
                entry.last = value
                out.append(make(value - entry.baseline, attributes))
            else:
                out.append(make(value, attributes))
        return out

    def _baseline(self, name: str, counter: bool, key: Key, value: float) -> float:
        if not counter:
            return 0
        carried = self._carried.pop((name, key), None)
        if carried is not None and carried <= value:
            return carried
        return 0 if name in SINCE_AGENT_START else value

    def sizes(self) -> dict[str, int]:
        """Series held per instrument."""
        return {name: len(table) for name, table in self._series.items()}

    def stale(self, cycle: int, after: int) -> dict[str, int]:
        """Series per instrument not seen in the last ``after`` cycles before ``cycle``."""
        return {name: sum(1 for s in table.values() if s.seen < cycle - after)
                for name, table in self._series.items()}

    def next_generation(self, cycle: int) -> SeriesLedger:
        """A ledger for a fresh MeterProvider: the counters seen in ``cycle`` go on from their
        last value."""
        carried = {(name, key): entry.last for name, table in self._series.items()
                   if name in self._counters
                   for key, entry in table.items() if entry.seen >= cycle}
        return SeriesLedger(carried)
