"""Scenario files: loading, validation errors that name the key, sequences, derived ids."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from runner import points_named, snapshot_json

from otel_gpu.simulate import SimulatedServer, load_scenario
from otel_gpu.simulate.hardware import MODELS, find_model, gpu_instance_id
from otel_gpu.simulate.scenario import PerCycle, ScenarioError, at_cycle, builtin_names

FIXTURES = Path(__file__).resolve().parents[1] / "scenarios"
DOCKER_ID = "0123456789abcdef" * 4


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- built-ins and the hardware catalog -------------------------------------------------------


def test_builtins_load() -> None:
    assert {"dgx-a100", "dgx-h100-mig", "h200"} <= set(builtin_names())
    a100 = load_scenario("dgx-a100")
    assert len(a100.gpus) == 8
    assert {g.model.key for g in a100.gpus} == {"A100-SXM4-40GB"}
    assert a100.driver_version == "550.54.15"
    assert a100.users == {1000: "alice", 1001: "bob", 1002: "carol"}
    assert [g.mig is not None for g in a100.gpus] == [True, True] + [False] * 6
    h100 = load_scenario("dgx-h100-mig")
    assert all(g.model.key == "H100-SXM5-80GB" and g.gpm is not None for g in h100.gpus)
    h200 = load_scenario("h200")
    assert [g.model.key for g in h200.gpus] == ["H200-141GB"]
    assert len(h200.gpus[0].processes) == 1


def test_dgx_station_a100_loads_with_its_display_gpu() -> None:
    station = load_scenario("dgx-station-a100")
    assert [g.model.key for g in station.gpus] == ["A100-SXM4-80GB"] * 4 + ["DGX-Display"]
    assert [g.mig is not None for g in station.gpus] == [True, False, False, False, False]
    display = station.gpus[4].model
    assert display.mig_profiles == () and display.nvlinks == 0
    assert station.containers and not station.pods


def test_dgx_station_a100_snapshot_attributes_docker_users() -> None:
    doc = snapshot_json("--simulate", "dgx-station-a100")
    models = {p["attributes"]["hw.name"]: p["attributes"]["hw.model"]
              for p in points_named(doc, "hw.gpu.utilization")}
    assert models["gpu4"] == "DGX Display"
    users = {
        (a["hw.name"], a["container.name"], a["process.owner"])
        for a in (p["attributes"] for p in points_named(doc, "otel_gpu.workload.gpu.processes"))
    }
    assert ("gpu0/mig0", "bob-finetune", "bob") in users
    assert {("gpu1", "alice-train", "alice"), ("gpu2", "alice-train", "alice")} <= users


def test_healthy_builtins_are_healthy() -> None:
    for name in ("dgx-a100", "dgx-h100-mig", "h200", "dgx-station-a100"):
        scenario = load_scenario(name)
        for gpu in scenario.gpus:
            assert gpu.faults == () and gpu.xid_events == ()
            temps = gpu.temperature_celsius
            assert max(temps if isinstance(temps, PerCycle) else [temps]) <= 85
            assert at_cycle(gpu.ecc_errors.uncorrected, 0) == 0
            reasons = gpu.clocks_event_reasons
            cycles = reasons if isinstance(reasons, PerCycle) else [reasons or ()]
            assert all(set(r) <= {"gpu_idle"} for r in cycles)


def test_dgx_a100_containers_match_process_cgroups() -> None:
    scenario = load_scenario("dgx-a100")
    ids = {c.id for c in scenario.containers} | {
        c.id for pod in scenario.pods for c in pod.containers
    }
    cgroups = [
        p.cgroup
        for gpu in scenario.gpus
        for p in gpu.processes
        if "docker-" in p.cgroup or "cri-containerd-" in p.cgroup
    ]
    assert len(cgroups) >= 6
    for cgroup in cgroups:
        container_id = cgroup.rsplit("-", 1)[1].removesuffix(".scope")
        assert container_id in ids
    for pod in scenario.pods:
        underscored = pod.uid.replace("-", "_")
        pod_cgroups = [c for c in cgroups if underscored in c]
        assert all(any(c.id in cg for c in pod.containers) for cg in pod_cgroups)
    # one MIG device given to a container that runs nothing there
    idle = scenario.resolve_device("gpu1/mig2")
    assert any(idle in c.device_uuids for c in scenario.containers)
    assert not [p for p in scenario.gpus[1].processes if p.mig_instance == 2]


def test_hardware_catalog() -> None:
    a100 = MODELS["A100-SXM4-40GB"]
    assert a100.power_limit_watts == 400 and not a100.has_fan and not a100.gpm_supported
    assert [p.profile_id for p in a100.mig_profiles] == [19, 20, 15, 14, 9, 5, 0]
    three = a100.profile("3g.20gb")
    assert (three.compute_slices, three.memory_slices, three.sm_count) == (3, 4, 42)
    assert three.starts == (0, 4) and three.max_instances == 2
    assert find_model("H200") is MODELS["H200-141GB"]
    assert MODELS["H100-SXM5-80GB"].gpm_supported
    assert MODELS["H100-SXM5-80GB"].profile("7g.80gb").sm_count == 132
    ids = [gpu_instance_id(a100.profile(n), s) for n, s in [("4g.20gb", 0), ("2g.10gb", 4)]]
    assert ids == [1, 5]


# --- identifiers ------------------------------------------------------------------------------


def test_uuids_are_deterministic_and_well_formed() -> None:
    first, second = load_scenario("dgx-a100"), load_scenario("dgx-a100")
    assert [g.uuid for g in first.gpus] == [g.uuid for g in second.gpus]
    assert [g.serial for g in first.gpus] == [g.serial for g in second.gpus]
    mig = [i.uuid for i in first.gpus[0].mig.layouts[0].instances]
    assert mig == [i.uuid for i in second.gpus[0].mig.layouts[0].instances]
    assert all(g.uuid.startswith("GPU-") for g in first.gpus)
    assert all(u.startswith("MIG-") for u in mig)
    assert len({g.uuid for g in first.gpus} | set(mig)) == 8 + len(mig)


def test_uuids_depend_on_scenario_name(tmp_path: Path) -> None:
    a = load_scenario(write(tmp_path, "name: one\ngpus: [{model: H200}]\n", "a.yaml"))
    b = load_scenario(write(tmp_path, "name: two\ngpus: [{model: H200}]\n", "b.yaml"))
    assert a.gpus[0].uuid != b.gpus[0].uuid


def test_given_uuid_is_kept(tmp_path: Path) -> None:
    uuid = "GPU-12345678-1234-1234-1234-123456789abc"
    scenario = load_scenario(write(tmp_path, f"gpus: [{{model: H200, uuid: {uuid}}}]\n"))
    assert scenario.gpus[0].uuid == uuid
    assert scenario.name == "scenario"  # the file stem when no name is given


def test_reconfigured_layout_gets_new_uuids() -> None:
    scenario = load_scenario(str(FIXTURES / "mig-reconfigure.yaml"))
    mig = scenario.gpus[0].mig
    before, after = mig.layout_at(1), mig.layout_at(2)
    assert (before.generation, after.generation) == (0, 1)
    assert [i.profile.name for i in after.instances] == ["7g.40gb"]
    assert after.instances[0].uuid not in {i.uuid for i in before.instances}
    assert mig.layout_at(50) is after
    assert [p.pid for p in scenario.gpus[0].processes_at(1)] == [400, 401]
    assert [p.pid for p in scenario.gpus[0].processes_at(2)] == [501]


def test_devices_resolve_by_uuid_or_hw_name() -> None:
    scenario = load_scenario("dgx-a100")
    gpu2 = scenario.gpus[2]
    assert scenario.resolve_device("gpu2") == gpu2.uuid
    assert scenario.resolve_device(gpu2.uuid) == gpu2.uuid
    mig1 = scenario.gpus[0].mig.layouts[0].instances[1]
    assert scenario.resolve_device("gpu0/mig1") == mig1.uuid
    train = next(c for c in scenario.containers if c.name == "alice-train")
    assert train.devices == ("gpu2", "gpu3")
    assert train.device_uuids == (gpu2.uuid, scenario.gpus[3].uuid)


# --- sequences over cycles --------------------------------------------------------------------


def test_at_cycle() -> None:
    assert at_cycle(PerCycle((1, 2, 3)), 0) == 1
    assert at_cycle(PerCycle((1, 2, 3)), 2) == 3
    assert at_cycle(PerCycle((1, 2, 3)), 99) == 3
    assert at_cycle([5, 6], 1) == 6
    assert at_cycle(7, 42) == 7
    assert at_cycle(("gpu_idle",), 3) == ("gpu_idle",)  # a genuine list value is not a sequence
    assert at_cycle(None, 0) is None


def test_list_values_become_sequences(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        gpus:
          - model: A100-SXM4-40GB
            power_watts: [100, 200.5, 300]
            temperature_celsius: 50
            clocks_event_reasons: [[], [sw_power_cap], [sw_power_cap, hw_slowdown]]
            ecc_errors: {corrected: [0, 2, 5], uncorrected: 0}
          - model: A100-SXM4-40GB
            clocks_event_reasons: [sw_thermal_slowdown, hw_thermal_slowdown]
        host:
          memory_used_ratio: [0.5, 0.95]
          filesystems: [{mountpoint: /, size_bytes: 1000, used_bytes: [100, 990]}]
        """,
    )
    scenario = load_scenario(path)
    gpu = scenario.gpus[0]
    assert isinstance(gpu.power_watts, PerCycle)
    assert [at_cycle(gpu.power_watts, k) for k in range(5)] == [100, 200.5, 300, 300, 300]
    assert at_cycle(gpu.temperature_celsius, 9) == 50
    assert at_cycle(gpu.clocks_event_reasons, 0) == ()
    assert at_cycle(gpu.clocks_event_reasons, 7) == ("sw_power_cap", "hw_slowdown")
    assert at_cycle(gpu.ecc_errors.corrected, 1) == 2
    fixed = scenario.gpus[1].clocks_event_reasons
    assert not isinstance(fixed, PerCycle)
    assert at_cycle(fixed, 4) == ("sw_thermal_slowdown", "hw_thermal_slowdown")

    server = SimulatedServer(scenario)
    assert server.host_overrides(0).memory_used_ratio == 0.5
    assert server.host_overrides(3).filesystems == (("/", 1000, 990),)


