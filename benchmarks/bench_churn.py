"""Churn: tens of thousands of GPU containers come and go; the SDK's state stays bounded.

A simulated node (tests/support/churn.py: eight GPUs, ``--alive`` containers at a time, each
with a GPU process, its cgroup figures with pressure stall times, its network counters, its
writable layer and /dev/shm, its device assignment, one in ten with an insight)
loses ``--churn`` containers and gains as many every cycle, for ``--cycles`` cycles of
fast-forwarded time. Every cycle goes through the production path: ``MeterGenerations`` (the
agent's catalog instruments via ``register_catalog``) and a ``PeriodicExportingMetricReader``
whose exporter encodes the batch as an OTLP request. Checked every cycle: every live workload is
exported with its attributes, no point carries ``otel.metric.overflow``. Measured: RSS after
warm-up and at the end, series held, generations.

    .venv/bin/python benchmarks/bench_churn.py                    # 10,000 cycles, 50,000 containers
    .venv/bin/python benchmarks/bench_churn.py --cycles 500       # a short run
    .venv/bin/python benchmarks/bench_churn.py --control          # also: the SDK alone (no
                                                                  # generations) until overflow
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from churn import ChurnWorld  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import (  # noqa: E402
    encode_metrics,
)
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource  # noqa: E402

from otel_gpu.telemetry.failures import FailureTally  # noqa: E402
from otel_gpu.telemetry.generations import MeterGenerations, RotationPolicy  # noqa: E402

WHO = "otel_gpu.workload.gpu.memory.usage"


class LastBatch(MetricExporter):
    """Encodes each batch as the OTLP exporter would and keeps the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.data: MetricsData | None = None
        self.bytes = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.bytes = encode_metrics(metrics_data).ByteSize()
        self.data = metrics_data
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(cycles: int, alive: int, churn: int, warmup: int, policy: RotationPolicy,
        stop_at_overflow: bool = False) -> dict[str, Any]:
    world = ChurnWorld(alive=alive, churn=churn)
    sink = LastBatch()
    meters = MeterGenerations(
        lambda: [PeriodicExportingMetricReader(sink, export_interval_millis=float("inf"))],
        Resource({"service.name": "bench-churn"}), world, FailureTally(), policy=policy)
    rss_warm = None
    rss_max = 0
    overflow_at = None
    missing = 0
    started = time.perf_counter()
    try:
        for _ in range(cycles):
            snapshot = world.step()
            meters.collect()
            assert sink.data is not None
            who: dict[str, dict[str, Any]] = {}
            for rm in sink.data.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        for point in metric.data.data_points:
                            if "otel.metric.overflow" in point.attributes:
                                overflow_at = snapshot.cycle if overflow_at is None else overflow_at
                            if metric.name == WHO and "container.id" in point.attributes:
                                who[point.attributes["container.id"]] = dict(point.attributes)
            expected = {w.attributes["container.id"]: w.attributes for w in snapshot.workloads}
            for cid, attrs in expected.items():
                got = who.get(cid)
                if got is None or any(got.get(k) != v for k, v in attrs.items()):
                    missing += 1
            if overflow_at is not None and stop_at_overflow:
                break
            meters.maybe_rotate(snapshot.cycle)
            if snapshot.cycle == warmup:
                gc.collect()
                rss_warm = _rss_kib()
            if snapshot.cycle > warmup and snapshot.cycle % 100 == 0:
                gc.collect()
                rss_max = max(rss_max, _rss_kib())
        gc.collect()
        rss_end = _rss_kib()
    finally:
        meters.shutdown()
    return {
        "cycles": world.cycle + 1,
        "distinct_containers": world.started,
        "alive": alive,
        "generations": meters.generation,
        "overflow_first_cycle": overflow_at,
        "live_workloads_missing_or_wrong": missing,
        "series_held_at_end": sum(meters.ledger.sizes().values()),
        "last_batch_bytes": sink.bytes,
        "rss_kib_after_warmup": rss_warm,
        "rss_kib_max_after_warmup": rss_max or None,
        "rss_kib_end": rss_end,
        "rss_growth_after_warmup": None if not rss_warm else round(
            max(rss_max, rss_end) / rss_warm - 1, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--alive", type=int, default=100)
    parser.add_argument("--churn", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--control", action="store_true",
                        help="also run the SDK alone (no new generations) until it overflows")
    args = parser.parse_args()
    result: dict[str, Any] = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    result["generations"] = run(args.cycles, args.alive, args.churn,
                                min(args.warmup, args.cycles - 1), RotationPolicy())
    if args.control:
        result["sdk_alone"] = run(args.cycles, args.alive, args.churn,
                                  min(args.warmup, args.cycles - 1),
                                  RotationPolicy(max_stale=sys.maxsize), stop_at_overflow=True)
    print(json.dumps(result, indent=1))
    ok = (result["generations"]["overflow_first_cycle"] is None
          and result["generations"]["live_workloads_missing_or_wrong"] == 0
          and (result["generations"]["rss_growth_after_warmup"] or 0) <= 0.10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
