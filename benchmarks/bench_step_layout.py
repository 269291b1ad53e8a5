"""How much the synthetic training steps' speed depends on where their objects land in memory.

Holding ``k`` extra integer objects alive before a step moves the blocks that the step's own
temporary integers get from CPython's allocator. Each step kind of ``bench_training.py`` runs
at several values of ``k``, interleaved within one process in a shuffled order so that the
machine's own drift cancels, and each ``k`` is reported as its median time over the median time
at ``k = 0``. A step whose figures spread by more than the cost being measured cannot measure
it.

    .venv/bin/python benchmarks/bench_step_layout.py [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import time
from typing import Any

from bench_training import STEPS  # the script's folder is on sys.path

HELD = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 127)


def measure(repeats: int, iterations: int) -> dict[str, Any]:
    result: dict[str, Any] = {"date": dt.date.today().isoformat(), "repeats": repeats,
                              "iterations": iterations, "held": list(HELD), "steps": {}}
    for name, step in STEPS.items():
        times: dict[int, list[int]] = {k: [] for k in HELD}
        for repeat in range(repeats):
            for k in random.Random(repeat).sample(HELD, len(HELD)):
                held = [10**6 + j for j in range(k)]  # k fresh objects of the step's size
                started = time.perf_counter_ns()
                step(iterations)
                times[k].append(time.perf_counter_ns() - started)
                del held
        base = statistics.median(times[0])
        relative = [statistics.median(times[k]) / base for k in HELD]
        result["steps"][name] = {"relative_time": relative,
                                 "spread": max(relative) / min(relative) - 1.0}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = parser.parse_args(argv)
    result = measure(args.repeats, args.iterations)
    print("objects held: " + " ".join(f"{k:>5}" for k in HELD))
    for name, figures in result["steps"].items():
        print(f"{name:>12}: " + " ".join(f"{r:5.3f}" for r in figures["relative_time"])
              + f"   spread {figures['spread'] * 100:.1f} %")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
