"""`otel-gpu snapshot` on simulated servers: the real NVML adapter on the simulated driver."""

from __future__ import annotations

import json

import pytest
from runner import points_named, run_cli, snapshot_json

from otel_gpu.simulate import load_scenario


def _by_id(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["attributes"].get("hw.id", ""), []).append(p)
    return out


@pytest.fixture(scope="module")
def dgx() -> dict:
    return snapshot_json("--simulate", "dgx-a100", "--cycles", "2")


def test_dgx_a100_lists_every_gpu_and_mig_device(dgx: dict) -> None:
    scenario = load_scenario("dgx-a100")
    expected_gpus = {g.uuid for g in scenario.gpus}
    expected_migs = {i.uuid for g in scenario.gpus if g.mig for i in g.mig.layouts[0].instances}
    assert expected_migs, "the built-in DGX A100 has MIG devices"

    status = points_named(dgx, "hw.status")
    assert {p["attributes"]["hw.id"] for p in status} == expected_gpus | expected_migs
    memory = _by_id(points_named(dgx, "hw.gpu.memory.usage"))
    assert set(memory) == expected_gpus | expected_migs
    for point in points_named(dgx, "hw.gpu.memory.limit"):
        assert point["unit"] == "By" and point["kind"] == "sum" and point["value"] > 0

    for gpu in scenario.gpus:
        (point,) = memory[gpu.uuid]
        attrs = point["attributes"]
        assert attrs["hw.name"] == f"gpu{gpu.index}"
        assert attrs["hw.vendor"] == "nvidia" and attrs["hw.model"].startswith("NVIDIA ")
    for gpu in scenario.gpus:
        if not gpu.mig:
            continue
        for inst in gpu.mig.layouts[0].instances:
            (point,) = memory[inst.uuid]
            attrs = point["attributes"]
            assert attrs["hw.parent"] == gpu.uuid
            assert attrs["hw.name"] == f"gpu{gpu.index}/mig{inst.index}"
            assert attrs["nvidia.gpu.mig.profile"] == inst.profile.name


def test_units_and_ratios(dgx: dict) -> None:
    units = {p["name"]: p["unit"] for p in dgx["points"]}
    assert units["hw.power"] == "W" and units["hw.energy"] == "J"
    assert units["hw.temperature"] == "Cel" and units["nvidia.gpu.clock.frequency"] == "Hz"
    for point in dgx["points"]:
        if point["unit"] == "1" and point["kind"] == "gauge":
            assert 0.0 <= point["value"] <= 1.0, point
    assert all("process.pid" not in p["attributes"] for p in dgx["points"])


def test_no_utilization_for_mig_enabled_gpus(dgx: dict) -> None:
    scenario = load_scenario("dgx-a100")
    mig_gpus = {g.uuid for g in scenario.gpus if g.mig}
    whole_gpus = {g.uuid for g in scenario.gpus if not g.mig}
    reported = {p["attributes"]["hw.id"] for p in points_named(dgx, "hw.gpu.utilization")}
    assert reported == whole_gpus
    assert not reported & mig_gpus
    modes = {p["attributes"]["hw.id"]: p["value"] for p in points_named(dgx, "nvidia.gpu.mig.mode")
             if p["attributes"]["nvidia.gpu.mig.mode.type"] == "current"}
    assert {k for k, v in modes.items() if v == 1} == mig_gpus


def test_mig_layout_metrics(dgx: dict) -> None:
    scenario = load_scenario("dgx-a100")
    instances = points_named(dgx, "nvidia.gpu.mig.instance")
    for gpu in scenario.gpus:
        if not gpu.mig:
            continue
        layout = gpu.mig.layouts[0]
        mine = {p["attributes"]["hw.id"]: p["attributes"] for p in instances
                if p["attributes"]["hw.parent"] == gpu.uuid}
        assert set(mine) == {i.uuid for i in layout.instances}
        for inst in layout.instances:
            attrs = mine[inst.uuid]
            assert attrs["nvidia.gpu.mig.placement.start"] == inst.start
            assert attrs["nvidia.gpu.mig.gpu_instance.id"] == inst.gpu_instance_id
        slices = {p["attributes"]["nvidia.gpu.mig.slice.state"]: p["value"]
                  for p in points_named(dgx, "nvidia.gpu.mig.slices")
                  if p["attributes"]["hw.id"] == gpu.uuid}
        used = sum(i.profile.compute_slices for i in layout.instances)
        assert slices == {"used": used, "free": 7 - used}


def test_resource_and_self_telemetry(dgx: dict) -> None:
    assert dgx["resource"]["service.name"] == "otel-gpu-agent"
    assert dgx["resource"]["host.name"]
    sources = {p["attributes"]["otel_gpu.source"]
               for p in points_named(dgx, "otel_gpu.collection.duration")}
    assert {"nvml", "host"} <= sources
    assert dgx["insights"] == []


