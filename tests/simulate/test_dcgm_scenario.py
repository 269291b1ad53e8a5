"""Scenario keys for DCGM, NVLink links and the PCIe replay counter: loaded and validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_gpu.simulate import load_scenario
from otel_gpu.simulate.scenario import PerCycle, ScenarioError


def write(tmp_path: Path, gpu: dict[str, Any], **top: Any) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "gpus": [{"model": "A100-SXM4-40GB", **gpu}],
                                    **top}))
    return str(path)


def test_dcgm_values_make_a_host_engine_and_load_per_cycle(tmp_path: Path) -> None:
    spec = write(tmp_path, {"dcgm": {"sm_active": [0.1, 0.2], "pcie_tx_bytes_per_s": 1e9}})
    scenario = load_scenario(spec)
    assert scenario.dcgm is not None and scenario.dcgm.hostengine and not scenario.dcgm.exporter
    assert scenario.gpus[0].dcgm.sm_active == PerCycle((0.1, 0.2))
    assert scenario.gpus[0].dcgm.pcie_tx_bytes_per_s == 1e9


def test_no_dcgm_values_no_dcgm(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, {})).dcgm is None
    assert load_scenario("h200").dcgm is None


def test_the_dgx_a100_runs_dcgm_with_values_on_every_slice() -> None:
    scenario = load_scenario("dgx-a100")
    assert scenario.dcgm is not None
    for gpu in scenario.gpus:
        for instance in gpu.mig.layouts[0].instances if gpu.mig else ():
            assert instance.dcgm is not None and instance.dcgm.sm_active is not None


def test_nvlinks_and_pcie_replays(tmp_path: Path) -> None:
    spec = write(tmp_path, {"pcie_replays": [0, 3], "nvlinks": [
        {"link": 0, "crc_flit_errors": [0, 10, 5000]}, {"link": 3, "active": False}]})
    gpu = load_scenario(spec).gpus[0]
    assert gpu.pcie_replays == PerCycle((0, 3))
    assert [link.link for link in gpu.nvlinks] == [0, 3]
    assert gpu.nvlinks[0].crc_flit_errors == PerCycle((0, 10, 5000))
    assert gpu.nvlinks[1].active is False


@pytest.mark.parametrize(("gpu", "top", "key"), [
    ({"dcgm": {"sm_active": 1.5}}, {}, "gpus[0].dcgm.sm_active"),
    ({"dcgm": {"sm_busy": 0.5}}, {}, "gpus[0].dcgm.sm_busy"),
    ({"mig": {"instances": [{"profile": "7g.40gb", "dcgm": {"dram_active": "x"}}]}}, {},
     "gpus[0].mig.instances[0].dcgm.dram_active"),
    ({}, {"dcgm": {"faults": [{"call": "dcgmNothing", "error": "IN_USE"}]}},
     "dcgm.faults[0].call"),
    ({}, {"dcgm": {"faults": [{"call": "WatchFields", "error": "BAD"}]}}, "dcgm.faults[0].error"),
    ({}, {"dcgm": {"faults": [{"call": "WatchFields", "error": "Malformed"}]}},
     "dcgm.faults[0].error"),
    ({}, {"dcgm": {"hostengine": "yes"}}, "dcgm.hostengine"),
    ({"nvlinks": [{"link": 1}, {"link": 1}]}, {}, "gpus[0].nvlinks[1].link"),
    ({"nvlinks": [{"link": 12}]}, {}, "gpus[0].nvlinks[0].link"),  # an A100 has 12
    ({"nvlinks": [{"link": 0, "replay_errors": -1}]}, {}, "gpus[0].nvlinks[0].replay_errors"),
    ({"pcie_replays": 1.5}, {}, "gpus[0].pcie_replays"),
])
def test_bad_keys_are_named(tmp_path: Path, gpu: dict, top: dict, key: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, gpu, **top))
    assert caught.value.key == key
