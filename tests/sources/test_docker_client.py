from __future__ import annotations

import json
import socket
import time

import pytest
from clock import Clock

from otel_gpu.simulate.docker_api import serve_docker_api
from otel_gpu.sources._text import MAX_TEXT, clean_text
from otel_gpu.sources.docker import ContainerMeta, DockerClient

A = "3f2a9c1be0d74e55a0c6b1f2d3e4a5b6c7d8e9f00112233445566778899aabbc"
B = "9be1a7c3d5f70123456789abcdef0123456789abcdef0123456789abcdef0123"
C = "c" * 64
GPU0 = "GPU-8f2c1d3e-0000-1111-2222-333344445555"
MIG = "MIG-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"




def _errors(client: DockerClient) -> list[str]:
    errors = client.take_errors()
    assert all(e.source == "docker" for e in errors)
    return [e.error_type for e in errors]


def test_inspect_scenario_container(sock_dir: str) -> None:
    path = f"{sock_dir}/docker.sock"
    container = {
        "id": A,
        "name": "alice-train",
        "image": "nvcr.io/nvidia/pytorch:24.05-py3",
        "labels": {"com.docker.compose.project": "vision", "team": "vision", "secret": "x"},
        "devices": [MIG],
        "env": {"WANDB_API_KEY": "hunter2", "NVIDIA_VISIBLE_DEVICES": "all"},
    }
    with serve_docker_api(path, [container]) as server:
        client = DockerClient(path)
        meta = client.inspect(A)
    assert meta == ContainerMeta(
        id=A,
        name="alice-train",
        image="nvcr.io/nvidia/pytorch:24.05-py3",
        labels={"com.docker.compose.project": "vision"},
        runtime="runc",
        gpu_ids=(MIG,),
        all_gpus=False,
        gpu_count=None,
        image_id="sha256:" + "0" * 64,
        shm_size=64 << 20,
        ipc_host=False,
    )
    assert "hunter2" not in repr(meta)  # the environment is never kept
    assert server.requests == [f"/containers/{A}/json"]
    assert _errors(client) == []


def _doc(cid: str, host: dict, env: list[str] | None = None, name: str = "/x") -> dict:
    return {
        "Id": cid,
        "Name": name,
        "Config": {"Image": "img", "Labels": {}, "Env": env or []},
        "HostConfig": host,
    }


@pytest.mark.parametrize(
    ("host", "env", "ids", "all_gpus", "count"),
    [
        (  # docker run --gpus all
            {
                "Runtime": "runc",
                "DeviceRequests": [
                    {"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]]}
                ],
            },
            [],
            (),
            True,
            None,
        ),
        (  # docker run --gpus '"device=GPU-...,MIG-..."'
            {"DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [GPU0, MIG, GPU0]}]},
            [],
            (GPU0, MIG),
            False,
            None,
        ),
        (  # docker run --gpus 2
            {"DeviceRequests": [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]},
            [],
            (),
            False,
            2,
        ),
        (  # a request for another driver's devices
            {"DeviceRequests": [{"Driver": "other", "Count": -1, "Capabilities": [["tpu"]]}]},
            [],
            (),
            False,
            None,
        ),
        (  # the nvidia runtime reads NVIDIA_VISIBLE_DEVICES
            {"Runtime": "nvidia", "DeviceRequests": None},
            ["PATH=/bin", f"NVIDIA_VISIBLE_DEVICES={GPU0},1"],
            (GPU0, "1"),
            False,
            None,
        ),
        (
            {"Runtime": "nvidia"},
            ["NVIDIA_VISIBLE_DEVICES=all"],
            (),
            True,
            None,
        ),
        (
            {"Runtime": "nvidia"},
            ["NVIDIA_VISIBLE_DEVICES=none"],
            (),
            False,
            None,
        ),
        (  # CUDA images set NVIDIA_VISIBLE_DEVICES=all; under runc that gives no GPU
            {"Runtime": "runc"},
            ["NVIDIA_VISIBLE_DEVICES=all"],
            (),
            False,
            None,
        ),
    ],
    ids=[
        "gpus all",
        "device ids",
        "count",
        "other driver",
        "env ids",
        "env all",
        "env none",
        "env under runc",
    ],
)
def test_devices_given(
    sock_dir: str,
    host: dict,
    env: list[str],
    ids: tuple[str, ...],
    all_gpus: bool,
    count: int | None,
) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, "inspect": _doc(A, host, env)}]):
        meta = DockerClient(path).inspect(A)
    assert meta is not None
    assert (meta.gpu_ids, meta.all_gpus, meta.gpu_count) == (ids, all_gpus, count)


