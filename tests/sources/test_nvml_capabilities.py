"""A field the board lacks is a capability learned once per device, not a failure every cycle."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from otel_gpu.collect.collector import Collector, LocalSources
from otel_gpu.simulate import SimulatedServer, load_scenario
from otel_gpu.snapshot import Snapshot
from otel_gpu.sources.nvml import CAPABILITY_RECHECK_S, NvmlSource

INTERVAL_S = 10.0
RECHECK_CYCLES = int(CAPABILITY_RECHECK_S / INTERVAL_S)


class CountingNvml:
    """The simulated driver, counting the calls made to it per function."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self.calls: Counter[str] = Counter()

    def __dir__(self) -> list[str]:
        return dir(self._nvml)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._nvml, name)
        if not (name.startswith("nvml") and callable(value)):
            return value

        def counted(*args: Any) -> Any:
            self.calls[name] += 1
            return value(*args)

        return counted


def collector_on(scenario: Any) -> tuple[Collector, CountingNvml]:
    server = SimulatedServer(scenario, interval_s=INTERVAL_S)
    nvml = CountingNvml(server.nvml)
    collector = Collector(LocalSources(NvmlSource(nvml, gpm_warmup_s=0.0), None, simulation=server))
    assert collector.start() is None
    return collector, nvml


def errors_of(snapshot: Snapshot, call: str) -> list[str]:
    return [e.error_type for e in snapshot.errors if e.call == call]


def two_gpus(tmp_path: Path, **gpu1: object) -> Any:
    base = {"model": "A100-SXM4-40GB", "utilization": 0.5, "memory_used_bytes": 2**30,
            "power_watts": 200, "temperature_celsius": 50}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({"name": "capabilities", "driver_version": "550.54.15",
                                    "gpus": [dict(base), {**base, **gpu1}]}))
    return load_scenario(str(path))


def test_an_sxm_board_is_asked_for_its_fan_once_and_nothing_is_counted() -> None:
    collector, nvml = collector_on(load_scenario("dgx-a100"))
    snapshots = [collector.sources.read() for _ in range(5)]
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == 8  # one per GPU, in the first cycle only
    for snapshot in snapshots:
        assert errors_of(snapshot, "nvmlDeviceGetFanSpeed") == []
        assert all(gpu.fan_speed_ratio is None for gpu in snapshot.gpus)
    assert snapshots[-1].error_counts == {}
    # The other per-cycle calls still run every cycle.
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 8 * 5
    collector.close()


def test_the_capability_is_rechecked_after_the_period() -> None:
    collector, nvml = collector_on(load_scenario("dgx-a100"))
    for _ in range(RECHECK_CYCLES):  # cycle k is at k * INTERVAL_S of simulated time
        collector.sources.read()
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == 8
    recheck = collector.sources.read()  # cycle RECHECK_CYCLES: the period has passed
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == 16
    assert errors_of(recheck, "nvmlDeviceGetFanSpeed") == []
    for _ in range(3):
        collector.sources.read()
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == 16
    collector.close()


def test_a_field_that_comes_back_is_read_again_after_the_recheck(tmp_path: Path) -> None:
    scenario = two_gpus(tmp_path, faults=[
        {"call": "nvmlDeviceGetPowerUsage", "error": "NOT_SUPPORTED", "cycles": [0]}])
    collector, nvml = collector_on(scenario)
    first = collector.sources.read()
    assert [g.power_watts for g in first.gpus] == [200.0, None]
    assert errors_of(first, "nvmlDeviceGetPowerUsage") == []
    later = [collector.sources.read() for _ in range(RECHECK_CYCLES - 1)]
    assert all(s.gpus[1].power_watts is None for s in later)  # learned: not asked meanwhile
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == RECHECK_CYCLES + 1
    back = collector.sources.read()
    assert [g.power_watts for g in back.gpus] == [200.0, 200.0]
    collector.close()


def test_a_transient_error_is_counted_and_retried_every_cycle(tmp_path: Path) -> None:
    scenario = two_gpus(tmp_path, faults=[
        {"call": "nvmlDeviceGetPowerUsage", "error": "UNKNOWN", "cycles": [0, 1, 2]}])
    collector, nvml = collector_on(scenario)
    snapshots = [collector.sources.read() for _ in range(4)]
    assert [errors_of(s, "nvmlDeviceGetPowerUsage") for s in snapshots] == [
        ["UNKNOWN"], ["UNKNOWN"], ["UNKNOWN"], []]
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 2 * 4
    assert snapshots[-1].error_counts[("nvml", "UNKNOWN")] == 3
    assert snapshots[-1].gpus[1].power_watts == 200.0
    collector.close()


def test_unsupported_is_learned_per_device_and_per_argument(tmp_path: Path) -> None:
    scenario = two_gpus(tmp_path, faults=[
        {"call": "nvmlDeviceGetClockInfo", "error": "NOT_SUPPORTED", "cycles": [0]}])
    collector, nvml = collector_on(scenario)
    for _ in range(3):
        snapshot = collector.sources.read()
    # gpu0 reads its four clock domains every cycle; gpu1 was asked for each once.
    assert nvml.calls["nvmlDeviceGetClockInfo"] == 4 * 3 + 4
    assert set(snapshot.gpus[0].clocks_hz) == {"graphics", "sm", "memory", "video"}
    assert snapshot.gpus[1].clocks_hz == {}
    collector.close()
