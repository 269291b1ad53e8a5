"""How a cycle's CPU cost grows with the number of GPU processes: collection plus the SDK's work
for the catalog's points, and each stage apart, for 100 to 5,000 processes on 8 GPUs.

Each server is a generated scenario (``bench_attribution.scenario``: one container per 5
processes, half Docker containers, half pod containers, 10 users) run through
``build_collector``, so the production readers read the simulated world: NVML through the
simulated driver, ``ProcfsReader`` and ``CgroupReader`` on the simulated trees, the Docker and
kubelet clients on their stand-ins (threads of this process, not counted). Every catalog
instrument is registered on a ``MeterProvider`` built by ``build_meter_provider`` (the agent's
own, views included) with an ``InMemoryMetricReader``; a cycle is ``SnapshotCache.refresh()``
then ``reader.get_metrics_data()``, as the agent does. The servers run interleaved: every round
runs each of them ``--cycles`` times, the order rotating from round to round.

CPU time is ``time.thread_time()`` of this thread. The stages are timed the same way by
wrapping the readers' entry points: ``nvml`` (``NvmlSource.read``, the simulated driver
included), ``procfs`` (``ProcfsReader.read_many``), ``cgroup`` (``CgroupReader.read``, summed
over containers), ``clients`` (the Docker and kubelet clients), ``attribution`` (the whole
``Attributor.attribute``, the four before it included), ``host``, ``rules``
(``InsightEngine.update``), ``sdk`` (``get_metrics_data``: callbacks, aggregation, points),
``gc`` (the garbage collector's passes during the cycle, already inside the stages) and, apart,
``encode`` (the OTLP exporter's ``encode_metrics`` of that data, not part of the cycle).
``simulation`` (the simulator rewriting its trees, ``SimulatedWorld.begin_cycle``) is work the
real agent does not do: it is reported and left out of the cycle figure. After start-up the
script settles the garbage collector as the agent does (``settle_garbage_collector``:
``gc.freeze()`` and a youngest-generation threshold of 10,000; ``--no-freeze``: neither).

    .venv/bin/python benchmarks/bench_scale.py              # 5 rounds x 3 cycles
    .venv/bin/python benchmarks/bench_scale.py --quick      # 100 and 1000, 2 rounds x 2
    .venv/bin/python benchmarks/bench_scale.py --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from bench_attribution import scenario
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from otel_gpu.cli.agent import settle_garbage_collector
from otel_gpu.collect.build import build_collector
from otel_gpu.collect.collector import Collector, SnapshotCache
from otel_gpu.telemetry.instruments import register_catalog
from otel_gpu.telemetry.providers import build_meter_provider, get_meter

SIZES = (100, 500, 1000, 2000, 5000)
GOAL_SLOPE = 1.05
GOAL_MS_AT_5000 = 200.0
STAGES = ("nvml", "procfs", "cgroup", "clients", "attribution", "host", "rules", "sdk", "gc")


class GcTimer:
    """CPU time this thread spends in the garbage collector, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.spent += time.thread_time() - self._started

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


GC = GcTimer()


