"""Snapshot -> OpenTelemetry: the metric catalog, instruments, providers and exporters, the
insight log records, and the one pipeline assembly."""
