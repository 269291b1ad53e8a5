"""A slow or hostile Docker daemon or kubelet costs at most the client's deadline, and no answer,
however deep or strange, makes a client raise."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from clock import Clock

from otel_gpu.simulate.docker_api import serve_docker_api
from otel_gpu.simulate.kubelet_api import serve_pod_list, serve_pod_resources
from otel_gpu.sources.docker import DockerClient
from otel_gpu.sources.kubelet import PodListClient, PodResourcesClient

A = "3f2a9c1be0d74e55a0c6b1f2d3e4a5b6c7d8e9f00112233445566778899aabbc"
UID = "6d1c2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
DEADLINE_S = 0.5
SLACK_S = 1.5  # scheduling on a loaded machine; a trickled answer would take 10 s or more
BYTE_EVERY_S = 0.05  # well inside the per-operation timeout of 1 s



class TricklingServer:
    """Answers every request with a 200 response sent one byte every ``BYTE_EVERY_S``."""

    def __init__(self, family: int, address: object) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)  # type: ignore[arg-type]
        self.sock.listen(8)
        self.address = self.sock.getsockname()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        body = b'{"items": []}' + b" " * 200
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        answer += b"Content-Length: %d\r\n\r\n" % len(body) + body
        with conn:
            try:
                conn.recv(65536)
                for byte in answer:
                    if self._stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(BYTE_EVERY_S)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()



def test_a_trickling_docker_daemon_costs_at_most_the_deadline(sock_dir: str) -> None:
    server = TricklingServer(socket.AF_UNIX, f"{sock_dir}/d.sock")
    clock = Clock()
    try:
        client = DockerClient(f"{sock_dir}/d.sock", timeout_s=1.0, deadline_s=DEADLINE_S,
                              clock=clock)
        started = time.monotonic()
        assert client.inspect(A) is None
        elapsed = time.monotonic() - started
        assert [e.error_type for e in client.take_errors()] == ["TimeoutError"]
        # Then the back-off of a timeout: the daemon is not asked again for a while.
        assert client.list_containers() is None
        assert client.inspect(A) is None
        assert server.connections == 1
        clock.now += client.retry_after_s + 1
        started_again = time.monotonic()
        assert client.list_containers() is None
        elapsed_again = time.monotonic() - started_again
        assert server.connections == 2
    finally:
        server.close()
    assert elapsed < DEADLINE_S + SLACK_S
    assert elapsed_again < DEADLINE_S + SLACK_S


def test_a_trickling_kubelet_pod_list_costs_at_most_the_deadline() -> None:
    server = TricklingServer(socket.AF_INET, ("127.0.0.1", 0))
    clock = Clock()
    host, port = server.address
    try:
        client = PodListClient(f"http://{host}:{port}/pods", token_path="/nonexistent",
                               timeout_s=DEADLINE_S, clock=clock)
        started = time.monotonic()
        assert client.pods() is None
        elapsed = time.monotonic() - started
        assert [e.error_type for e in client.take_errors()] == ["TimeoutError"]
        assert client.pods() is None  # backing off: not asked
        assert server.connections == 1
    finally:
        server.close()
    assert elapsed < DEADLINE_S + SLACK_S


def test_a_slow_pod_resources_server_costs_at_most_the_deadline(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    clock = Clock()
    with serve_pod_resources(path, [], delay_s=5.0) as server:
        client = PodResourcesClient(path, timeout_s=DEADLINE_S, clock=clock)
        started = time.monotonic()
        assert client.list_devices() is None
        elapsed = time.monotonic() - started
        assert client.list_devices() is None  # backing off: not asked
        assert server.calls == 1
    assert elapsed < DEADLINE_S + SLACK_S
    assert [(e.call, e.error_type) for e in client.take_errors()] == [
        ("List", "DEADLINE_EXCEEDED")
    ]


DEEP = b"[" * 200_000 + b"]" * 200_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["list", "object"])
def test_deeply_nested_json_is_a_counted_failure(sock_dir: str, body: bytes) -> None:
    path = f"{sock_dir}/d.sock"
    with serve_docker_api(path, [{"id": A, "raw": body}]):
        docker = DockerClient(path)
        assert docker.inspect(A) is None
    assert [e.error_type for e in docker.take_errors()] == ["MalformedJSON"]
    server = serve_pod_list([], raw_body=body)
    try:
        pods = PodListClient(server.url, token_path="/nonexistent")
        assert pods.pods() is None
    finally:
        server.close()
    assert [e.error_type for e in pods.take_errors()] == ["MalformedJSON"]


HOSTILE = "evil\x1b[31m\x07\r\nname\u202e\u2066x"


def test_hostile_kubelet_names_are_cleaned(sock_dir: str) -> None:
    path = f"{sock_dir}/kubelet.sock"
    pods = [{"namespace": HOSTILE, "name": HOSTILE, "uid": UID,
             "containers": [{"name": HOSTILE, "id": A, "devices": ["GPU-1"],
                             "image": HOSTILE}]}]
    with serve_pod_resources(path, pods):
        devices = PodResourcesClient(path).list_devices()
    assert devices is not None and len(devices) == 1
    device = devices[0]
    for text in (device.namespace, device.pod_name, device.container_name):
        assert text == "evil[31mnamex"
    server = serve_pod_list(pods)
    try:
        listed = PodListClient(server.url, token_path="/nonexistent").pods()
    finally:
        server.close()
    assert listed is not None
    pod = listed[UID]
    assert pod.name == pod.namespace == "evil[31mnamex"
    container = pod.containers[A]
    assert container.name == "evil[31mnamex"
