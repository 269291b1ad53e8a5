"""CPU cost of one collection: otel-gpu host metrics against the contrib system-metrics
instrumentor and against the SDK's own floor, plus one full cycle of the simulated dgx-a100.

Every variant lives on its own MeterProvider with an InMemoryMetricReader, all in this one
process. The variants run interleaved: each round runs every variant ``--collections`` times,
and the order of the variants rotates from round to round, so that a noisy neighbour or a change
of CPU frequency falls on all of them alike. Costs are CPU time of this thread
(``time.thread_time``) per collection and per collected data point; ratios are taken within each
round and their median is reported. No absolute figure is a goal: only the ratios are.

The dgx-a100 cycle runs twice more: with every reader of FEATURES fed (its scenario keys added
to the built-in, its settings on) and with them off, so that what they add to a cycle is a ratio
of the same run.

    .venv/bin/python benchmarks/bench_cost.py [--quick] [--json result.json]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from cost_features import FEATURES, SCENARIO, featured_scenario, settings
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from otel_gpu.collect.collector import Collector, LocalSources, SnapshotCache
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.host import HostSource
from otel_gpu.sources.nvml import NvmlSource
from otel_gpu.telemetry.catalog import CATALOG, COUNTER, GAUGE, UPDOWNCOUNTER, Metric
from otel_gpu.telemetry.instruments import register_catalog
from otel_gpu.telemetry.providers import get_meter

HOST_SECTION = "Host"

# The contrib instrumentor restricted to the system.* metrics that have a counterpart among ours,
# with the states ours reports (its own cpu.time/cpu.utilization are per logical CPU).
CONTRIB_CONFIG: dict[str, list[str] | None] = {
    "system.cpu.time": ["idle", "user", "system", "irq", "softirq", "nice", "iowait", "steal"],
    "system.cpu.utilization": [
        "idle",
        "user",
        "system",
        "irq",
        "softirq",
        "nice",
        "iowait",
        "steal",
    ],
    "system.memory.usage": ["used", "free", "buffers", "cached"],
    "system.memory.utilization": ["used", "free", "buffers", "cached"],
    "system.swap.usage": ["used", "free"],
    "system.disk.io": ["read", "write"],
    "system.disk.operations": ["read", "write"],
    "system.network.io": ["transmit", "receive"],
    "system.network.dropped.packets": ["transmit", "receive"],
}

# Goals, as ratios of CPU time per data point measured in the same run.
GOAL_VS_CONTRIB = 0.5  # ours-host / contrib at most
GOAL_VS_FLOOR = 1.5  # ours-host / sdk-floor at most
GOAL_FEATURES = 1.15  # a dgx-a100 cycle with FEATURES on / off, per collection, at most


def count_points(data: MetricsData | None) -> int:
    if data is None:
        return 0
    return sum(
        len(metric.data.data_points)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    )


@dataclass
class Variant:
    """One way of collecting; ``run()`` is one collection and returns its number of points."""

    name: str
    description: str
    run: Callable[[], int]
    cpu_s: list[list[float]] = field(default_factory=list)  # per round, per collection
    wall_s: list[list[float]] = field(default_factory=list)
    points: list[int] = field(default_factory=list)

    def measure(self, collections: int) -> None:
        cpu: list[float] = []
        wall: list[float] = []
        thread_time, perf_counter, run = time.thread_time, time.perf_counter, self.run
        for _ in range(collections):
            wall_start, cpu_start = perf_counter(), thread_time()
            n = run()
            cpu_end, wall_end = thread_time(), perf_counter()
            cpu.append(cpu_end - cpu_start)
            wall.append(wall_end - wall_start)
            self.points.append(n)
        self.cpu_s.append(cpu)
        self.wall_s.append(wall)

    def round_median_cpu(self, round_index: int) -> float:
        return statistics.median(self.cpu_s[round_index])

    def round_median_cpu_per_point(self, round_index: int) -> float:
        points = statistics.median(self.points) or 1
        return self.round_median_cpu(round_index) / points

    def summary(self) -> dict[str, Any]:
        all_cpu = [x for r in self.cpu_s for x in r]
        all_wall = [x for r in self.wall_s for x in r]
        points = statistics.median(self.points)
        cpu = statistics.median(all_cpu)
        round_medians = [statistics.median(r) for r in self.cpu_s]
        return {
            "description": self.description,
            "collections": len(all_cpu),
            "points": points,
            "points_min": min(self.points),
            "points_max": max(self.points),
            "cpu_ms_per_collection": cpu * 1e3,
            "cpu_ms_per_collection_round_min": min(round_medians) * 1e3,
            "cpu_ms_per_collection_round_max": max(round_medians) * 1e3,
            "cpu_us_per_point": cpu / points * 1e6 if points else None,
            "wall_ms_per_collection": statistics.median(all_wall) * 1e3,
        }


# -- variants -----------------------------------------------------------------------------------


def _provider() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader], shutdown_on_exit=False), reader


def host_metrics() -> list[Metric]:
    return [m for m in CATALOG if m.section == HOST_SECTION and m.observe is not None]


def ours_host() -> tuple[Variant, SnapshotCache, Collector]:
    """Our host metrics alone: a Collector whose NVML source is never started, so it reads the
    host only. As the agent does, the driver refreshes the cache once, then the reader collects:
    every callback of that collection reuses the one Snapshot (the cache's own age check would
    take one per callback with ``max_age_s=0``, and none at all between refreshes otherwise)."""
    collector = Collector(LocalSources(NvmlSource(), HostSource()))
    cache = SnapshotCache(collector, max_age_s=float("inf"))
    provider, reader = _provider()
    register_catalog(get_meter(provider), cache, host_metrics())

    def run() -> int:
        cache.refresh()
        return count_points(reader.get_metrics_data())

    variant = Variant(
        "ours-host",
        "otel-gpu Host-section catalog metrics: Collector(host only) -> SnapshotCache.refresh()"
        " -> register_catalog instruments -> InMemoryMetricReader",
        run,
    )
    return variant, cache, collector


def contrib() -> tuple[Variant, InMemoryMetricReader]:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    provider, reader = _provider()
    # A singleton: one instance, instrumented once, on this provider alone.
    instrumentor = SystemMetricsInstrumentor(config=CONTRIB_CONFIG)
    instrumentor.instrument(meter_provider=provider)

    def run() -> int:
        return count_points(reader.get_metrics_data())

    variant = Variant(
        "contrib",
        "opentelemetry-instrumentation-system-metrics SystemMetricsInstrumentor restricted to "
        + ", ".join(CONTRIB_CONFIG),
        run,
    )
    return variant, reader


def _create(meter: Meter, metric: Metric, callback: Callable[[CallbackOptions], Any]) -> Any:
    create = {
        COUNTER: meter.create_observable_counter,
        UPDOWNCOUNTER: meter.create_observable_up_down_counter,
        GAUGE: meter.create_observable_gauge,
    }[metric.instrument]
    return create(
        metric.name, callbacks=[callback], unit=metric.unit, description=metric.description
    )


def sdk_floor(snapshot: Snapshot) -> Variant:
    """The same instruments, points and attribute sets as ours, from precomputed Observations:
    what the SDK itself costs for this many points."""
    provider, reader = _provider()
    meter = get_meter(provider)
    for metric in host_metrics():
        assert metric.observe is not None
        observations = [Observation(value, attrs) for value, attrs in metric.observe(snapshot)]

        def callback(
            options: CallbackOptions, observations: list[Observation] = observations
        ) -> Iterable[Observation]:
            return observations

        _create(meter, metric, callback)

    def run() -> int:
        return count_points(reader.get_metrics_data())

    return Variant(
        "sdk-floor",
        "trivial callbacks returning precomputed Observations with the instruments, points and"
        " attribute sets of ours-host",
        run,
    )


def sdk_floor_of(name: str, data: MetricsData | None) -> Variant:
    """Trivial callbacks that replay the points of one collection of another variant: the same
    instruments (by kind), points and attribute sets, at the SDK's own cost."""
    provider, reader = _provider()
    meter = get_meter(provider)
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for m in scope_metrics.metrics:
                observations = [
                    Observation(p.value, dict(p.attributes or {}))
                    for p in m.data.data_points
                    if isinstance(p, NumberDataPoint)
                ]
                if isinstance(m.data, Sum):
                    kind = COUNTER if m.data.is_monotonic else UPDOWNCOUNTER
                else:
                    kind = GAUGE
                metric = Metric(m.name, kind, m.unit or "", m.description or "", (), "")

                def callback(
                    options: CallbackOptions, observations: list[Observation] = observations
                ) -> Iterable[Observation]:
                    return observations

                _create(meter, metric, callback)

    def run() -> int:
        return count_points(reader.get_metrics_data())

    return Variant(
        name,
        "trivial callbacks replaying the instruments, points and attribute sets of one contrib"
        " collection",
        run,
    )


