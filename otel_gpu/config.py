"""Settings: the error every bad setting raises, and the environment readers shared by the
command line, the agent and ``otel_gpu.start()``."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the CLI exits 2 with this message."""
