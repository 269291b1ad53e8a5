"""The rules' cost follows the work of a cycle, not the window: each Sample indexes its
containers once, when it enters the window, whatever the window's length."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from runner import ROOT

from otel_gpu.collect.build import build_collector
from otel_gpu.insights import window as window_module
from otel_gpu.insights.engine import InsightEngine
from otel_gpu.insights.thresholds import Thresholds
from otel_gpu.snapshot import Snapshot

SCENARIO = ROOT / "tests" / "scenarios" / "insights" / "container-memory.yaml"
CYCLES = 16


@pytest.fixture(scope="module")
def snapshots() -> list[Snapshot]:
    collector = build_collector(str(SCENARIO), 60.0)
    collector.start()
    try:
        taken = [collector.collect() for _ in range(CYCLES)]
    finally:
        collector.close()
    assert all(s.containers for s in taken)
    return taken


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real: Callable[..., Any] = window_module.index_containers

    def spy(snap: Snapshot) -> Any:
        calls[0] += 1
        return real(snap)

    monkeypatch.setattr(window_module, "index_containers", spy)
    return calls


@pytest.mark.parametrize("length", [2, 4, CYCLES])
def test_one_container_index_per_cycle_whatever_the_window(
    snapshots: list[Snapshot], monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    calls = _count_builds(monkeypatch)
    engine = InsightEngine(Thresholds(disabled_rules=("host_memory_pressure", "filesystem_full")),
                           window=length)
    per_cycle = []
    rules: set[str] = set()
    for snap in snapshots:
        before = calls[0]
        update = engine.update(snap)
        per_cycle.append(calls[0] - before)
        rules.update(i.rule for i in update.fired)
    assert per_cycle == [1] * CYCLES
    # The container rules did run on these cycles' containers.
    assert "container_memory_pressure" in rules
