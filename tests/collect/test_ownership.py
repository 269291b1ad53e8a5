"""Every device given to a container or pod is held for someone: the user of its processes, else
Docker's Config.User, else the uid of its init process, else the pod's runAsUser."""

from __future__ import annotations

from pathlib import Path

import pytest
from runner import ROOT, run_cli

from otel_gpu.collect.build import build_collector
from otel_gpu.simulate import load_scenario
from otel_gpu.snapshot import OWNER_SOURCES, Snapshot
from otel_gpu.sources.cgroup import parse_cgroup_path, pod_container_paths

A100 = ROOT / "otel_gpu" / "simulate" / "scenarios" / "dgx-a100.yaml"


def _snapshot(scenario: str, cycles: int = 2) -> Snapshot:
    collector = build_collector(scenario, 10.0)
    try:
        collector.start()
        snapshot = None
        for _ in range(cycles):
            snapshot = collector.collect()
        assert snapshot is not None
        return snapshot
    finally:
        collector.close()


def _held(snapshot: Snapshot, scenario: str, device: str) -> tuple[object, ...]:
    uuid = load_scenario(scenario).resolve_device(device)
    (assignment,) = [a for a in snapshot.assignments if a.device_uuid == uuid]
    return assignment.owner, assignment.owner_uid, assignment.owner_source


@pytest.fixture(scope="module")
def a100() -> Snapshot:
    return _snapshot("dgx-a100")


def test_every_assigned_device_has_an_owner_and_its_source(a100: Snapshot) -> None:
    assert a100.assignments
    for assignment in a100.assignments:
        assert assignment.owner in {"alice", "bob", "carol"}, assignment
        assert assignment.owner_source in OWNER_SOURCES
    busy = {w.device_uuid: w.attributes["process.owner"] for w in a100.workloads}
    for assignment in a100.assignments:
        if assignment.device_uuid in busy:
            assert assignment.owner_source == "process"
            assert assignment.owner == busy[assignment.device_uuid]


def test_idle_container_is_held_for_its_config_user(a100: Snapshot) -> None:
    assert _held(a100, "dgx-a100", "gpu1/mig2") == ("carol", 1002, "docker.config.user")


def test_idle_pod_is_held_for_its_run_as_user(a100: Snapshot) -> None:
    assert _held(a100, "dgx-a100", "gpu5") == ("alice", 1000, "k8s.run_as_user")


def test_without_config_user_the_init_process_answers(tmp_path: Path) -> None:
    text = A100.read_text().replace('    user: "1002"\n', "", 1)
    assert text != A100.read_text()
    path = tmp_path / "no-user.yaml"
    path.write_text(text)
    snapshot = _snapshot(str(path))
    assert _held(snapshot, str(path), "gpu1/mig2") == ("carol", 1002, "proc.init")


def test_without_any_answer_the_device_has_no_owner(tmp_path: Path) -> None:
    text = A100.read_text().replace('    user: "1002"\n    pid: 31200\n    uid: 1002\n', "", 1)
    text = text.replace("    run_as_user: 1000\n", "", 1)
    path = tmp_path / "unknown.yaml"
    path.write_text(text)
    snapshot = _snapshot(str(path))
    assert _held(snapshot, str(path), "gpu1/mig2") == (None, None, None)
    assert _held(snapshot, str(path), "gpu5") == (None, None, None)
    carol = load_scenario(str(path)).containers[-1].id
    assert carol not in {c.attributes.get("container.id") for c in snapshot.containers}


def test_an_idle_container_gets_its_cgroup_figures(a100: Snapshot) -> None:
    scenario = load_scenario("dgx-a100")
    (notebook,) = [c for c in scenario.containers if c.name == "carol-notebook"]
    (usage,) = [c for c in a100.containers if c.attributes.get("container.id") == notebook.id]
    assert usage.attributes["container.name"] == "carol-notebook"
    assert usage.resources.cpu_limit == notebook.resources.cpu_limit
    assert usage.resources.memory_limit_bytes == notebook.resources.memory_limit_bytes
    assert usage.resources.memory_usage_bytes == notebook.resources.memory_used_bytes


def test_status_shows_a_tenants_idle_held_device_with_the_remedy() -> None:
    result = run_cli("status", "--simulate", "dgx-a100", "--as-user", "carol",
                     "--cycles", "200")
    assert result.returncode == 0, result.stderr
    notebook = result.stdout[result.stdout.index("carol-notebook"):]
    assert "gpu1/mig2" in notebook
    assert "device_idle" in notebook and "Release the device" in notebook
    short = run_cli("status", "--simulate", "dgx-a100", "--as-user", "carol")
    assert "carol-notebook" in short.stdout and "gpu1/mig2" in short.stdout
    assert "alice" not in short.stdout and "bob" not in short.stdout


def test_an_idle_pod_container_gets_its_cgroup_figures(a100: Snapshot) -> None:
    (pod,) = [p for p in load_scenario("dgx-a100").pods if p.name == "alice-eval-0"]
    (eval_container,) = pod.containers
    (usage,) = [c for c in a100.containers
                if c.attributes.get("container.id") == eval_container.id]
    assert usage.attributes["k8s.pod.name"] == "alice-eval-0"
    assert usage.resources.cpu_limit == eval_container.resources.cpu_limit
    assert usage.resources.memory_usage_bytes == eval_container.resources.memory_used_bytes


def test_pod_container_cgroup_candidates_name_the_container() -> None:
    cid = "af3d96957fac79e12a0f37ce2cd655ce4dabaa8081f074e3f79d77e5b17491f1"
    uid = "2448eff2-5e03-5939-9eb2-1316a89bcb05"
    paths = pod_container_paths(uid, cid, "containerd")
    assert ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            "2448eff2_5e03_5939_9eb2_1316a89bcb05.slice/cri-containerd-" + cid + ".scope") in paths
    assert f"/kubepods/pod{uid}/{cid}" in paths  # guaranteed, cgroupfs driver
    assert all(parse_cgroup_path(p).id == cid for p in paths)
    assert pod_container_paths(uid, "../../etc", None) == ()


def test_a_cycle_finds_its_containers_first_processes_in_one_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_gpu.collect import attribution

    passes: list[int] = []
    real = attribution._Cycle._first_runners

    def counted(self: attribution._Cycle, infos: dict) -> dict:
        passes.append(len(infos))
        return real(self, infos)

    monkeypatch.setattr(attribution._Cycle, "_first_runners", counted)
    snapshot = _snapshot("dgx-a100", cycles=3)
    by_process = [a for a in snapshot.assignments if a.owner_source == "process"]
    assert len(by_process) >= 2  # several containers' owners, from one pass a cycle
    assert len(passes) == 3
