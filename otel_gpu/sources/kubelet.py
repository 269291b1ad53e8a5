"""Pods from the kubelet: which container was given which GPU, and which container id is which pod.

Two clients, both local to the node: the pod-resources gRPC API (``List``, on the kubelet's Unix
socket; what dcgm-exporter uses) gives namespace/pod/container -> device ids; the kubelet's
``/pods`` endpoint gives pod uid and container id -> names. Neither raises: a failure returns
None and is recorded for ``take_errors()``.

The gRPC messages are built here from a descriptor rather than from generated code, which would be
tied to one protobuf version. Field numbers are those of k8s.io/kubelet
``pkg/apis/podresources/v1/api.proto`` (reproduced in kubernetes/enhancements
keps/sig-node/2403-pod-resources-allocatable-resources and in the kubernetes.io page "Monitor Device
Plugin Resources"); only the fields read here are declared, the others are skipped when parsing.
``ContainerResources.dynamic_resources`` (5) and its ``DynamicResource`` (claim_name 2,
claim_namespace 3, claim_resources 4; 1, class_name, is not read: newer kubelets drop it),
``ClaimResource`` (cdi_devices 1, driver_name 2, pool_name 3, device_name 4) and ``CDIDevice``
(name 1) are those of the same file from Kubernetes 1.31 on: the claims of Dynamic Resource
Allocation (KEP-3695 added them; KEP-4381, structured parameters, the driver, pool and device).

Each call has a deadline for the whole request (``timeout_s``): the gRPC deadline, and for
``/pods`` one that bounds every socket operation together (``otel_gpu.sources._http``). A call
that runs into its deadline is not made again for ``retry_after_s``; meanwhile the last answer, if
any, stands. Names from the kubelet (namespaces, pods, containers, images) pass through the one
sanitizer (``otel_gpu.sources._text``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from otel_gpu.snapshot import ErrorLog
from otel_gpu.sources._http import DeadlineHTTPConnection, DeadlineHTTPSConnection
from otel_gpu.sources._text import CONTAINER_ID as _CONTAINER_ID
from otel_gpu.sources._text import clean_text

SOURCE = "kubelet"
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
GPU_RESOURCE = "nvidia.com/gpu"
DRA_GPU_DRIVER = "gpu.nvidia.com"  # NVIDIA's DRA driver for GPUs and MIG devices
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
MAX_MESSAGE_BYTES = 16 << 20
MAX_POD_LIST_BYTES = 64 << 20
_RUNTIME_PREFIXES = {"containerd": "containerd", "docker": "docker", "cri-o": "cri-o"}


def descriptor_table() -> dict[str, list[tuple[str, int, str, str, str]]]:
    """The messages read here: (field, number, type, label, message type) per field; types and
    labels by their names in descriptor.proto's ``FieldDescriptorProto``."""
    one, many = "LABEL_OPTIONAL", "LABEL_REPEATED"
    string, int64, message = "TYPE_STRING", "TYPE_INT64", "TYPE_MESSAGE"
    return {
        "ListPodResourcesRequest": [],
        "ListPodResourcesResponse": [("pod_resources", 1, message, many, "PodResources")],
        "PodResources": [
            ("name", 1, string, one, ""),
            ("namespace", 2, string, one, ""),
            ("containers", 3, message, many, "ContainerResources"),
        ],
        "ContainerResources": [
            ("name", 1, string, one, ""),
            ("devices", 2, message, many, "ContainerDevices"),
            ("cpu_ids", 3, int64, many, ""),
            ("dynamic_resources", 5, message, many, "DynamicResource"),
        ],
        "DynamicResource": [
            ("claim_name", 2, string, one, ""),
            ("claim_namespace", 3, string, one, ""),
            ("claim_resources", 4, message, many, "ClaimResource"),
        ],
        "ClaimResource": [
            ("cdi_devices", 1, message, many, "CDIDevice"),
            ("driver_name", 2, string, one, ""),
            ("pool_name", 3, string, one, ""),
            ("device_name", 4, string, one, ""),
        ],
        "CDIDevice": [("name", 1, string, one, "")],
        "ContainerDevices": [
            ("resource_name", 1, string, one, ""),
            ("device_ids", 2, string, many, ""),
            ("topology", 3, message, one, "TopologyInfo"),
        ],
        "TopologyInfo": [("nodes", 1, message, many, "NUMANode")],
        "NUMANode": [("ID", 1, int64, one, "")],
    }