def test_host_cpu_figures_per_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "gpus: []\nhost: {cpu_utilization: [0.25, 0.5]}\n")
    server = SimulatedServer(load_scenario(path))
    assert server.host_overrides(0).cpu_utilization == pytest.approx(
        {"user": 0.2, "system": 0.05, "idle": 0.75})
    assert server.host_overrides(9).cpu_utilization["idle"] == pytest.approx(0.5)
    assert server.host_overrides(0).memory_used_ratio is None
    without = write(tmp_path, "gpus: []\nhost: {memory_used_ratio: 0.5}\n", "other.yaml")
    assert SimulatedServer(load_scenario(without)).host_overrides(0).cpu_utilization is None
    bad = write(tmp_path, "gpus: []\nhost: {cpu_utilization: 1.5}\n", "bad.yaml")
    with pytest.raises(ScenarioError, match=r"host\.cpu_utilization: must be at most 1"):
        load_scenario(bad)


def test_host_overrides_absent_without_host_block() -> None:
    assert SimulatedServer(load_scenario("h200")).host_overrides(0) is None


def test_json_scenarios_load(tmp_path: Path) -> None:
    document = {
        "name": "json-box",
        "users": {"1000": "alice"},
        "gpus": [{"model": "H100-SXM5-80GB", "utilization": [0.1, 0.2]}],
    }
    path = tmp_path / "box.json"
    path.write_text(json.dumps(document))
    scenario = load_scenario(str(path))
    assert scenario.users == {1000: "alice"}
    assert at_cycle(scenario.gpus[0].utilization, 1) == 0.2


