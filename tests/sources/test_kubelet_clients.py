from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from clock import Clock

from otel_gpu.simulate.kubelet_api import serve_pod_list, serve_pod_resources
from otel_gpu.sources.kubelet import (
    KubeletPod,
    PodContainer,
    PodDevices,
    PodListClient,
    PodResourcesClient,
    device_uuid,
    is_gpu_resource,
)

UID = "6d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
UID2 = "0a1b2c3d-0000-4000-8000-00000000beef"
C1 = "9be1a7c3d5f70123456789abcdef0123456789abcdef0123456789abcdef0123"
C2 = "3f2a9c1be0d74e55a0c6b1f2d3e4a5b6c7d8e9f00112233445566778899aabbc"
C3 = "a" * 64
GPU0 = "GPU-8f2c1d3e-0000-1111-2222-333344445555"
GPU1 = "GPU-00000000-1111-2222-3333-444455556666"
MIG = "MIG-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"

PODS = [
    {
        "namespace": "research",
        "name": "bob-job-0",
        "uid": UID,
        "containers": [
            {"name": "trainer", "id": C1, "devices": [GPU0, GPU1], "cpu_ids": [2, 3]},
            {"name": "sidecar", "id": C2},
        ],
    },
    {
        "namespace": "infer",
        "name": "llm-0",
        "uid": UID2,
        "containers": [
            {
                "name": "server",
                "id": C3,
                "devices": [MIG],
                "resource_name": "nvidia.com/mig-1g.10gb",
                "runtime": "cri-o",
            },
        ],
    },
    {
        "namespace": "other",
        "name": "fpga-0",
        "uid": "11111111-2222-4333-8444-555555555555",
        "containers": [
            {"name": "f", "id": "b" * 64, "devices": ["fpga0"], "resource_name": "xilinx.com/fpga"}
        ],
    },
]




def _errors(client: PodResourcesClient | PodListClient) -> list[tuple[str, str]]:
    errors = client.take_errors()
    assert all(e.source == "kubelet" for e in errors)
    return [(e.call, e.error_type) for e in errors]


# -- pod-resources ---------------------------------------------------------------------------


def test_list_gpu_and_mig_devices(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, PODS) as server:
        client = PodResourcesClient(path)
        assert client.available()
        devices = client.list_devices()
    assert devices == (
        PodDevices("research", "bob-job-0", "trainer", "nvidia.com/gpu", (GPU0, GPU1)),
        PodDevices("infer", "llm-0", "server", "nvidia.com/mig-1g.10gb", (MIG,)),
    )
    assert server.calls == 1
    assert _errors(client) == []


def test_extra_resource_names(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, PODS):
        devices = PodResourcesClient(path, resource_names=["xilinx.com/fpga"]).list_devices()
    assert devices is not None
    assert [d.resource_name for d in devices] == [
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.10gb",
        "xilinx.com/fpga",
    ]


def test_no_pods(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, []):
        assert PodResourcesClient(path).list_devices() == ()