def test_hostile_names_and_labels(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    doc = _doc(A, {}, name="/evil\x1b[2J\r\nname\u202egpj.exe\x00" + "z" * 10_000)
    doc["Config"]["Image"] = "img\n\x07:latest"
    doc["Config"]["Labels"] = {
        "io.kubernetes.pod.name": "pod\ttab\u200bzero-width" + "y" * 500,
        "io.kubernetes.pod.namespace": ["not", "a", "string"],
        "com.docker.compose.project\n": "key with newline is not allow-listed",
        "evil": "dropped",
    }
    with serve_docker_api(path, [{"id": A, "inspect": doc}]):
        client = DockerClient(path)
        meta = client.inspect(A)
    assert meta is not None
    assert meta.name.startswith("evil[2Jnamegpj.exe")
    assert len(meta.name) == MAX_TEXT
    assert meta.image == "img:latest"
    assert list(meta.labels) == ["io.kubernetes.pod.name"]
    assert meta.labels["io.kubernetes.pod.name"].startswith("podtabzero-width")
    assert len(meta.labels["io.kubernetes.pod.name"]) == MAX_TEXT
    for text in (meta.name, meta.image, *meta.labels.values()):
        assert text.isprintable()


def test_custom_label_allowlist(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, "labels": {"team": "nlp", "owner": "bob"}}]):
        meta = DockerClient(path, label_allowlist={"team"}).inspect(A)
    assert meta is not None and meta.labels == {"team": "nlp"}


def test_clean_text() -> None:
    assert clean_text("a\x00b\x7fc\u2066d") == "abcd"
    assert clean_text(12) == "12"
    assert clean_text("x" * 500, limit=3) == "xxx"


def test_not_found_is_counted_and_cached(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    clock = Clock()
    with serve_docker_api(path, [{"id": A}]) as server:
        client = DockerClient(path, ttl_s=60, clock=clock)
        assert client.inspect(B) is None
        assert client.inspect(B) is None
        assert _errors(client) == ["NotFound"]
        assert len(server.requests) == 1
        clock.now += 61
        assert client.inspect(B) is None
        assert len(server.requests) == 2
        assert _errors(client) == ["NotFound"]


def test_cache_ttl_and_eviction(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    clock = Clock()
    with serve_docker_api(path, [{"id": A, "name": "a"}, {"id": B, "name": "b"}]) as server:
        client = DockerClient(path, ttl_s=30, clock=clock)
        found = client.inspect_many([A, B, C])
        assert {cid: m.name for cid, m in found.items()} == {A: "a", B: "b"}
        assert client.cached_ids == {A, B, C}
        assert len(server.requests) == 3
        client.inspect_many([A, B])
        assert len(server.requests) == 3  # all from the cache
        assert client.cached_ids == {A, B}
        server.containers[0]["name"] = "renamed"
        clock.now += 31
        assert client.inspect(A).name == "renamed"  # type: ignore[union-attr]
        client.inspect_many([])
        assert client.cached_ids == frozenset()
    assert _errors(client) == ["NotFound"]


def test_short_id_and_api_version(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, "name": "a"}]) as server:
        meta = DockerClient(path, api_version="1.44").inspect(A[:12])
    assert meta is not None and meta.name == "a" and meta.id == A[:12]
    assert server.requests == [f"/v1.44/containers/{A[:12]}/json"]


def test_invalid_id_is_not_sent(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A}]) as server:
        client = DockerClient(path)
        assert client.inspect("../../info?x=") is None
        assert client.inspect("ABCDEF0123456789") is None
    assert server.requests == []
    assert _errors(client) == ["InvalidId", "InvalidId"]


def test_socket_absent_then_backoff(sock_dir: str) -> None:
    clock = Clock()
    client = DockerClient(f"{sock_dir}/missing.sock", retry_after_s=30, clock=clock)
    assert client.inspect(A) is None
    assert _errors(client) == ["FileNotFoundError"]
    assert client.inspect(B) is None  # within the back-off: not tried, nothing new counted
    assert _errors(client) == []
    clock.now += 31
    assert client.inspect(B) is None
    assert _errors(client) == ["FileNotFoundError"]


def test_connection_refused(sock_dir: str) -> None:
    path = f"{sock_dir}/dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # a socket file nobody listens on, as a stopped daemon leaves behind
    s.close()
    client = DockerClient(path)
    assert client.inspect(A) is None
    assert _errors(client) == ["ConnectionRefusedError"]


