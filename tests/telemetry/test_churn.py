"""Containers come and go by the thousand: the SDK's state stays bounded by what is alive,
no series ever lands in overflow, and counters of live series stay right."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from churn import ChurnWorld
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from otel_gpu.telemetry.failures import FailureTally
from otel_gpu.telemetry.generations import MeterGenerations, RotationPolicy

WHO = "otel_gpu.workload.gpu.memory.usage"
CPU = "container.cpu.time"
# Per-container metrics of the container's own resources, each on every live container.
PER_CONTAINER = ("otel_gpu.container.io.pressure.stall.time",
                 "otel_gpu.container.memory.pressure.stall.time", "container.network.io",
                 "container.filesystem.usage", "otel_gpu.container.shm.usage",
                 "otel_gpu.container.dataloader.workers")


def _points(data: MetricsData) -> Iterator[tuple[str, Any]]:
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    yield metric.name, point


def _run(world: ChurnWorld, cycles: int, policy: RotationPolicy) -> dict[str, Any]:
    meters = MeterGenerations(lambda: [InMemoryMetricReader()], Resource({}), world,
                              FailureTally(), policy=policy)
    last_cpu: dict[tuple[str, int], float] = {}
    rotations = 0
    excess = 0  # most series one instrument held beyond those it exported in the cycle
    try:
        for _ in range(cycles):
            snapshot = world.step()
            reader = meters.memory_reader
            assert reader is not None
            points = list(_points(reader.get_metrics_data()))
            overflow = [n for n, p in points if "otel.metric.overflow" in p.attributes]
            assert not overflow, f"cycle {snapshot.cycle}: overflow in {set(overflow)}"
            for name in (WHO, *PER_CONTAINER):
                exported = {p.attributes["container.id"] for n, p in points if n == name}
                assert exported == world.live_container_ids(), f"{name}, cycle {snapshot.cycle}"
            for name, point in points:
                if name != CPU:
                    continue
                key = (point.attributes["container.id"] + point.attributes["cpu.mode"],
                       point.start_time_unix_nano)
                assert point.value >= last_cpu.get(key, 0.0), f"cycle {snapshot.cycle}"
                last_cpu[key] = point.value
            live: dict[str, int] = {}
            for name, _ in points:
                live[name] = live.get(name, 0) + 1
            excess = max(excess, *(size - live.get(name, 0)
                                   for name, size in meters.ledger.sizes().items()))
            rotations += meters.maybe_rotate(snapshot.cycle)
    finally:
        meters.shutdown()
    return {"distinct": world.started, "rotations": rotations, "excess": excess}


def test_churn_never_overflows_and_every_live_workload_is_exported() -> None:
    # 250 cycles, 2,540 containers: past the SDK's 2000 series per instrument, where every
    # new series used to merge into the overflow point until a restart.
    world = ChurnWorld(alive=50, churn=10)
    policy = RotationPolicy()
    result = _run(world, 250, policy)
    assert result["distinct"] == 50 + 10 * 249
    assert result["rotations"] >= 1
    # State held per instrument beyond the live series: at most max_stale gone ones, plus those
    # gone within stale_after cycles (two series per container at most: cpu.time's modes, the
    # pressure stall types, the network directions).
    assert result["excess"] <= policy.max_stale + 2 * world.churn * (policy.stale_after + 1)


def test_a_counter_crossing_a_generation_goes_on_from_its_last_value() -> None:
    world = ChurnWorld(alive=3, churn=0)
    meters = MeterGenerations(lambda: [InMemoryMetricReader()], Resource({}), world,
                              FailureTally(), policy=RotationPolicy(stale_after=0, max_stale=0))
    values = []
    try:
        for _ in range(4):
            snapshot = world.step()
            reader = meters.memory_reader
            assert reader is not None
            cpu = [(p.value, p.start_time_unix_nano) for n, p in
                   _points(reader.get_metrics_data())
                   if n == CPU and p.attributes["cpu.mode"] == "user"]
            values.append(sorted(cpu)[0])
            assert meters.maybe_rotate(snapshot.cycle)  # max_stale 0: a new one every cycle
    finally:
        meters.shutdown()
    # Cycle 0 is the baseline (0); every later generation starts from the previous cycle's
    # value, so each point is the 2 s of CPU of its interval, with its own start time.
    assert [v for v, _ in values] == [0.0, 2.0, 2.0, 2.0]
    starts = [s for _, s in values]
    assert starts == sorted(starts) and len(set(starts)) == 4


def test_the_counters_without_a_baseline_are_catalog_counters() -> None:
    from otel_gpu.telemetry.catalog import BY_NAME, COUNTER
    from otel_gpu.telemetry.series import SINCE_AGENT_START

    assert all(BY_NAME[name].instrument == COUNTER for name in SINCE_AGENT_START)
