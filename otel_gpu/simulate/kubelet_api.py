"""Kubelet stand-ins serving a scenario's pods: the pod-resources gRPC API and the ``/pods`` list.

A scenario pod is ``{namespace, name, uid, containers: [{name, id, devices, resource_name?,
runtime?}]}``; ``devices`` are device plugin ids (GPU/MIG UUIDs), given under ``resource_name``
(default ``nvidia.com/gpu``), and ``runtime`` (default ``containerd``) prefixes the container id in
``/pods``. A container's ``claims`` are its DRA claims, ``[{name, namespace, devices: [{driver,
pool, device, cdi: [CDI device ids]}]}]``, served as ``dynamic_resources``. A container's
``size_rw`` is its writable layer in the Summary API (``GET /stats/summary``, beside
``/pods``), whose pod ``ephemeral-storage`` is the sum of its containers' (no logs, no emptyDir).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from typing import Any

import grpc

from otel_gpu.simulate._http import QuietHandler
from otel_gpu.sources.kubelet import (
    GPU_RESOURCE,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
)


def list_response(pods: Sequence[dict[str, Any]]) -> Any:
    """The ListPodResourcesResponse message for scenario pods."""
    response = ListPodResourcesResponse()
    for pod in pods:
        entry = response.pod_resources.add(name=pod["name"], namespace=pod["namespace"])
        for container in pod.get("containers", ()):
            added = entry.containers.add(name=container["name"])
            devices = [str(d) for d in container.get("devices", ())]
            if devices:
                dev = added.devices.add(resource_name=container.get("resource_name", GPU_RESOURCE))
                dev.device_ids.extend(devices)
            added.cpu_ids.extend(container.get("cpu_ids", ()))
            for claim in container.get("claims", ()):
                dynamic = added.dynamic_resources.add(
                    claim_name=claim["name"], claim_namespace=claim["namespace"]
                )
                for device in claim["devices"]:
                    resource = dynamic.claim_resources.add(
                        driver_name=device["driver"],
                        pool_name=device["pool"],
                        device_name=device["device"],
                    )
                    for cdi in device.get("cdi", ()):
                        resource.cdi_devices.add(name=cdi)
    return response


class PodResourcesServer:
    """``v1.PodResourcesLister/List`` on a Unix socket; ``close()`` stops it."""

    def __init__(
        self,
        socket_path: str,
        pods: Sequence[dict[str, Any]],
        raw_response: bytes | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.socket_path = socket_path
        self.pods = list(pods)
        self.raw_response = raw_response
        self.delay_s = delay_s
        self.calls = 0
        self._release = threading.Event()

        def list_pods(request: Any, context: Any) -> bytes:
            self.calls += 1
            if self.delay_s:
                self._release.wait(self.delay_s)
            if self.raw_response is not None:
                return self.raw_response
            return list_response(self.pods).SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    list_pods,
                    request_deserializer=ListPodResourcesRequest.FromString,
                    response_serializer=lambda raw: raw,
                )
            },
        )
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self._executor = ThreadPoolExecutor(max_workers=4)
        self._server = grpc.server(self._executor, handlers=[handler])
        self._server.add_insecure_port(f"unix://{socket_path}")
        self._server.start()

    def close(self) -> None:
        self._release.set()
        self._server.stop(grace=None).wait()
        self._executor.shutdown(wait=False)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> PodResourcesServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_pod_resources(
    socket_path: str,
    pods: Sequence[dict[str, Any]],
    raw_response: bytes | None = None,
    delay_s: float = 0.0,
) -> PodResourcesServer:
    """Serve ``pods`` through a real gRPC server on ``socket_path`` until ``close()``."""
    return PodResourcesServer(socket_path, pods, raw_response, delay_s)


def pod_list(pods: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The kubelet's ``/pods`` answer (a v1 PodList) for scenario pods."""
    items = []
    for pod in pods:
        statuses = [
            {
                "name": c["name"],
                "containerID": f"{c.get('runtime', 'containerd')}://{c['id']}",
                "image": c.get("image", ""),
                "imageID": c.get("image_id", ""),
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2024-05-01T00:00:00Z"}},
            }
            for c in pod.get("containers", ())
        ]
        items.append(
            {
                "metadata": {"name": pod["name"], "namespace": pod["namespace"], "uid": pod["uid"]},
                "spec": {"containers": [{"name": c["name"]} for c in pod.get("containers", ())]},
                "status": {"phase": "Running", "containerStatuses": statuses},
            }
        )
        if pod.get("run_as_user") is not None:
            items[-1]["spec"]["securityContext"] = {"runAsUser": pod["run_as_user"]}
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


def stats_summary(pods: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The kubelet's ``/stats/summary`` answer for scenario pods, in the layout of k8s.io/kubelet
    ``pkg/apis/stats/v1alpha1`` (``Summary``, ``PodStats``, ``ContainerStats``, ``FsStats``);
    only the figures the agent reads are filled, the rest of a real answer is left out."""
    entries = []
    for pod in pods:
        containers, total = [], 0
        for c in pod.get("containers", ()):
            used = int(c.get("size_rw", 0))
            total += used
            containers.append({
                "name": c["name"],
                "startTime": "2024-05-01T00:00:00Z",
                "rootfs": {"time": "2024-05-01T00:00:00Z", "availableBytes": 1 << 40,
                           "capacityBytes": 2 << 40, "usedBytes": used, "inodesUsed": 1000},
                "logs": {"time": "2024-05-01T00:00:00Z", "usedBytes": 0},
            })
        entries.append({
            "podRef": {"name": pod["name"], "namespace": pod["namespace"], "uid": pod["uid"]},
            "startTime": "2024-05-01T00:00:00Z",
            "containers": containers,
            "ephemeral-storage": {"time": "2024-05-01T00:00:00Z", "availableBytes": 1 << 40,
                                  "capacityBytes": 2 << 40, "usedBytes": total},
        })
    return {"node": {"nodeName": "simulated", "startTime": "2024-05-01T00:00:00Z"},
            "pods": entries}


class PodListServer:
    """``GET /pods`` and ``GET /stats/summary`` on 127.0.0.1 (HTTPS when given a certificate);
    ``close()`` stops it."""

    def __init__(
        self,
        pods: Sequence[dict[str, Any]],
        raw_body: bytes | None = None,
        status: int = 200,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.pods = list(pods)
        self.raw_body = raw_body
        self.status = status
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []
        api = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                api.authorizations.append(self.headers.get("Authorization"))
                api.paths.append(self.path)
                route = self.path.split("?", 1)[0]
                if route not in ("/pods", "/stats/summary"):
                    status, body = 404, b"404 page not found\n"
                elif api.raw_body is not None:
                    status, body = api.status, api.raw_body
                elif route == "/stats/summary":
                    status, body = api.status, json.dumps(stats_summary(api.pods)).encode()
                else:
                    status, body = api.status, json.dumps(pod_list(api.pods)).encode()
                self.reply(status, body)


        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.port = self._server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}/pods"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> PodListServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_pod_list(
    pods: Sequence[dict[str, Any]],
    raw_body: bytes | None = None,
    status: int = 200,
    tls: tuple[str, str] | None = None,
) -> PodListServer:
    """Serve ``pods`` as the kubelet's ``/pods`` until ``close()``; ``tls`` = (cert, key) files."""
    return PodListServer(pods, raw_body, status, tls)
