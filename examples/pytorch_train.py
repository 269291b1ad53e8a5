"""Train a small classifier on synthetic data with otel-gpu watching the loop and the GPUs.

Needs PyTorch (``pip install torch``); uses the GPU when there is one. Run:

    OTEL_METRICS_EXPORTER=console OTEL_TRACES_EXPORTER=console OTEL_METRIC_EXPORT_INTERVAL=5000 \\
        python examples/pytorch_train.py

or, on a machine without GPUs, add ``OTEL_GPU_SIMULATE=dgx-a100`` for simulated devices. With
``OTEL_METRICS_EXPORTER=otlp`` the same signals go to a collector.

CUDA runs kernels asynchronously, so the step time seen from Python is the time to queue the work
until the queue is full; from then on (and at every synchronisation such as ``loss.item()``) it
matches the GPU's pace. Data wait is the time blocked in the DataLoader.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import otel_gpu


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a small classifier on synthetic data.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    otel_gpu.start()
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        features = torch.randn(args.samples, 512)
        labels = (features[:, :10].sum(dim=1) > 0).long()
        loader = DataLoader(
            TensorDataset(features, labels),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        model = nn.Sequential(
            nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 2)
        ).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()

        for epoch in range(args.epochs):
            model.train()
            for inputs, targets in otel_gpu.track(loader):
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), targets)
                loss.backward()
                optimizer.step()
            print(f"epoch {epoch}: loss {loss.item():.4f}")
    finally:
        otel_gpu.stop()


if __name__ == "__main__":
    main()