def test_pod_resources_cache_ttl(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    clock = Clock()
    with serve_pod_resources(path, PODS) as server:
        client = PodResourcesClient(path, ttl_s=10, clock=clock)
        first = client.list_devices()
        assert client.list_devices() is first
        assert server.calls == 1
        server.pods = PODS[1:]
        clock.now += 11
        again = client.list_devices()
        assert server.calls == 2
    assert again is not None and [d.pod_name for d in again] == ["llm-0"]


def test_pod_resources_server_down(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    # A deadline far longer than a connect takes even on a loaded machine: the reconnect below
    # always fits, and the first call shows it fails fast by its status, UNAVAILABLE, rather than
    # the DEADLINE_EXCEEDED that waiting for the deadline would give.
    client = PodResourcesClient(path, timeout_s=60)
    assert not client.available()
    assert client.list_devices() is None
    assert _errors(client) == [("List", "UNAVAILABLE")]
    with serve_pod_resources(path, PODS):  # the kubelet comes back: no back-off after UNAVAILABLE
        assert client.list_devices() is not None
    assert _errors(client) == []


def test_pod_resources_malformed_answer(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, PODS, raw_response=b"\x0a\xff\xff\xff\xff\x0f garbage"):
        client = PodResourcesClient(path)
        assert client.list_devices() is None
    assert _errors(client) == [("List", "INTERNAL")]


def test_pod_resources_timeout(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    with serve_pod_resources(path, PODS, delay_s=5.0):
        client = PodResourcesClient(path, timeout_s=0.2)
        started = time.monotonic()
        assert client.list_devices() is None
        assert time.monotonic() - started < 2.0
    assert _errors(client) == [("List", "DEADLINE_EXCEEDED")]


def test_resource_helpers() -> None:
    assert is_gpu_resource("nvidia.com/gpu")
    assert is_gpu_resource("nvidia.com/mig-3g.20gb")
    assert not is_gpu_resource("nvidia.com/gpu.shared")
    assert is_gpu_resource("nvidia.com/gpu.shared", extra={"nvidia.com/gpu.shared"})
    assert device_uuid(f"{GPU0}::3") == GPU0
    assert device_uuid(MIG) == MIG


# -- /pods -------------------------------------------------------------------------------------


def test_pod_list_by_uid(tmp_path: Path) -> None:
    with serve_pod_list(PODS) as server:
        client = PodListClient(server.url, token_path=str(tmp_path / "none"))
        pods = client.pods()
    assert pods is not None
    assert pods[UID] == KubeletPod(
        uid=UID,
        name="bob-job-0",
        namespace="research",
        containers={
            C1: PodContainer(C1, "trainer", "containerd"),
            C2: PodContainer(C2, "sidecar", "containerd"),
        },
    )
    assert pods[UID2].containers == {C3: PodContainer(C3, "server", "cri-o")}
    assert len(pods) == 3
    assert server.authorizations == [None]
    assert _errors(client) == []


def test_pod_list_sends_the_service_account_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.token\n")
    clock = Clock()
    with serve_pod_list(PODS) as server:
        client = PodListClient(server.url, token_path=str(token), ttl_s=30, clock=clock)
        assert client.pods() is not None
        token.write_text("rotated")  # projected tokens are refreshed on disk
        clock.now += 31
        assert client.pods() is not None
    assert server.authorizations == ["Bearer eyJhbGciOi.token", "Bearer rotated"]


def test_pod_list_statuses(tmp_path: Path) -> None:
    item = {
        "metadata": {"name": "p", "namespace": "n", "uid": UID},
        "status": {
            "initContainerStatuses": [{"name": "init", "containerID": f"docker://{C1}"}],
            "containerStatuses": [
                {"name": "pending", "state": {"waiting": {"reason": "ContainerCreating"}}},
                {"name": "odd", "containerID": "containerd://../../etc"},
                {"name": "main", "containerID": f"containerd://{C2}"},
                "not a dict",
            ],
            "ephemeralContainerStatuses": [{"name": "debug", "containerID": f"cri-o://{C3}"}],
        },
    }
    broken = [None, {"metadata": {"name": "no-uid", "namespace": "n"}}, {"metadata": "x"}]
    body = json.dumps({"kind": "PodList", "items": [item, *broken]}).encode()
    with serve_pod_list([], raw_body=body) as server:
        client = PodListClient(server.url, token_path=str(tmp_path / "none"))
        pods = client.pods()
    assert pods is not None and list(pods) == [UID]
    assert pods[UID].containers == {
        C1: PodContainer(C1, "init", "docker"),
        C2: PodContainer(C2, "main", "containerd"),
        C3: PodContainer(C3, "debug", "cri-o"),
    }
    assert _errors(client) == []


def test_pod_list_cache_ttl(tmp_path: Path) -> None:
    clock = Clock()
    with serve_pod_list(PODS) as server:
        client = PodListClient(server.url, token_path=str(tmp_path / "t"), ttl_s=30, clock=clock)
        first = client.pods()
        assert client.pods() is first
        assert len(server.authorizations) == 1
        clock.now += 31
        assert client.pods() == first
        assert len(server.authorizations) == 2


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_pod_list_server_down(tmp_path: Path) -> None:
    client = PodListClient(
        f"http://127.0.0.1:{_closed_port()}/pods", token_path=str(tmp_path / "t"), timeout_s=1
    )
    assert client.pods() is None
    assert _errors(client) == [("pods", "ConnectionRefusedError")]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"<html>oops", 200, "MalformedJSON"),
        (b"", 200, "MalformedJSON"),
        (b'{"items": 5}', 200, "Malformed"),
        (b"[1, 2]", 200, "Malformed"),
        (b'{"kind": "Status", "code": 401}', 401, "HTTP401"),
    ],
    ids=["html", "empty", "items not a list", "list", "unauthorized"],
)
def test_pod_list_malformed(tmp_path: Path, body: bytes, status: int, error: str) -> None:
    with serve_pod_list([], raw_body=body, status=status) as server:
        client = PodListClient(server.url, token_path=str(tmp_path / "t"))
        assert client.pods() is None
    assert _errors(client) == [("pods", error)]


def test_pod_list_bad_url(tmp_path: Path) -> None:
    client = PodListClient("ftp://127.0.0.1/pods", token_path=str(tmp_path / "t"))
    assert client.pods() is None
    assert _errors(client) == [("pods", "BadURL")]


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "kubelet.crt", tmp_path / "kubelet.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_pod_list_https(tmp_path: Path, self_signed: tuple[str, str]) -> None:
    cert, _ = self_signed
    token = tmp_path / "token"
    token.write_text("t0k")
    with serve_pod_list(PODS, tls=self_signed) as server:
        assert server.url.startswith("https://")
        trusted = PodListClient(server.url, token_path=str(token), ca_path=cert)
        untrusted = PodListClient(server.url, token_path=str(token), ca_path=str(tmp_path / "x"))
        insecure = PodListClient(server.url, token_path=str(token), verify=False)
        assert trusted.pods() is not None
        assert untrusted.pods() is None
        assert insecure.pods() is not None
    assert server.authorizations == ["Bearer t0k", "Bearer t0k"]  # never sent to an untrusted peer
    assert _errors(trusted) == [] and _errors(insecure) == []
    assert _errors(untrusted) == [("pods", "SSLCertVerificationError")]


def test_pod_list_default_url() -> None:
    assert PodListClient(node="node-7").url == "https://node-7:10250/pods"
