"""A Docker Engine API stand-in on a Unix socket, serving a scenario's containers.

``GET [/v<version>]/containers/<id or unique id prefix>/json`` answers in the shape of the Engine
API's container inspect, ``GET [/v<version>]/containers/json`` lists the containers in the shape of
its container list (ContainerSummary), ``GET [/v<version>]/_ping`` answers ``OK``; anything else
is 404. A container given as a scenario entry
(``id``, ``name``, ``image``, ``labels``, ``devices``, optional ``env``, ``runtime``, ``image_id``,
``shm_size``, ``ipc_mode`` and ``size_rw``) is turned into that shape, with ``SizeRw`` and
``SizeRootFs`` only when the inspect asks ``size=true`` (or ``1``), as the daemon answers; one
with an ``inspect`` key is served as that JSON value verbatim, and one with ``raw`` (bytes) as
those bytes, for answers no real daemon would give.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socketserver
import threading
from collections.abc import Sequence
from typing import Any

from otel_gpu.simulate._http import QuietHandler

_PATH = re.compile(r"^(?:/v[0-9.]+)?/containers/([^/]+)/json$")
_LIST = re.compile(r"^(?:/v[0-9.]+)?/containers/json$")
_PING = re.compile(r"^(?:/v[0-9.]+)?/_ping$")


def inspect_document(container: dict[str, Any], size: bool = False) -> dict[str, Any]:
    """The inspect answer for a scenario container; ``size``: with its layers' sizes."""
    devices = [str(d) for d in container.get("devices", ())]
    requests = []
    if devices:
        requests.append(
            {
                "Driver": "",
                "Count": 0,
                "DeviceIDs": devices,
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        )
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    env += [f"{k}={v}" for k, v in container.get("env", {}).items()]
    doc = {
        "Id": container["id"],
        "Name": "/" + container.get("name", container["id"][:12]),
        "Image": container.get("image_id", "sha256:" + "0" * 64),
        "State": {"Status": "running", "Running": True, "Pid": container.get("pid", 0)},
        "Config": {
            "Image": container.get("image", ""),
            "Labels": dict(container.get("labels", {})),
            "Env": env,
            "User": container.get("user", ""),
        },
        "HostConfig": {
            "Runtime": container.get("runtime", "runc"),
            "DeviceRequests": requests or None,
            "ShmSize": container.get("shm_size", 64 << 20),
            "IpcMode": container.get("ipc_mode", "private"),
        },
    }
    if size:
        doc["SizeRw"] = container.get("size_rw", 0)
        doc["SizeRootFs"] = container.get("size_rw", 0) + (1 << 30)  # over a 1 GiB image
    return doc


def summary_document(container: dict[str, Any]) -> dict[str, Any]:
    """The container list entry (ContainerSummary) for a scenario container."""
    return {
        "Id": container["id"],
        "Names": ["/" + container.get("name", container["id"][:12])],
        "Image": container.get("image", ""),
        "ImageID": "sha256:" + "0" * 64,
        "Command": " ".join(container.get("cmdline", ("sleep", "infinity"))),
        "Labels": dict(container.get("labels", {})),
        "State": "running",
        "Status": "Up 2 hours",
    }


class DockerApiServer:
    """A running stand-in; ``close()`` (or leaving the ``with`` block) stops it."""

    def __init__(
        self, socket_path: str, containers: Sequence[dict[str, Any]], delay_s: float = 0.0
    ) -> None:
        self.socket_path = socket_path
        self.containers = list(containers)
        self.delay_s = delay_s
        self.requests: list[str] = []
        self._release = threading.Event()
        api = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                api.requests.append(self.path)
                if api.delay_s:
                    api._release.wait(api.delay_s)
                status, body = api.answer(self.path)
                with contextlib.suppress(OSError):  # the client gave up waiting
                    self.reply(status, body)

            def address_string(self) -> str:
                return "unix"


        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self._server = socketserver.ThreadingUnixStreamServer(socket_path, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def answer(self, path: str) -> tuple[int, bytes]:
        if _PING.match(path.split("?", 1)[0]):
            return 200, b"OK"
        if _LIST.match(path.split("?", 1)[0]):
            return 200, json.dumps([summary_document(c) for c in self.containers]).encode()
        route, _, query = path.partition("?")
        m = _PATH.match(route)
        if m:
            wanted = m.group(1)
            matches = [c for c in self.containers if str(c.get("id", "")).startswith(wanted)]
            if len(matches) == 1:
                size = any(p in ("size=true", "size=1") for p in query.split("&"))
                return 200, _body(matches[0], size)
        message = {"message": f"No such container: {m.group(1) if m else path}"}
        return 404, json.dumps(message).encode()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> DockerApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _body(container: dict[str, Any], size: bool = False) -> bytes:
    if "raw" in container:
        return bytes(container["raw"])
    if "inspect" in container:
        return json.dumps(container["inspect"]).encode()
    return json.dumps(inspect_document(container, size)).encode()


def serve_docker_api(
    socket_path: str, containers: Sequence[dict[str, Any]], delay_s: float = 0.0
) -> DockerApiServer:
    """Serve ``containers`` on ``socket_path`` in a background thread until ``close()``."""
    return DockerApiServer(socket_path, containers, delay_s)
