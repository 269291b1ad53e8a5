"""``otel_gpu.start()`` in a training script."""
