"""Training-loop throughput with and without otel_gpu, alternated in one run.

A CPU-bound synthetic training step (pure Python arithmetic, so it competes for the interpreter
with anything else the training process runs) runs in blocks of fixed wall time. Plain blocks
iterate a range; instrumented blocks run with an ``otel_gpu.start()`` session on the simulated
``dgx-a100`` (collection and export every second) and iterate through ``otel_gpu.track()``.
Everything is exported over OTLP/gRPC to a real peer in a process of its own
(``benchmarks/otlp_sink.py``). Blocks alternate, their order swapping each round, and the figure
is the median over rounds of instrumented throughput over plain throughput, with a bootstrap
95 % confidence interval. A second figure, steps per CPU second of the training process (every
thread of it, not its children), is less sensitive to other load on the machine.

By default the step allocates nothing: every value stays in CPython's cache of small integers.
The speed of a step that allocates (``--step alloc``: a new integer object per operation)
depends by several percent on where in memory its temporaries land, which anything else in the
process shifts (``bench_step_layout.py``), so it cannot resolve a cost of 1 %.

``--export-from training`` hands the session an exporter of its own (``metric_exporters=``):
GPU, MIG and host metrics then go through the training process (their sources still run in a
child process), and a drain thread of the session replays the steps the tracker wrote into its
buffer. ``--export-from app-providers`` runs the session on an application's own
MeterProvider and TracerProvider (OTLP from the environment, made for each block and shut down
after it): such a provider is mirrored by the collector process (``otel_gpu.session.mirror``),
and ``--app-export-from application`` keeps the GPU metrics on it, in this process, instead; and
``--export-from instrument`` through the providers ``opentelemetry-instrument`` sets up: its
auto-instrumentation runs once, in this process, before the first block (the distro's
providers, our instrumentor and, where installed, the contrib system-metrics instrumentation,
which keep running through the plain blocks too, since global providers cannot be removed).
Those providers are built from the environment, so the session mirrors them too.
The default lets the session build its providers, and a child process collects and exports
those metrics and records the training steps. ``--control plain`` makes the second
kind of block plain as well (what the method reads when nothing differs); ``--control busy``
makes it plain next to a process that keeps another CPU busy; ``--neighbour`` keeps another CPU
busy under both kinds of block.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--rounds N] [--block-s S]
        [--interval S] [--export-from child|training|app-providers|instrument]
        [--app-export-from auto|application]
        [--step noalloc|alloc]
        [--control plain|busy] [--neighbour] [--json PATH]
    .venv/bin/python benchmarks/bench_training.py --combine RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from pathlib import Path
from typing import Any

import otel_gpu
from otel_gpu.session.api import start, stop

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


def step_alloc(n: int) -> int:
    """``n`` iterations of integer arithmetic that allocate an integer object per operation."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


_BLOCK = tuple((i * 37) & 0xFF for i in range(2048))


