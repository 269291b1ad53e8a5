"""The Prometheus reader's names follow the Collector's translation, and a new MeterProvider
generation leaves one collector registered."""

from __future__ import annotations

import pytest
from churn import ChurnWorld
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from otel_gpu.telemetry.failures import FailureTally
from otel_gpu.telemetry.generations import MeterGenerations, RotationPolicy
from otel_gpu.telemetry.prometheus import PrometheusReader, metric_name, unit_suffix


@pytest.mark.parametrize(("name", "unit", "gauge", "counter", "expected"), [
    ("hw.gpu.utilization", "1", True, False, "hw_gpu_utilization_ratio"),
    ("hw.status", "1", False, False, "hw_status"),  # a non-monotonic sum: no _ratio
    ("hw.energy", "J", False, True, "hw_energy_joules"),  # the family adds _total
    ("hw.errors", "{error}", False, True, "hw_errors"),
    ("hw.gpu.memory.usage", "By", False, False, "hw_gpu_memory_usage_bytes"),
    ("container.cpu.time", "s", False, True, "container_cpu_time_seconds"),
    ("hw.temperature", "Cel", True, False, "hw_temperature_celsius"),
    ("x.rate", "By/s", True, False, "x_rate_bytes_per_second"),
])
def test_names_follow_the_collectors_translation(name, unit, gauge, counter, expected) -> None:
    assert metric_name(name, unit, gauge=gauge, counter=counter) == expected


def test_annotations_add_nothing() -> None:
    assert unit_suffix("{cpu}") == "" and unit_suffix("1") == ""


def test_a_new_generation_leaves_one_family_per_name() -> None:
    registry = CollectorRegistry()
    world = ChurnWorld(alive=5, churn=1)
    meters = MeterGenerations(lambda: [PrometheusReader(registry)],
                              Resource({"host.name": "node-3"}), world, FailureTally(),
                              policy=RotationPolicy(stale_after=0, max_stale=1))
    try:
        rotated = 0
        for _ in range(4):
            snapshot = world.step()
            meters.collect()
            rotated += meters.maybe_rotate(snapshot.cycle)
        assert rotated >= 1
        text = generate_latest(registry).decode()
    finally:
        meters.shutdown()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert helps and len(helps) == len(set(helps))
    assert 'host_name="node-3"' in text
    assert "otel_gpu_workload_gpu_memory_usage_bytes{" in text
    assert generate_latest(registry) == b""  # shut down: nothing stays registered
