"""The ``opentelemetry_instrumentor`` entry point: ``opentelemetry-instrument python train.py``
reports GPUs, MIG devices and the host with no code change.

``opentelemetry-instrument`` sets up the SDK through a configurator (``opentelemetry-distro``,
the ``instrument`` extra) before it runs instrumentors, so the session here finds the global
providers and adds its instruments to them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor


class OtelGpuInstrumentor(BaseInstrumentor):
    """Starts an ``otel_gpu`` session on the configured providers; stops it on uninstrument."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        from otel_gpu.session.api import start

        start(meter_provider=kwargs.get("meter_provider"),
              tracer_provider=kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        from otel_gpu.session.api import stop

        stop()