def _two_gpus(**gpu1: object) -> dict:
    base = {"model": "A100-SXM4-40GB", "utilization": 0.5, "memory_used_bytes": 2**30,
            "power_watts": 200, "temperature_celsius": 50}
    return {"name": "faults", "driver_version": "550.54.15",
            "gpus": [dict(base), {**base, **gpu1}]}


def test_lost_gpu_is_failed_while_the_others_report(write_scenario) -> None:
    path = write_scenario(_two_gpus(faults=[{"call": "*", "error": "GPU_IS_LOST",
                                             "cycles": [1]}]))
    before = snapshot_json("--simulate", path, "--cycles", "1")
    after = snapshot_json("--simulate", path, "--cycles", "3")
    state = {(p["attributes"]["hw.name"], p["attributes"]["hw.state"]): p["value"]
             for p in points_named(after, "hw.status")}
    assert state[("gpu1", "failed")] == 1 and state[("gpu1", "ok")] == 0
    assert state[("gpu0", "ok")] == 1 and state[("gpu0", "failed")] == 0
    lost_id = next(p["attributes"]["hw.id"] for p in points_named(before, "hw.power")
                   if p["attributes"]["hw.name"] == "gpu1")
    assert any(p["attributes"]["hw.id"] == lost_id for p in points_named(after, "hw.status"))
    power = {p["attributes"]["hw.name"] for p in points_named(after, "hw.power")}
    assert power == {"gpu0"}
    errors = {p["attributes"]["error.type"]: p["value"]
              for p in points_named(after, "otel_gpu.collection.errors")}
    assert errors.get("GPU_IS_LOST", 0) >= 2


def test_a_transient_error_is_absent_and_counted(write_scenario) -> None:
    path = write_scenario(_two_gpus(faults=[{"call": "nvmlDeviceGetPowerUsage",
                                             "error": "UNKNOWN", "cycles": [0, 1]}]))
    during = snapshot_json("--simulate", path, "--cycles", "2")
    assert {p["attributes"]["hw.name"] for p in points_named(during, "hw.power")} == {"gpu0"}
    errors = {(p["attributes"]["otel_gpu.source"], p["attributes"]["error.type"]): p["value"]
              for p in points_named(during, "otel_gpu.collection.errors")}
    assert errors[("nvml", "UNKNOWN")] >= 2
    after = snapshot_json("--simulate", path, "--cycles", "3")
    assert {p["attributes"]["hw.name"] for p in points_named(after, "hw.power")} == {"gpu0",
                                                                                    "gpu1"}


def test_after_reconfiguration_only_the_new_layout_is_reported(write_scenario) -> None:
    mig = {"instances": [{"profile": "3g.20gb", "start": 0}, {"profile": "3g.20gb", "start": 4}],
           "reconfigure": [{"cycle": 2, "instances": [{"profile": "7g.40gb", "start": 0}]}]}
    path = write_scenario(_two_gpus(mig=mig))
    scenario = load_scenario(path)
    old = {i.uuid for i in scenario.gpus[1].mig.layouts[0].instances}
    new = {i.uuid for i in scenario.gpus[1].mig.layouts[1].instances}
    assert len(old) == 2 and len(new) == 1

    def mig_ids(doc: dict) -> set[str]:
        return {p["attributes"]["hw.id"] for p in points_named(doc, "nvidia.gpu.mig.instance")}

    before = snapshot_json("--simulate", path, "--cycles", "2")
    assert mig_ids(before) == old
    after = snapshot_json("--simulate", path, "--cycles", "3")
    assert mig_ids(after) == new
    memory_ids = {p["attributes"]["hw.id"] for p in points_named(after, "hw.gpu.memory.usage")}
    assert not memory_ids & old
    reconf = {p["attributes"]["hw.name"]: p["value"]
              for p in points_named(after, "nvidia.gpu.mig.reconfigurations")}
    assert reconf == {"gpu0": 0, "gpu1": 1}
    profiles = {p["attributes"]["nvidia.gpu.mig.profile"]
                for p in points_named(after, "nvidia.gpu.mig.instance")}
    assert profiles == {"7g.40gb"}


def test_xid_events_are_counted_once(write_scenario) -> None:
    path = write_scenario(_two_gpus(xid_events=[{"cycle": 1, "code": 79}]))
    for cycles in ("2", "4"):
        doc = snapshot_json("--simulate", path, "--cycles", cycles)
        xids = [(p["attributes"]["hw.name"], p["attributes"]["nvidia.gpu.xid"], p["value"])
                for p in points_named(doc, "nvidia.gpu.xid.errors")]
        assert xids == [("gpu1", 79, 1)]


