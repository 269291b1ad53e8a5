"""One collection cycle: run every source once, fault-isolated, and freeze the result."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

from otel_gpu.collect.accounting import Accountant
from otel_gpu.collect.attribution import Attributor
from otel_gpu.insights.engine import InsightEngine, InsightUpdate
from otel_gpu.snapshot import HostSnapshot, Snapshot, SourceError, TrainingSignals
from otel_gpu.sources.dcgm import DcgmSource
from otel_gpu.sources.nvml import NvmlSource


class HostReader(Protocol):
    def read(self, overrides: Any = None) -> tuple[HostSnapshot, list[SourceError]]: ...


class SnapshotSource(Protocol):
    """Where a Collector's Snapshots come from: the sources read here (``LocalSources``) or
    in another process; one Snapshot of them, before the insight rules, per ``read()``."""

    def start(self) -> str | None: ...
    def read(self) -> Snapshot: ...
    def close(self) -> None: ...


class Simulation(Protocol):
    def begin_cycle(self, cycle: int) -> None: ...
    def clock(self, cycle: int) -> float: ...
    def host_overrides(self, cycle: int) -> Any: ...


TrainingSource = Callable[[], "TrainingSignals | Iterable[TrainingSignals] | None"]


class LocalSources:
    """The driver, the attribution join and the host, read in this process, fault-isolated."""

    def __init__(
        self,
        nvml: NvmlSource,
        host: HostReader | None,
        *,
        simulation: Simulation | None = None,
        clock: Callable[[], float] = time.time,
        attributor: Attributor | None = None,
        dcgm: DcgmSource | None = None,
    ) -> None:
        self.nvml = nvml
        self.dcgm = dcgm
        self.host = host
        self.simulation = simulation
        self.attributor = attributor
        self._clock = clock
        self._cycle = 0
        self._error_counts: dict[tuple[str, str], int] = {}

    def start(self) -> str | None:
        """Initialise the sources; returns the one message to show when there is no driver."""
        if not self.nvml.start():
            return self.nvml.unavailable_reason
        if self.dcgm is not None:
            try:
                self.dcgm.start(self._now())
            except Exception:  # DCGM is optional: without it the output is as before
                self.dcgm = None
        return None

    def _now(self) -> float:
        return self.simulation.clock(self._cycle) if self.simulation is not None else \
            time.monotonic()

    def close(self) -> None:
        """Close the sources, then the simulated world they read, if any."""
        try:
            try:
                self.nvml.close()
            finally:
                if self.dcgm is not None:
                    self.dcgm.close()
        finally:
            try:
                if self.attributor is not None:
                    self.attributor.close()
                close_host = getattr(self.host, "close", None)
                if close_host is not None:
                    close_host()
            finally:
                close = getattr(self.simulation, "close", None)
                if close is not None:
                    close()

    @property
    def cycles(self) -> int:
        return self._cycle

    def read(self) -> Snapshot:
        """Every source once, fault-isolated: the Snapshot before the insight rules."""
        cycle = self._cycle
        self._cycle += 1
        sim = self.simulation
        if sim is not None:
            sim.begin_cycle(cycle)
            now = sim.clock(cycle)
        else:
            now = self._clock()
        errors: list[SourceError] = []
        durations: dict[str, float] = {}

        started = time.perf_counter()
        gpus: tuple = ()
        driver_version = None
        if self.nvml.available or self.nvml.retrying:
            try:
                reading = self.nvml.read(now if sim is not None else None)
                gpus, driver_version = tuple(reading.gpus), reading.driver_version
                errors.extend(reading.errors)
            except Exception as err:
                errors.append(SourceError("nvml", "read", type(err).__name__))
            durations["nvml"] = time.perf_counter() - started

        if self.dcgm is not None and gpus:
            started = time.perf_counter()
            try:
                joined, dcgm_errors = self.dcgm.read(
                    gpus, now if sim is not None else time.monotonic())
                gpus = tuple(joined)
                errors.extend(dcgm_errors)
            except Exception as err:
                errors.append(SourceError("dcgm", "read", type(err).__name__))
            if self.dcgm.available:
                durations["dcgm"] = time.perf_counter() - started

        attribution = None
        if self.attributor is not None and gpus:
            try:
                attribution = self.attributor.attribute(gpus)
                errors.extend(attribution.errors)
                durations.update(attribution.durations_s)
            except Exception as err:
                errors.append(SourceError("attribution", "attribute", type(err).__name__))

        host = None
        if self.host is not None:
            started = time.perf_counter()
            overrides = sim.host_overrides(cycle) if sim is not None else None
            try:
                host, host_errors = self.host.read(overrides)
                errors.extend(host_errors)
            except Exception as err:
                errors.append(SourceError("host", "read", type(err).__name__))
            durations["host"] = time.perf_counter() - started

        for err in errors:
            key = (err.source, err.error_type)
            self._error_counts[key] = self._error_counts.get(key, 0) + 1
        return Snapshot(
            cycle=cycle,
            timestamp=now,
            driver_available=self.nvml.available,
            driver_version=driver_version,
            gpus=gpus,
            host=host,
            errors=tuple(errors),
            error_counts=dict(self._error_counts),
            durations_s=durations,
            workloads=attribution.workloads if attribution is not None else (),
            assignments=attribution.assignments if attribution is not None else (),
            containers=attribution.containers if attribution is not None else (),
        )


class Collector:
    """Builds one Snapshot per call of ``collect()`` from its sources; never raises."""

    def __init__(
        self,
        sources: SnapshotSource,
        *,
        insights: InsightEngine | None = None,
        clock: Callable[[], float] = time.time,
        accountant: Accountant | None = None,
    ) -> None:
        self.sources = sources
        self.accountant = accountant if accountant is not None else Accountant()
        self._clock = clock
        self._extra_counts: dict[tuple[str, str], int] = {}  # training, insights, sources
        self._error_sources: list[Callable[[], Iterable[SourceError]]] = []
        self.insights = insights if insights is not None else InsightEngine()
        self._training_sources: list[TrainingSource] = []
        self._insight_listeners: list[Callable[[InsightUpdate, Snapshot], None]] = []

    def add_error_source(self, take_errors: Callable[[], Iterable[SourceError]]) -> None:
        """Failures recorded outside the cycle (e.g. by the training tracker), drained per cycle."""
        self._error_sources.append(take_errors)

    def add_training_source(self, read: TrainingSource) -> None:
        """Training signals (e.g. a training loop's data-wait ratio), read once per cycle and
        given to the insight rules."""
        self._training_sources.append(read)

    def add_insight_listener(self, listener: Callable[[InsightUpdate, Snapshot], None]) -> None:
        """Called after every cycle with the insights that fired and cleared in it."""
        self._insight_listeners.append(listener)

    def start(self) -> str | None:
        """Initialise the sources; returns the one message to show when there is no driver."""
        return self.sources.start()

    def close(self) -> None:
        self.sources.close()

    def collect(self) -> Snapshot:
        """One cycle: the sources, then the failures recorded outside the cycle, the accounts of
        what each workload used and the insight rules, which always run here. Sources that fail
        as a whole (another process gone) give an empty Snapshot and a counted error of source
        ``collector``."""
        own: list[SourceError] = []
        try:
            base = self.sources.read()
        except Exception as err:
            own.append(SourceError("collector", "remote", type(err).__name__))
            base = Snapshot(cycle=-1, timestamp=self._clock(), driver_available=False)
        for take_errors in self._error_sources:
            try:
                own.extend(take_errors())
            except Exception as err:
                own.append(SourceError("collector", "take_errors", type(err).__name__))
        try:
            base = self.accountant.update(base)
        except Exception as err:
            own.append(SourceError("collector", "accounting", type(err).__name__))
        return self._with_insights(base, own)

    def _training_signals(self, failures: list[SourceError]) -> list[TrainingSignals]:
        signals: list[TrainingSignals] = []
        for read in self._training_sources:
            try:
                found = read()
                if isinstance(found, TrainingSignals):
                    signals.append(found)
                elif found is not None:
                    signals.extend(found)
            except Exception as err:
                failures.append(SourceError("insights", "training_source", type(err).__name__))
        return signals

    def _with_insights(self, snapshot: Snapshot, failures: list[SourceError]) -> Snapshot:
        """Run the insight rules over the window that ends with this Snapshot; a failure is a
        recorded error of source ``insights``, never a lost cycle."""
        started = time.perf_counter()
        update = None
        try:
            update = self.insights.update(snapshot, self._training_signals(failures))
        except Exception as err:
            failures.append(SourceError("insights", "update", type(err).__name__))
        durations = {**snapshot.durations_s, "insights": time.perf_counter() - started}
        if update is not None:
            snapshot = replace(snapshot, insights=update.active, durations_s=durations)
            for listener in self._insight_listeners:
                try:
                    listener(update, snapshot)
                except Exception as err:
                    failures.append(SourceError("insights", "emit", type(err).__name__))
        else:
            snapshot = replace(snapshot, durations_s=durations)
        for err in failures:
            key = (err.source, err.error_type)
            self._extra_counts[key] = self._extra_counts.get(key, 0) + 1
        if not failures and not self._extra_counts:
            return snapshot
        counts = dict(snapshot.error_counts)
        for key, count in self._extra_counts.items():
            counts[key] = counts.get(key, 0) + count
        return replace(snapshot, errors=(*snapshot.errors, *failures), error_counts=counts)


class SnapshotCache:
    """Hands every instrument callback of one collection the same Snapshot.

    The first callback of a collection finds the cached Snapshot older than ``max_age_s`` and
    takes a new one; the callbacks after it, run moments later by the same reader, reuse it.
    A driver of its own (the agent) calls ``refresh()`` before asking the readers to collect.
    """

    def __init__(
        self,
        collector: Collector,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collector = collector
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken_at = 0.0

    @property
    def latest(self) -> Snapshot | None:
        return self._snapshot

    def get(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None or self._clock() - self._taken_at > self._max_age_s:
                self._take()
            assert self._snapshot is not None
            return self._snapshot

    def refresh(self) -> Snapshot:
        with self._lock:
            self._take()
            assert self._snapshot is not None
            return self._snapshot

    def _take(self) -> None:
        self._snapshot = self._collector.collect()
        self._taken_at = self._clock()