def step_noalloc(n: int) -> int:
    """About ``n`` iterations of integer arithmetic that allocate nothing: every value is below
    256, in CPython's cache of small integers, and the loops walk a prebuilt tuple and
    ``itertools.repeat``."""
    acc = 0
    for _ in repeat(None, max(1, n // len(_BLOCK))):
        for x in _BLOCK:
            acc = ((acc ^ x) & 0x7F) + ((acc >> 2) & 0x7F)
    return acc


STEPS: dict[str, Callable[[int], int]] = {"noalloc": step_noalloc, "alloc": step_alloc}
step_work = step_noalloc


def calibrate(target_s: float) -> int:
    """Iterations of ``step_work`` that take about ``target_s``."""
    n = 4096
    while True:
        started = time.perf_counter()
        step_work(n)
        took = time.perf_counter() - started
        if took > 0.02:
            return max(1, int(n * target_s / took))
        n *= 2


Block = tuple[float, float, float]


def run_block(batches: Callable[[Iterable[int]], Iterable[int]], work: int,
              seconds: float) -> Block:
    """Steps per wall second, steps per CPU second of the whole process (every thread), and
    the share of the wall time the loop's thread was off the CPU (waiting for the
    interpreter's lock or for a CPU)."""
    steps = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    thread_started = time.thread_time()
    deadline = started + seconds
    for _ in batches(range(10**9)):
        step_work(work)
        steps += 1
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    off_cpu = max(0.0, wall - (time.thread_time() - thread_started)) / wall
    return steps / wall, steps / cpu, off_cpu


def run_instrumented(work: int, block_s: float, interval_s: float, sink: Sink,
                     export_from: str) -> tuple[Block, int]:
    """One block inside a session; its figures and the OTLP metric requests the sink got."""
    before = sink.counts()["metrics"]
    exporters = None
    providers: tuple[Any, Any] | None = None
    if export_from == "training":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporters = [OTLPMetricExporter()]
    elif export_from == "app-providers":
        providers = app_providers(interval_s)
    elif export_from == "instrument":
        auto_instrument_once()
    session = start(simulate="dgx-a100", export_interval_s=interval_s,
                    metric_exporters=exporters,
                    meter_provider=providers[0] if providers else None,
                    tracer_provider=providers[1] if providers else None)
    expected = EXPECTED_MODES[export_from]
    if session.mode is None or (expected and session.mode.name not in expected):
        raise SystemExit(f"--export-from {export_from}: the session's mode is {session.mode}")
    modes_seen.add(session.mode.name)
    if session.tracker.buffer is None:
        raise SystemExit("the session's tracker records on the training thread")
    try:
        figures = run_block(otel_gpu.track, work, block_s)
    finally:
        stop()
        if providers is not None:
            for provider in providers:
                provider.shutdown()
    if session.tracker.steps == 0:
        raise SystemExit("the session's tracker recorded no steps")
    return figures, sink.counts()["metrics"] - before


#: The session modes each ``--export-from`` may give; for ``app-providers`` and ``instrument``,
#: EXPORT_CHILD when the application's (or the distro's) provider is mirrored
#: (``otel_gpu.session.mirror``; the default), SOURCES_CHILD under
#: ``OTEL_GPU_EXPORT_FROM=application`` (``--app-export-from application``).
EXPECTED_MODES: dict[str, tuple[str, ...]] = {
    "child": ("EXPORT_CHILD",), "training": ("SOURCES_CHILD",),
    "app-providers": ("EXPORT_CHILD", "SOURCES_CHILD"),
    "instrument": ("EXPORT_CHILD", "SOURCES_CHILD")}
modes_seen: set[str] = set()


def app_providers(interval_s: float) -> tuple[Any, Any]:
    """An application's own MeterProvider and TracerProvider, exporting over OTLP."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(),
                                           export_interval_millis=interval_s * 1e3)
    tracers = TracerProvider()
    tracers.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return MeterProvider(metric_readers=[reader], shutdown_on_exit=False), tracers


_auto_instrumented = False


def auto_instrument_once() -> None:
    """What ``opentelemetry-instrument`` does before a script runs: the distro's providers and
    every installed instrumentor. The session our instrumentor starts there is stopped: each
    block starts its own on those providers."""
    global _auto_instrumented
    if _auto_instrumented:
        return
    from opentelemetry.instrumentation.auto_instrumentation import initialize

    os.environ["OTEL_GPU_SIMULATE"] = "dgx-a100"
    try:
        initialize()
    finally:
        del os.environ["OTEL_GPU_SIMULATE"]
    stop()
    _auto_instrumented = True


@contextlib.contextmanager
def busy_neighbour() -> Iterator[None]:
    """A process that keeps another CPU busy, doing nothing else, while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def step_overhead(work: int, steps: int = 200) -> dict[str, float]:
    """Median microseconds from the end of one step's work to the start of the next: a plain
    iteration, a tracker that writes each step into its buffer (as in every session), and one
    that records through the SDK's instruments on this thread (what the modes on the
    application's own providers did before they deferred). Measured right after a step, as in
    a training loop, where the caches hold the step's code and data rather than ours."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from otel_gpu.session.tracker import TrainingTracker

    variants: dict[str, Callable[[Iterable[int]], Iterable[int]]] = {
        "plain": iter,
        "deferred": TrainingTracker(MeterProvider(), TracerProvider(), defer=True).track,
        "direct": TrainingTracker(MeterProvider(metric_readers=[InMemoryMetricReader()]),
                                  TracerProvider()).track,
    }
    result = {}
    for name, batches in variants.items():
        gaps = []
        ended = time.perf_counter_ns()
        for _ in batches(range(steps)):
            gaps.append(time.perf_counter_ns() - ended)
            step_work(work)
            ended = time.perf_counter_ns()
        result[name] = statistics.median(gaps[1:]) / 1e3
    return result


def median_interval(values: list[float], *, resamples: int = 2000,
                    confidence: float = 0.95) -> tuple[float, float]:
    """A percentile-bootstrap confidence interval of the median (fixed seed: reproducible)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return medians[int(tail * resamples)], medians[int((1.0 - tail) * resamples) - 1]


def measure(rounds: int, block_s: float, step_s: float, interval_s: float, sink: Sink,
            export_from: str, control: str | None = None) -> dict[str, Any]:
    work = calibrate(step_s)
    plain: list[Block] = []
    instrumented: list[Block] = []
    exports = []
    for r in range(rounds):
        order = ("plain", "otel") if r % 2 == 0 else ("otel", "plain")
        for kind in order:
            if kind == "plain":
                plain.append(run_block(iter, work, block_s))
            elif control == "busy":
                with busy_neighbour():
                    instrumented.append(run_block(iter, work, block_s))
                exports.append(0)
            elif control:
                instrumented.append(run_block(iter, work, block_s))
                exports.append(0)
            else:
                figures, requests = run_instrumented(work, block_s, interval_s, sink,
                                                     export_from)
                instrumented.append(figures)
                exports.append(requests)
    overhead = step_overhead(work)
    ratios = [i[0] / p[0] for i, p in zip(instrumented, plain, strict=True)]
    cpu_ratios = [i[1] / p[1] for i, p in zip(instrumented, plain, strict=True)]
    median = statistics.median(ratios)
    low, high = median_interval(ratios)
    return {
        "date": dt.date.today().isoformat(),
        "rounds": rounds,
        "block_s": block_s,
        "step_ms": step_s * 1e3,
        "step": "noalloc" if step_work is step_noalloc else "alloc",
        "collection_interval_s": interval_s,
        "export_from": export_from,
        "control": control,
        "plain_steps_per_s": [p[0] for p in plain],
        "otel_steps_per_s": [i[0] for i in instrumented],
        "plain_steps_per_cpu_s": [p[1] for p in plain],
        "otel_steps_per_cpu_s": [i[1] for i in instrumented],
        "plain_off_cpu_share": [p[2] for p in plain],
        "otel_off_cpu_share": [i[2] for i in instrumented],
        "median_off_cpu_share": {"plain": statistics.median(p[2] for p in plain),
                                 "otel": statistics.median(i[2] for i in instrumented)},
        "cpu_ratio_per_round": cpu_ratios,
        "median_cpu_ratio": statistics.median(cpu_ratios),
        "metric_requests_per_block": exports,
        "step_overhead_us": overhead,
        "ratio_per_round": ratios,
        "median_ratio": median,
        "median_ratio_95ci": [low, high],
        "goal": GOAL,
        "met": median >= GOAL,
        "session_modes": sorted(modes_seen),
        "otel_gpu_export_from": os.environ.get("OTEL_GPU_EXPORT_FROM", "auto"),
    }


def combine(paths: list[str]) -> int:
    """The median and its interval over the rounds of several runs (of the same settings)."""
    ratios: list[float] = []
    for path in paths:
        with open(path) as source:
            result = json.load(source)
        ratios.extend(result["ratio_per_round"])
        low, high = result["median_ratio_95ci"]
        print(f"{path}: {result['date']}, {result['rounds']} rounds, median "
              f"{result['median_ratio']:.4f} (95 % CI {low:.4f}-{high:.4f})")
    median = statistics.median(ratios)
    low, high = median_interval(ratios)
    verdict = "met" if median >= GOAL else "NOT met"
    print(f"all {len(ratios)} rounds: median throughput kept {median:.4f} "
          f"(95 % CI {low:.4f}-{high:.4f}; goal >= {GOAL}: {verdict})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (a smoke test)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds (default 40)")
    parser.add_argument("--block-s", type=float, default=2.0,
                        help="seconds per block (default 2; at least 1.2 intervals)")
    parser.add_argument("--step-ms", type=float, default=10.0, help="synthetic step time")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="collection and export interval in seconds (default 1)")
    parser.add_argument("--export-from", choices=("child", "training", "app-providers",
                                                  "instrument"), default="child",
                        help="which process exports GPU, MIG and host metrics (default child)")
    parser.add_argument("--app-export-from", choices=("auto", "application"), default="auto",
                        help="OTEL_GPU_EXPORT_FROM for --export-from app-providers: auto (the "
                             "default) mirrors the application's OTLP provider in the "
                             "collector process, application keeps the GPU metrics on it")
    parser.add_argument("--step", choices=tuple(STEPS), default="noalloc",
                        help="the synthetic step: allocation-free (default) or allocating")
    parser.add_argument("--control", choices=("plain", "busy"),
                        help="make the second kind of block plain too (what the method reads "
                             "when nothing differs), or plain next to a process that keeps "
                             "another CPU busy")
    parser.add_argument("--neighbour", action="store_true",
                        help="keep another CPU busy for the whole run, under both kinds of block")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="measure nothing: pool the rounds of earlier --json results")
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine)
    global step_work
    step_work = STEPS[args.step]
    rounds, block_s = (2, 1.5) if args.quick else (args.rounds, args.block_s)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    block_s = max(block_s, 1.2 * args.interval)  # every instrumented block sees a collection
    sink = Sink()
    for signal in ("METRICS", "TRACES", "LOGS"):
        os.environ[f"OTEL_{signal}_EXPORTER"] = "otlp"
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    # For the providers auto-instrumentation builds (--export-from instrument).
    os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = f"{args.interval * 1e3:g}"
    os.environ["OTEL_GPU_SUMMARY"] = "false"
    os.environ["OTEL_GPU_EXPORT_FROM"] = args.app_export_from
    if args.app_export_from == "application" and args.export_from == "app-providers":
        EXPECTED_MODES["app-providers"] = ("SOURCES_CHILD",)
    elif args.export_from == "app-providers":
        EXPECTED_MODES["app-providers"] = ("EXPORT_CHILD",)
    try:
        with busy_neighbour() if args.neighbour else contextlib.nullcontext():
            result = measure(rounds, block_s, args.step_ms / 1e3, args.interval, sink,
                             args.export_from, control=args.control)
    finally:
        if _auto_instrumented:  # the distro's providers: their last export before the sink goes
            from opentelemetry import metrics, trace

            for provider in (metrics.get_meter_provider(), trace.get_tracer_provider()):
                with contextlib.suppress(Exception):
                    provider.shutdown()  # type: ignore[attr-defined]
        sink.close()
    result["neighbour"] = args.neighbour
    arm = {"plain": "plain again (control)",
           "busy": "plain, another CPU kept busy (control)"}.get(
        args.control or "", f"otel_gpu, GPU metrics exported from the {args.export_from} process")
    print(f"session modes: {', '.join(result['session_modes']) or '-'}; OTEL_GPU_EXPORT_FROM="
          f"{result['otel_gpu_export_from']}")
    print(f"step {result['step_ms']:.1f} ms ({result['step']}), collection every "
          f"{args.interval:g} s, {rounds} rounds of {block_s:g} s blocks; second arm: {arm}"
          + ("; another CPU busy throughout" if args.neighbour else ""))
    for i, (p, o, e) in enumerate(zip(result["plain_steps_per_s"], result["otel_steps_per_s"],
                                      result["metric_requests_per_block"], strict=True)):
        print(f"  round {i}: plain {p:8.1f} steps/s  second {o:8.1f} steps/s  "
              f"ratio {o / p:.4f}  OTLP metric requests {e}")
    verdict = "met" if result["met"] else "NOT met"
    low, high = result["median_ratio_95ci"]
    print(f"median throughput kept: {result['median_ratio']:.4f} (95 % CI {low:.4f}-{high:.4f}; "
          f"goal >= {GOAL}: {verdict})")
    print(f"median steps per process CPU second kept: {result['median_cpu_ratio']:.4f} "
          "(the training process's threads; its child processes not counted)")
    off_cpu = result["median_off_cpu_share"]
    print(f"the loop's thread off the CPU (median share of wall time): plain "
          f"{off_cpu['plain'] * 100:.3f} %, second {off_cpu['otel'] * 100:.3f} %")
    overhead = result["step_overhead_us"]
    print("between two steps (median, microseconds): " + ", ".join(
        f"{name} {us:.1f}" for name, us in overhead.items()))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
