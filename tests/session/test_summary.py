"""The end-of-run summary ``stop()`` writes on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver
from runner import ROOT

from otel_gpu.config import ConfigError
from otel_gpu.session.protocol import DeviceFigures, RunFigures
from otel_gpu.session.summary import LoopFigures, render, summary_enabled

# 60 steps, each 20 ms waiting for its batch of 8 and 10 ms computing.
LOOP = """
    import time, otel_gpu
    def batches():
        for _ in range(60):
            time.sleep(0.02)
            yield [0] * 8
    with otel_gpu.start():
        for batch in otel_gpu.track(batches()):
            time.sleep(0.01)
"""


def _train(tmp_path: Path, receiver: OtlpReceiver, **env: str) -> subprocess.CompletedProcess:
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("data_wait_for_s: 0\ndata_wait_min_steps: 5\n")
    full = {**os.environ, "OTEL_GPU_SIMULATE": "h200", "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
            "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
            "OTEL_GPU_THRESHOLDS": str(thresholds), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(LOOP)], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("in_process", ["false", "true"])
def test_summary_gives_steps_throughput_data_wait_and_the_device(
        tmp_path: Path, in_process: str) -> None:
    with OtlpReceiver() as receiver:
        result = _train(tmp_path, receiver, OTEL_GPU_COLLECT_IN_PROCESS=in_process)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("otel-gpu:")]
    head = next(line for line in lines if "run summary" in line)
    assert head.startswith("otel-gpu: run summary: 60 steps in ")
    rate = float(head.split("; ")[1].removesuffix(" samples/s").replace(",", ""))
    assert 0 < rate < 8 / 0.03 * 1.05  # never above the 8 samples per 30 ms the loop allows
    share = int(head.split("data wait ")[1].split("%")[0])
    assert 30 <= share <= 90  # 20 of every 30 ms, give or take a loaded machine's sleeps
    assert "(input_bound, warning)" in head
    device = lines[lines.index(head) + 1]
    assert device.startswith("otel-gpu:   gpu0 NVIDIA H200: activity ")
    assert "memory peak " in device and " of 141.0 GiB" in device


def test_summary_off(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        result = _train(tmp_path, receiver, OTEL_GPU_SUMMARY="false")
    assert result.returncode == 0, result.stderr
    assert "run summary" not in result.stderr


def test_summary_variable_says_what_is_wrong() -> None:
    assert summary_enabled({}) and summary_enabled({"OTEL_GPU_SUMMARY": "TRUE"})
    assert not summary_enabled({"OTEL_GPU_SUMMARY": "false"})
    with pytest.raises(ConfigError, match="OTEL_GPU_SUMMARY: 'sometimes'"):
        summary_enabled({"OTEL_GPU_SUMMARY": "sometimes"})


def test_render_without_steps_or_collector_figures() -> None:
    lines = render(LoopFigures(0, 0, 0.0, 0.0), None)
    assert lines[0] == "otel-gpu: run summary: no training steps were tracked"
    assert "did not report" in lines[1]
    lines = render(LoopFigures(10, 0, 2.0, 0.5), RunFigures(3, (DeviceFigures(
        "gpu1/mig2", "NVIDIA A100 MIG 3g.40gb", None, 2**30, None),)))
    assert lines[0] == "otel-gpu: run summary: 10 steps in 2.0 s; data wait 25% of step time"
    assert lines[1] == ("otel-gpu:   gpu1/mig2 NVIDIA A100 MIG 3g.40gb: activity n/a, "
                        "memory peak 1.0 GiB over 3 collections")
