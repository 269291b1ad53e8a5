"""otel-gpu: OpenTelemetry metrics for GPU servers: GPUs, MIG devices, host, and who uses what."""

__version__ = "0.1.0"
