"""MeterProvider generations: the SDK's state stays bounded by the series that are alive.

The SDK offers no way to forget an attribute set of an observable instrument (see
``SeriesLedger``); a MeterProvider that is shut down forgets all of them. So when one
instrument holds ``max_stale`` series that were not reported for ``stale_after`` cycles (gone
containers, pods, users, MIG devices, cleared insights), the current generation is replaced by a
fresh one: new readers on the same exporters, new instruments on the same Snapshot cache. The
series alive at that moment go on in the new generation; counters among them continue from their
last value (the first point of the new generation is the increase over one interval), with the
new generation's start time. To Prometheus ``rate()`` and to cumulative_to_delta this is a
counter reset with a new start time, which both handle without a spike or a lost increase.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.resources import Resource

from otel_gpu.telemetry.catalog import Metric
from otel_gpu.telemetry.failures import FailureTally
from otel_gpu.telemetry.instruments import SnapshotSource, StandDown, register_catalog
from otel_gpu.telemetry.providers import build_meter_provider, get_meter
from otel_gpu.telemetry.series import SeriesLedger


@dataclass(frozen=True)
class RotationPolicy:
    stale_after: int = 2  # cycles without a report after which a series counts as gone
    max_stale: int = 1000  # gone series one instrument may hold before a new generation


class MeterGenerations:
    """The current MeterProvider, its readers and instruments, replaced when too many of their
    series are gone."""

    def __init__(self, make_readers: Callable[[], list[MetricReader]], resource: Resource,
                 cache: SnapshotSource, tally: FailureTally, *,
                 policy: RotationPolicy | None = None,
                 metrics: Iterable[Metric] | None = None,
                 provider: MeterProvider | None = None, rotate: bool = True,
                 stand_down: StandDown | None = None) -> None:
        """``provider``: the instruments go on this one (an application's) and stay there;
        ``rotate`` False: one generation for good."""
        self._make_readers = make_readers
        self._given = provider
        self._stand_down = stand_down
        self._rotate = rotate and provider is None
        self.resource = resource
        self._cache = cache
        self._tally = tally
        self._metrics = None if metrics is None else tuple(metrics)
        self.policy = policy or RotationPolicy()
        self.generation = 0
        self.readers: list[MetricReader] = []
        self.instruments: list[Any] = []
        self.ledger = SeriesLedger()
        self.provider = self._start(self.ledger)

    def _start(self, ledger: SeriesLedger) -> MeterProvider:
        self.readers = self._make_readers()
        provider = self._given or build_meter_provider(self.readers, self.resource)
        self.ledger = ledger
        self.instruments = register_catalog(get_meter(provider), self._cache, self._metrics,
                                            tally=self._tally, ledger=ledger,
                                            stand_down=self._stand_down)
        self.generation += 1
        return provider

    @property
    def memory_reader(self) -> InMemoryMetricReader | None:
        return next((r for r in self.readers if isinstance(r, InMemoryMetricReader)), None)

    def collect(self) -> None:
        """Every reader collects the cycle: a push reader hands it to its exporter, the
        in-memory one keeps it, a Prometheus one keeps it for nothing but this: every series is
        first read in the cycle that has it, which is when a counter takes its baseline (a
        scrape collects again when it comes)."""
        for reader in self.readers:
            reader.collect()

    def maybe_rotate(self, cycle: int) -> bool:
        """Start a new generation if one instrument holds too many gone series."""
        if not self._rotate:
            return False
        stale = self.ledger.stale(cycle, self.policy.stale_after)
        if max(stale.values(), default=0) < self.policy.max_stale:
            return False
        old = self.provider
        # The old readers go first, so that a scrape never finds two generations registered.
        old.shutdown()
        self.provider = self._start(self.ledger.next_generation(cycle))
        return True

    def shutdown(self) -> None:
        self.provider.shutdown()
