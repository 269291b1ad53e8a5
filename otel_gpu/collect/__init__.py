"""One collection cycle, fault-isolated: sources -> Snapshot -> attribution -> insights.

No OpenTelemetry here; ``otel_gpu.telemetry`` turns the Snapshot into points."""
