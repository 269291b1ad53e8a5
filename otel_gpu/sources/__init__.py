"""Sources read the world into plain data; none of them knows OpenTelemetry."""