def dgx_variants(
    scenario: str = SCENARIO, label: str = SCENARIO, environ: Mapping[str, str] | None = None
) -> tuple[list[Variant], str | None]:
    """One full cycle of the simulated scenario: the Collector alone, and the Collector plus
    every catalog instrument on an InMemoryMetricReader; built under ``environ``'s settings."""
    try:
        from otel_gpu.collect.build import build_collector

        with settings(environ or {}):
            collect_only = build_collector(simulate=scenario)
            full = build_collector(simulate=scenario)
    except Exception as err:  # the simulator is optional to this benchmark
        return [], f"{type(err).__name__}: {err}"
    for collector in (collect_only, full):
        message = collector.start()
        if message is not None:
            return [], f"simulated driver did not start: {message}"

    cache = SnapshotCache(full, max_age_s=float("inf"))
    provider, reader = _provider()
    register_catalog(get_meter(provider), cache)

    def run_collect() -> int:
        collect_only.collect()
        return 0  # no instruments: no points

    def run_full() -> int:
        cache.refresh()
        return count_points(reader.get_metrics_data())

    return [
        Variant(
            f"{label}-collect", f"Collector.collect() of the simulated {label}", run_collect
        ),
        Variant(
            f"{label}-full",
            f"Collector.collect() of the simulated {label} + every catalog instrument on an"
            " InMemoryMetricReader",
            run_full,
        ),
    ], None


