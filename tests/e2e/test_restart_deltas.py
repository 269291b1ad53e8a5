"""Agent restarts through the real Collector's cumulative_to_delta: the first delta after each
start is one interval's increase, never the lifetime total a counter holds (energy since the
driver loaded, lifetime ECC errors, a container's CPU time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from collector_stack import Collector, Stack, require_collector, wait_until
from otlp_receiver import OtlpReceiver, points

from otel_gpu.simulate import at_cycle, load_scenario

ROOT = Path(__file__).resolve().parents[2]
CYCLES = 4
INTERVAL_S = 1.0


def _run_agent(stack: Stack, name: str, endpoint: str) -> None:
    process = stack.start(name, [sys.executable, "-m", "otel_gpu.cli", "agent", "--simulate",
                                 "dgx-a100", "--interval", str(INTERVAL_S), "--cycles",
                                 str(CYCLES)], {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                                "OTEL_RESOURCE_ATTRIBUTES": "host.name=node-1"})
    try:
        assert process.popen.wait(timeout=120) == 0, stack.logs()
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not finish\n{stack.logs()}")


def test_first_delta_after_a_restart_is_one_intervals_worth(tmp_path: Path) -> None:
    binary = require_collector()
    scenario = load_scenario("dgx-a100")
    # The most one GPU can use in an interval, at the highest power of any cycle run.
    most_j = max(float(at_cycle(g.power_watts, c)) for g in scenario.gpus
                 for c in range(CYCLES)) * INTERVAL_S
    stack = Stack(tmp_path)
    with OtlpReceiver() as receiver:
        try:
            gateway = Collector(stack, binary, "gateway", ["gateway-datadog.yaml"],
                                {"DD_AGENT_OTLP_HTTP_ENDPOINT": receiver.http_endpoint})
            _run_agent(stack, "agent-first", gateway.grpc_endpoint)
            _run_agent(stack, "agent-restarted", gateway.grpc_endpoint)

            def energy() -> list[dict]:
                return [p for p in points(receiver.metric_requests) if p["name"] == "hw.energy"]

            # Cycle 0 of each run is its baseline; the other cycles and the shutdown export
            # arrive as deltas.
            wanted = 2 * CYCLES * len(scenario.gpus)
            assert wait_until(lambda: len(energy()) >= wanted, timeout_s=60), stack.logs()
        finally:
            stack.close()
    received = energy()
    assert {p["temporality"] for p in received} == {"delta"}
    starts = {p["time_unix_nano"] for p in received}
    assert len(starts) >= 2 * CYCLES
    too_big = [p["value"] for p in received if p["value"] > 2 * most_j]
    assert not too_big, f"deltas beyond two intervals' worth ({2 * most_j} J): {too_big}"
    assert sum(p["value"] for p in received) > 0
