"""The real-GPU check: otel-gpu against the driver while a known load runs.

Run on a machine with an NVIDIA GPU (``bash benchmarks/gpu_check.sh OUTDIR``). It

1. takes an idle snapshot (``otel-gpu snapshot --format json``) and ``nvidia-smi`` figures;
2. starts a PyTorch matrix-multiply loop (~20 s) that allocates a known amount of memory;
3. takes a loaded snapshot (3 cycles, 2 s apart) and ``nvidia-smi`` at the same moment;
4. runs ``otel_gpu.start()`` in a small tracked loop (console exporter): the session's collector
   process must report the GPU and the training process its steps;
5. times the raw NVML calls the adapter makes and one whole collection cycle;
6. checks: every GPU appears with its UUID, memory usage grew by about what the load
   allocated, utilization and (on Hopper and later) GPM SM activity are above zero, power is
   above idle, and the load's process is attributed to its user.

Everything goes to OUTDIR: logs, both snapshots, nvidia-smi output, timings and a verdict JSON.
Exit 0 when every check passed, 1 otherwise. It never changes a GPU setting.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOAD_SECONDS = 30
LOAD_BYTES = 8 * 2**30

LOAD = f"""
import os, time, torch
x = torch.empty({LOAD_BYTES} // 4, dtype=torch.float32, device="cuda")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("ready", os.getpid(), flush=True)
end = time.time() + {LOAD_SECONDS}
while time.time() < end:
    for _ in range(20):
        a = (a @ b).clamp_(-1, 1)
    torch.cuda.synchronize()
"""

SMI_FIELDS = "uuid,name,driver_version,memory.used,utilization.gpu,power.draw,temperature.gpu"


def snapshot(out: Path, name: str, *args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "otel_gpu.cli", "snapshot", "--format", "json",
                             *args], capture_output=True, text=True, timeout=120)
    (out / f"{name}.stderr").write_text(result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"otel-gpu snapshot failed: {result.stderr.strip()}")
    (out / f"{name}.json").write_text(result.stdout)
    return json.loads(result.stdout)


def nvidia_smi(out: Path, name: str) -> list[dict[str, str]]:
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}",
                                 "--format=csv,noheader,nounits"], capture_output=True,
                                text=True, timeout=30)
    except FileNotFoundError:
        return []
    (out / f"{name}.csv").write_text(result.stdout)
    keys = SMI_FIELDS.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
            for line in result.stdout.splitlines() if line.strip()]


def values(doc: dict[str, Any], metric: str, **match: Any) -> dict[str, float]:
    out = {}
    for p in doc["points"]:
        if p["name"] == metric and all(p["attributes"].get(k) == v for k, v in match.items()):
            out[p["attributes"].get("hw.id", "")] = p.get("value", 0.0)
    return out


SESSION = """
import time
import otel_gpu
with otel_gpu.start() as session:
    print("exporting from a child process:", session.child is not None, flush=True)
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        for _ in otel_gpu.track(range(10)):
            time.sleep(0.01)
"""


def library_session(out: Path, uuids: set[str]) -> dict[str, bool]:
    """``otel_gpu.start()`` against the driver: the console output of both processes."""
    env = {**os.environ, "OTEL_METRICS_EXPORTER": "console", "OTEL_TRACES_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    result = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True,
                            env=env, timeout=120)
    (out / "session.stdout").write_text(result.stdout)
    (out / "session.stderr").write_text(result.stderr)
    text = result.stdout
    return {
        "otel_gpu.start() session exited cleanly": result.returncode == 0,
        "the session exported from a child process":
            "exporting from a child process: True" in text,
        "the session reported the GPU by UUID": '"hw.gpu.memory.usage"' in text and
            bool(uuids) and all(u in text for u in uuids),
        "the session reported training steps": '"otel_gpu.training.steps"' in text,
    }


def time_nvml(out: Path) -> dict[str, float]:
    """Median microseconds of the adapter's main NVML calls, and of one whole cycle."""
    import statistics

    import pynvml

    from otel_gpu.collect.build import build_collector

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    calls = {
        "nvmlDeviceGetMemoryInfo": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle),
        "nvmlDeviceGetUtilizationRates": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        "nvmlDeviceGetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetTemperature": lambda: pynvml.nvmlDeviceGetTemperature(
            handle, pynvml.NVML_TEMPERATURE_GPU),
        "nvmlDeviceGetComputeRunningProcesses":
            lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
        "nvmlDeviceGetClockInfo": lambda: pynvml.nvmlDeviceGetClockInfo(
            handle, pynvml.NVML_CLOCK_SM),
    }
    timings: dict[str, float] = {}
    for name, fn in calls.items():
        samples = []
        for _ in range(50):
            started = time.perf_counter()
            try:
                fn()
            except pynvml.NVMLError:
                break
            samples.append((time.perf_counter() - started) * 1e6)
        if samples:
            timings[name] = statistics.median(samples)
    pynvml.nvmlShutdown()
    collector = build_collector(None, 2.0)
    collector.start()
    collector.collect()
    cycles = []
    for _ in range(10):
        started = time.perf_counter()
        collector.collect()
        cycles.append((time.perf_counter() - started) * 1e6)
    collector.close()
    timings["whole collection cycle"] = statistics.median(cycles)
    (out / "nvml_timings.json").write_text(json.dumps(timings, indent=1))
    return timings


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    checks: dict[str, bool] = {}
    idle = snapshot(out, "idle")
    idle_smi = nvidia_smi(out, "idle-nvidia-smi")
    with open(out / "load.stderr", "w") as load_log:
        load = subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE,
                                stderr=load_log, text=True)
        try:
            ready = load.stdout.readline() if load.stdout else ""
            if not ready.startswith("ready"):
                raise SystemExit(f"the load did not start: {ready!r}; see load.stderr")
            load_pid = int(ready.split()[1])
            time.sleep(3)
            busy_smi = nvidia_smi(out, "load-nvidia-smi")
            busy = snapshot(out, "load", "--cycles", "3", "--interval", "2")
            after_smi = nvidia_smi(out, "after-nvidia-smi")
            session_checks = library_session(out, {row["uuid"] for row in busy_smi})
        finally:
            load.terminate()
            load.wait(timeout=60)

    smi_uuids = {row["uuid"] for row in busy_smi}
    gpu_ids = {k for k in values(busy, "hw.gpu.memory.usage")}
    checks["every GPU nvidia-smi lists appears with its UUID"] = bool(smi_uuids) and \
        smi_uuids <= gpu_ids
    idle_mem, busy_mem = values(idle, "hw.gpu.memory.usage"), values(busy, "hw.gpu.memory.usage")
    grown = max((busy_mem.get(k, 0) - idle_mem.get(k, 0) for k in busy_mem), default=0)
    checks["memory usage grew by about what the load allocated"] = grown >= 0.9 * LOAD_BYTES
    util = values(busy, "hw.gpu.utilization", **{"hw.gpu.task": "general"})
    checks["utilization above zero"] = any(v > 0 for v in util.values())
    sm = values(busy, "nvidia.gpu.sm.utilization")
    checks["GPM SM activity above zero (Hopper and later)"] = any(v > 0 for v in sm.values())
    idle_power, busy_power = values(idle, "hw.power"), values(busy, "hw.power")
    checks["power above idle"] = any(busy_power.get(k, 0) > idle_power.get(k, 0) + 20
                                     for k in busy_power)
    me = pwd.getpwuid(os.getuid()).pw_name
    owners = {p["attributes"].get("process.owner") for p in busy["points"]
              if p["name"] == "otel_gpu.workload.gpu.processes"}
    checks[f"the load's process is attributed to its user ({me})"] = me in owners
    checks.update(session_checks)
    timings = time_nvml(out)
    verdict = {"date": time.strftime("%Y-%m-%d"), "load_pid": load_pid,
               "driver_version": busy_smi[0].get("driver_version") if busy_smi else None,
               "checks": checks, "nvml_timings_us": timings,
               "memory_growth_bytes": grown, "utilization": util, "sm_utilization": sm,
               "power_idle_w": idle_power, "power_load_w": busy_power,
               "nvidia_smi": {"idle": idle_smi, "load": busy_smi, "after": after_smi}}
    (out / "verdict.json").write_text(json.dumps(verdict, indent=1))
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(json.dumps(timings, indent=1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
