"""A container's writable layer (Docker SizeRw, the kubelet Summary), /dev/shm and DataLoader
workers: the slow cadence on a hand-moved clock, per-container state dropped, bad answers
recorded, never raised."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clock import Clock

from otel_gpu.simulate.docker_api import serve_docker_api
from otel_gpu.simulate.kubelet_api import serve_pod_list
from otel_gpu.sources.container_disk import ContainerDiskReader, DiskTarget
from otel_gpu.sources.docker import DockerClient
from otel_gpu.sources.kubelet import PodListClient
from otel_gpu.sources.kubelet_stats import PodDisk, StatsSummaryClient, parse_summary

A = "a1" * 32
B = "b2" * 32
GIB = 1 << 30


def _docker_target(client: DockerClient, cid: str, pid: int | None = None) -> DiskTarget:
    return DiskTarget(container_id=cid, pid=pid, meta=client.inspect(cid))


def test_writable_layer_is_asked_on_its_cadence_and_grows_over_the_hour(sock_dir: str) -> None:
    clock = Clock()
    entry = {"id": A, "name": "alice-train", "size_rw": GIB}
    with serve_docker_api(f"{sock_dir}/d.sock", [entry]) as server:
        client = DockerClient(f"{sock_dir}/d.sock", ttl_s=1e9)
        reader = ContainerDiskReader("/nonexistent", docker=client, interval_s=300, clock=clock)
        target = _docker_target(client, A)
        sizes = []
        for step in range(31):  # 5 min of 10 s cycles, and one more: two samples
            if step == 30:
                entry["size_rw"] = 2 * GIB
            sizes.append(reader.read([target])[A].writable_bytes)
            clock.now += 10
        asked = [p for p in server.requests if p.endswith("?size=true")]
        assert asked == [f"/containers/{A}/json?size=true"] * 2
        assert sizes[:30] == [GIB] * 30 and sizes[30] == 2 * GIB
        storage = reader.read([target])[A]
        assert storage.writable_growth_bytes_per_s == pytest.approx(GIB / 300)
        assert storage.shm_configured_bytes == 64 << 20 and storage.ipc_host is False
        # Over an hour the oldest samples leave the span: flat for the last hour, no growth.
        for _ in range(13):
            clock.now += 300
            storage = reader.read([target])[A]
        assert storage.writable_growth_bytes_per_s == 0.0
        assert reader.size_requests == 15
    assert client.take_errors() == ()


def test_a_gone_container_is_forgotten_and_a_new_one_sampled_at_once(sock_dir: str) -> None:
    clock = Clock()
    entries = [{"id": A, "size_rw": 10}, {"id": B, "size_rw": 20}]
    with serve_docker_api(f"{sock_dir}/d.sock", entries):
        client = DockerClient(f"{sock_dir}/d.sock", ttl_s=1e9)
        reader = ContainerDiskReader("/nonexistent", docker=client, clock=clock)
        reader.read([_docker_target(client, A)])
        assert reader.tracked == {A}
        clock.now += 10
        found = reader.read([_docker_target(client, B)])
        assert reader.tracked == {B} and found[B].writable_bytes == 20
        assert reader.size_requests == 2


@pytest.mark.parametrize("size", [-1, "big", True, None])
def test_a_bad_size_is_recorded(sock_dir: str, size: object) -> None:
    inspect = {"Id": A, "Name": "/x", "Config": {}, "HostConfig": {}, "SizeRw": size}
    with serve_docker_api(f"{sock_dir}/d.sock", [{"id": A, "inspect": inspect}]):
        client = DockerClient(f"{sock_dir}/d.sock")
        assert client.writable_size(A) is None
    assert [e.error_type for e in client.take_errors()] == ["Malformed"]


def test_a_daemon_that_is_gone_costs_one_failure_then_backs_off(sock_dir: str) -> None:
    clock = Clock()
    client = DockerClient(f"{sock_dir}/absent.sock", clock=clock, retry_after_s=30)
    assert client.writable_size(A) is None and client.writable_size(A) is None
    assert [e.call for e in client.take_errors()] == ["size"]
    assert client.writable_size("not-an-id") is None
    assert [e.error_type for e in client.take_errors()] == ["InvalidId"]


# -- the kubelet Summary ---------------------------------------------------------------------

# k8s.io/kubelet pkg/apis/stats/v1alpha1: Summary.pods[] PodStats, FsStats.usedBytes.
SUMMARY = {
    "node": {"nodeName": "gpu-7"},
    "pods": [
        {"podRef": {"name": "bob-job-0", "namespace": "research", "uid": "u1"},
         "containers": [{"name": "trainer", "rootfs": {"usedBytes": 5 * GIB, "inodesUsed": 9},
                         "logs": {"usedBytes": 1024}},
                        {"name": "sidecar", "rootfs": {"usedBytes": "lots"}}],
         "ephemeral-storage": {"usedBytes": 6 * GIB, "capacityBytes": 2 << 40}},
        {"podRef": {"name": 7, "namespace": "x"}},
        "not a pod",
    ],
}


def test_summary_gives_each_container_rootfs_and_the_pod_ephemeral_storage() -> None:
    found = parse_summary(json.dumps(SUMMARY).encode())
    assert found == {("research", "bob-job-0"): PodDisk(6 * GIB, {"trainer": 5 * GIB})}
    assert parse_summary(b"{") == "MalformedJSON"
    assert parse_summary(b'{"pods": {}}') == "Malformed"


def test_pod_containers_share_one_summary_a_cadence(tmp_path: Path) -> None:
    clock = Clock()
    pods = [{"namespace": "research", "name": "bob-job-0", "uid": "u1",
             "containers": [{"name": "trainer", "id": A, "size_rw": 3 * GIB},
                            {"name": "logger", "id": B, "size_rw": GIB}]}]
    with serve_pod_list(pods) as server:
        client = PodListClient(server.url, token_path=str(tmp_path / "none"))
        reader = ContainerDiskReader("/nonexistent", summary=StatsSummaryClient(client),
                                     clock=clock)
        targets = [DiskTarget(A, pod=("research", "bob-job-0", "trainer")),
                   DiskTarget(B, pod=("research", "bob-job-0", "logger"))]
        for _ in range(3):
            found = reader.read(targets)
            clock.now += 10
        assert found[A].writable_bytes == 3 * GIB and found[B].writable_bytes == GIB
        assert found[A].pod_ephemeral_bytes == 4 * GIB
        assert reader.size_requests == 1
        server.raw_body = b"<html>"
        clock.now += 300
        assert reader.read(targets)[A].writable_bytes == 3 * GIB  # the last sample stands
    assert [(e.call, e.error_type) for e in client.take_errors()] == [
        ("summary", "MalformedJSON")]


# -- /dev/shm and DataLoader workers ---------------------------------------------------------


def _process(proc: Path, pid: int, children: str | None = None) -> Path:
    root = proc / f"rootfs-{pid}"
    (root / "dev" / "shm").mkdir(parents=True)
    (proc / str(pid)).mkdir()
    os.symlink(root, proc / str(pid) / "root")
    if children is not None:
        task = proc / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text(children)
    return root


def _comm(proc: Path, pid: int, name: str) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "comm").write_text(name + "\n")


def test_shm_is_statvfs_through_the_process_root(tmp_path: Path) -> None:
    root = _process(tmp_path, 100)
    reader = ContainerDiskReader(str(tmp_path))
    real = os.statvfs(root / "dev" / "shm")
    size = real.f_blocks * real.f_frsize
    assert reader.shm(100) == (size, (real.f_blocks - real.f_bfree) * real.f_frsize)
    assert reader.shm(999) is None  # gone: not an error
    assert reader.take_errors() == ()


def test_a_dev_shm_that_is_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "dev").mkdir(parents=True)
    os.symlink("/", root / "dev" / "shm")  # in the container: / ; from the agent: the host's
    (tmp_path / "100").mkdir()
    os.symlink(root, tmp_path / "100" / "root")
    reader = ContainerDiskReader(str(tmp_path))
    assert reader.shm(100) is None
    assert [e.error_type for e in reader.take_errors()] == ["SymbolicLink"]


def test_workers_are_children_named_pt_data_worker_else_python(tmp_path: Path) -> None:
    _process(tmp_path, 100, "101 102 103 104 ")
    for pid, name in ((101, "pt_data_worker"), (102, "pt_data_worker"), (103, "python3"),
                      (104, "bash")):
        _comm(tmp_path, pid, name)
    _process(tmp_path, 200, "201 202 209 ")  # 209 exited meanwhile
    _comm(tmp_path, 201, "python")
    _comm(tmp_path, 202, "python3.11")
    _process(tmp_path, 300, "")
    _process(tmp_path, 400, "12 x\n")
    clock = Clock()
    reader = ContainerDiskReader(str(tmp_path), clock=clock, worker_interval_s=60)
    targets = [DiskTarget(c, pid=p, gpu_process=True)
               for c, p in ((A, 100), (B, 200), ("c" * 64, 300), ("d" * 64, 400))]
    found = reader.read([*targets, DiskTarget("e" * 64, pid=100)])
    assert [found[t.container_id].data_workers for t in targets] == [2, 2, 0, None]
    assert found["e" * 64].data_workers is None  # not a GPU process: its children say nothing
    assert [e.error_type for e in reader.take_errors()] == ["Malformed"]
    # Counted again only once the worker cadence has passed.
    _comm(tmp_path, 105, "pt_data_worker")
    (tmp_path / "100" / "task" / "100" / "children").write_text("101 102 105 ")
    clock.now += 30
    assert reader.read(targets[:1])[A].data_workers == 2
    clock.now += 30
    assert reader.read(targets[:1])[A].data_workers == 3


def test_a_denied_root_is_counted_once_a_minute(tmp_path: Path) -> None:
    _process(tmp_path, 100)
    clock = Clock()

    def statvfs(path: str) -> os.statvfs_result:  # the kernel's answer without CAP_SYS_PTRACE
        raise PermissionError(13, "Permission denied", path)

    reader = ContainerDiskReader(str(tmp_path), clock=clock, statvfs=statvfs)
    target = [DiskTarget(A, pid=100)]
    for _ in range(12):  # two minutes of 10 s cycles
        assert reader.read(target)[A].shm_size_bytes is None
        clock.now += 10
    assert [e.error_type for e in reader.take_errors()] == ["PermissionError"] * 2
