"""CPU cost of attribution: one cycle's join of GPU processes with /proc, cgroups, Docker and the
kubelet, on simulated servers of 50, 500 and 5000 GPU processes.

Each server has 8 GPUs and one container per 5 processes (half of them Docker containers, half
pod containers), its processes spread over the GPUs and 10 users. The production readers and
clients read the simulated world (a procfs and a cgroup tree on disk, the Docker Engine API and
kubelet stand-ins on sockets), as ``otel-gpu snapshot --simulate`` does.

    .venv/bin/python benchmarks/bench_attribution.py            # 50, 500, 5000 processes
    .venv/bin/python benchmarks/bench_attribution.py --quick    # 50 and 500, fewer warm cycles

"Attribution" is ``Attributor.attribute()`` timed with ``time.thread_time()`` (CPU time of the
collecting thread; the stand-in daemons answer in threads of their own and are not counted) and
``time.perf_counter()``. "Cycle" is the whole ``Collector.collect()`` including the simulated
driver and the rewrite of the simulated /proc and cgroup trees, for scale only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from otel_gpu.collect.build import build_collector

GPUS = 8
PER_CONTAINER = 5
USERS = 10


def scenario(processes: int) -> dict[str, Any]:
    """A server of ``processes`` GPU processes in ``processes / 5`` containers on 8 GPUs."""
    name = f"bench-{processes}"
    gpus: list[dict[str, Any]] = [
        {"model": "A100-SXM4-80GB", "utilization": 0.5, "processes": []} for _ in range(GPUS)
    ]
    containers, pods = [], []
    for c in range(max(1, processes // PER_CONTAINER)):
        cid = f"{c + 1:064x}"
        gpu = c % GPUS
        resources = {
            "cpu_limit": 4,
            "cpu_utilization": 0.5,
            "memory_limit_bytes": 1 << 34,
            "memory_used_bytes": 1 << 32,
        }
        if c % 2 == 0:
            containers.append(
                {
                    "id": cid,
                    "name": f"job-{c}",
                    "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                    "labels": {"com.docker.compose.project": f"project-{c % 7}"},
                    "devices": [f"gpu{gpu}"],
                    "resources": resources,
                }
            )
            cgroup = f"0::/system.slice/docker-{cid}.scope"
        else:
            pod_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{c}"))
            pods.append(
                {
                    "namespace": f"team-{c % 5}",
                    "name": f"job-{c}-0",
                    "uid": pod_uid,
                    "containers": [
                        {
                            "name": "trainer",
                            "id": cid,
                            "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                            "devices": [f"gpu{gpu}"],
                            "resources": resources,
                        }
                    ],
                }
            )
            slice_ = "kubepods-burstable-pod" + pod_uid.replace("-", "_") + ".slice"
            cgroup = (
                f"0::/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{cid}.scope"
            )
        for k in range(PER_CONTAINER):
            pid = 10_000 + c * PER_CONTAINER + k
            gpus[gpu]["processes"].append(
                {
                    "pid": pid,
                    "uid": 1000 + c % USERS,
                    "comm": "python",
                    "cgroup": cgroup,
                    "used_memory_bytes": 1 << 28,
                    "sm_utilization": 0.01,
                }
            )
    return {
        "name": name,
        "users": {1000 + u: f"user{u}" for u in range(USERS)},
        "containers": containers,
        "pods": pods,
        "gpus": gpus,
    }


def measure(processes: int, warm_cycles: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(scenario(processes), f)
        path = f.name
    collector = build_collector(path, interval_s=10.0)
    try:
        collector.start()
        attributor = collector.sources.attributor
        assert attributor is not None
        timings: list[tuple[float, float]] = []
        attribute: Callable = attributor.attribute

        def timed(gpus: Any) -> Any:
            cpu, wall = time.thread_time(), time.perf_counter()
            result = attribute(gpus)
            timings.append((time.thread_time() - cpu, time.perf_counter() - wall))
            return result

        attributor.attribute = timed  # type: ignore[method-assign]
        cycles: list[float] = []
        for _ in range(1 + warm_cycles):
            cpu = time.thread_time()
            snapshot = collector.collect()
            cycles.append(time.thread_time() - cpu)
        counted = sum(w.processes for w in snapshot.workloads)
        assert counted == processes, (counted, processes)
        assert not [e for e in snapshot.errors if e.source != "nvml"], snapshot.errors
        warm = timings[1:]
        return {
            "processes": processes,
            "containers": len(snapshot.containers),
            "workloads": len(snapshot.workloads),
            "cold_cpu_ms": timings[0][0] * 1e3,
            "cold_wall_ms": timings[0][1] * 1e3,
            "warm_cpu_ms": statistics.median(t[0] for t in warm) * 1e3,
            "warm_wall_ms": statistics.median(t[1] for t in warm) * 1e3,
            "cycle_cold_cpu_ms": cycles[0] * 1e3,
            "cycle_warm_cpu_ms": statistics.median(cycles[1:]) * 1e3,
        }
    finally:
        collector.close()
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 and 500 processes, 3 warm cycles")
    parser.add_argument("--warm-cycles", type=int, default=None)
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = parser.parse_args(argv)
    sizes = (50, 500) if args.quick else (50, 500, 5000)
    warm_cycles = args.warm_cycles or (3 if args.quick else 10)
    rows = [measure(n, warm_cycles) for n in sizes]
    base = rows[0]
    print(
        f"{os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; {warm_cycles} warm cycles (median)"
    )
    header = (
        f"{'processes':>9} {'containers':>10} {'workloads':>9} {'cold cpu ms':>11} "
        f"{'warm cpu ms':>11} {'warm us/proc':>12} {'x per proc':>10} {'cold wall ms':>12} "
        f"{'warm wall ms':>12} {'cycle cold/warm cpu ms':>22}"
    )
    print(header)
    for row in rows:
        per_process = row["warm_cpu_ms"] * 1e3 / row["processes"]
        ratio = per_process / (base["warm_cpu_ms"] * 1e3 / base["processes"])
        row["warm_us_per_process"] = per_process
        row["per_process_ratio_to_50"] = ratio
        print(
            f"{row['processes']:>9} {row['containers']:>10} {row['workloads']:>9} "
            f"{row['cold_cpu_ms']:>11.2f} {row['warm_cpu_ms']:>11.2f} {per_process:>12.1f} "
            f"{ratio:>10.2f} {row['cold_wall_ms']:>12.2f} {row['warm_wall_ms']:>12.2f} "
            f"{row['cycle_cold_cpu_ms']:>10.1f} / {row['cycle_warm_cpu_ms']:<9.1f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
