"""A backend outage costs the agent no sampling and bounded memory; it recovers within about one
interval of the backend's return.

Runs ``otel-gpu agent --simulate dgx-a100 --interval I --cycles N`` against an OTLP/gRPC port
where nothing listens for ``--down`` seconds, then starts a real OTLP receiver on that port
(tests/support/otlp_receiver.py) and lets the agent finish. Prints, as JSON: cycles the agent
sampled while the backend was down (delivered after its return, or dropped from the bounded
queue and counted), seconds from the return to the first export arriving and to the first cycle
sampled after the return arriving (the queued ones go first, in order), the
agent's RSS over time, and the export failures it counted.

    .venv/bin/python benchmarks/bench_outage.py                 # 5 minutes down at --interval 1
    .venv/bin/python benchmarks/bench_outage.py --down 20       # a short run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from otlp_receiver import OtlpReceiver, points  # noqa: E402

MARKER = "system.cpu.logical.count"  # one point per cycle


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", type=float, default=300.0, help="seconds the backend is down")
    parser.add_argument("--up", type=float, default=10.0, help="seconds it runs afterwards")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()

    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    cycles = int((args.down + args.up) / args.interval)
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    agent = subprocess.Popen(
        [sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate", "dgx-a100",
         "--interval", str(args.interval), "--cycles", str(cycles)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(5.0):
            value = _rss_kib(agent.pid)
            if value is not None:
                rss.append((round(time.monotonic() - started, 1), value))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(args.down)
    with OtlpReceiver(grpc_port=port) as receiver:
        back_ns = time.time_ns()
        back = time.monotonic()
        recovered_s = None
        first_export_s = None
        while agent.poll() is None:
            if first_export_s is None and receiver.metric_requests:
                first_export_s = time.monotonic() - back
            if recovered_s is None and any(
                    p["time_unix_nano"] > back_ns for p in points(receiver.metric_requests[-3:])
                    if p["name"] == MARKER):
                recovered_s = time.monotonic() - back
            time.sleep(0.1)
        wall_s = time.monotonic() - started
        stop.set()
        received = points(receiver.metric_requests)
    times = sorted({p["time_unix_nano"] for p in received if p["name"] == MARKER})
    errors = {f"{p['attributes']['otel_gpu.source']}/{p['attributes']['error.type']}": p["value"]
              for p in points(receiver.metric_requests[-1:])
              if p["name"] == "otel_gpu.collection.errors"}
    delivered_down = sum(1 for t in times if t < back_ns)
    dropped = sum(v for k, v in errors.items() if k in (
        "export/export_queue_full", "export/export_abandoned"))
    result = {
        "command": " ".join(sys.argv),
        "interval_s": args.interval,
        "down_s": args.down,
        "agent_cycles": cycles,
        "agent_exit": agent.returncode,
        "agent_wall_s": round(wall_s, 1),
        "cycles_sampled_while_down": delivered_down + dropped,
        "delivered_from_outage": delivered_down,
        "dropped_from_queue": dropped,
        "first_export_after_s": None if first_export_s is None else round(first_export_s, 2),
        "recovered_after_s": None if recovered_s is None else round(recovered_s, 2),
        "rss_kib_first": rss[0][1] if rss else None,
        "rss_kib_max": max(v for _, v in rss) if rss else None,
        "rss_kib_last": rss[-1][1] if rss else None,
        "errors": errors,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
