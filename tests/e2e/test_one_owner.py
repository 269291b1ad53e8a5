"""A training session beside an agent reports only its own series: no GPU, workload, container
or host series twice on one node."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from otlp_receiver import OtlpReceiver, points
from runner import ROOT

SCRIPT = """
import time
import otel_gpu

otel_gpu.start(export_interval_s=0.5)
for _ in otel_gpu.track(range(20), batch_size=4):
    time.sleep(0.02)
time.sleep(1.5)
otel_gpu.stop()
"""
NODE_SERIES = ("hw.", "nvidia.", "system.", "container.", "otel_gpu.workload.",
               "otel_gpu.device.", "otel_gpu.container.")


def _session(**env: str) -> set[str]:
    with OtlpReceiver() as receiver:
        full = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                "OTEL_GPU_SIMULATE": "dgx-a100", "OTEL_TRACES_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none", **env}
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=full, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert receiver.wait_for(lambda: any(
            p["name"] == "otel_gpu.training.steps" for p in points(receiver.metric_requests)),
            timeout_s=20), done.stderr
        return {p["name"] for p in points(receiver.metric_requests)}


@pytest.mark.parametrize("agent", ["true", "false"])
def test_a_session_reports_node_series_only_without_an_agent(agent: str, tmp_path) -> None:
    names = _session(OTEL_GPU_NODE_AGENT=agent,
                     OTEL_GPU_AGENT_FILE=str(tmp_path / "agent.json"))
    node = {n for n in names if n.startswith(NODE_SERIES)}
    assert "otel_gpu.training.steps" in names
    if agent == "true":
        assert not node, node
    else:
        assert "hw.gpu.memory.usage" in node and "otel_gpu.workload.gpu.memory.usage" in node