def build_descriptor() -> bytes:
    """``descriptor_table()`` as a serialized FileDescriptorProto (protobuf's descriptor.proto).
    Not called by the agent, which loads ``DESCRIPTOR`` (its value, checked by the tests):
    protobuf's ``descriptor_pb2`` alone adds 1.5 MB to the agent's resident memory."""
    from google.protobuf import descriptor_pb2

    kinds = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="otel_gpu/kubelet/podresources/v1/api.proto", package="v1", syntax="proto3"
    )
    for message_name, fields in descriptor_table().items():
        message = proto.message_type.add(name=message_name)
        for name, number, kind, label, type_name in fields:
            added = message.field.add(name=name, number=number, type=getattr(kinds, kind),
                                      label=getattr(kinds, label))
            if type_name:
                added.type_name = f".v1.{type_name}"
    return proto.SerializeToString()


DESCRIPTOR = bytes.fromhex(
    "0a2a6f74656c5f6770752f6b7562656c65742f706f647265736f75726365732f76312f6170692e70726f746f"
    "1202763122190a174c697374506f645265736f75726365735265717565737422430a184c697374506f645265"
    "736f7572636573526573706f6e736512270a0d706f645f7265736f757263657318012003280b32102e76312e"
    "506f645265736f7572636573225b0a0c506f645265736f7572636573120c0a046e616d651801200128091211"
    "0a096e616d657370616365180220012809122a0a0a636f6e7461696e65727318032003280b32162e76312e43"
    "6f6e7461696e65725265736f7572636573228a010a12436f6e7461696e65725265736f7572636573120c0a04"
    "6e616d6518012001280912250a076465766963657318022003280b32142e76312e436f6e7461696e65724465"
    "7669636573120f0a076370755f696473180320032803122e0a1164796e616d69635f7265736f757263657318"
    "052003280b32132e76312e44796e616d69635265736f75726365226a0a0f44796e616d69635265736f757263"
    "6512120a0a636c61696d5f6e616d6518022001280912170a0f636c61696d5f6e616d65737061636518032001"
    "2809122a0a0f636c61696d5f7265736f757263657318042003280b32112e76312e436c61696d5265736f7572"
    "636522700a0d436c61696d5265736f7572636512220a0b6364695f6465766963657318012003280b320d2e76"
    "312e43444944657669636512130a0b6472697665725f6e616d6518022001280912110a09706f6f6c5f6e616d"
    "6518032001280912130a0b6465766963655f6e616d6518042001280922190a09434449446576696365120c0a"
    "046e616d6518012001280922610a10436f6e7461696e65724465766963657312150a0d7265736f757263655f"
    "6e616d6518012001280912120a0a6465766963655f69647318022003280912220a08746f706f6c6f67791803"
    "2001280b32102e76312e546f706f6c6f6779496e666f222b0a0c546f706f6c6f6779496e666f121b0a056e6f"
    "64657318012003280b320c2e76312e4e554d414e6f646522160a084e554d414e6f6465120a0a024944180120"
    "012803620670726f746f33"
)


@cache
def _messages() -> dict[str, Any]:
    """The message classes, built on first use: gRPC and protobuf are loaded only on a node
    where the pod-resources API is asked."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(DESCRIPTOR)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{name}"))
        for name in descriptor_table()
    }


def __getattr__(name: str) -> Any:
    if name in ("ListPodResourcesRequest", "ListPodResourcesResponse"):
        return _messages()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PodDevices:
    """The devices of one resource that the kubelet gave one container."""

    namespace: str
    pod_name: str
    container_name: str
    resource_name: str  # nvidia.com/gpu, nvidia.com/mig-1g.10gb, ...; a DRA driver's name
    device_ids: tuple[str, ...]  # GPU/MIG UUIDs as the device plugin named them; for a DRA
    # claim, the references ``dra_device_refs`` reads off each device
    claim: DraClaim | None = None  # the DRA claim these devices came from


@dataclass(frozen=True)
class DraClaim:
    """A ResourceClaim's allocation to one container, as pod-resources reports it."""

    name: str
    namespace: str
    driver: str  # gpu.nvidia.com
    pool: str
    devices: tuple[str, ...]  # the driver's device names: gpu-0, ...


def is_gpu_resource(resource_name: str, extra: Iterable[str] = ()) -> bool:
    return (
        resource_name == GPU_RESOURCE
        or resource_name.startswith(MIG_RESOURCE_PREFIX)
        or resource_name in extra
    )


