"""Pods' disk use from the kubelet's Summary API (``GET /stats/summary``, beside ``/pods``).

Field names are those of the Summary API's types, k8s.io/kubelet ``pkg/apis/stats/v1alpha1``
(``types.go``): ``Summary.pods[]`` is a ``PodStats`` with ``podRef`` (``name``, ``namespace``,
``uid``), ``containers[]`` (``ContainerStats``: ``name``, ``rootfs``, ``logs``) and
``ephemeral-storage``; each of those is an ``FsStats`` whose ``usedBytes`` is what is read here.
A container's ``rootfs.usedBytes`` is its writable layer; the pod's ``ephemeral-storage`` adds its
logs and emptyDir volumes. The kubelet computes them on its own housekeeping cadence; the agent
asks on its slow one (``otel_gpu.sources.container_disk``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otel_gpu.sources._text import clean_text
from otel_gpu.sources.kubelet import _TIMED_OUT, PodListClient, json_list

SUMMARY_PATH = "/stats/summary"
_MAX_USED = 2**63 - 1

PodKey = tuple[str, str]  # (namespace, pod name)


@dataclass(frozen=True)
class PodDisk:
    """One pod's figures: its ephemeral storage, and each container's writable layer by name."""

    ephemeral_bytes: int | None = None
    rootfs_bytes: dict[str, int] = field(default_factory=dict)


def _used(stats: Any) -> int | None:
    value = stats.get("usedBytes") if isinstance(stats, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_USED:
        return value
    return None


def parse_summary(body: bytes) -> dict[PodKey, PodDisk] | str:
    """Pods by (namespace, name) from a Summary body, or the error type of a body that is none.
    Entries without a name are skipped; a figure of the wrong type is left out."""
    pods = json_list(body, "pods")
    if isinstance(pods, str):
        return pods
    found: dict[PodKey, PodDisk] = {}
    for pod in pods:
        ref = pod.get("podRef") if isinstance(pod, dict) else None
        if not isinstance(ref, dict):
            continue
        name, namespace = ref.get("name"), ref.get("namespace")
        if not isinstance(name, str) or not isinstance(namespace, str):
            continue
        rootfs = {}
        containers = pod.get("containers")
        for container in containers if isinstance(containers, list) else ():
            if isinstance(container, dict) and isinstance(container.get("name"), str):
                used = _used(container.get("rootfs"))
                if used is not None:
                    rootfs[clean_text(container["name"])] = used
        found[(clean_text(namespace), clean_text(name))] = PodDisk(
            ephemeral_bytes=_used(pod.get("ephemeral-storage")), rootfs_bytes=rootfs
        )
    return found


class StatsSummaryClient:
    """The kubelet's Summary, through the same connection settings, token and deadline as its
    ``/pods`` client; never raises, records failures on that client (source ``kubelet``)."""

    def __init__(self, pods: PodListClient) -> None:
        self.pods = pods

    def summary(self) -> dict[PodKey, PodDisk] | None:
        """The pods' disk figures; None when the kubelet could not be asked."""
        try:
            body = self.pods._get(SUMMARY_PATH, "summary")
        except Exception as e:  # documented never to raise
            self.pods.record("summary", type(e).__name__)
            return None
        if body is None or body is _TIMED_OUT:
            return None
        found = parse_summary(body)
        if isinstance(found, str):
            self.pods.record("summary", found)
            return None
        return found
