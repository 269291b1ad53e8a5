"""A training loop whose data loader is deliberately slow: about 30 % of each step is data wait.

Pure Python, no GPU or framework needed. Run it against a simulated GPU server and print what is
exported:

    OTEL_GPU_SIMULATE=dgx-a100 OTEL_METRICS_EXPORTER=console OTEL_TRACES_EXPORTER=console \\
        OTEL_METRIC_EXPORT_INTERVAL=5000 python examples/slow_loader.py

``otel_gpu.training.data_wait.ratio`` settles near 0.3, well above the 5 % at which a loop is
usually called input-bound, and every 100th step appears as an ``otel_gpu.training.step`` span
with its ``data_wait`` and ``compute`` parts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import otel_gpu


def slow_batches(steps: int, batch_size: int, wait_s: float) -> Iterator[list[float]]:
    """Yield batches as a loader starved for I/O would: each takes ``wait_s`` to arrive."""
    for i in range(steps):
        time.sleep(wait_s)
        yield [float(i)] * batch_size


def train_step(batch: list[float], compute_s: float) -> float:
    """Stand in for forward, backward and optimizer step."""
    time.sleep(compute_s)
    return sum(batch) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--wait-ms", type=float, default=30.0, help="data wait per step")
    parser.add_argument("--compute-ms", type=float, default=70.0, help="compute per step")
    args = parser.parse_args()

    otel_gpu.start()
    try:
        for epoch in range(args.epochs):
            started = time.perf_counter()
            batches = slow_batches(args.steps, args.batch_size, args.wait_ms / 1000)
            for batch in otel_gpu.track(batches):
                train_step(batch, args.compute_ms / 1000)
            elapsed = time.perf_counter() - started
            print(f"epoch {epoch}: {args.steps * args.batch_size / elapsed:.0f} samples/s")
    finally:
        otel_gpu.stop()


if __name__ == "__main__":
    main()