# A GPU or MIG UUID as NVML writes it (nvmlDeviceGetUUID): GPU-<uuid>, MIG-<uuid>, and the
# older MIG-GPU-<uuid>/<gi>/<ci> form.
_UUID = re.compile(
    r"(?:MIG-GPU-[0-9a-fA-F-]{36}/\d+/\d+|MIG-[0-9a-fA-F-]{36}|GPU-[0-9a-fA-F-]{36})"
)
_DRA_GPU = re.compile(r"gpu-(\d+)")
_DRA_MIG = re.compile(r"gpu-(\d+)-mig-(\d+)")


def dra_device_ref(device_name: str, cdi_devices: Iterable[str]) -> str | None:
    """The device reference (a UUID or an NVML index) that a DRA claim's device stands for.

    A UUID in a CDI device id wins: CDI specs generated by the NVIDIA Container Toolkit with the
    ``uuid`` device-name strategy name devices ``nvidia.com/gpu=GPU-<uuid>``. Else NVIDIA's DRA
    driver (k8s-dra-driver-gpu, driver ``gpu.nvidia.com``) names a whole GPU ``gpu-<index>``
    (its NVML index on the node), read as that index; ``gpu-<index>-mig-<n>`` is read as MIG
    device n of that GPU. Other names carry nothing this node can map without the
    ResourceSlice's ``uuid`` attribute, which only the API server has: None.
    """
    for text in (*cdi_devices, device_name):
        found = _UUID.search(text)
        if found:
            return found.group(0)
    mig = _DRA_MIG.fullmatch(device_name)
    if mig:
        return f"{mig.group(1)}:{mig.group(2)}"
    gpu = _DRA_GPU.fullmatch(device_name)
    return gpu.group(1) if gpu else None


def device_uuid(device_id: str) -> str:
    """The UUID in a device plugin id: time-slicing replicas are ``<uuid>::<n>``."""
    return device_id.split("::", 1)[0]


