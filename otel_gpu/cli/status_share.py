"""Each asker's share of a Snapshot, and the Snapshot as JSON, for the agent's status socket.

``Scope`` says whose share a reply holds; ``share_of`` cuts a Snapshot down to it; ``encode`` and
``decode`` carry a Snapshot through JSON (unknown keys are ignored and missing ones take their
defaults, so both sides may be of different versions as long as fields are only ever added).
No process id leaves: the GPU and MIG devices' process lists are emptied for every scope.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from otel_gpu.snapshot import (
    DeviceAssignment,
    Gpu,
    Insight,
    Snapshot,
    Workload,
)

ALL, USER, CONTAINER, NONE = "all", "user", "container", "none"
_WORKLOAD_KEYS = ("container.id", "k8s.pod.uid", "k8s.pod.name", "process.owner")


@dataclass(frozen=True)
class Scope:
    """Whose share: everything (``all``), one user's (``user``: by uid and name), one
    container's or pod's (``container``), or nothing (``none``: the asker is unknown)."""

    kind: str
    uid: int | None = None
    user: str | None = None
    container_id: str | None = None
    pod_uid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uid": self.uid, "user": self.user,
                "container.id": self.container_id, "k8s.pod.uid": self.pod_uid}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Scope:
        def text(key: str) -> str | None:
            value = doc.get(key)
            return value if isinstance(value, str) else None

        uid = doc.get("uid")
        return cls(kind=text("kind") or NONE,
                   uid=uid if isinstance(uid, int) and not isinstance(uid, bool) else None,
                   user=text("user"), container_id=text("container.id"),
                   pod_uid=text("k8s.pod.uid"))

    def owns_workload(self, attributes: Mapping[str, str]) -> bool:
        if self.kind == ALL:
            return True
        if self.kind == USER:
            owner = attributes.get("process.owner")
            return owner is not None and owner in (self.user, str(self.uid))
        if self.kind == CONTAINER:
            if self.container_id and attributes.get("container.id") == self.container_id:
                return True
            return bool(self.pod_uid) and attributes.get("k8s.pod.uid") == self.pod_uid
        return False

    def holds(self, assignment: DeviceAssignment) -> bool:
        if self.kind == USER:
            return (self.uid is not None and assignment.owner_uid == self.uid) or (
                assignment.owner is not None and assignment.owner in (self.user, str(self.uid)))
        return self.owns_workload(assignment.attributes)


def _no_pids(gpu: Gpu, keep: set[str] | None) -> Gpu:
    migs = tuple(replace(m, processes=()) for m in gpu.mig_devices
                 if keep is None or m.uuid in keep or gpu.uuid in keep)
    return replace(gpu, processes=(), mig_devices=migs)


def share_of(snapshot: Snapshot, scope: Scope) -> Snapshot:
    """The part of ``snapshot`` that ``scope`` may see: for ``all`` everything but pids; for a
    user or a container its workloads, the devices it uses or holds (a MIG device's parent GPU
    without the other MIG devices), its containers' cgroup figures and the insights about those;
    no host figures, read errors or timings."""
    if scope.kind == ALL:
        return replace(snapshot, gpus=tuple(_no_pids(g, None) for g in snapshot.gpus))
    workloads = tuple(w for w in snapshot.workloads if scope.owns_workload(w.attributes))
    assignments = tuple(a for a in snapshot.assignments if scope.holds(a))
    held: list[Workload | DeviceAssignment] = [*workloads, *assignments]
    devices = {h.device_uuid for h in held}
    containers = {h.attributes["container.id"] for h in held if "container.id" in h.attributes}
    pods = {h.attributes["k8s.pod.uid"] for h in held if "k8s.pod.uid" in h.attributes}
    pod_names = {(h.attributes.get("k8s.namespace.name"), h.attributes["k8s.pod.name"])
                 for h in held if "k8s.pod.name" in h.attributes}
    gpus = []
    for gpu in snapshot.gpus:
        if gpu.uuid in devices or any(m.uuid in devices for m in gpu.mig_devices):
            gpus.append(_no_pids(gpu, devices))
    visible = {g.uuid for g in gpus} | {m.uuid for g in gpus for m in g.mig_devices}

    def mine(insight: Insight) -> bool:
        attrs = insight.attributes
        if any(k in attrs for k in _WORKLOAD_KEYS):
            return (attrs.get("container.id") in containers
                    or attrs.get("k8s.pod.uid") in pods
                    or (attrs.get("k8s.namespace.name"), attrs.get("k8s.pod.name")) in pod_names
                    or (scope.kind == USER and scope.owns_workload(
                        {"process.owner": str(attrs.get("process.owner"))})))
        return attrs.get("hw.id") in visible  # about one of my devices; never the host's

    return Snapshot(
        cycle=snapshot.cycle,
        timestamp=snapshot.timestamp,
        driver_available=snapshot.driver_available,
        driver_version=snapshot.driver_version,
        gpus=tuple(gpus),
        workloads=workloads,
        assignments=assignments,
        containers=tuple(c for c in snapshot.containers
                         if c.attributes.get("container.id") in containers),
        insights=tuple(i for i in snapshot.insights if mine(i)),
    )


# -- the Snapshot as JSON ------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A Snapshot (or any part of it) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "error_counts":
                out[f.name] = [{"source": s, "call": c, "count": n} for (s, c), n in item.items()]
            else:
                out[f.name] = encode(item)
        return out
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


class DecodeError(ValueError):
    """A document that is not a Snapshot."""


def decode_snapshot(doc: Any) -> Snapshot:
    """The Snapshot of ``encode(snapshot)``; raises ``DecodeError`` for anything else."""
    try:
        return _decode(Snapshot, doc)
    except DecodeError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise DecodeError(f"not a snapshot: {type(err).__name__}") from None


def _decode(kind: Any, value: Any) -> Any:
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise DecodeError(f"expected an object for {kind.__name__}")
        hints = typing.get_type_hints(kind)
        values = {}
        for f in dataclasses.fields(kind):
            if f.name not in value:
                continue
            if f.name == "error_counts" and kind is Snapshot:
                values[f.name] = {(e["source"], e["call"]): int(e["count"])
                                  for e in value[f.name]}
            else:
                values[f.name] = _decode(hints[f.name], value[f.name])
        return kind(**values)
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _decode(arg, value)
                except DecodeError:
                    continue
        raise DecodeError(f"no type of {kind} fits")
    if origin is tuple:
        if not isinstance(value, list):
            raise DecodeError("expected a list")
        return tuple(_decode(args[0], v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise DecodeError("expected an object")
        key_type = args[0]
        return {(int(k) if key_type is int else k): _decode(args[1], v) for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError("expected a number")
        return float(value)
    if kind in (int, str, bool):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DecodeError(f"expected {kind.__name__}")
        return value
    return value  # str | int | float | bool attribute values and the like