def test_contract_example_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        name: dgx-a100-mixed
        driver_version: "550.54.15"
        users: {{1000: alice, 1001: bob}}
        containers:
          - id: {DOCKER_ID}
            name: alice-train
            image: nvcr.io/nvidia/pytorch:24.05-py3
            labels: {{team: vision}}
            devices: [gpu0/mig0]
            resources:
              cpu_limit: 8
              cpu_utilization: [0.95, 0.97]
              cpu_throttled_ratio: 0.3
              memory_limit_bytes: 68719476736
              memory_used_bytes: [40000000000, 62000000000]
              oom_kills: 0
        pods:
          - namespace: research
            name: bob-job-0
            uid: 6d1c0a52-3c8e-4b8e-9d7c-0e3f2a1b4c5d
            containers:
              - name: trainer
                id: {"9b" * 32}
                devices: [gpu1]
                resources: {{cpu_limit: 4, memory_limit_bytes: 34359738368}}
        gpus:
          - model: A100-SXM4-40GB
            utilization: 0.37
            memory_used_bytes: 12884901888
            power_watts: [250, 260, 410]
            temperature_celsius: 61
            clocks_event_reasons: [sw_power_cap]
            ecc_errors: {{corrected: 0, uncorrected: 0}}
            xid_events: [{{cycle: 3, code: 79}}]
            faults:
              - {{call: nvmlDeviceGetPowerUsage, error: NOT_SUPPORTED, cycles: [0, 1]}}
              - {{call: "*", error: GPU_IS_LOST, cycles: [5]}}
            mig:
              instances:
                - {{profile: 3g.20gb, start: 0, memory_used_bytes: 5368709120}}
                - {{profile: 1g.5gb, start: 4}}
              reconfigure:
                - {{cycle: 10, instances: [{{profile: 7g.40gb, start: 0}}]}}
            processes:
              - pid: 4242
                uid: 1000
                comm: python
                cgroup: "0::/system.slice/docker-{DOCKER_ID}.scope"
                used_memory_bytes: 4294967296
                sm_utilization: 0.55
                mig_instance: 0
          - model: A100-SXM4-40GB
            serial: "1324021012345"
            memory_temperature_celsius: [60, 61]
            clocks_mhz: {{graphics: 1410, sm: 1410, memory: 1215, video: 1290}}
            encoder_utilization: 0.0
            decoder_utilization: [0.1, 0.2]
            remapped_rows: {{corrected: 1, uncorrected: 0, pending: false, failed: false}}
            pcie_tx_bytes_per_s: 1000000
            pcie_rx_bytes_per_s: [2000000, 3000000]
            mig_pending: [false, true]
        host:
          memory_used_ratio: 0.5
          filesystems: [{{mountpoint: /data, size_bytes: 1000, used_bytes: [10, 20]}}]
        """,
    )
    scenario = load_scenario(path)
    gpu = scenario.gpus[0]
    assert [f.error for f in gpu.faults] == ["GPU_IS_LOST", "NOT_SUPPORTED"]
    assert gpu.faults[0].active(5) and gpu.faults[0].active(6) and not gpu.faults[0].active(4)
    assert gpu.faults[1].active(1) and not gpu.faults[1].active(2)
    assert gpu.mig.layout_at(10).instances[0].profile.name == "7g.40gb"
    assert scenario.pods[0].containers[0].device_uuids == (scenario.gpus[1].uuid,)
    assert at_cycle(scenario.gpus[1].mig_pending, 1) is True


# --- validation errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "key"),
    [
        ("invalid-overlap.yaml", "gpus[0].mig.instances[1].start"),
        ("invalid-unknown-key.yaml", "gpus[0].processes[0].gpu_memory"),
        ("invalid-wrong-type.yaml", "gpus[0].temperature_celsius[1]"),
        ("invalid-bad-profile.yaml", "gpus[2].mig.instances[1].profile"),
    ],
)
def test_invalid_fixture_files_name_the_key(fixture: str, key: str) -> None:
    path = str(FIXTURES / fixture)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.key == key
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {key}: {caught.value.message}"


A100 = "model: A100-SXM4-40GB"
MIG_GPU = f"""
gpus:
  - {A100}
    mig:
      instances: [{{profile: 3g.20gb, start: 0}}, {{profile: 1g.5gb, start: 4}}]
