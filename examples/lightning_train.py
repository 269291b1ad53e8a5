"""Train a small PyTorch Lightning model with otel-gpu's Lightning callback.

Needs PyTorch Lightning (``pip install lightning``). Run:

    OTEL_METRICS_EXPORTER=console OTEL_TRACES_EXPORTER=console OTEL_METRIC_EXPORT_INTERVAL=5000 \\
        python examples/lightning_train.py

(add ``OTEL_GPU_SIMULATE=dgx-a100`` on a machine without GPUs). The callback reports one step per
training batch; its data wait is the gap between Lightning's batch hooks, as described in
``otel_gpu.frameworks``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import otel_gpu
from otel_gpu.frameworks import lightning_callback


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 2))
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        inputs, targets = batch
        loss = self.loss_fn(self.net(inputs), targets)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        self.log("val_loss", self.loss_fn(self.net(inputs), targets))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def loader(samples: int, batch_size: int, workers: int, shuffle: bool) -> DataLoader:
    features = torch.randn(samples, 512)
    labels = (features[:, :10].sum(dim=1) > 0).long()
    return DataLoader(
        TensorDataset(features, labels),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a small Lightning model.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    otel_gpu.start()
    try:
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            callbacks=[lightning_callback()],
            logger=False,
            enable_checkpointing=False,
        )
        trainer.fit(
            Classifier(),
            train_dataloaders=loader(65536, args.batch_size, args.workers, shuffle=True),
            val_dataloaders=loader(8192, args.batch_size, args.workers, shuffle=False),
        )
    finally:
        otel_gpu.stop()


if __name__ == "__main__":
    main()