class Server:
    """One generated server, its Collector and its SDK, with CPU timers on every stage."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(scenario(processes), f)
            self._path = f.name
        self.collector: Collector = build_collector(self._path, interval_s=10.0)
        self.collector.start()
        self.cache = SnapshotCache(self.collector, max_age_s=math.inf)
        self.reader = InMemoryMetricReader()
        self.provider = build_meter_provider([self.reader], Resource({"service.name": "bench"}))
        register_catalog(get_meter(self.provider), self.cache)
        self.spent: dict[str, float] = {}
        self._wrap()
        self.samples: list[dict[str, float]] = []
        self.points = 0

    def _timed(self, stage: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                self.spent[stage] = self.spent.get(stage, 0.0) + time.thread_time() - started

        return timed

    def _wrap(self) -> None:
        c = self.collector
        sources = c.sources
        a = sources.attributor
        assert a is not None and a.cgroup is not None
        sources.nvml.read = self._timed("nvml", sources.nvml.read)  # type: ignore[method-assign]
        a.attribute = self._timed("attribution", a.attribute)  # type: ignore[method-assign]
        a.procfs.read_many = self._timed("procfs", a.procfs.read_many)  # type: ignore[method-assign]
        a.cgroup.read = self._timed("cgroup", a.cgroup.read)  # type: ignore[method-assign]
        for client, names in (
            (a.docker, ("list_containers", "inspect_many")),
            (a.pod_list, ("pods",)),
            (a.pod_resources, ("list_devices",)),
        ):
            for name in names if client is not None else ():
                setattr(client, name, self._timed("clients", getattr(client, name)))
        assert sources.host is not None
        sources.host.read = self._timed("host", sources.host.read)  # type: ignore[method-assign]
        c.insights.update = self._timed("rules", c.insights.update)  # type: ignore[method-assign]
        sim = sources.simulation
        sim.begin_cycle = self._timed("simulation", sim.begin_cycle)  # type: ignore[union-attr]

    def cycle(self) -> MetricsData:
        self.spent = {}
        gc_before = GC.spent
        started = time.thread_time()
        self.cache.refresh()
        refreshed = time.thread_time()
        data = self.reader.get_metrics_data()
        ended = time.thread_time()
        gc_spent = GC.spent - gc_before
        assert data is not None
        encode_started = time.thread_time()
        encode_metrics(data)
        encoded = time.thread_time()
        spent = dict(self.spent)
        spent["sdk"] = ended - refreshed
        spent["gc"] = gc_spent  # inside the stages above, not in addition to them
        spent["encode"] = encoded - encode_started
        spent["total"] = ended - started - spent.get("simulation", 0.0)
        spent["no_rules"] = spent["total"] - spent.get("rules", 0.0)
        self.samples.append(spent)
        return data

    def close(self) -> None:
        self.provider.shutdown()
        self.collector.close()
        os.unlink(self._path)


def count_points(data: MetricsData) -> int:
    return sum(
        len(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


def slope(rows: list[dict[str, Any]], key: str) -> float:
    """Log-log slope of ``key`` from the smallest to the largest server."""
    first, last = rows[0], rows[-1]
    return math.log(last[key] / first[key]) / math.log(last["processes"] / first["processes"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1000, 2 rounds x 2")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated process counts")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--no-freeze", action="store_true",
                        help="leave the garbage collector as it is: no gc.freeze() and the "
                        "default thresholds, where the agent settles it after start-up")
    args = parser.parse_args(argv)
    sizes = (100, 1000) if args.quick else SIZES
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    rounds = args.rounds or (2 if args.quick else 5)
    cycles = args.cycles or (2 if args.quick else 3)

    servers = [Server(n) for n in sizes]
    try:
        for server in servers:  # cold caches and the SDK's first aggregations, not measured
            server.points = count_points(server.cycle())
            server.cycle()
            server.samples.clear()
        if not args.no_freeze:
            settle_garbage_collector()
        for r in range(rounds):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for server in order:
                for _ in range(cycles):
                    server.cycle()  # the collector runs when it would in the agent
        rows = []
        for server in servers:
            row: dict[str, Any] = {"processes": server.processes, "points": server.points}
            for key in ("total", "no_rules", *STAGES, "encode", "simulation"):
                row[key] = statistics.median(s.get(key, 0.0) for s in server.samples) * 1e3
            for key in ("total", "gc"):  # the collector's full passes are rare and long
                row[key + "_mean"] = statistics.fmean(s[key] for s in server.samples) * 1e3
            rows.append(row)
    finally:
        for server in servers:
            server.close()

    sdk = metadata.version("opentelemetry-sdk")
    print(
        f"{datetime.date.today()}, {os.cpu_count()} logical CPUs, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}, "
        f"opentelemetry-sdk {sdk}; {rounds} rounds x {cycles} cycles, medians, CPU ms per cycle"
    )
    keys = ("total", "no_rules", *STAGES, "encode", "simulation")
    print(f"{'procs':>6} {'points':>7} " + " ".join(f"{k:>11}" for k in keys))
    for row in rows:
        print(
            f"{row['processes']:>6} {row['points']:>7} "
            + " ".join(f"{row[k]:>11.1f}" for k in keys)
        )
    result: dict[str, Any] = {"rows": rows}
    if len(rows) > 1:
        result["slope"] = {k: slope(rows, k) for k in ("total", "no_rules", "sdk", "encode")}
        lo, hi = rows[0]["processes"], rows[-1]["processes"]
        print(
            f"log-log slope {lo} -> {hi}: with rules {result['slope']['total']:.2f}, "
            f"without rules {result['slope']['no_rules']:.2f} (goal <= {GOAL_SLOPE}); "
            f"sdk {result['slope']['sdk']:.2f}, encode {result['slope']['encode']:.2f}"
        )
    big = rows[-1]
    print(
        f"cycle at {big['processes']} processes: {big['total']:.1f} ms with rules, "
        f"{big['no_rules']:.1f} ms without (goal <= {GOAL_MS_AT_5000:.0f} ms at 5000); "
        f"means: {big['total_mean']:.1f} ms with rules, of which gc {big['gc_mean']:.1f} ms"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
