"""What serving the status socket costs the agent's cycle: cycles of the simulated dgx-a100
published to a ``StatusServer``, with no client, and with clients in another process asking as
fast as they can (root's reply, the largest). Rounds alternate the two, so that a noisy
neighbour falls on both alike; only the ratio of medians measured in the same run is reported."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from otel_gpu.cli.status_server import StatusServer
from otel_gpu.collect.build import build_collector

_CLIENTS = """
import sys, threading
from otel_gpu.cli.status_server import NoAgent, ask_agent
path, n = sys.argv[1], int(sys.argv[2])
def ask():
    while True:
        try:
            ask_agent(path)
        except NoAgent:
            pass
for _ in range(n):
    threading.Thread(target=ask, daemon=True).start()
sys.stdin.read()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    place = tempfile.mkdtemp(prefix="otel-gpu-bench-")
    path = os.path.join(place, "status.sock")
    collector = build_collector("dgx-a100", 10.0)
    collector.start()
    server = StatusServer(path, host="dgx-a100", simulated=True, interval_s=10.0)
    server.start()
    wall: dict[str, list[float]] = {"idle": [], "asked": []}
    ratios = []
    try:
        for _ in range(3):
            server.publish(collector.collect())
        for r in range(args.rounds):
            medians = {}
            for variant in (("idle", "asked") if r % 2 == 0 else ("asked", "idle")):
                clients = None
                if variant == "asked":
                    clients = subprocess.Popen(
                        [sys.executable, "-c", _CLIENTS, path, str(args.clients)],
                        stdin=subprocess.PIPE)
                    time.sleep(1.0)  # let them connect and keep asking
                times = []
                for _ in range(args.cycles):
                    started = time.perf_counter()
                    server.publish(collector.collect())
                    times.append(time.perf_counter() - started)
                if clients is not None:
                    clients.kill()
                    clients.wait()
                wall[variant] += times
                medians[variant] = statistics.median(times)
            ratios.append(medians["asked"] / medians["idle"])
    finally:
        server.close()
        collector.close()
    result = {
        "idle_cycle_ms": 1000 * statistics.median(wall["idle"]),
        "asked_cycle_ms": 1000 * statistics.median(wall["asked"]),
        "ratio_asked_over_idle": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "served": server.stats.served,
        "busy": server.stats.busy,
        "clients": args.clients,
    }
    print(f"cycle wall time, median: idle {result['idle_cycle_ms']:.1f} ms, "
          f"with {args.clients} clients asking {result['asked_cycle_ms']:.1f} ms; "
          f"ratio {result['ratio_asked_over_idle']:.2f} "
          f"(rounds {min(ratios):.2f} to {max(ratios):.2f}); "
          f"{server.stats.served} replies, {server.stats.busy} busy")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