"""

def _claims(claims: str) -> str:
    """A scenario with one pod container whose claims are ``claims``."""
    return ("pods: [{namespace: n, name: p, uid: 5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b, "
            f"containers: [{{name: c, id: {'a' * 64}, claims: {claims}}}]}}]\n"
            "gpus: [{model: H200}]\n")


INVALID = {
    "unknown top-level key": ("colour: red\ngpus: []\n", "colour"),
    "gpus missing": ("name: x\n", "gpus"),
    "gpus not a list": ("gpus: {model: H200}\n", "gpus"),
    "unknown model": ("gpus: [{model: A100-PCIE-40GB}]\n", "gpus[0].model"),
    "model missing": ("gpus: [{utilization: 0.5}]\n", "gpus[0].model"),
    "wrong type": (f"gpus: [{{{A100}, power_watts: high}}]\n", "gpus[0].power_watts"),
    "bool is not a number": (f"gpus: [{{{A100}, power_watts: true}}]\n", "gpus[0].power_watts"),
    "ratio above one": (f"gpus: [{{{A100}, utilization: 37}}]\n", "gpus[0].utilization"),
    "empty sequence": (f"gpus: [{{{A100}, power_watts: []}}]\n", "gpus[0].power_watts"),
    "memory over total": (
        f"gpus: [{{{A100}, memory_used_bytes: 99999999999}}]\n",
        "gpus[0].memory_used_bytes",
    ),
    "unversioned driver": ("driver_version: 550.54\ngpus: []\n", "driver_version"),
    "bad uuid": (f"gpus: [{{{A100}, uuid: MIG-abc}}]\n", "gpus[0].uuid"),
    "duplicate uuid": (
        "gpus:\n"
        "  - {model: H200, uuid: GPU-12345678-1234-1234-1234-123456789abc}\n"
        "  - {model: H200, uuid: GPU-12345678-1234-1234-1234-123456789abc}\n",
        "gpus[1].uuid",
    ),
    "unknown reason": (
        f"gpus: [{{{A100}, clocks_event_reasons: [too_hot]}}]\n",
        "gpus[0].clocks_event_reasons[0]",
    ),
    "unknown clock": (
        f"gpus: [{{{A100}, clocks_mhz: {{shader: 1}}}}]\n",
        "gpus[0].clocks_mhz.shader",
    ),
    "profile not offered": (
        f"gpus: [{{{A100}, mig: {{instances: [{{profile: 1g.10gb+me}}]}}}}]\n",
        "gpus[0].mig.instances[0].profile",
    ),
    "start not allowed": (
        f"gpus: [{{{A100}, mig: {{instances: [{{profile: 3g.20gb, start: 2}}]}}}}]\n",
        "gpus[0].mig.instances[0].start",
    ),
    "too many of a profile": (
        f"gpus: [{{{A100}, mig: {{instances: "
        "[{profile: 3g.20gb}, {profile: 3g.20gb}, {profile: 3g.20gb}]}}]\n",
        "gpus[0].mig.instances[2].profile",
    ),
    "more than seven compute slices": (
        f"gpus: [{{{A100}, mig: {{instances: [{{profile: 2g.10gb, start: 0}}, "
        "{profile: 2g.10gb, start: 2}, {profile: 2g.10gb, start: 4}, "
        "{profile: 1g.5gb, start: 6}, {profile: 1g.5gb+me}]}}]\n",
        "gpus[0].mig.instances[4].profile",
    ),
    "no free placement": (
        f"gpus: [{{{A100}, mig: {{instances: [{{profile: 4g.20gb}}, {{profile: 4g.20gb}}]}}}}]\n",
        "gpus[0].mig.instances[1].profile",
    ),
    "bad reconfigured layout": (
        f"gpus: [{{{A100}, mig: {{instances: [], reconfigure: "
        "[{cycle: 3, instances: [{profile: 7g.80gb}]}]}}]\n",
        "gpus[0].mig.reconfigure[0].instances[0].profile",
    ),
    "overlapping reconfigured layout": (
        f"gpus: [{{{A100}, mig: {{instances: [], reconfigure: "
        "[{cycle: 3, instances: [{profile: 7g.40gb, start: 0}, {profile: 1g.5gb, start: 6}]}]}}]\n",
        "gpus[0].mig.reconfigure[0].instances[1].profile",
    ),
    "reconfigure out of order": (
        f"gpus: [{{{A100}, mig: {{instances: [], reconfigure: "
        "[{cycle: 3, instances: []}, {cycle: 2, instances: []}]}}]\n",
        "gpus[0].mig.reconfigure[1].cycle",
    ),
    "mig_instance out of range": (
        MIG_GPU + "    processes: [{pid: 10, mig_instance: 2}]\n",
        "gpus[0].processes[0].mig_instance",
    ),
    "mig_instance missing on MIG": (
        MIG_GPU + "    processes: [{pid: 10}]\n",
        "gpus[0].processes[0].mig_instance",
    ),
    "mig_instance without MIG": (
        f"gpus: [{{{A100}, processes: [{{pid: 10, mig_instance: 0}}]}}]\n",
        "gpus[0].processes[0].mig_instance",
    ),
    "pid as bool": (
        f"gpus: [{{{A100}, processes: [{{pid: true}}]}}]\n",
        "gpus[0].processes[0].pid",
    ),
    "pid listed twice": (
        f"gpus: [{{{A100}, processes: [{{pid: 7}}, {{pid: 7}}]}}]\n",
        "gpus[0].processes[1].pid",
    ),
    "gpm on Ampere": (
        f"gpus: [{{{A100}, gpm: {{sm_utilization: 0.5}}}}]\n",
        "gpus[0].gpm",
    ),
    "gpm on an Ampere MIG device": (
        f"gpus: [{{{A100}, mig: {{instances: "
        "[{profile: 7g.40gb, gpm: {sm_occupancy: 0.1}}]}}]\n",
        "gpus[0].mig.instances[0].gpm",
    ),
    "unknown gpm value": (
        "gpus: [{model: H200, gpm: {fp64_utilization: 0.5}}]\n",
        "gpus[0].gpm.fp64_utilization",
    ),
    "unknown fault error": (
        f"gpus: [{{{A100}, faults: [{{call: '*', error: BROKEN}}]}}]\n",
        "gpus[0].faults[0].error",
    ),
    "unknown fault call": (
        f"gpus: [{{{A100}, faults: [{{call: nvmlDeviceGetVoltage, error: UNKNOWN}}]}}]\n",
        "gpus[0].faults[0].call",
    ),
    "xid mig_instance without MIG": (
        f"gpus: [{{{A100}, xid_events: [{{cycle: 1, code: 48, mig_instance: 0}}]}}]\n",
        "gpus[0].xid_events[0].mig_instance",
    ),
    "device naming nothing": (
        f"containers: [{{id: {DOCKER_ID}, name: c, devices: [gpu3]}}]\ngpus: [{{{A100}}}]\n",
        "containers[0].devices[0]",
    ),
    "MIG device naming nothing": (
        f"containers: [{{id: {DOCKER_ID}, name: c, devices: [gpu0/mig2]}}]\n" + MIG_GPU,
        "containers[0].devices[0]",
    ),
    "short container id": (
        "containers: [{id: abc123, name: c}]\ngpus: []\n",
        "containers[0].id",
    ),
    "container ratio as text": (
        f"containers: [{{id: {DOCKER_ID}, name: c, resources: {{cpu_utilization: lots}}}}]\n"
        "gpus: []\n",
        "containers[0].resources.cpu_utilization",
    ),
    "pod device naming nothing": (
        "pods: [{namespace: ns, name: p, uid: 6d1c0a52-3c8e-4b8e-9d7c-0e3f2a1b4c5d, containers: "
        f"[{{name: c, id: {DOCKER_ID}, devices: [GPU-nope]}}]}}]\ngpus: []\n",
        "pods[0].containers[0].devices[0]",
    ),
    "pod container with labels": (
        "pods: [{namespace: ns, name: p, uid: 6d1c0a52-3c8e-4b8e-9d7c-0e3f2a1b4c5d, containers: "
        f"[{{name: c, id: {DOCKER_ID}, labels: {{a: b}}}}]}}]\ngpus: []\n",
        "pods[0].containers[0].labels",
    ),
    "pod uid not a uuid": (
        "pods: [{namespace: ns, name: p, uid: bob}]\ngpus: []\n",
        "pods[0].uid",
    ),
    "user id not a number": ("users: {alice: 1000}\ngpus: []\n", "users.alice"),
    "filesystem over full": (
        "host: {filesystems: [{mountpoint: /, size_bytes: 10, used_bytes: [5, 11]}]}\ngpus: []\n",
        "host.filesystems[0].used_bytes[1]",
    ),
    "host ratio out of range": (
        "host: {memory_used_ratio: 1.5}\ngpus: []\n",
        "host.memory_used_ratio",
    ),
    "clock event reason a list": (
        "gpus: [{model: H200, clocks_event_reasons: [sw_power_cap, [hw_slowdown]]}]\n",
        "gpus[0].clocks_event_reasons[1]",
    ),
    "clock event reason a mapping": (
        "gpus: [{model: H200, clocks_event_reasons: [{sw_power_cap: 1}]}]\n",
        "gpus[0].clocks_event_reasons[0]",
    ),
    "clock event reason a mapping in a sequence": (
        "gpus: [{model: H200, clocks_event_reasons: [[gpu_idle], [{a: 1}]]}]\n",
        "gpus[0].clocks_event_reasons[1][0]",
    ),
    "utilization not a number": ("gpus: [{model: H200, utilization: .nan}]\n",
                                 "gpus[0].utilization"),
    "power infinite": ("gpus: [{model: H200, power_watts: .inf}]\n", "gpus[0].power_watts"),
    "power infinite in a sequence": ("gpus: [{model: H200, power_watts: [300, .inf]}]\n",
                                     "gpus[0].power_watts[1]"),
    "temperature far past any float a driver gives": (
        "gpus: [{model: H200, temperature_celsius: 1.0e+300}]\n", "gpus[0].temperature_celsius"),
    "pid past the kernel's limit": (f"gpus: [{{model: H200, processes: [{{pid: {2**70}}}]}}]\n",
                                    "gpus[0].processes[0].pid"),
    "pid one past the kernel's limit": (
        f"gpus: [{{model: H200, processes: [{{pid: {4 * 1024 * 1024 + 1}}}]}}]\n",
        "gpus[0].processes[0].pid"),
    "uid past 32 bits": (f"gpus: [{{model: H200, processes: [{{pid: 7, uid: {2**32}}}]}}]\n",
                         "gpus[0].processes[0].uid"),
    "user uid past 32 bits": (f"users: {{{2**40}: alice}}\ngpus: []\n", f"users.{2**40}"),
    "counter past 64 bits": (
        f"gpus: [{{model: H200, ecc_errors: {{corrected: {2**64}}}}}]\n",
        "gpus[0].ecc_errors.corrected"),
    "xid cycle past 64 bits": (
        f"gpus: [{{model: H200, xid_events: [{{cycle: {2**63}, code: 79}}]}}]\n",
        "gpus[0].xid_events[0].cycle"),
    "claim naming no device": (_claims("[{name: g, devices: [gpu7]}]"),
                               "pods[0].containers[0].claims[0].devices[0]"),
    "claim without devices": (_claims("[{name: g, devices: []}]"),
                              "pods[0].containers[0].claims[0].devices"),
    "claim with an unknown key": (_claims("[{name: g, devices: [gpu0], pool: x}]"),
                                  "pods[0].containers[0].claims[0].pool"),
    "claims on a Docker container": (
        f"containers: [{{id: {'a' * 64}, name: c, claims: []}}]\ngpus: []\n",
        "containers[0].claims"),
    "host_network not a boolean": (
        f"containers: [{{id: {'a' * 64}, name: c, host_network: 1}}]\ngpus: []\n",
        "containers[0].host_network"),
    "negative network rate": (
        f"containers: [{{id: {'a' * 64}, name: c, resources: {{network_tx_bytes_per_s: -1}}}}]"
        "\ngpus: []\n", "containers[0].resources.network_tx_bytes_per_s"),
    "negative writable layer": (
        f"containers: [{{id: {'a' * 64}, name: c, resources: {{writable_layer_bytes: [1, -1]}}}}]"
        "\ngpus: []\n", "containers[0].resources.writable_layer_bytes[1]"),
    "zero shm size": (f"containers: [{{id: {'a' * 64}, name: c, shm_size_bytes: 0}}]\ngpus: []\n",
                      "containers[0].shm_size_bytes"),
    "too many workers": (f"containers: [{{id: {'a' * 64}, name: c, data_workers: 65}}]\ngpus: []\n",
                         "containers[0].data_workers"),
    "unknown environment kind": (
        f"containers: [{{id: {'a' * 64}, name: c, environments: [{{kind: npm, path: /x, "
        "packages: 1}]}]\ngpus: []\n", "containers[0].environments[0].kind"),
    "environment path escaping": (
        f"containers: [{{id: {'a' * 64}, name: c, environments: [{{kind: pip, path: /a/../b, "
        "packages: 1}]}]\ngpus: []\n", "containers[0].environments[0].path"),
    "environment package with a slash": (
        f"containers: [{{id: {'a' * 64}, name: c, environments: [{{kind: conda, path: /opt/conda, "
        "packages: [../x]}]}]\ngpus: []\n", "containers[0].environments[0].packages[0]"),
    "not a mapping": ("- just\n- a list\n", "(file)"),
    "empty file": ("", "(file)"),
    "yaml syntax error": ("gpus: [{model: H200\n", "(file)"),
}


@pytest.mark.parametrize(("text", "key"), INVALID.values(), ids=INVALID.keys())
def test_invalid_scenarios_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.key == key, str(caught.value)
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match=r"nope\.yaml: \(file\): no such scenario"):
        load_scenario(missing)
    with pytest.raises(ScenarioError, match=r"built-ins: .*dgx-a100"):
        load_scenario("no-such-builtin")


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "gpus:\n  - model: H200\n    power_watts: [1, 2\n")
    with pytest.raises(ScenarioError, match="YAML syntax error at line"):
        load_scenario(path)


def test_json_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"gpus": [}')
    with pytest.raises(ScenarioError, match="JSON syntax error"):
        load_scenario(str(path))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_brackets_nested_past_the_parser_are_a_scenario_error(tmp_path: Path,
                                                              suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    depth = 50_000
    path.write_text('{"gpus": ' + "[" * depth + "]" * depth + "}\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert caught.value.key == "(file)" and "nested too deeply" in caught.value.message


def test_the_largest_pid_and_uid_load(tmp_path: Path) -> None:
    path = write(tmp_path, f"gpus: [{{model: H200, processes: [{{pid: {4 * 1024 * 1024}, "
                           f"uid: {2**32 - 2}}}]}}]\n")
    process = load_scenario(path).gpus[0].processes[0]
    assert (process.pid, process.uid) == (4 * 1024 * 1024, 2**32 - 2)
