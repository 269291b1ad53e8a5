"""Container names, images, labels and GPUs from the Docker Engine API over its Unix socket.

GET only, bounded answers, and a deadline for each whole request (``deadline_s``, by default
``timeout_s``): a daemon that trickles its answer costs at most that, then backs off like a
timeout. Names, images, labels and device ids are set by whoever
runs the container: they are cut to ``MAX_TEXT`` characters, stripped of control and format
characters, and only allow-listed labels are kept. Of the environment only
``NVIDIA_VISIBLE_DEVICES`` is looked at, and only its device list is kept.

Field names are those of the Engine API's ContainerInspectResponse and DeviceRequest schemas
(docs.docker.com/reference/api/engine/version/v1.57/schemas/): ``Name``, ``Config.Image``,
``Config.Labels``, ``Config.Env``, ``HostConfig.Runtime`` and ``HostConfig.DeviceRequests[]``
with ``Driver``, ``Count`` (-1: all, as ``--gpus all`` sends), ``DeviceIDs``, ``Capabilities``;
``Image`` (the image id), ``HostConfig.ShmSize`` (bytes; the daemon's default is 64 MiB) and
``HostConfig.IpcMode``. With ``?size=true`` the inspect answer adds ``SizeRw``, the bytes of the
container's writable layer, which the daemon computes by walking that layer: it is asked on its
own, seldom (``writable_size``).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from otel_gpu.snapshot import ErrorLog
from otel_gpu.sources._http import UnixHTTPConnection
from otel_gpu.sources._text import CONTAINER_ID as _CONTAINER_ID
from otel_gpu.sources._text import clean_text

SOURCE = "docker"
DEFAULT_SOCKET = "/var/run/docker.sock"
MAX_DEVICES = 64
MAX_ANSWER_BYTES = 8 << 20
MAX_CONTAINERS = 10_000
DEFAULT_LABELS = frozenset(
    {
        "com.docker.compose.project",
        "com.docker.compose.service",
        # set by cri-dockerd on the containers of Kubernetes pods
        "io.kubernetes.pod.name",
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.uid",
        "io.kubernetes.container.name",
    }
)


@dataclass(frozen=True)
class ContainerMeta:
    """What the Docker Engine says about one container, cleaned for use as attribute values."""

    id: str
    name: str  # without the leading "/"
    image: (
        str | None
    )  # Config.Image as given to `docker run`, e.g. nvcr.io/nvidia/pytorch:24.05-py3
    labels: dict[str, str] = field(default_factory=dict)  # allow-listed keys only
    runtime: str | None = None  # HostConfig.Runtime: runc, nvidia, ...
    gpu_ids: tuple[str, ...] = ()  # GPU/MIG UUIDs or indexes given to it
    all_gpus: bool = False
    gpu_count: int | None = None  # GPUs requested by number: the API does not say which
    user: str | None = None  # Config.User as given to `docker run --user`: name, uid, uid:gid
    pid: int | None = None  # State.Pid: the host pid of its init process; None when not running
    image_id: str | None = None  # Image: the id of the image it runs (sha256:...)
    shm_size: int | None = None  # HostConfig.ShmSize: the size of its /dev/shm, in bytes
    ipc_host: bool = False  # HostConfig.IpcMode "host": it uses the host's /dev/shm


class _Failed(Exception):
    def __init__(self, error_type: str, transport: bool = False) -> None:
        super().__init__(error_type)
        self.error_type = error_type
        self.transport = transport


class DockerClient(ErrorLog):
    """``inspect(container_id)`` with a cache by container id, and ``list_containers()``; never
    raises.

    Answers (including "no such container") are cached for ``ttl_s``. After the daemon cannot be
    reached or times out, it is not asked again for ``retry_after_s``, so that a hung daemon costs
    one timeout per ``retry_after_s`` rather than one per container per cycle.
    """

    source = SOURCE

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        timeout_s: float = 1.0,
        ttl_s: float = 60.0,
        retry_after_s: float = 30.0,
        label_allowlist: Iterable[str] = DEFAULT_LABELS,
        api_version: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        list_ttl_s: float = 30.0,
        deadline_s: float | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.deadline_s = timeout_s if deadline_s is None else deadline_s
        self.ttl_s = ttl_s
        self.list_ttl_s = list_ttl_s
        self.retry_after_s = retry_after_s
        self.label_allowlist = frozenset(label_allowlist)
        self._prefix = f"/v{api_version}" if api_version else ""
        self._clock = clock
        self._cache: dict[str, tuple[float, ContainerMeta | None]] = {}
        self._listed: tuple[float, tuple[str, ...]] | None = None
        self._down_until = float("-inf")
        super().__init__()

    @property
    def cached_ids(self) -> frozenset[str]:
        return frozenset(self._cache)

    def inspect(self, container_id: str) -> ContainerMeta | None:
        """The container's metadata, or None if it cannot be had (the failure is recorded)."""
        now = self._clock()
        cached = self._cache.get(container_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if not _CONTAINER_ID.match(container_id):
            self.record("inspect", "InvalidId")
            return None
        if now < self._down_until:
            return cached[1] if cached is not None else None
        try:
            meta: ContainerMeta | None = self._inspect(container_id)
        except _Failed as e:
            self.record("inspect", e.error_type)
            if e.transport:
                self._down_until = now + self.retry_after_s
                return cached[1] if cached is not None else None
            meta = None
        except Exception as e:  # documented never to raise: whatever the answer held
            self.record("inspect", type(e).__name__)
            meta = None
        self._cache[container_id] = (now + self.ttl_s, meta)
        return meta

    def list_containers(self) -> tuple[str, ...] | None:
        """Ids of the running containers (``GET /containers/json``), kept for ``list_ttl_s``;
        None when the daemon could not be asked. Only ``Id`` is read from each entry."""
        now = self._clock()
        stale = self._listed[1] if self._listed is not None else None
        if self._listed is not None and self._listed[0] > now:
            return stale
        if now < self._down_until:
            return stale
        try:
            status, body = self._get(f"{self._prefix}/containers/json")
            if status != 200:
                raise _Failed(f"HTTP{status}")
            doc = _json(body)
            if not isinstance(doc, list):
                raise _Failed("Malformed")
            ids = (entry.get("Id") for entry in doc if isinstance(entry, dict))
            listed = tuple(
                dict.fromkeys(i for i in ids if isinstance(i, str) and _CONTAINER_ID.match(i))
            )[:MAX_CONTAINERS]
        except _Failed as e:
            self.record("list", e.error_type)
            if e.transport:
                self._down_until = now + self.retry_after_s
                return stale
            return None
        except Exception as e:  # documented never to raise
            self.record("list", type(e).__name__)
            return None
        self._listed = (now + self.list_ttl_s, listed)
        return listed

    def writable_size(self, container_id: str) -> int | None:
        """The container's writable layer in bytes (inspect with ``size=true``: ``SizeRw``),
        asked afresh at every call; None when the daemon gives none (the failure is recorded)."""
        if not _CONTAINER_ID.match(container_id):
            self.record("size", "InvalidId")
            return None
        now = self._clock()
        if now < self._down_until:
            return None
        try:
            status, body = self._get(f"{self._prefix}/containers/{container_id}/json?size=true")
            if status != 200:
                raise _Failed("NotFound" if status == 404 else f"HTTP{status}")
            size = _dict(_json(body)).get("SizeRw")
        except _Failed as e:
            self.record("size", e.error_type)
            if e.transport:
                self._down_until = now + self.retry_after_s
            return None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            self.record("size", "Malformed")
            return None
        return size

    def inspect_many(self, container_ids: Iterable[str]) -> dict[str, ContainerMeta]:
        """Metadata of each container that has it; forgets cached ids not in ``container_ids``."""
        wanted = set(container_ids)
        for cid in self._cache.keys() - wanted:
            del self._cache[cid]
        found = {}
        for cid in wanted:
            meta = self.inspect(cid)
            if meta is not None:
                found[cid] = meta
        return found

    def _inspect(self, container_id: str) -> ContainerMeta:
        status, body = self._get(f"{self._prefix}/containers/{container_id}/json")
        if status == 404:
            raise _Failed("NotFound")
        if status != 200:
            raise _Failed(f"HTTP{status}")
        doc = _json(body)
        if not isinstance(doc, dict):
            raise _Failed("Malformed")
        return self._meta(container_id, doc)

    def _get(self, path: str) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.deadline_s
        conn = UnixHTTPConnection(self.socket_path, self.timeout_s, deadline)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read(MAX_ANSWER_BYTES + 1)
        except TimeoutError as e:
            raise _Failed("TimeoutError", transport=True) from e
        except (OSError, http.client.HTTPException) as e:
            raise _Failed(type(e).__name__, transport=True) from e
        finally:
            conn.close()
        if len(body) > MAX_ANSWER_BYTES:
            raise _Failed("TooLarge")
        return response.status, body

    def _meta(self, container_id: str, doc: dict[str, Any]) -> ContainerMeta:
        config = _dict(doc.get("Config"))
        host = _dict(doc.get("HostConfig"))
        labels = _dict(config.get("Labels"))
        runtime = host.get("Runtime") if isinstance(host.get("Runtime"), str) else None
        ids, all_gpus, count = _device_requests(host.get("DeviceRequests"))
        if runtime == "nvidia":
            # The nvidia runtime, unlike --gpus, hands out what NVIDIA_VISIBLE_DEVICES names.
            env_ids, env_all = _visible_devices(config.get("Env"))
            ids += tuple(i for i in env_ids if i not in ids)
            all_gpus = all_gpus or env_all
        name = doc.get("Name")
        image = config.get("Image")
        user = config.get("User")
        pid = _dict(doc.get("State")).get("Pid")
        image_id = doc.get("Image")
        shm = host.get("ShmSize")
        return ContainerMeta(
            id=container_id,
            name=clean_text(name.lstrip("/")) if isinstance(name, str) else container_id[:12],
            image=clean_text(image) if isinstance(image, str) and image else None,
            labels={
                k: clean_text(v)
                for k, v in labels.items()
                if k in self.label_allowlist and isinstance(v, str)
            },
            runtime=clean_text(runtime) if runtime else None,
            gpu_ids=ids[:MAX_DEVICES],
            all_gpus=all_gpus,
            gpu_count=count,
            user=clean_text(user) if isinstance(user, str) and user else None,
            pid=pid if _positive(pid) else None,
            image_id=clean_text(image_id) if isinstance(image_id, str) and image_id else None,
            shm_size=shm if _positive(shm) else None,
            ipc_host=host.get("IpcMode") == "host",
        )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _Failed("MalformedJSON") from e


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _device_requests(requests: Any) -> tuple[tuple[str, ...], bool, int | None]:
    """GPUs of ``--gpus``: Driver "nvidia", or Driver "" with the "gpu" capability."""
    ids: list[str] = []
    all_gpus = False
    count: int | None = None
    for request in requests if isinstance(requests, list) else ():
        if not isinstance(request, dict) or not _is_gpu_request(request):
            continue
        device_ids = request.get("DeviceIDs")
        if isinstance(device_ids, list) and device_ids:
            ids += [clean_text(d) for d in device_ids if isinstance(d, str) and d]
        elif request.get("Count") == -1:
            all_gpus = True
        elif isinstance(request.get("Count"), int) and request["Count"] > 0:
            count = (count or 0) + request["Count"]
    return tuple(dict.fromkeys(ids)), all_gpus, count


def _is_gpu_request(request: dict[str, Any]) -> bool:
    if request.get("Driver") == "nvidia":
        return True
    capabilities = request.get("Capabilities")
    return isinstance(capabilities, list) and any(
        isinstance(group, list) and "gpu" in group for group in capabilities
    )


def _visible_devices(env: Any) -> tuple[tuple[str, ...], bool]:
    for entry in env if isinstance(env, list) else ():
        if isinstance(entry, str) and entry.startswith("NVIDIA_VISIBLE_DEVICES="):
            value = entry.partition("=")[2].strip()
            if value == "all":
                return (), True
            if value in ("", "none", "void"):
                return (), False
            return tuple(clean_text(d.strip()) for d in value.split(",") if d.strip()), False
    return (), False
