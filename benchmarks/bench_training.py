"""Training-loop throughput with and without otel_gpu, alternated in one run.

A CPU-bound synthetic training step (pure Python arithmetic, so it competes with the collector
thread for the interpreter) runs in blocks of fixed wall time. Plain blocks iterate a range;
instrumented blocks run with an ``otel_gpu.start()`` session on the simulated ``dgx-a100``
(collection and export every second, the OTLP encoding done and discarded) and iterate through
``otel_gpu.track()``. Blocks alternate, their order swapping each round, and the figure is the
median over rounds of instrumented throughput over plain throughput. A second figure, steps per
CPU second of the training process (every thread of it, not the child process that runs the
sources), is less sensitive to other load on the machine than wall-clock throughput.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

import otel_gpu
from otel_gpu.library import start, stop

GOAL = 0.99


class EncodingExporter(MetricExporter):
    """Does an OTLP exporter's CPU work (protobuf encoding) and drops the bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.exports = 0
        self.bytes = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.exports += 1
        self.bytes += len(encode_metrics(metrics_data).SerializeToString())
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def step_work(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def calibrate(target_s: float) -> int:
    """Iterations of ``step_work`` that take about ``target_s``."""
    n = 1000
    while True:
        started = time.perf_counter()
        step_work(n)
        took = time.perf_counter() - started
        if took > 0.02:
            return max(1, int(n * target_s / took))
        n *= 2


def run_block(batches: Callable[[Iterable[int]], Iterable[int]], work: int,
              seconds: float) -> tuple[float, float]:
    """Steps per wall second, and steps per CPU second of the whole process (every thread)."""
    steps = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + seconds
    for _ in batches(range(10**9)):
        step_work(work)
        steps += 1
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return steps / wall, steps / cpu


def measure(rounds: int, block_s: float, step_s: float, interval_s: float = 1.0) -> dict[str, Any]:
    work = calibrate(step_s)
    plain: list[tuple[float, float]] = []
    instrumented: list[tuple[float, float]] = []
    exports = []
    for r in range(rounds):
        order = ("plain", "otel") if r % 2 == 0 else ("otel", "plain")
        for kind in order:
            if kind == "plain":
                plain.append(run_block(iter, work, block_s))
                continue
            exporter = EncodingExporter()
            session = start(simulate="dgx-a100", export_interval_s=interval_s,
                            metric_exporters=[exporter])
            try:
                instrumented.append(run_block(otel_gpu.track, work, block_s))
            finally:
                stop()
            exports.append(exporter.exports)
            assert session.tracker.steps > 0
    ratios = [i[0] / p[0] for i, p in zip(instrumented, plain, strict=True)]
    cpu_ratios = [i[1] / p[1] for i, p in zip(instrumented, plain, strict=True)]
    return {
        "date": dt.date.today().isoformat(),
        "rounds": rounds,
        "block_s": block_s,
        "step_ms": step_s * 1e3,
        "collection_interval_s": interval_s,
        "plain_steps_per_s": [p[0] for p in plain],
        "otel_steps_per_s": [i[0] for i in instrumented],
        "plain_steps_per_cpu_s": [p[1] for p in plain],
        "otel_steps_per_cpu_s": [i[1] for i in instrumented],
        "cpu_ratio_per_round": cpu_ratios,
        "median_cpu_ratio": statistics.median(cpu_ratios),
        "exports_per_block": exports,
        "ratio_per_round": ratios,
        "median_ratio": statistics.median(ratios),
        "goal": GOAL,
        "met": statistics.median(ratios) >= GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    # Metrics go to the encoding exporter; spans and insight log records have no backend here,
    # and retrying a closed port would be cost of its own.
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--step-ms", type=float, default=10.0, help="synthetic step time")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="collection and export interval in seconds (default 1)")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = parser.parse_args(argv)
    rounds, block_s = (2, 2.0) if args.quick else (20, 3.0)
    block_s = max(block_s, 1.2 * args.interval)  # every instrumented block sees a collection
    result = measure(rounds, block_s, args.step_ms / 1e3, args.interval)
    print(f"step {result['step_ms']:.1f} ms, collection every {args.interval:g} s, "
          f"{rounds} rounds of {block_s:.0f} s blocks")
    for i, (p, o, e) in enumerate(zip(result["plain_steps_per_s"], result["otel_steps_per_s"],
                                      result["exports_per_block"], strict=True)):
        print(f"  round {i}: plain {p:8.1f} steps/s  otel {o:8.1f} steps/s  "
              f"ratio {o / p:.4f}  exports {e}")
    verdict = "met" if result["met"] else "NOT met"
    print(f"median throughput kept: {result['median_ratio']:.4f} (goal >= {GOAL}: {verdict})")
    print(f"median steps per process CPU second kept: {result['median_cpu_ratio']:.4f} "
          "(the training process's threads; the sources' child process not counted)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
