"""Who uses what, end to end: `otel-gpu snapshot` on simulated servers whose /proc, cgroups,
Docker daemon and kubelet are read by the production readers and clients."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from runner import ROOT, points_named, run_cli

from otel_gpu.collect.attribution import Attributor
from otel_gpu.collect.build import build_collector, build_host_attributor
from otel_gpu.simulate import load_scenario
from otel_gpu.simulate.docker_api import serve_docker_api
from otel_gpu.simulate.kubelet_api import serve_pod_resources
from otel_gpu.simulate.scenario import Scenario, at_cycle, builtin_names
from otel_gpu.sources._text import MAX_TEXT
from otel_gpu.sources.docker import DEFAULT_LABELS, DockerClient
from otel_gpu.sources.kubelet import PodResourcesClient
from otel_gpu.sources.procfs import ProcfsReader

SCENARIOS = ROOT / "tests" / "scenarios"
IDENTITY = ("hw.id", "hw.name", "hw.model", "hw.vendor", "hw.parent", "nvidia.gpu.mig.profile")
CONTAINER_METRICS = (
    "container.cpu.time",
    "container.memory.usage",
    "otel_gpu.container.memory.limit",
    "otel_gpu.container.cpu.limit",
    "otel_gpu.container.oom_kills",
    "container.disk.io",
)


def _snapshot(scenario: str, cycles: int) -> tuple[dict[str, Any], str]:
    result = run_cli("snapshot", "--format", "json", "--simulate", scenario,
                     "--cycles", str(cycles))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stdout


def _workload_attrs(point: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in point["attributes"].items() if k not in IDENTITY}


def _workloads(doc: dict[str, Any], name: str = "otel_gpu.workload.gpu.processes") -> dict:
    """(device uuid, frozen workload attributes) -> value."""
    return {
        (p["attributes"]["hw.id"], frozenset(_workload_attrs(p).items())): p["value"]
        for p in points_named(doc, name)
    }


def _containers(scenario: Scenario) -> dict[str, dict[str, str]]:
    """Every container of the scenario by id, with the attributes it should be reported with."""
    out = {}
    for c in scenario.containers:
        out[c.id] = {"container.id": c.id, "container.name": c.name,
                     "container.runtime.name": "docker"}
        if c.image:
            out[c.id]["container.image.name"] = c.image
        out[c.id].update({f"container.label.{k}": v for k, v in c.labels.items()
                          if k in DEFAULT_LABELS})
    for pod in scenario.pods:
        for c in pod.containers:
            out[c.id] = {"container.id": c.id, "container.runtime.name": "containerd",
                         "k8s.pod.name": pod.name, "k8s.pod.uid": pod.uid,
                         "k8s.namespace.name": pod.namespace, "k8s.container.name": c.name}
            if c.image:
                out[c.id]["container.image.name"] = c.image
    return out


def _expected_workloads(scenario: Scenario, cycle: int) -> dict:
    """(device uuid, frozen attributes) -> [processes, memory bytes], from the scenario alone."""
    containers = _containers(scenario)
    expected: dict = {}
    for gpu in scenario.gpus:
        for p in gpu.processes_at(cycle):
            device = gpu.uuid
            if p.mig_instance is not None:
                device = gpu.mig.layout_at(cycle).instances[p.mig_instance].uuid
            attrs = {"process.owner": scenario.users.get(p.uid, str(p.uid))}
            for cid, container_attrs in containers.items():
                if cid in p.cgroup:
                    attrs.update(container_attrs)
            entry = expected.setdefault((device, frozenset(attrs.items())), [0, 0])
            entry[0] += 1
            entry[1] += at_cycle(p.used_memory_bytes, cycle)
    return expected


@pytest.fixture(scope="module")
def dgx() -> tuple[dict[str, Any], str]:
    return _snapshot("dgx-a100", 2)


def test_every_device_with_processes_carries_user_container_and_pod(dgx) -> None:
    doc, _ = dgx
    scenario = load_scenario("dgx-a100")
    expected = _expected_workloads(scenario, 1)
    assert _workloads(doc) == {key: n for key, (n, _) in expected.items()}
    memory = _workloads(doc, "otel_gpu.workload.gpu.memory.usage")
    assert memory == {key: mem for key, (_, mem) in expected.items()}
    busy = {device for device, _ in expected}
    mig_busy = {i.uuid for g in scenario.gpus if g.mig for i in g.mig.layouts[0].instances
                if any(p.mig_instance == i.index for p in g.processes)}
    assert mig_busy and mig_busy <= busy
    owners = {dict(attrs)["process.owner"] for _, attrs in expected}
    assert owners == {"alice", "bob", "carol"}
    pods = {dict(attrs).get("k8s.pod.name") for _, attrs in expected} - {None}
    assert pods == {"bob-job-0", "bob-job-1", "infer-server-0"}


def test_workload_utilization_on_whole_gpus_only(dgx) -> None:
    doc, _ = dgx
    scenario = load_scenario("dgx-a100")
    sm = {p["attributes"]["hw.id"]: p["value"]
          for p in points_named(doc, "otel_gpu.workload.gpu.utilization")}
    expected = {g.uuid: at_cycle(p.sm_utilization, 1)
                for g in scenario.gpus if not g.mig for p in g.processes_at(1)}
    assert sm == pytest.approx(expected)
    assert all("hw.parent" not in p["attributes"]
               for p in points_named(doc, "otel_gpu.workload.gpu.utilization"))


def test_devices_given_to_containers_and_pods_busy_or_idle(dgx) -> None:
    doc, _ = dgx
    scenario = load_scenario("dgx-a100")
    given = {(d, c.id) for c in scenario.containers for d in c.device_uuids}
    given |= {(d, c.id) for pod in scenario.pods for c in pod.containers for d in c.device_uuids}
    points = points_named(doc, "otel_gpu.device.assignment")
    assert {(p["attributes"]["hw.id"], p["attributes"]["container.id"]) for p in points} == given
    assert all(p["value"] == 1 for p in points)
    containers = _containers(scenario)
    for p in points:
        assert _workload_attrs(p) == containers[p["attributes"]["container.id"]]
    idle = {scenario.resolve_device("gpu5"), scenario.resolve_device("gpu1/mig2")}
    busy = {device for device, _ in _expected_workloads(scenario, 1)}
    assert idle <= {d for d, _ in given} and not idle & busy
    nobody = {scenario.resolve_device("gpu7"), scenario.resolve_device("gpu0/mig3")}
    assert not nobody & {p["attributes"]["hw.id"] for p in points}


def test_containers_that_hold_gpus_report_their_cgroup(dgx) -> None:
    doc, _ = dgx
    scenario = load_scenario("dgx-a100")
    specs = {c.id: c for c in scenario.containers}
    specs |= {c.id: c for pod in scenario.pods for c in pod.containers}
    holders = {cid for g in scenario.gpus for p in g.processes for cid in specs if cid in p.cgroup}
    # a container that holds a device and runs no GPU process is read through its init process
    held = {c.id for c in scenario.containers if c.pid is not None and c.device_uuids}
    held |= {c.id for pod in scenario.pods for c in pod.containers if c.device_uuids}
    held -= holders
    assert held and not held & holders
    holders |= held
    for name in CONTAINER_METRICS:
        reported = {p["attributes"]["container.id"] for p in points_named(doc, name)}
        assert reported == holders, name
    containers = _containers(scenario)
    for cid in holders:
        res = specs[cid].resources

        def value(name: str, cid: str = cid, **extra: str) -> float:
            (point,) = [p for p in points_named(doc, name)
                        if p["attributes"]["container.id"] == cid
                        and all(p["attributes"][k] == v for k, v in extra.items())]
            attrs = {k: v for k, v in point["attributes"].items()
                     if k not in ("cpu.mode", "disk.io.direction")}
            assert attrs == containers[cid]
            return point["value"]

        assert value("otel_gpu.container.memory.limit") == res.memory_limit_bytes
        assert value("otel_gpu.container.cpu.limit") == res.cpu_limit
        assert value("container.memory.usage") == at_cycle(res.memory_used_bytes, 1)
        assert value("otel_gpu.container.oom_kills") == 0
        cpu = value("container.cpu.time", **{"cpu.mode": "user"}) + value(
            "container.cpu.time", **{"cpu.mode": "system"})
        # Counted since the agent's first reading (cycle 0): the CPU of cycle 1.
        used = at_cycle(res.cpu_utilization, 1) * res.cpu_limit * 10.0
        assert cpu == pytest.approx(used)


def test_no_pid_and_no_command_line_anywhere(dgx) -> None:
    doc, text = dgx
    scenario = load_scenario("dgx-a100")
    processes = [p for g in scenario.gpus for p in g.processes]
    pids = {p.pid for p in processes} | {str(p.pid) for p in processes}
    for point in doc["points"]:
        assert not any("pid" in key or "command" in key for key in point["attributes"])
        assert not pids & {v for v in point["attributes"].values() if isinstance(v, (int, str))}
    arguments = {arg for p in processes for arg in p.cmdline[1:] if len(arg) > 3}
    assert arguments and not [arg for arg in arguments if arg in text]


def test_scenario_processes_belong_to_their_containers_and_pods() -> None:
    from otel_gpu.sources.cgroup import container_from_cgroup_lines

    for name in builtin_names():
        scenario = load_scenario(name)
        docker = {c.id for c in scenario.containers}
        pods = {c.id: pod.uid for pod in scenario.pods for c in pod.containers}
        for gpu in scenario.gpus:
            layouts = gpu.mig.layouts if gpu.mig else ()
            for p in (*gpu.processes, *(q for lay in layouts[1:] for q in lay.processes)):
                ref = container_from_cgroup_lines([p.cgroup])
                if ref is None:
                    assert "kubepods" not in p.cgroup and "docker" not in p.cgroup, (name, p.pid)
                elif ref.pod_uid is not None:
                    assert pods.get(ref.id) == ref.pod_uid, (name, p.pid)
                else:
                    assert ref.id in docker and ref.runtime == "docker", (name, p.pid)


# -- scenarios of their own ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_only() -> tuple[dict[str, Any], dict[str, Any]]:
    path = str(SCENARIOS / "docker-only.yaml")
    return _snapshot(path, 1)[0], _snapshot(path, 2)[0]


TRAIN = "116f54c41d0405dbb10e7b04ebc31e262a5b8c85c1233fcf36eaee344d91ae58"


def test_docker_only_host(docker_only) -> None:
    first, second = docker_only
    scenario = load_scenario(str(SCENARIOS / "docker-only.yaml"))
    for doc, cycle in ((first, 0), (second, 1)):
        expected = _expected_workloads(scenario, cycle)
        assert _workloads(doc) == {key: n for key, (n, _) in expected.items()}
    train = [dict(attrs) for (_, attrs) in _workloads(first)
             if dict(attrs).get("container.id") == TRAIN]
    assert {a["process.owner"] for a in train} == {"alice", "4321"}
    for attrs in train:
        assert attrs["container.name"] == "alice-train"
        assert attrs["container.runtime.name"] == "docker"
        assert attrs["container.label.com.docker.compose.project"] == "vision"
        assert attrs["container.label.com.docker.compose.service"] == "trainer"
        assert "container.label.team" not in attrs  # not allow-listed
        assert not any(k.startswith("k8s.") for k in attrs)
    sources = {p["attributes"]["otel_gpu.source"]
               for p in points_named(first, "otel_gpu.collection.duration")}
    assert {"procfs", "cgroup", "docker"} <= sources and "kubelet" not in sources
    assert not [p for p in points_named(first, "otel_gpu.collection.errors")
                if p["attributes"]["otel_gpu.source"] != "nvml"]
    assigned = {(p["attributes"]["hw.name"], p["attributes"]["container.name"])
                for p in points_named(first, "otel_gpu.device.assignment")}
    assert assigned == {("gpu0", "alice-train"), ("gpu1", "bob-notebook")}


def test_unknown_uid_is_reported_as_the_number(docker_only) -> None:
    first, _ = docker_only
    owners = {dict(attrs)["process.owner"]: n for (_, attrs), n in _workloads(first).items()}
    assert owners == {"alice": 2, "4321": 1, "bob": 1}


def test_process_exiting_between_cycles(docker_only) -> None:
    first, second = docker_only

    def alice(doc: dict, name: str) -> float:
        (value,) = [v for (_, attrs), v in _workloads(doc, name).items()
                    if dict(attrs)["process.owner"] == "alice"]
        return value

    assert alice(first, "otel_gpu.workload.gpu.processes") == 2
    assert alice(second, "otel_gpu.workload.gpu.processes") == 1
    assert alice(first, "otel_gpu.workload.gpu.memory.usage") == 32_000_000_000
    assert alice(second, "otel_gpu.workload.gpu.memory.usage") == 30_000_000_000
    assert alice(first, "otel_gpu.workload.gpu.utilization") == pytest.approx(0.8)
    assert alice(second, "otel_gpu.workload.gpu.utilization") == pytest.approx(0.6)
    oom = {p["attributes"]["container.name"]: p["value"]
           for p in points_named(second, "otel_gpu.container.oom_kills")}
    assert oom == {"alice-train": 1}
    io = {p["attributes"]["disk.io.direction"]: p["value"]
          for p in points_named(second, "container.disk.io")}
    # Counted since the agent's first reading (cycle 0): cycle 1's 10 s.
    assert io == {"read": 10 * 1048576, "write": 10 * 4096}


def test_kubernetes_node_without_the_pod_list() -> None:
    doc, _ = _snapshot(str(SCENARIOS / "k8s-no-pod-list.yaml"), 1)
    ((_, attrs),) = _workloads(doc)
    assert dict(attrs) == {
        "process.owner": "alice",
        "container.id": "9bb860b4a6e4acf959daf85d815086f49d8cfdfacce4f29f84f04e480fa3d7da",
        "container.runtime.name": "containerd",
        "k8s.pod.uid": "bd6a19fa-b02a-5de7-8d0a-b9dd43c3f367",
    }
    assigned = {(p["attributes"]["hw.name"], p["attributes"]["k8s.namespace.name"],
                 p["attributes"]["k8s.pod.name"], p["attributes"]["k8s.container.name"])
                for p in points_named(doc, "otel_gpu.device.assignment")}
    assert assigned == {("gpu0", "research", "trainer-0", "trainer"),
                        ("gpu1/mig0", "serving", "idle-0", "server")}
    errors = {(p["attributes"]["otel_gpu.source"], p["attributes"]["error.type"])
              for p in points_named(doc, "otel_gpu.collection.errors")}
    assert ("kubelet", "HTTP503") in errors
    (limit,) = points_named(doc, "otel_gpu.container.cpu.limit")
    assert limit["value"] == 4 and limit["attributes"]["k8s.pod.uid"].startswith("bd6a19fa")


def test_hostile_container_names_and_labels_are_cleaned() -> None:
    doc, text = _snapshot(str(SCENARIOS / "hostile-container.yaml"), 1)
    attributed = [p for p in doc["points"] if "container.id" in p["attributes"]]
    assert {p["name"] for p in attributed} >= {"otel_gpu.workload.gpu.processes",
                                                "otel_gpu.device.assignment",
                                                *CONTAINER_METRICS}
    for point in attributed:
        attrs = point["attributes"]
        for key, value in attrs.items():
            assert not any(unicodedata.category(c).startswith("C") for c in key + str(value))
            assert len(str(value)) <= MAX_TEXT
        assert attrs["container.name"] == "evil[31mred[0mname"
        assert attrs["container.image.name"] == "registry.example/evil:tag"
        assert attrs["container.label.com.docker.compose.project"] == "A" * MAX_TEXT
        assert attrs["container.label.com.docker.compose.service"] == "svc]0;title"
        assert not [k for k in attrs if "secret" in k or "io.kubernetes" in k]
        assert "k8s.pod.name" not in attrs
    assert "do-not-export" not in text and "spoofed" not in text
    owners = {p["attributes"].get("process.owner")
              for p in points_named(doc, "otel_gpu.workload.gpu.processes")}
    assert owners == {"mallory"}  # a comm holding "\nUid:\t0" does not change the owner


# -- in-process: the join's edges ----------------------------------------------------------------



MIXED = {
    "name": "mixed",
    "gpus": [
        {"model": "A100-SXM4-40GB",
         "mig": {"instances": [{"profile": "3g.20gb", "start": 0},
                               {"profile": "3g.20gb", "start": 4}]}},
        {"model": "A100-SXM4-40GB"},
        {"model": "A100-SXM4-40GB"},
    ],
}


def _gpus(path: str) -> tuple:
    collector = build_collector(path, attribution=False)
    collector.start()
    try:
        return collector.collect().gpus
    finally:
        collector.close()


def test_devices_named_by_index_uuid_mig_uuid_or_all(write_scenario, sock_dir: str) -> None:
    gpus = _gpus(write_scenario(MIXED))
    mig0, mig1 = gpus[0].mig_devices
    ids = [f"{i:064x}" for i in range(1, 6)]
    gpu_request = {"Driver": "nvidia", "Count": -1}
    containers = [
        {"id": ids[0], "name": "by-index", "devices": ["1"]},
        {"id": ids[1], "name": "by-mig-index", "devices": ["0:1"]},
        {"id": ids[2], "name": "by-uuid", "devices": [gpus[2].uuid, mig0.uuid, "GPU-unknown"]},
        {"id": ids[3], "inspect": {"Name": "/everything", "Config": {},
                                   "HostConfig": {"DeviceRequests": [gpu_request]}}},
    ]
    pods = [{"namespace": "ns", "name": "shared", "uid": "u",
             "containers": [{"name": "c", "id": ids[4],
                             "devices": [f"{gpus[1].uuid}::3", f"{gpus[1].uuid}::4"]}]}]
    with serve_docker_api(f"{sock_dir}/d.sock", containers), \
            serve_pod_resources(f"{sock_dir}/k.sock", pods):
        attributor = Attributor(
            ProcfsReader(sock_dir),
            docker=DockerClient(f"{sock_dir}/d.sock"),
            pod_resources=PodResourcesClient(f"{sock_dir}/k.sock"),
        )
        result = attributor.attribute(gpus)
    names = {g.uuid: g.name for g in gpus} | {m.uuid: m.name for m in (mig0, mig1)}
    found = {(names[a.device_uuid], a.attributes.get("container.name")
              or a.attributes["k8s.pod.name"], a.mig) for a in result.assignments}
    assert found == {
        ("gpu1", "by-index", False),
        ("gpu0/mig1", "by-mig-index", True),
        ("gpu2", "by-uuid", False),
        ("gpu0/mig0", "by-uuid", True),
        ("gpu0", "everything", False),
        ("gpu1", "everything", False),
        ("gpu2", "everything", False),
        ("gpu1", "shared", False),  # two time-sliced replicas of one GPU: one assignment
    }
    assert result.errors == ()


class _Exploding:
    def read_many(self, pids: object) -> dict:
        raise RuntimeError("bug")

    def take_errors(self) -> tuple:
        return ()


def test_a_failing_reader_costs_only_its_part(sock_dir: str) -> None:
    path = str(SCENARIOS / "docker-only.yaml")
    gpus = _gpus(path)
    result = Attributor(_Exploding(), docker=DockerClient(f"{sock_dir}/absent.sock")).attribute(
        gpus)  # type: ignore[arg-type]
    assert {(e.source, e.call, e.error_type) for e in result.errors} == {
        ("procfs", "attribute", "RuntimeError"),
        ("docker", "list", "FileNotFoundError"),
    }
    assert sum(w.processes for w in result.workloads) == 4
    assert all(w.attributes == {} for w in result.workloads)
    assert {"procfs", "docker"} <= result.durations_s.keys()


def test_user_names_are_looked_up_once_and_failures_give_the_uid() -> None:
    calls: list[int] = []

    def lookup(uid: int) -> str | None:
        calls.append(uid)
        if uid == 13:
            raise OSError("nss backend down")
        return {1000: "alice"}.get(uid)

    attributor = Attributor(ProcfsReader("/nonexistent"), user_name=lookup)
    assert [attributor.owner(u) for u in (1000, 1000, 13, 42)] == ["alice", "alice", "13", "42"]
    assert calls == [1000, 13, 42]
    attributor._forget_users({1000})
    attributor.owner(42)
    assert calls == [1000, 13, 42, 42]


def test_steady_state_asks_the_runtime_nothing_new() -> None:
    collector = build_collector(str(SCENARIOS / "docker-only.yaml"))
    collector.start()
    try:
        world = collector.sources.simulation
        first = collector.collect()
        asked = list(world.docker_api.requests)
        second = collector.collect()
        assert world.docker_api.requests == asked  # the list and the inspects are cached
        inspects = [p for p in asked if not p.endswith("?size=true")]
        assert sorted(p.rsplit("/", 2)[-2] for p in inspects) == sorted(
            [c.id for c in world.scenario.containers] + ["containers"])
        # the writable layer of the container seen, once: its next sample is 5 min away
        assert [p for p in asked if p.endswith("?size=true")] == [
            f"/containers/{second.containers[0].attributes['container.id']}/json?size=true"]
        assert collector.sources.attributor.procfs.cached_pids == {2001, 2003, 3001}
        assert {w.attributes.get("process.owner") for w in first.workloads} == {
            "alice", "4321", "bob"}
        assert len(second.containers) == 1 and second.containers[0].resources.oom_kills == 1
    finally:
        collector.close()


def test_close_stops_the_simulated_world() -> None:
    collector = build_collector("dgx-a100")
    collector.start()
    collector.collect()
    world = collector.sources.simulation
    sockets = [world.docker_socket, world.pod_resources_socket]
    assert all(s and os.path.exists(s) for s in sockets)
    assert os.path.isdir(os.path.join(world.proc_root, "4242"))
    collector.close()
    assert not os.path.exists(world.root)
    collector.close()  # twice is harmless


def test_host_attributor_uses_what_the_node_has(tmp_path: Path) -> None:
    plain = build_host_attributor({})
    assert plain.pod_list is None
    assert plain.procfs.root == "/proc" and plain.cgroup is not None
    assert (plain.docker is None) == (not os.path.exists("/var/run/docker.sock"))
    node = build_host_attributor({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "NODE_NAME": "gpu-7"})
    assert node.pod_list is not None and node.pod_list.url == "https://gpu-7:10250/pods"


def test_a_hostile_user_name_is_cleaned() -> None:
    attributor = Attributor(ProcfsReader("/nonexistent"),
                            user_name=lambda uid: "mal\x1b]0;x\x07lory\r\n\u202e")
    assert attributor.owner(1000) == "mal]0;xlory"
    blank = Attributor(ProcfsReader("/nonexistent"), user_name=lambda uid: "\x1b\x07")
    assert blank.owner(1000) == "1000"


def test_dra_claims_give_devices_as_the_device_plugin_does() -> None:
    doc, _ = _snapshot(str(SCENARIOS / "k8s-dra.yaml"), 1)
    keys = ("hw.name", "k8s.pod.name", "k8s.container.name", "otel_gpu.k8s.resourceclaim.name",
            "otel_gpu.k8s.dra.driver.name")
    assigned = {tuple(p["attributes"][k] for k in keys)
                for p in points_named(doc, "otel_gpu.device.assignment")}
    assert assigned == {("gpu0", "trainer-0", "trainer", "trainer-0-gpu", "gpu.nvidia.com"),
                        ("gpu1/mig0", "idle-0", "server", "idle-0-mig", "gpu.nvidia.com")}
    ((_, attrs),) = _workloads(doc)
    assert dict(attrs)["k8s.pod.name"] == "trainer-0"
    errors = {(p["attributes"]["otel_gpu.source"], p["attributes"]["error.type"])
              for p in points_named(doc, "otel_gpu.collection.errors")}
    assert ("kubelet", "UnresolvedDevice") not in errors


def test_dra_devices_by_uuid_index_or_unresolved(write_scenario, sock_dir: str) -> None:
    gpus = _gpus(write_scenario(MIXED))
    mig0, _ = gpus[0].mig_devices
    claim = {"name": "gpus", "namespace": "ns", "devices": [
        {"driver": "gpu.nvidia.com", "pool": "n", "device": "gpu-2", "cdi": []},
        {"driver": "gpu.nvidia.com", "pool": "n", "device": "any",
         "cdi": [f"nvidia.com/gpu={mig0.uuid}"]},
        {"driver": "gpu.nvidia.com", "pool": "n", "device": "gpu-9", "cdi": []},  # no GPU 9
        {"driver": "gpu.nvidia.com", "pool": "n", "device": "mig-1g.5gb-7", "cdi": []},
    ]}
    pods = [{"namespace": "ns", "name": "dra", "uid": "u",
             "containers": [{"name": "c", "id": "c" * 64, "claims": [claim]}]}]
    with serve_pod_resources(f"{sock_dir}/k.sock", pods):
        attributor = Attributor(ProcfsReader(sock_dir),
                                pod_resources=PodResourcesClient(f"{sock_dir}/k.sock"))
        result = attributor.attribute(gpus)
    found = {(a.device_uuid, a.attributes["otel_gpu.k8s.resourceclaim.name"])
             for a in result.assignments}
    assert found == {(gpus[2].uuid, "gpus"), (mig0.uuid, "gpus")}
    assert [(e.source, e.error_type) for e in result.errors] == [
        ("kubelet", "UnresolvedDevice"), ("kubelet", "UnresolvedDevice")]


def test_slurm_job_steps_are_workloads_like_pods() -> None:
    doc, _ = _snapshot(str(SCENARIOS / "slurm.yaml"), 1)
    keys = ("hw.name", "process.owner", "otel_gpu.slurm.job.id", "otel_gpu.slurm.step.id")
    found = {tuple(p["attributes"].get(k) for k in keys)
             for p in points_named(doc, "otel_gpu.workload.gpu.processes")}
    assert found == {
        ("gpu0", "alice", "4242", "0"),
        ("gpu0", "alice", "4242", "batch"),
        ("gpu1", "bob", "77", "3"),
        ("gpu1", "bob", None, None),  # a login session: no job
    }


def test_container_network_from_its_namespace_host_network_skipped() -> None:
    result = run_cli("snapshot", "--format", "json", "--simulate",
                     str(SCENARIOS / "container-network.yaml"), "--cycles", "3",
                     "--interval", "10")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    found = {(p["attributes"]["container.name"], p["attributes"]["network.io.direction"]):
             p["value"] for p in points_named(doc, "container.network.io")}
    # read through a GPU process and an idle container's init process; the host-network
    # container has no point. The netns counters are lifetime counters, so they count from the
    # first read: three cycles of 10 s are two intervals' worth
    assert found == {("alice-train", "receive"): 20_000_000,
                     ("alice-train", "transmit"): 1_000_000_000,
                     ("bob-idle", "receive"): 60_000, ("bob-idle", "transmit"): 0}
    packets = {(p["attributes"]["container.name"], p["attributes"]["network.io.direction"]):
               p["value"] for p in points_named(doc, "otel_gpu.container.network.packets")}
    assert packets[("alice-train", "transmit")] == 1_000_000_000 // 1500  # 1500-byte frames
    assert {p["attributes"]["container.name"]
            for p in points_named(doc, "container.cpu.time")} >= {"bob-hostnet"}
