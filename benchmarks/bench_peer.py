"""otel-gpu against nvitop-exporter on the same simulated NVML (dgx-a100).

Cycle mode (default): both tools in this one process, on one :class:`FakeNvml` installed as the
``pynvml`` module (nvitop imports it; our NVML source is handed the same object). Variants run
interleaved, in rounds whose order rotates, and are timed with ``time.thread_time`` (CPU of this
thread; the simulator's Docker and kubelet stand-in servers answer from their own threads and are
not counted, the clients' work is):

- ``ours-collect``: ``Collector.collect()`` of ``build_collector("dgx-a100")`` (NVML, host,
  attribution through the simulated /proc, cgroups, Docker and kubelet, insight rules);
- ``ours-sdk``: the same cycle through every catalog instrument to an ``InMemoryMetricReader``;
- ``ours-otlp``: ``ours-sdk`` plus encoding the MetricsData to OTLP protobuf bytes with the OTLP
  exporter's own encoder (``encode_metrics(...).SerializeToString()``), no network;
- ``nvitop-update``: one loop body of nvitop-exporter's ``PrometheusExporter.collect()``
  (``update_host()`` then ``update_device()`` for every physical and MIG device, as its CLI
  lists them), on its own ``CollectorRegistry``;
- ``nvitop-scrape``: ``nvitop-update`` plus ``prometheus_client.generate_latest(registry)``.

Points per cycle: ours, the data points in the MetricsData (``ours-collect`` is charged the
points the same cycle gives through the SDK); nvitop, the samples in its registry.

Process mode (``--processes``): ``otel-gpu agent --simulate dgx-a100 --interval 1 --exporter
none`` and ``nvitop-exporter --interval 1`` on an installed dgx-a100 stand-in, each alone as a
process for ``--seconds``, alternating over rounds: CPU % (utime + stime from /proc over the
window, after a warm-up) and RSS. The agent's simulated Docker and kubelet servers run in a
third process (see ``peer_processes.py``), so the agent's figures are its own.

    .venv/bin/python benchmarks/bench_peer.py [--quick] [--json out.json]
    .venv/bin/python benchmarks/bench_peer.py --processes [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cost import Variant, _version, count_points, round_ratios, run_rounds

SCENARIO = "dgx-a100"
OURS = ("ours-collect", "ours-sdk", "ours-otlp")
PEERS = ("nvitop-update", "nvitop-scrape")
HERE = Path(__file__).resolve().parent


def cycle_variants() -> list[Variant]:
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_gpu.collect.build import build_collector
    from otel_gpu.collect.collector import SnapshotCache
    from otel_gpu.simulate.nvml_module import install
    from otel_gpu.telemetry.instruments import register_catalog
    from otel_gpu.telemetry.providers import get_meter

    collector = build_collector(simulate=SCENARIO)
    message = collector.start()
    if message is not None:
        raise SystemExit(f"simulated driver did not start: {message}")
    fake = collector.sources.simulation.nvml  # type: ignore[attr-defined]
    install(fake)  # nvitop imports pynvml: the same simulated driver
    import logging

    logging.getLogger("nvitop").setLevel(logging.ERROR)
    from nvitop import Device
    from nvitop_exporter.exporter import PrometheusExporter
    from prometheus_client import CollectorRegistry, generate_latest

    def sdk_pipeline() -> tuple[SnapshotCache, InMemoryMetricReader]:
        cache = SnapshotCache(collector, max_age_s=float("inf"))
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        register_catalog(get_meter(provider), cache)
        return cache, reader

    sdk_cache, sdk_reader = sdk_pipeline()
    otlp_cache, otlp_reader = sdk_pipeline()
    sdk_cache.refresh()
    points_of_a_cycle = count_points(sdk_reader.get_metrics_data())

    def ours_collect() -> int:
        collector.collect()
        return points_of_a_cycle

    def ours_sdk() -> int:
        sdk_cache.refresh()
        return count_points(sdk_reader.get_metrics_data())

    def ours_otlp() -> int:
        otlp_cache.refresh()
        data = otlp_reader.get_metrics_data()
        encode_metrics(data).SerializeToString()
        return count_points(data)

    physical = Device.from_indices(range(Device.count()))
    devices = sorted(
        physical + [m for d in physical for m in d.mig_devices()],
        key=lambda d: (d.index,) if isinstance(d.index, int) else d.index,
    )
    registry = CollectorRegistry()
    exporter = PrometheusExporter(devices, hostname="bench", registry=registry, interval=1.0)

    def samples() -> int:
        return sum(len(metric.samples) for metric in registry.collect())

    def update() -> None:
        exporter.update_host()
        for device in devices:
            exporter.update_device(device)

    update()
    points_of_an_update = samples()

    def nvitop_update() -> int:
        update()
        return points_of_an_update

    def nvitop_scrape() -> int:
        update()
        generate_latest(registry)
        return points_of_an_update

    return [
        Variant("ours-collect", "Collector.collect()", ours_collect),
        Variant("ours-sdk", "collect + catalog instruments + InMemoryMetricReader", ours_sdk),
        Variant("ours-otlp", "ours-sdk + OTLP protobuf encoding", ours_otlp),
        Variant("nvitop-update", "PrometheusExporter update_host + update_device", nvitop_update),
        Variant("nvitop-scrape", "nvitop-update + generate_latest", nvitop_scrape),
    ]


def _ratio_summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_cycles(args: argparse.Namespace) -> dict[str, Any]:
    variants = cycle_variants()
    run_rounds(variants, args.rounds, args.collections, args.warmup)
    by_name = {v.name: v for v in variants}
    print(f"{'variant':16}{'points':>8}{'cpu ms/cycle':>14}{'round range':>17}"
          f"{'cpu us/point':>14}{'wall ms/cycle':>15}")
    summaries = {}
    for v in variants:
        s = summaries[v.name] = v.summary()
        low, high = s["cpu_ms_per_collection_round_min"], s["cpu_ms_per_collection_round_max"]
        rng = f"{low:.3f}-{high:.3f}"
        print(f"{v.name:16}{s['points']:>8}{s['cpu_ms_per_collection']:>14.3f}{rng:>17}"
              f"{s['cpu_us_per_point']:>14.2f}{s['wall_ms_per_collection']:>15.3f}")
    print()
    ratios = {}
    for ours in OURS:
        for peer in PEERS:
            cycle = _ratio_summary(round_ratios(by_name[ours], by_name[peer], per_point=False))
            point = _ratio_summary(round_ratios(by_name[ours], by_name[peer], per_point=True))
            ratios[f"{ours}/{peer}"] = {"per_cycle": cycle, "per_point": point}
            print(f"{ours + '/' + peer:28} per cycle {cycle['median']:.3f} "
                  f"({cycle['min']:.3f}-{cycle['max']:.3f})   per point {point['median']:.3f} "
                  f"({point['min']:.3f}-{point['max']:.3f})")
    return {"variants": summaries, "ratios": ratios}


# -- process mode -------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_process(argv: Sequence[str], seconds: float, warmup_s: float,
                    env: dict[str, str] | None = None) -> dict[str, float]:
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    try:
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise SystemExit(f"{argv} exited early: {proc.stderr.read().decode()[-2000:]}")
        cpu0, t0 = _proc_cpu_s(proc.pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(0.5)
            rss.append(_proc_rss_bytes(proc.pid))
        cpu1, t1 = _proc_cpu_s(proc.pid), time.monotonic()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"cpu_percent": 100.0 * (cpu1 - cpu0) / (t1 - t0),
            "rss_mib": statistics.median(rss) / 2**20, "rss_max_mib": max(rss) / 2**20}


def run_processes(args: argparse.Namespace) -> dict[str, Any]:
    helper = str(HERE / "peer_processes.py")
    world = subprocess.Popen([sys.executable, helper, "world", SCENARIO], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        endpoints = world.stdout.readline().strip()  # type: ignore[union-attr]
        if not endpoints:
            raise SystemExit("the stand-in servers did not start")
        tools = {
            "otel-gpu-agent": ([sys.executable, helper, "agent", "--simulate", SCENARIO,
                                "--interval", "1", "--exporter", "none"],
                               {"OTEL_GPU_PEER_WORLD": endpoints}),
            "nvitop-exporter": ([sys.executable, helper, "nvitop-exporter", SCENARIO,
                                 "--interval", "1", "--bind-address", "127.0.0.1",
                                 "--port", str(args.port), "--hostname", "bench"], None),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
        names = list(tools)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                argv, env = tools[name]
                results[name].append(measure_process(argv, args.seconds, args.warmup_s, env))
    finally:
        world.stdin.close()  # type: ignore[union-attr]
        world.wait(timeout=10)
    summary: dict[str, Any] = {}
    print(f"{'process':18}{'cpu %':>8}{'round range':>16}{'rss MiB':>10}{'rss range':>16}")
    for name, runs in results.items():
        cpu = [x["cpu_percent"] for x in runs]
        rss = [x["rss_mib"] for x in runs]
        summary[name] = {"cpu_percent": _ratio_summary(cpu), "rss_mib": _ratio_summary(rss),
                         "runs": runs}
        print(f"{name:18}{statistics.median(cpu):>8.2f}{f'{min(cpu):.2f}-{max(cpu):.2f}':>16}"
              f"{statistics.median(rss):>10.1f}{f'{min(rss):.1f}-{max(rss):.1f}':>16}")
    cpu_ratio = [a["cpu_percent"] / b["cpu_percent"]
                 for a, b in zip(results["otel-gpu-agent"], results["nvitop-exporter"],
                                 strict=True)]
    rss_ratio = [a["rss_mib"] / b["rss_mib"]
                 for a, b in zip(results["otel-gpu-agent"], results["nvitop-exporter"],
                                 strict=True)]
    summary["ratios"] = {"cpu": _ratio_summary(cpu_ratio), "rss": _ratio_summary(rss_ratio)}
    print(f"\nagent/nvitop-exporter  cpu {statistics.median(cpu_ratio):.3f} "
          f"({min(cpu_ratio):.3f}-{max(cpu_ratio):.3f})   rss {statistics.median(rss_ratio):.3f}"
          f" ({min(rss_ratio):.3f}-{max(rss_ratio):.3f})")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--collections", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds x 10 cycles, a smoke run")
    parser.add_argument("--processes", action="store_true", help="the process-level comparison")
    parser.add_argument("--seconds", type=float, default=20.0, help="process mode: window")
    parser.add_argument("--warmup-s", type=float, default=4.0, help="process mode: start-up")
    parser.add_argument("--port", type=int, default=19835, help="process mode: nvitop-exporter")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.collections, args.warmup = 3, 10, 2
        args.seconds, args.warmup_s = min(args.seconds, 5.0), min(args.warmup_s, 3.0)
    if args.processes:
        args.rounds = min(args.rounds, 3) if args.rounds == 7 else args.rounds
    print(f"{datetime.date.today()}  {platform.python_implementation()} "
          f"{platform.python_version()}  {os.cpu_count()} CPUs  nvitop {_version('nvitop')}  "
          f"nvitop-exporter {_version('nvitop-exporter')}  "
          f"opentelemetry-sdk {_version('opentelemetry-sdk')}  "
          f"prometheus-client {_version('prometheus-client')}\n")
    result = run_processes(args) if args.processes else run_cycles(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
