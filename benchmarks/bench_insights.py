"""CPU time of the insight rules per cycle, at 100, 1,000 and 5,000 GPU processes.

The Snapshots are built with the production types: 8 GPUs, the processes spread over
containers of 4 processes each (one workload, one device assignment and one cgroup per
container), counters that advance every cycle, a host with memory and two filesystems. The
engine's window is filled first (60 samples), then each measured cycle is one
``InsightEngine.update`` timed with ``time.thread_time()``.

With ``--baseline DIR`` (a checkout of an earlier tree) each round runs the same sizes on that
tree and on this one, in separate processes, alternating which goes first; the ratio of each
round's medians is reported, so both sides run under the same conditions.

    .venv/bin/python benchmarks/bench_insights.py
    .venv/bin/python benchmarks/bench_insights.py --baseline /tmp/before --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (100, 1000, 5000)
GPUS = 8
PER_CONTAINER = 4
INTERVAL_S = 10.0
WINDOW = 60
GiB = 2**30


def build_snapshots(processes: int, cycles: int) -> list:
    from otel_gpu.snapshot import (
        ContainerResources,
        ContainerUsage,
        DeviceAssignment,
        Filesystem,
        Gpu,
        GpuProcess,
        HostSnapshot,
        Snapshot,
        Workload,
    )

    containers = max(processes // PER_CONTAINER, 1)
    placed: dict[int, list[GpuProcess]] = {g: [] for g in range(GPUS)}
    for p in range(processes):
        placed[(p // PER_CONTAINER) % GPUS].append(GpuProcess(pid=1000 + p, used_memory_bytes=GiB))
    snapshots = []
    for cycle in range(cycles):
        now = cycle * INTERVAL_S
        gpus = tuple(
            Gpu(
                index=g, uuid=f"GPU-{g:04d}", name=f"gpu{g}", model="NVIDIA H100 80GB HBM3",
                utilization_general=0.2 + 0.05 * g, memory_used_bytes=40 * GiB,
                memory_total_bytes=80 * GiB, temperature_gpu_celsius=60.0 + g,
                ecc_uncorrected=0, clocks_event_reasons={"hw_thermal_slowdown": False},
                processes=tuple(placed[g]),
            )
            for g in range(GPUS)
        )
        workloads, assignments, usages = [], [], []
        for c in range(containers):
            device = f"GPU-{c % GPUS:04d}"
            attrs = {"container.id": f"{c:064x}", "container.name": f"job-{c}"}
            workloads.append(Workload(device, False, {**attrs, "process.owner": f"user{c % 50}"},
                                      PER_CONTAINER, PER_CONTAINER * GiB))
            assignments.append(DeviceAssignment(device, False, attrs))
            usages.append(ContainerUsage(attrs, ContainerResources(
                cgroup_version=2, cpu_user_s=now * (1.0 + c % 3), cpu_system_s=now * 0.2,
                cpu_limit=4.0, cpu_periods=cycle * 100, cpu_throttled_periods=cycle * (c % 40),
                memory_usage_bytes=(8 + c % 8) * GiB, memory_limit_bytes=16 * GiB, oom_kills=0,
            )))
        host = HostSnapshot(
            memory_total_bytes=1024 * GiB, memory_available_bytes=512 * GiB,
            filesystems=(
                Filesystem("/dev/nvme0n1p1", "/", "ext4", "rw", 100 * GiB, 400 * GiB, 0),
                Filesystem("/dev/nvme1n1", "/data", "xfs", "rw", 1900 * GiB - cycle * GiB,
                           100 * GiB + cycle * GiB, 0),
            ),
        )
        snapshots.append(Snapshot(
            cycle=cycle, timestamp=now, driver_available=True, gpus=gpus, host=host,
            workloads=tuple(workloads), assignments=tuple(assignments),
            containers=tuple(usages),
        ))
    return snapshots


def worker(processes: int, measured: int) -> dict:
    """Runs in a process of its own, on whichever tree is first on sys.path."""
    from otel_gpu.insights.engine import InsightEngine

    snapshots = build_snapshots(processes, WINDOW + measured)
    engine = InsightEngine(window=WINDOW)
    for snap in snapshots[:WINDOW]:
        engine.update(snap)
    times = []
    for snap in snapshots[WINDOW:]:
        started = time.thread_time()
        update = engine.update(snap)
        times.append(time.thread_time() - started)
    return {"median_s": statistics.median(times), "active": len(update.active),
            "rules": sorted({i.rule for i in update.active})}


def run_tree(tree: Path, processes: int, measured: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(processes), "--measured", str(measured)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of the tree to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measured", type=int, default=10, help="timed cycles per run")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.measured)))
        return
    trees = {"current": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for size in args.sizes:
            for name in order:
                results.setdefault((name, size), []).append(
                    run_tree(trees[name], size, args.measured))
    print(f"GPU processes on {GPUS} GPUs, {PER_CONTAINER} per container; window {WINDOW}; "
          f"{args.rounds} rounds x {args.measured} cycles; median ms of rule time per cycle")
    header = "| processes | " + " | ".join(f"{n} ms" for n in trees)
    header += " | baseline / current |" if "baseline" in trees else " |"
    print(header)
    print("|---" * (len(trees) + 1 + ("baseline" in trees)) + "|")
    for size in args.sizes:
        medians = {n: [x["median_s"] * 1e3 for x in results[(n, size)]] for n in trees}
        row = f"| {size:,} | " + " | ".join(
            f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in medians.values())
        if "baseline" in trees:
            ratios = [b / c for b, c in zip(medians["baseline"], medians["current"], strict=True)]
            row += f" | {statistics.median(ratios):.1f}x"
            same = {json.dumps([x["active"], x["rules"]]) for n in trees
                    for x in results[(n, size)]}
            if len(same) != 1:
                row += " (active insights differ!)"
        print(row + " |")
    last = results[("current", args.sizes[-1])][-1]
    print(f"active insights at {args.sizes[-1]:,}: {last['active']} ({', '.join(last['rules'])})")


if __name__ == "__main__":
    main()
