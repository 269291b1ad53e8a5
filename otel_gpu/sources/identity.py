"""Who this process is: its container, pod, user and devices, read from ``/proc/self``.

``detect_self`` reads ``/proc/self`` and the environment: our container and its runtime, the
Kubernetes pod, the user, the devices we were given and whether we share the host's pid namespace.
``otel_gpu.embedded`` turns that into resource attributes; ``otel-gpu status`` and ``doctor``
read it too.

Where each answer comes from:

- Container id and runtime: ``/proc/self/cgroup`` (see ``otel_gpu.sources.cgroup``), else the
  files the runtime bind-mounts over ``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf`` and
  ``/run/.containerenv``, as ``/proc/self/mountinfo`` shows their source paths
  (``/var/lib/docker/containers/<id>/hostname``, ``.../overlay-containers/<id>/userdata/...``).
  Only a 64-hex segment under a ``containers`` or containerd directory counts. Under Kubernetes
  those files belong to the pod sandbox (``.../sandboxes/<id>/hostname``, or the pause container
  with dockershim), so there mountinfo gives the pod uid and container name, never a container id.
- Pod name: ``POD_NAME``, else ``K8S_POD_NAME`` (set them with the Downward API,
  ``fieldRef: metadata.name``), else, in Kubernetes only (``KUBERNETES_SERVICE_HOST`` set),
  ``HOSTNAME``: the pod name cut to 63 characters, or the node's name for a ``hostNetwork`` pod.
- Namespace: ``POD_NAMESPACE``, else ``K8S_NAMESPACE`` (``fieldRef: metadata.namespace``), else
  the service account's ``namespace`` file when one is mounted.
- Pod uid: the cgroup path, else the kubelet's ``pods/<uid>/`` paths in mountinfo.
- User: the passwd name of our real uid (what ``process.owner`` means in the SDK), else the uid.
- Devices: ``CUDA_VISIBLE_DEVICES``, else ``NVIDIA_VISIBLE_DEVICES`` (indices, GPU or MIG UUIDs).
- Host pid namespace: see ``_host_pid_namespace``.

Values that come from the environment are the user's to set: they are cut to 128 characters and
lose control and format characters (and undecodable bytes) before they become attributes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from otel_gpu.sources._text import (
    FULL_CONTAINER_ID,
    MAX_TEXT,
    clean_value,
    parse_uid,
    passwd_name,
)
from otel_gpu.sources.cgroup import container_from_cgroup_lines

MAX_VALUE_LENGTH = MAX_TEXT
MAX_DEVICES = 128

ATTRIBUTION_NOTE = (
    "NVML reports host pids: per-process attribution needs the agent (otel-gpu agent with the "
    "host pid namespace); reporting the devices given to this container"
)

POD_NAME_VARIABLES = ("POD_NAME", "K8S_POD_NAME")
POD_NAMESPACE_VARIABLES = ("POD_NAMESPACE", "K8S_NAMESPACE")

# The kernel gives the initial pid namespace a fixed inode number (PROC_PID_INIT_INO).
_INIT_PID_NS = "pid:[4026531836]"
_SERVICE_ACCOUNT_NAMESPACE = "var/run/secrets/kubernetes.io/serviceaccount/namespace"
_RUNTIME_MOUNTS = ("/etc/hostname", "/etc/resolv.conf", "/etc/hosts", "/run/.containerenv")
_ID = re.compile(rf"^{FULL_CONTAINER_ID}$")
_KUBELET_POD = re.compile(
    r"(?:^|/)pods/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"(?:/containers/([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)/)?"
)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_MAX_READ = 1 << 20


@dataclass(frozen=True)
class SelfInfo:
    """This process as seen from inside its container; None where nothing tells."""

    container_id: str | None = None
    container_runtime: str | None = None  # docker, containerd, cri-o, podman
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None
    k8s_container_name: str | None = None
    in_kubernetes: bool = False
    uid: int | None = None  # real uid
    user: str | None = None  # passwd name of the real uid, else the uid as a string
    devices: tuple[str, ...] | None = None  # None: every device the driver shows
    host_pid_namespace: bool | None = None
    attribution_note: str | None = None

    @property
    def in_container(self) -> bool:
        return self.container_id is not None or self.in_kubernetes


def visible_devices(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The devices this process was given: CUDA_VISIBLE_DEVICES, else NVIDIA_VISIBLE_DEVICES.

    Entries are NVML indices, GPU UUIDs or MIG UUIDs; None means every device. Indices follow
    NVML's (PCI bus) order, which CUDA uses with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    """
    env = os.environ if environ is None else environ
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        raw = env.get(name)
        if raw is None:
            continue
        raw = raw.strip()
        if raw in ("", "all") and name == "NVIDIA_VISIBLE_DEVICES":
            continue
        if raw in ("none", "void"):
            return []
        return [item.strip() for item in raw.split(",") if item.strip()]
    return None



