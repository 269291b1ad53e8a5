"""Resident memory and CPU of the agent process, read from /proc while it runs.

Starts ``python -m otel_gpu.cli agent ... --interval 1 --exporter none`` as a child, lets it run
``--warmup`` seconds, then samples its ``VmRSS`` every second for ``--seconds`` and its CPU time
(``utime + stime`` of ``/proc/<pid>/stat``) over the same window. Under ``--simulate`` the
simulator's stand-in servers (the Docker Engine API, the kubelet's pod-resources gRPC API and
``/pods``) are threads of the agent process itself, so their memory and CPU are counted; in the
``dgx-a100-apart`` variant they run in a process of their own (``peer_processes.py world``) and
the agent (``peer_processes.py agent``) is pointed at their sockets, so they are not. The agent
still writes the simulated /proc and cgroup trees and drives the simulated driver.

    .venv/bin/python benchmarks/bench_rss.py                       # every variant
    .venv/bin/python benchmarks/bench_rss.py --seconds 10 --warmup 5 --variant dgx-a100-apart
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HELPER = str(Path(__file__).with_name("peer_processes.py"))
VARIANTS = {
    "dgx-a100": ["--simulate", "dgx-a100"],
    "dgx-a100-apart": ["--simulate", "dgx-a100"],  # the stand-ins in another process
    "host": [],  # this machine's driver (if any), /proc and cgroups
}


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args: list[str], seconds: float, warmup: float,
            world: dict[str, str] | None = None) -> dict[str, float]:
    """``world``: the endpoints of stand-in servers running elsewhere."""
    agent = [sys.executable, "-m", "otel_gpu.cli"] if world is None else [sys.executable, HELPER]
    command = [*agent, "agent", *args, "--interval", "1", "--exporter", "none"]
    env = None if world is None else {**os.environ, "OTEL_GPU_PEER_WORLD": json.dumps(world)}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
    try:
        time.sleep(warmup)
        if child.poll() is not None:
            raise RuntimeError(f"{' '.join(command)} exited with {child.returncode}")
        samples = []
        cpu0, wall0 = _cpu_s(child.pid), time.monotonic()
        end = wall0 + seconds
        while time.monotonic() < end:
            samples.append(_status_kb(child.pid, "VmRSS"))
            time.sleep(1.0)
        cpu1, wall1 = _cpu_s(child.pid), time.monotonic()
        return {
            "rss_mb": statistics.median(samples) / 1024,
            "rss_max_mb": max(samples) / 1024,
            "hwm_mb": _status_kb(child.pid, "VmHWM") / 1024,
            "cpu_percent": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
            "threads": _status_kb(child.pid, "Threads"),
        }
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    args = parser.parse_args(argv)
    print(f"{datetime.date.today()}, Python {sys.version.split()[0]}; agent --interval 1 "
          f"--exporter none; {args.seconds:.0f} s after {args.warmup:.0f} s of warm-up")
    print(f"{'variant':>15} {'rss MB':>8} {'max MB':>8} {'peak MB':>8} {'cpu %':>7} "
          f"{'threads':>8}")
    for name in args.variant or list(VARIANTS):
        if name.endswith("-apart"):
            with _world(VARIANTS[name][-1]) as world:
                row = measure(VARIANTS[name], args.seconds, args.warmup, world)
        else:
            row = measure(VARIANTS[name], args.seconds, args.warmup)
        print(f"{name:>15} {row['rss_mb']:>8.1f} {row['rss_max_mb']:>8.1f} "
              f"{row['hwm_mb']:>8.1f} {row['cpu_percent']:>7.2f} {row['threads']:>8}")
    return 0


@contextlib.contextmanager
def _world(scenario: str) -> Iterator[dict[str, str]]:
    """The scenario's stand-in servers in a process of their own, while the block runs."""
    world = subprocess.Popen([sys.executable, HELPER, "world", scenario], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert world.stdout is not None and world.stdin is not None
        line = world.stdout.readline().strip()
        if not line:
            raise RuntimeError("the stand-in servers did not start")
        yield json.loads(line)
    finally:
        if world.stdin is not None:
            world.stdin.close()
        world.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
