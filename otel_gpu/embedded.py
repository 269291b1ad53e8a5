"""The ``otel_gpu`` resource detector: who this process is, as resource attributes.

Registered as the ``otel_gpu`` entry point of ``opentelemetry_resource_detector``, which the SDK
runs when ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` names it. The detection itself, and where each
answer comes from, is ``otel_gpu.sources.identity``.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource, ResourceDetector

from otel_gpu.sources.identity import detect_self
from otel_gpu.telemetry.providers import self_resource


class OtelGpuResourceDetector(ResourceDetector):
    """Container, pod, user and given devices of this process, as resource attributes.

    Sets ``container.id``, ``container.runtime.name``, ``k8s.pod.name``, ``k8s.pod.uid``,
    ``k8s.namespace.name``, ``k8s.container.name``, ``process.owner`` where known, and
    ``otel_gpu.device.ids`` when the environment restricts the devices.
    """

    def __init__(self, raise_on_error: bool = False, *, proc_root: str = "/proc",
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(raise_on_error)
        self.proc_root = proc_root
        self.environ = environ

    def detect(self) -> Resource:
        return self_resource(detect_self(self.proc_root, self.environ))