@pytest.mark.parametrize("scenario", ["h200", "dgx-h100-mig"])
def test_gpm_on_hopper(scenario: str) -> None:
    doc = snapshot_json("--simulate", scenario)
    sm = points_named(doc, "nvidia.gpu.sm.utilization")
    assert sm and all(0.0 <= p["value"] <= 1.0 for p in sm)
    spec = load_scenario(scenario)
    if any(g.mig for g in spec.gpus):
        assert any("hw.parent" in p["attributes"] for p in sm)
    assert points_named(doc, "nvidia.gpu.tensor.utilization")


def test_dgx_a100_slice_activity_comes_from_dcgm_with_the_owner(dgx: dict) -> None:
    # No GPM on A100: the whole GPUs report no SM activity; every MIG slice does, through DCGM.
    spec = load_scenario("dgx-a100")
    slices = {f"gpu{g.index}/mig{i.index}" for g in spec.gpus if g.mig
              for i in g.mig.layouts[0].instances}
    for name in ("nvidia.gpu.sm.utilization", "nvidia.gpu.graphics_engine.utilization",
                 "nvidia.gpu.tensor.utilization", "nvidia.gpu.dram.utilization"):
        points = {p["attributes"]["hw.name"]: p for p in points_named(dgx, name)}
        assert set(points) == slices, name
    sm = {p["attributes"]["hw.name"]: p["attributes"]
          for p in points_named(dgx, "nvidia.gpu.sm.utilization")}
    assert sm["gpu0/mig0"]["process.owner"] == "carol"
    assert sm["gpu0/mig0"]["container.name"] == "carol-finetune"
    assert sm["gpu0/mig1"]["k8s.pod.name"] == "infer-server-0"
    assert sm["gpu1/mig2"]["container.name"] == "carol-notebook"  # given, runs nothing
    assert "process.owner" not in sm["gpu1/mig2"]
    assert not any(k.startswith(("container.", "k8s.", "process.")) for k in sm["gpu0/mig3"])
    assert not [p for p in points_named(dgx, "otel_gpu.collection.errors")
                if p["attributes"]["otel_gpu.source"] == "dcgm"]


def test_bad_scenario_exits_2_naming_the_key(write_scenario) -> None:
    path = write_scenario(_two_gpus(mig={"instances": [{"profile": "3g.20gb", "start": 0},
                                                       {"profile": "4g.20gb", "start": 0}]}))
    result = run_cli("snapshot", "--simulate", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert path in lines[0] and "gpus[1].mig.instances" in lines[0]


def test_unknown_builtin_and_missing_file_exit_2() -> None:
    for name in ("no-such-server", "/nonexistent/scenario.yaml"):
        result = run_cli("snapshot", "--simulate", name)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_bad_usage_exits_2() -> None:
    assert run_cli("snapshot", "--interval", "0").returncode == 2
    assert run_cli("snapshot", "--exporter", "zipkin").returncode == 2
    assert run_cli("snapshot", "--format", "xml").returncode == 2
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    result = run_cli("snapshot", "--simulate", "h200", "--exporter", "otlp", env=env)
    assert result.returncode == 2 and "http/json" in result.stderr


def test_without_a_driver_host_metrics_and_one_message() -> None:
    result = run_cli("snapshot", "--format", "json")
    assert result.returncode == 0
    assert result.stderr.count("no NVIDIA driver") == 1
    doc = json.loads(result.stdout)
    names = {p["name"] for p in doc["points"]}
    assert {"system.cpu.time", "system.memory.usage", "system.filesystem.usage"} <= names
    assert not any(n.startswith("hw.") for n in names)


def test_table_format_is_readable() -> None:
    result = run_cli("snapshot", "--simulate", "dgx-a100", "--cycles", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("gpu7 ") for line in lines)
    assert any("MIG " in line for line in lines)
    assert any(line.startswith("host:") for line in lines)


def test_xid_79_in_the_cycle_the_gpu_falls_off_the_bus_is_kept() -> None:
    doc = snapshot_json("--simulate", "tests/scenarios/lost-gpu.yaml", "--cycles", "3")
    xids = [(p["attributes"]["hw.name"], p["attributes"]["nvidia.gpu.xid"], p["value"])
            for p in points_named(doc, "nvidia.gpu.xid.errors")]
    assert xids == [("gpu1", 79, 1)]
    failed = {p["attributes"]["hw.name"] for p in points_named(doc, "hw.status")
              if p["attributes"]["hw.state"] == "failed" and p["value"] == 1}
    assert failed == {"gpu1"}


def test_the_agent_instance_id_survives_a_restart_unless_set() -> None:
    first = snapshot_json("--simulate", "h200")["resource"]["service.instance.id"]
    second = snapshot_json("--simulate", "h200")["resource"]["service.instance.id"]
    assert first == second
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=node-7-agent"}
    chosen = snapshot_json("--simulate", "h200", env=env)["resource"]["service.instance.id"]
    assert chosen == "node-7-agent"
