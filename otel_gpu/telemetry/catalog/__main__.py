"""``python -m otel_gpu.telemetry.catalog > docs/metrics.md``"""

from otel_gpu.telemetry.catalog import render_markdown

print(render_markdown(), end="")
