"""Findings a person can act on, drawn from a bounded window of Snapshots; pure, no I/O and
no OpenTelemetry."""
