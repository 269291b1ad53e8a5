"""Training-loop throughput with and without otel_gpu, alternated in one run.

A CPU-bound synthetic training step (pure Python arithmetic, so it competes for the interpreter
with anything else the training process runs) runs in blocks of fixed wall time. Plain blocks
iterate a range; instrumented blocks run with an ``otel_gpu.start()`` session on the simulated
``dgx-a100`` (collection and export every second) and iterate through ``otel_gpu.track()``.
Everything is exported over OTLP/gRPC to a real peer in a process of its own
(``benchmarks/otlp_sink.py``). Blocks alternate, their order swapping each round, and the figure
is the median over rounds of instrumented throughput over plain throughput. A second figure,
steps per CPU second of the training process (every thread of it, not its children), is less
sensitive to other load on the machine than wall-clock throughput.

``--export-from training`` hands the session an exporter of its own, as an application with its
own providers does: GPU, MIG and host metrics then go through the training process (their
sources still run in a child process). The default lets the session build its providers, and a
child process collects and exports those metrics.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--interval S]
        [--export-from child|training] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import otel_gpu
from otel_gpu.library import start, stop

GOAL = 0.99


class Sink:
    """``otlp_sink.py`` in its own process."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("otlp_sink.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("port "):
            raise SystemExit(f"the OTLP sink did not start: {line!r}")
        self.endpoint = f"http://127.0.0.1:{int(line.split()[1])}"

    def counts(self) -> dict[str, int]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write("count\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)


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


def measure(rounds: int, block_s: float, step_s: float, interval_s: float, sink: Sink,
            export_from: str) -> dict[str, Any]:
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
            before = sink.counts()["metrics"]
            exporters = None
            if export_from == "training":
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter,
                )
                exporters = [OTLPMetricExporter()]
            session = start(simulate="dgx-a100", export_interval_s=interval_s,
                            metric_exporters=exporters)
            if (session.exporting is None) != (export_from == "training"):
                raise SystemExit(f"the session did not export from the {export_from} process")
            try:
                instrumented.append(run_block(otel_gpu.track, work, block_s))
            finally:
                stop()
            exports.append(sink.counts()["metrics"] - before)
            assert session.tracker.steps > 0
    ratios = [i[0] / p[0] for i, p in zip(instrumented, plain, strict=True)]
    cpu_ratios = [i[1] / p[1] for i, p in zip(instrumented, plain, strict=True)]
    return {
        "date": dt.date.today().isoformat(),
        "rounds": rounds,
        "block_s": block_s,
        "step_ms": step_s * 1e3,
        "collection_interval_s": interval_s,
        "export_from": export_from,
        "plain_steps_per_s": [p[0] for p in plain],
        "otel_steps_per_s": [i[0] for i in instrumented],
        "plain_steps_per_cpu_s": [p[1] for p in plain],
        "otel_steps_per_cpu_s": [i[1] for i in instrumented],
        "cpu_ratio_per_round": cpu_ratios,
        "median_cpu_ratio": statistics.median(cpu_ratios),
        "metric_requests_per_block": exports,
        "ratio_per_round": ratios,
        "median_ratio": statistics.median(ratios),
        "goal": GOAL,
        "met": statistics.median(ratios) >= GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--step-ms", type=float, default=10.0, help="synthetic step time")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="collection and export interval in seconds (default 1)")
    parser.add_argument("--export-from", choices=("child", "training"), default="child",
                        help="which process exports GPU, MIG and host metrics (default child)")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = parser.parse_args(argv)
    rounds, block_s = (2, 2.0) if args.quick else (20, 3.0)
    block_s = max(block_s, 1.2 * args.interval)  # every instrumented block sees a collection
    sink = Sink()
    for signal in ("METRICS", "TRACES", "LOGS"):
        os.environ[f"OTEL_{signal}_EXPORTER"] = "otlp"
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    try:
        result = measure(rounds, block_s, args.step_ms / 1e3, args.interval, sink,
                         args.export_from)
    finally:
        sink.close()
    print(f"step {result['step_ms']:.1f} ms, collection every {args.interval:g} s, "
          f"{rounds} rounds of {block_s:.0f} s blocks, GPU metrics exported from the "
          f"{args.export_from} process")
    for i, (p, o, e) in enumerate(zip(result["plain_steps_per_s"], result["otel_steps_per_s"],
                                      result["metric_requests_per_block"], strict=True)):
        print(f"  round {i}: plain {p:8.1f} steps/s  otel {o:8.1f} steps/s  "
              f"ratio {o / p:.4f}  OTLP metric requests {e}")
    verdict = "met" if result["met"] else "NOT met"
    print(f"median throughput kept: {result['median_ratio']:.4f} (goal >= {GOAL}: {verdict})")
    print(f"median steps per process CPU second kept: {result['median_cpu_ratio']:.4f} "
          "(the training process's threads; its child processes not counted)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
