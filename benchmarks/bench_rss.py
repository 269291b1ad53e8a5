"""Resident memory and CPU of the agent process, read from /proc while it runs.

Starts ``python -m otel_gpu.cli agent ... --interval 1 --exporter none`` as a child, lets it run
``--warmup`` seconds, then samples its ``VmRSS`` every second for ``--seconds`` and its CPU time
(``utime + stime`` of ``/proc/<pid>/stat``) over the same window. Under ``--simulate`` the
simulator's stand-in servers (the Docker Engine API, the kubelet's pod-resources gRPC API and
``/pods``) are threads of the agent process itself, so their memory and CPU are counted.

    .venv/bin/python benchmarks/bench_rss.py                       # dgx-a100 and the real host
    .venv/bin/python benchmarks/bench_rss.py --seconds 10 --warmup 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "dgx-a100": ["--simulate", "dgx-a100"],
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


def measure(args: list[str], seconds: float, warmup: float) -> dict[str, float]:
    command = [sys.executable, "-m", "otel_gpu.cli", "agent", *args,
               "--interval", "1", "--exporter", "none"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    print(f"{'variant':>10} {'rss MB':>8} {'max MB':>8} {'peak MB':>8} {'cpu %':>7}")
    for name in args.variant or list(VARIANTS):
        row = measure(VARIANTS[name], args.seconds, args.warmup)
        print(f"{name:>10} {row['rss_mb']:>8.1f} {row['rss_max_mb']:>8.1f} "
              f"{row['hwm_mb']:>8.1f} {row['cpu_percent']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