def test_daemon_back_after_failure_serves_stale_meanwhile(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    clock = Clock()
    client = DockerClient(path, ttl_s=10, retry_after_s=5, clock=clock)
    with serve_docker_api(path, [{"id": A, "name": "a"}]):
        assert client.inspect(A).name == "a"  # type: ignore[union-attr]
    clock.now += 11  # expired, and the daemon is gone
    assert client.inspect(A).name == "a"  # type: ignore[union-attr]
    assert _errors(client) == ["FileNotFoundError"]
    with serve_docker_api(path, [{"id": A, "name": "a2"}]):
        assert client.inspect(A).name == "a"  # type: ignore[union-attr]  # back-off
        clock.now += 6
        assert client.inspect(A).name == "a2"  # type: ignore[union-attr]
    assert _errors(client) == []


def test_slow_daemon_times_out(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A}], delay_s=5.0):
        client = DockerClient(path, timeout_s=0.2)
        started = time.monotonic()
        assert client.inspect(A) is None
        elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 2.0
    assert _errors(client) == ["TimeoutError"]


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"raw": b"{not json"}, "MalformedJSON"),
        ({"raw": b"\xff\xfe\x00"}, "MalformedJSON"),
        ({"raw": b""}, "MalformedJSON"),
        ({"inspect": ["a", "list"]}, "Malformed"),
    ],
    ids=["broken", "binary", "empty", "list"],
)
def test_malformed_answers(sock_dir: str, entry: dict, error: str) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, **entry}]):
        client = DockerClient(path)
        assert client.inspect(A) is None
    assert _errors(client) == [error]


def test_wrong_types_inside_give_defaults(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    doc = {
        "Name": 42,
        "Config": "nope",
        "HostConfig": {"Runtime": 7, "DeviceRequests": [None, "x", {"DeviceIDs": "GPU-1"}]},
    }
    with serve_docker_api(path, [{"id": A, "inspect": doc}]):
        client = DockerClient(path)
        meta = client.inspect(A)
    assert meta == ContainerMeta(id=A, name=A[:12], image=None)
    assert _errors(client) == []


def test_server_answers_docker_shapes(sock_dir: str) -> None:
    """The stand-in itself, read with a plain HTTP client."""
    from otel_gpu.sources.docker import UnixHTTPConnection

    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, "name": "n", "devices": [GPU0]}]):
        conn = UnixHTTPConnection(path, timeout=2)
        conn.request("GET", f"/v1.43/containers/{A[:8]}/json")
        response = conn.getresponse()
        doc = json.loads(response.read())
        conn.close()
        conn = UnixHTTPConnection(path, timeout=2)
        conn.request("GET", "/containers/json")
        listed = json.loads(conn.getresponse().read())
        conn.close()
        conn = UnixHTTPConnection(path, timeout=2)
        conn.request("GET", "/info")
        missing = conn.getresponse()
        missing.read()
        conn.close()
    assert response.status == 200
    assert doc["Name"] == "/n" and doc["Id"] == A
    assert doc["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == [GPU0]
    assert [(c["Id"], c["Names"]) for c in listed] == [(A, ["/n"])]
    assert missing.status == 404


def test_list_containers_is_cached_and_reads_ids_only(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    clock = Clock()
    containers = [
        {"id": A, "name": "a", "cmdline": ["python", "train.py", "--token", "hunter2"]},
        {"id": B, "name": "b"},
    ]
    with serve_docker_api(path, containers) as server:
        client = DockerClient(path, list_ttl_s=30, clock=clock, api_version="1.44")
        assert client.list_containers() == (A, B)
        assert client.list_containers() == (A, B)
        assert server.requests == ["/v1.44/containers/json"]
        server.containers.append({"id": C, "name": "c"})
        clock.now += 31
        assert client.list_containers() == (A, B, C)
        assert len(server.requests) == 2
    assert _errors(client) == []


def test_list_containers_failures(sock_dir: str) -> None:
    clock = Clock()
    client = DockerClient(f"{sock_dir}/missing.sock", retry_after_s=30, clock=clock)
    assert client.list_containers() is None
    assert client.inspect(A) is None  # the daemon is down: not asked again within the back-off
    assert _errors(client) == ["FileNotFoundError"]

    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, "name": "a"}]) as server:
        client = DockerClient(path, list_ttl_s=30, clock=clock)
        assert client.list_containers() == (A,)
        clock.now += 31
        server.answer = lambda p: (200, b'{"not": "a list"}')  # type: ignore[method-assign]
        assert client.list_containers() is None
        odd = json.dumps([{"Id": "../x"}, 7, {"Id": B}]).encode()
        server.answer = lambda p: (200, odd)  # type: ignore[method-assign]
        assert client.list_containers() == (B,)
    assert _errors(client) == ["Malformed"]
