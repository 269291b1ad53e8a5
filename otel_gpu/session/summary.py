"""The end-of-run summary ``stop()`` writes on stderr: the training loop's figures (from the
tracker, in the training process) and the devices' (from whichever process collects).

The device figures come from ``recorder.RunRecorder`` (in the child's ``SUMMARY`` message when
a child collects). ``OTEL_GPU_SUMMARY=false`` turns the summary off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from otel_gpu.config import run_summary
from otel_gpu.session.protocol import RunFigures
from otel_gpu.snapshot import format_gib


def summary_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``OTEL_GPU_SUMMARY`` (``config.run_summary``): true (the default) or false."""
    return run_summary(environ)


@dataclass(frozen=True)
class LoopFigures:
    """The training process's part: what its tracker counted."""

    steps: int
    samples: int
    step_s: float  # the steps' time, summed
    wait_s: float  # the data wait within it


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def render(loop: LoopFigures, run: RunFigures | None) -> list[str]:
    """The summary's lines, each under 100 columns, without a trailing newline."""
    lines = []
    if loop.steps:
        parts = [f"{loop.steps} steps in {_duration(loop.step_s)}"]
        if loop.samples and loop.step_s > 0:
            parts.append(f"{loop.samples / loop.step_s:,.1f} samples/s")
        share = loop.wait_s / loop.step_s if loop.step_s > 0 else 0.0
        wait = f"data wait {share:.0%} of step time"
        bound = [i for i in (run.insights if run else ()) if i.rule == "input_bound"]
        wait += f" (input_bound, {bound[0].severity})" if bound else ""
        parts.append(wait)
        lines.append("otel-gpu: run summary: " + "; ".join(parts))
    else:
        lines.append("otel-gpu: run summary: no training steps were tracked")
    if run is None:
        lines.append("otel-gpu:   no device figures (the collector process did not report)")
        return lines
    for device in run.devices:
        activity = "activity n/a" if device.activity_mean is None else \
            f"activity {device.activity_mean:.0%} mean"
        memory = "memory n/a"
        if device.memory_peak_bytes is not None:
            memory = f"memory peak {format_gib(device.memory_peak_bytes)}"
            if device.memory_total_bytes:
                memory += f" of {format_gib(device.memory_total_bytes)}"
        model = f" {device.model}" if device.model else ""
        lines.append(f"otel-gpu:   {device.name}{model}: {activity}, {memory} "
                     f"over {run.collections} collection{'s' if run.collections != 1 else ''}")
    if not run.collections:
        lines.append("otel-gpu:   no collection ran (no metric exporter), so no device figures")
    elif not run.devices:
        lines.append("otel-gpu:   no GPU was reported")
    for insight in run.insights:
        if insight.rule != "input_bound":
            lines.append(f"otel-gpu:   insight {insight.rule} ({insight.severity}): "
                         f"{insight.message}")
    return lines