class PodResourcesClient(ErrorLog):
    """``v1.PodResourcesLister/List`` over the kubelet's Unix socket, kept for ``ttl_s``."""

    source = SOURCE

    def __init__(
        self,
        socket_path: str = POD_RESOURCES_SOCKET,
        *,
        timeout_s: float = 5.0,
        ttl_s: float = 10.0,
        resource_names: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        retry_after_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._down_until = float("-inf")
        self.resource_names = frozenset(resource_names)
        self._clock = clock
        self._cached: tuple[float, tuple[PodDevices, ...]] | None = None

    def available(self) -> bool:
        """Whether the socket is there at all (it is not on a node without a kubelet)."""
        return os.path.exists(self.socket_path)

    def list_devices(self) -> tuple[PodDevices, ...] | None:
        """GPU and MIG devices per container; None when the kubelet could not be asked."""
        now = self._clock()
        if self._cached is not None and self._cached[0] > now:
            return self._cached[1]
        stale = self._cached[1] if self._cached is not None else None
        if now < self._down_until:
            return stale
        import grpc

        try:
            devices = pod_devices(self._call(grpc), self.resource_names)
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else None
            self.record("List", code.name if code is not None else type(e).__name__)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._down_until = now + self.retry_after_s
                return stale
            return None
        except Exception as e:  # a channel or decoding failure must not stop the cycle
            self.record("List", type(e).__name__)
            return None
        self._cached = (now + self.ttl_s, devices)
        return devices

    def _call(self, grpc: Any) -> Any:
        messages = _messages()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        with grpc.insecure_channel(f"unix://{self.socket_path}", options=options) as channel:
            method = channel.unary_unary(
                LIST_METHOD,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=messages["ListPodResourcesResponse"].FromString,
            )
            return method(messages["ListPodResourcesRequest"](), timeout=self.timeout_s)


def pod_devices(response: Any, extra: Iterable[str] = ()) -> tuple[PodDevices, ...]:
    """The GPU and MIG devices of a ``ListPodResourcesResponse``, names cleaned: those of the
    device plugin, then those of DRA claims of driver ``gpu.nvidia.com`` (or one in ``extra``),
    one entry per claim and driver."""
    extra = frozenset(extra)
    return _plugin_devices(response, extra) + _claim_devices(response, extra)


def _claim_devices(response: Any, extra: frozenset[str]) -> tuple[PodDevices, ...]:
    found = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for claim in container.dynamic_resources:
                by_driver: dict[str, list[Any]] = {}
                for resource in claim.claim_resources:
                    if resource.driver_name == DRA_GPU_DRIVER or resource.driver_name in extra:
                        by_driver.setdefault(resource.driver_name, []).append(resource)
                for driver, resources in by_driver.items():
                    refs = []
                    for r in resources:
                        ref = dra_device_ref(r.device_name, (c.name for c in r.cdi_devices))
                        # an unmapped device keeps its name: the join counts it unresolved
                        refs.append(clean_text(ref if ref is not None else r.device_name))
                    found.append(PodDevices(
                        namespace=clean_text(pod.namespace),
                        pod_name=clean_text(pod.name),
                        container_name=clean_text(container.name),
                        resource_name=clean_text(driver),
                        device_ids=tuple(refs),
                        claim=DraClaim(
                            name=clean_text(claim.claim_name),
                            namespace=clean_text(claim.claim_namespace),
                            driver=clean_text(driver),
                            pool=clean_text(resources[0].pool_name),
                            devices=tuple(clean_text(r.device_name) for r in resources),
                        ),
                    ))
    return tuple(found)


def _plugin_devices(response: Any, extra: frozenset[str]) -> tuple[PodDevices, ...]:
    return tuple(
        PodDevices(
            namespace=clean_text(pod.namespace),
            pod_name=clean_text(pod.name),
            container_name=clean_text(container.name),
            resource_name=clean_text(dev.resource_name),
            device_ids=tuple(clean_text(d) for d in dev.device_ids),
        )
        for pod in response.pod_resources
        for container in pod.containers
        for dev in container.devices
        if is_gpu_resource(dev.resource_name, extra)
    )


@dataclass(frozen=True)
class PodContainer:
    id: str  # without the runtime prefix
    name: str
    runtime: str | None  # containerd, docker, cri-o
    image: str | None = None  # the image the container status reports, e.g. repo/name:tag
    image_id: str | None = None  # its imageID, e.g. docker.io/library/x@sha256:...


@dataclass(frozen=True)
class KubeletPod:
    uid: str
    name: str
    namespace: str
    containers: dict[str, PodContainer] = field(default_factory=dict)  # by container id
    run_as_user: int | None = None  # spec.securityContext.runAsUser
    container_run_as_user: dict[str, int] = field(default_factory=dict)  # by container name

    def user_of(self, container_name: str | None) -> int | None:
        """The uid a container runs as: its own securityContext.runAsUser, else the pod's."""
        if container_name is not None and container_name in self.container_run_as_user:
            return self.container_run_as_user[container_name]
        return self.run_as_user


class PodListClient(ErrorLog):
    """The kubelet's ``/pods`` (a PodList), by pod uid, kept for ``ttl_s``.

    ``url`` defaults to ``https://<node>:10250/pods``; an ``http://`` URL is accepted too. The
    service account's token is sent when its file exists, and its CA verifies the kubelet's
    certificate unless ``verify=False``.
    """

    source = SOURCE

    def __init__(
        self,
        url: str | None = None,
        *,
        node: str = "localhost",
        token_path: str = f"{SERVICE_ACCOUNT}/token",
        ca_path: str = f"{SERVICE_ACCOUNT}/ca.crt",
        verify: bool = True,
        timeout_s: float = 5.0,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        retry_after_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s
        self._down_until = float("-inf")
        self.url = url or f"https://{node}:10250/pods"
        self.token_path = token_path
        self.ca_path = ca_path
        self.verify = verify
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._cached: tuple[float, dict[str, KubeletPod]] | None = None

    def pods(self) -> dict[str, KubeletPod] | None:
        """Pods on this node by uid; None when the kubelet could not be asked."""
        now = self._clock()
        if self._cached is not None and self._cached[0] > now:
            return self._cached[1]
        stale = self._cached[1] if self._cached is not None else None
        if now < self._down_until:
            return stale
        try:
            body = self._get()
            if body is _TIMED_OUT:
                self._down_until = now + self.retry_after_s
                return stale
            if body is None:
                return None
            pods = _pods(body)
        except Exception as e:  # documented never to raise
            self.record("pods", type(e).__name__)
            return None
        if isinstance(pods, str):
            self.record("pods", pods)
            return None
        self._cached = (now + self.ttl_s, pods)
        return pods

    def _get(self, path: str | None = None, call: str = "pods") -> Any:
        """The body of ``path`` (default: the URL's own) on the kubelet; None after a recorded
        failure (as ``call``), ``_TIMED_OUT`` when the deadline passed."""
        parts = urlsplit(self.url)
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn: http.client.HTTPConnection
        deadline = time.monotonic() + self.timeout_s
        try:
            if parts.scheme == "https":
                conn = DeadlineHTTPSConnection(
                    parts.hostname or "localhost", parts.port or 10250, deadline, self._tls()
                )
            elif parts.scheme == "http":
                conn = DeadlineHTTPConnection(
                    parts.hostname or "localhost", parts.port or 80, deadline
                )
            else:
                self.record(call, "BadURL")
                return None
            try:
                conn.request("GET", path or parts.path or "/pods", headers=headers)
                response = conn.getresponse()
                body = response.read(MAX_POD_LIST_BYTES + 1)
            finally:
                conn.close()
        except TimeoutError:
            self.record(call, "TimeoutError")
            return _TIMED_OUT
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.record(call, type(e).__name__)
            return None
        if response.status != 200:
            self.record(call, f"HTTP{response.status}")
            return None
        if len(body) > MAX_POD_LIST_BYTES:
            self.record(call, "TooLarge")
            return None
        return body

    def _token(self) -> str | None:
        try:
            with open(self.token_path, encoding="utf-8") as f:
                return f.read(1 << 16).strip() or None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            self.record("token", type(e).__name__)
            return None

    def _tls(self) -> ssl.SSLContext:
        if not self.verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        cafile = self.ca_path if os.path.exists(self.ca_path) else None
        return ssl.create_default_context(cafile=cafile)


_TIMED_OUT: Any = object()


def json_list(body: bytes, key: str) -> list[Any] | str:
    """The list under ``key`` of a JSON object body, or the error type of a body without one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "MalformedJSON"
    items = doc.get(key) if isinstance(doc, dict) else None
    return items if isinstance(items, list) else "Malformed"


def _pods(body: bytes) -> dict[str, KubeletPod] | str:
    """Pods by uid from a PodList body, or the error type of a body that is none."""
    items = json_list(body, "items")
    if isinstance(items, str):
        return items
    return {pod.uid: pod for pod in (_pod(item) for item in items) if pod is not None}


def _pod(item: Any) -> KubeletPod | None:
    """One PodList item: metadata.{uid,name,namespace} and the container statuses' ids.

    Per the Kubernetes API reference (Pod v1, ContainerStatus), ``containerID`` is
    ``<type>://<container_id>`` and is absent until the container has been created.
    """
    if not isinstance(item, dict):
        return None
    meta = item.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    uid, name, namespace = meta.get("uid"), meta.get("name"), meta.get("namespace")
    if not (isinstance(uid, str) and isinstance(name, str) and isinstance(namespace, str)):
        return None
    status = item.get("status")
    status = status if isinstance(status, dict) else {}
    containers: dict[str, PodContainer] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        statuses = status.get(key)
        for entry in statuses if isinstance(statuses, list) else ():
            container = _container(entry)
            if container is not None:
                containers[container.id] = container
    spec = item.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    per_container: dict[str, int] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        entries = spec.get(key)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                run_as = _run_as_user(entry.get("securityContext"))
                if run_as is not None:
                    per_container[clean_text(entry["name"])] = run_as
    return KubeletPod(uid=clean_text(uid), name=clean_text(name), namespace=clean_text(namespace),
                      containers=containers, run_as_user=_run_as_user(spec.get("securityContext")),
                      container_run_as_user=per_container)


def _run_as_user(context: Any) -> int | None:
    """``runAsUser`` of a PodSecurityContext or SecurityContext (Kubernetes API reference, Pod
    v1: an int64 uid), or None."""
    value = context.get("runAsUser") if isinstance(context, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
        return value
    return None


def _container(entry: Any) -> PodContainer | None:
    if not isinstance(entry, dict):
        return None
    name, raw_id = entry.get("name"), entry.get("containerID")
    if not isinstance(name, str) or not isinstance(raw_id, str):
        return None  # not started yet: no container id
    prefix, sep, cid = raw_id.partition("://")
    if not sep:
        prefix, cid = "", raw_id
    if not _CONTAINER_ID.match(cid):
        return None
    image, image_id = entry.get("image"), entry.get("imageID")
    return PodContainer(
        id=cid,
        name=clean_text(name),
        runtime=_RUNTIME_PREFIXES.get(prefix),
        image=clean_text(image) if isinstance(image, str) and image else None,
        image_id=clean_text(image_id) if isinstance(image_id, str) and image_id else None,
    )