def feature_variants(directory: str) -> tuple[list[Variant], str | None]:
    """The dgx-a100 cycle with FEATURES off (the built-in, their off settings) and on (their
    keys fed, their on settings)."""
    off: dict[str, str] = {}
    on: dict[str, str] = {}
    for feature in FEATURES.values():
        off.update(feature.off)
        on.update(feature.on)
    variants_off, skipped = dgx_variants(SCENARIO, f"{SCENARIO}-off", off)
    if skipped:
        return [], skipped
    variants_on, skipped = dgx_variants(featured_scenario(directory), f"{SCENARIO}-on", on)
    return variants_off + variants_on, skipped


# -- running and reporting ----------------------------------------------------------------------


def run_rounds(variants: Sequence[Variant], rounds: int, collections: int, warmup: int) -> None:
    for variant in variants:
        for _ in range(warmup):
            variant.run()
    for r in range(rounds):
        order = [variants[(r + i) % len(variants)] for i in range(len(variants))]
        gc.collect()
        for variant in order:
            variant.measure(collections)


def round_ratios(a: Variant, b: Variant, per_point: bool) -> list[float]:
    if per_point:
        return [
            a.round_median_cpu_per_point(i) / b.round_median_cpu_per_point(i)
            for i in range(len(a.cpu_s))
        ]
    return [a.round_median_cpu(i) / b.round_median_cpu(i) for i in range(len(a.cpu_s))]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--collections", type=int, default=200, help="per variant per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed collections per variant")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 collections")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.collections, args.warmup = 3, 20, 2

    ours, cache, collector = ours_host()
    ours.run()
    assert cache.latest is not None
    floor = sdk_floor(cache.latest)
    theirs, theirs_reader = contrib()
    theirs.run()
    theirs_floor = sdk_floor_of("sdk-floor-contrib", theirs_reader.get_metrics_data())
    dgx, dgx_skipped = dgx_variants()
    scratch = tempfile.TemporaryDirectory(prefix="bench-cost-")
    featured, features_skipped = feature_variants(scratch.name) if not dgx_skipped else ([], None)
    variants = [ours, theirs, floor, theirs_floor, *dgx, *featured]

    cycles_before = collector.sources.cycles
    run_rounds(variants, args.rounds, args.collections, args.warmup)
    host_reads = (collector.sources.cycles - cycles_before) / (
        args.warmup + args.rounds * args.collections)

    summaries = {v.name: v.summary() for v in variants}
    ratios: dict[str, dict[str, float]] = {}
    pairs = (
        ("ours-host/contrib", ours, theirs),
        ("ours-host/sdk-floor", ours, floor),
        ("contrib/sdk-floor-contrib", theirs, theirs_floor),
        # No host read can make ours cheaper than the SDK's own work for its points: this is the
        # lowest ours-host/contrib per point can be.
        ("sdk-floor/contrib", floor, theirs),
    )
    for label, a, b in pairs:
        ratios[label] = {
            "per_point": statistics.median(round_ratios(a, b, per_point=True)),
            "per_collection": statistics.median(round_ratios(a, b, per_point=False)),
            "per_point_round_max": max(round_ratios(a, b, per_point=True)),
        }
    # What each costs beyond the SDK's own work for its points: the reading of the host and the
    # making of Observations.
    above_floor = {
        name: statistics.median(
            a.round_median_cpu(i) - b.round_median_cpu(i) for i in range(len(a.cpu_s))
        )
        * 1e3
        for name, a, b in (("ours-host", ours, floor), ("contrib", theirs, theirs_floor))
    }
    ratios["ours-host/contrib above sdk floor"] = {
        "per_collection": above_floor["ours-host"] / above_floor["contrib"],
    }
    by_name = {v.name: v for v in variants}
    for kind in ("collect", "full"):
        on, off = by_name.get(f"{SCENARIO}-on-{kind}"), by_name.get(f"{SCENARIO}-off-{kind}")
        if on is not None and off is not None:
            ratios[f"{SCENARIO} features on/off, {kind}"] = {
                "per_collection": statistics.median(round_ratios(on, off, per_point=False)),
                "per_collection_round_max": max(round_ratios(on, off, per_point=False)),
            }
    goals = {
        "ours-host/contrib per point <= 0.5": {
            "goal": GOAL_VS_CONTRIB,
            "measured": ratios["ours-host/contrib"]["per_point"],
            "met": ratios["ours-host/contrib"]["per_point"] <= GOAL_VS_CONTRIB,
        },
        "ours-host/sdk-floor per point <= 1.5": {
            "goal": GOAL_VS_FLOOR,
            "measured": ratios["ours-host/sdk-floor"]["per_point"],
            "met": ratios["ours-host/sdk-floor"]["per_point"] <= GOAL_VS_FLOOR,
        },
    }

    feature_key = f"{SCENARIO} features on/off, full"
    if feature_key in ratios:
        measured = ratios[feature_key]["per_collection"]
        goals[f"{feature_key} per collection <= {GOAL_FEATURES}"] = {
            "goal": GOAL_FEATURES, "measured": measured, "met": measured <= GOAL_FEATURES}

    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "rounds": args.rounds,
        "collections_per_round": args.collections,
        "clock": "time.thread_time",
        "host_reads_per_ours_collection": host_reads,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "logical_cpus": os.cpu_count(),
            "opentelemetry-sdk": _version("opentelemetry-sdk"),
            "opentelemetry-instrumentation-system-metrics": _version(
                "opentelemetry-instrumentation-system-metrics"
            ),
            "psutil": _version("psutil"),
        },
        "contrib_config": CONTRIB_CONFIG,
        "features": {name: {"on": dict(f.on), "off": dict(f.off)} for name, f in FEATURES.items()},
        "variants": summaries,
        "cpu_ms_above_sdk_floor_per_collection": above_floor,
        "ratios": ratios,
        "goals": goals,
    }
    if dgx_skipped or features_skipped:
        result["skipped"] = {SCENARIO: dgx_skipped or features_skipped}

    print(
        f"{args.rounds} rounds x {args.collections} collections per variant, CPU time of "
        f"this thread, medians"
    )
    print(
        f"{'variant':<20}{'points':>8}{'cpu ms/coll':>13}{'round range':>17}"
        f"{'cpu us/point':>14}{'wall ms/coll':>14}"
    )
    for name, s in summaries.items():
        points = f"{s['points']:g}" if s["points"] else "-"
        per_point = s["cpu_us_per_point"]
        per_point_text = f"{per_point:.2f}" if per_point is not None else "-"
        rng = (
            f"{s['cpu_ms_per_collection_round_min']:.3f}-{s['cpu_ms_per_collection_round_max']:.3f}"
        )
        print(
            f"{name:<20}{points:>8}{s['cpu_ms_per_collection']:>13.3f}{rng:>17}"
            f"{per_point_text:>14}{s['wall_ms_per_collection']:>14.3f}"
        )
    print()
    for label, r in ratios.items():
        if "per_point" not in r:
            if "per_collection_round_max" in r:
                print(f"{label:<22} per collection {r['per_collection']:.3f} (worst round "
                      f"{r['per_collection_round_max']:.3f})")
            continue
        print(
            f"{label:<22} per point {r['per_point']:.3f} (worst round "
            f"{r['per_point_round_max']:.3f}), per collection {r['per_collection']:.3f}"
        )
    print(
        "above the SDK floor, cpu ms/collection: "
        + ", ".join(f"{name} {ms:.3f}" for name, ms in above_floor.items())
    )
    for label, g in goals.items():
        print(f"goal {label:<38} measured {g['measured']:.3f}  {'met' if g['met'] else 'NOT met'}")
    bound = ratios["sdk-floor/contrib"]["per_point"]
    print(
        f"lowest reachable ours-host/contrib per point (sdk-floor/contrib): {bound:.3f}"
        f" ({'below' if bound <= GOAL_VS_CONTRIB else 'above'} the goal's {GOAL_VS_CONTRIB})"
    )
    print(f"host reads per ours-host collection: {host_reads:.2f}")
    if dgx_skipped or features_skipped:
        print(f"{SCENARIO}: skipped ({dgx_skipped or features_skipped})")
    scratch.cleanup()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