def detect_self(proc_root: str = "/proc", environ: Mapping[str, str] | None = None) -> SelfInfo:
    """Who this process is and what it was given; never raises on missing or unreadable files."""
    env = os.environ if environ is None else environ
    own_cgroup = _read_lines(os.path.join(proc_root, "self", "cgroup"))
    ref = container_from_cgroup_lines(own_cgroup or ())
    mounts = _runtime_mounts(_read_lines(os.path.join(proc_root, "self", "mountinfo")) or ())

    pod_uid = (ref.pod_uid if ref is not None else None) or mounts.pod_uid
    in_kubernetes = bool(pod_uid or env.get("KUBERNETES_SERVICE_HOST"))
    container_id = ref.id if ref is not None else None
    runtime = ref.runtime if ref is not None else None
    if container_id is None and not in_kubernetes and mounts.container_id is not None:
        container_id, runtime = mounts.container_id, mounts.runtime

    pod_name = _first_env(env, POD_NAME_VARIABLES)
    if pod_name is None and env.get("KUBERNETES_SERVICE_HOST"):
        pod_name = clean_value(env.get("HOSTNAME"))
    namespace = _first_env(env, POD_NAMESPACE_VARIABLES)
    if namespace is None and in_kubernetes:
        namespace = clean_value(
            _read_text(os.path.join(proc_root, "self", "root", _SERVICE_ACCOUNT_NAMESPACE))
        )

    uid = _real_uid(proc_root)
    devices = visible_devices(env)
    info = SelfInfo(
        container_id=container_id,
        container_runtime=runtime,
        pod_name=pod_name,
        pod_namespace=namespace,
        pod_uid=pod_uid,
        k8s_container_name=mounts.container_name,
        in_kubernetes=in_kubernetes,
        uid=uid,
        user=_user_name(uid),
        devices=None if devices is None else _clean_devices(devices),
    )
    host_pid = _host_pid_namespace(proc_root, info.in_container, ref is not None)
    note = ATTRIBUTION_NOTE if info.in_container and host_pid is not True else None
    return replace(info, host_pid_namespace=host_pid, attribution_note=note)


def _host_pid_namespace(proc_root: str, in_container: bool, ours_in_cgroup: bool) -> bool | None:
    """Whether we share the host's pid namespace, i.e. our pids are the ones NVML reports.

    Comparing our pid namespace with pid 1's proves nothing, since /proc shows the namespace it
    was mounted for and pid 1 there is our container's init. Instead:

    - our pid namespace link reads the kernel's fixed inode of the initial namespace: yes;
    - outside a container, nothing else tells: unknown;
    - pid 1's cgroup names a container: pid 1 is a container's init, so no;
    - pid 1's cgroup path leaves our cgroup namespace (``..``): pid 1 is outside our container, yes;
    - our cgroup names our container and pid 1's names none: pid 1 is the host's init, yes;
    - otherwise pid 1 sits in our own (namespaced, hence hidden) cgroup: no.

    The limit: on a "host" that is itself a container (nested containers, kind nodes) pid 1 is
    that outer container's init and the answer describes the outer container, not the machine.
    """
    if _read_link(os.path.join(proc_root, "self", "ns", "pid")) == _INIT_PID_NS:
        return True
    if not in_container:
        return None
    lines = _read_lines(os.path.join(proc_root, "1", "cgroup"))
    if not lines:
        return None
    if container_from_cgroup_lines(lines) is not None:
        return False
    for line in lines:
        fields = line.strip().split(":", 2)
        if len(fields) == 3 and ".." in fields[2].split("/"):
            return True
    return ours_in_cgroup


@dataclass(frozen=True)
class _Mounts:
    container_id: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None
    container_name: str | None = None


def _runtime_mounts(lines: Iterable[str]) -> _Mounts:
    """What the runtime's and the kubelet's bind mounts in mountinfo name."""
    found: dict[str, tuple[str, str | None]] = {}
    pod_uid = container_name = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        source = _unescape(fields[3])
        mount_point = _unescape(fields[4])
        if m := _KUBELET_POD.search(source):
            pod_uid = pod_uid or m.group(1)
            container_name = container_name or m.group(2)
        if mount_point in _RUNTIME_MOUNTS and mount_point not in found:
            hit = _container_in_source(source)
            if hit is not None:
                found[mount_point] = hit
    for mount_point in _RUNTIME_MOUNTS:
        if mount_point in found:
            container_id, runtime = found[mount_point]
            return _Mounts(container_id, runtime, pod_uid, container_name)
    return _Mounts(pod_uid=pod_uid, container_name=container_name)


def _container_in_source(source: str) -> tuple[str, str | None] | None:
    parts = [p for p in source.split("/") if p]
    for i, part in enumerate(parts):
        if not _ID.match(part):
            continue
        above = parts[:i]
        if "sandboxes" in above:
            return None
        if "docker" in above and "containers" in above:
            return part, "docker"
        if "overlay-containers" in above:
            return part, "podman"
        if any("containerd" in p or p == "nerdctl" for p in above):
            return part, "containerd"
        if "containers" in above:
            return part, None
    return None


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _real_uid(proc_root: str) -> int | None:
    uid = parse_uid(_read_text(os.path.join(proc_root, "self", "status")) or "")
    if uid is not None:
        return uid
    try:
        return os.getuid()
    except AttributeError:
        return None


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    return passwd_name(uid) or str(uid)


def _clean_devices(devices: Iterable[str]) -> tuple[str, ...]:
    out = []
    for device in devices:
        cleaned = clean_value(device)
        if cleaned is not None:
            out.append(cleaned)
        if len(out) == MAX_DEVICES:
            break
    return tuple(out)


def _first_env(env: Mapping[str, str], names: Iterable[str]) -> str | None:
    for name in names:
        value = clean_value(env.get(name))
        if value is not None:
            return value
    return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(_MAX_READ)
    except (OSError, ValueError):
        return None


def _read_lines(path: str) -> list[str] | None:
    text = _read_text(path)
    return None if text is None else text.splitlines()


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except (OSError, ValueError):
        return None
