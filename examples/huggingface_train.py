"""Train a tiny BERT classifier with the Hugging Face Trainer and otel-gpu's callback.

Needs transformers and PyTorch (``pip install transformers torch``); the model is built from a
small config, so nothing is downloaded. Run:

    OTEL_METRICS_EXPORTER=console OTEL_TRACES_EXPORTER=console OTEL_METRIC_EXPORT_INTERVAL=5000 \\
        python examples/huggingface_train.py

(add ``OTEL_GPU_SIMULATE=dgx-a100`` on a machine without GPUs). The callback reports one step per
optimizer update; its data wait is the gap between the Trainer's step hooks, as described in
``otel_gpu.frameworks``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import otel_gpu
from otel_gpu.frameworks import huggingface_callback


class RandomTokens(Dataset):
    """Random token sequences labelled by whether their first token is even."""

    def __init__(self, size: int, length: int, vocab: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(0, vocab, (size, length), generator=generator)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[i]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": (ids[0] % 2).long(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a tiny BERT classifier.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()

    otel_gpu.start()
    try:
        config = BertConfig(
            vocab_size=1000,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=256,
            num_labels=2,
        )
        with tempfile.TemporaryDirectory() as output_dir:
            training_args = TrainingArguments(
                output_dir=output_dir,
                num_train_epochs=args.epochs,
                per_device_train_batch_size=args.batch_size,
                logging_steps=20,
                save_strategy="no",
                report_to="none",
                dataloader_num_workers=2,
            )
            trainer = Trainer(
                model=BertForSequenceClassification(config),
                args=training_args,
                train_dataset=RandomTokens(args.samples, 64, config.vocab_size),
                callbacks=[huggingface_callback()],
            )
            trainer.train()
    finally:
        otel_gpu.stop()


if __name__ == "__main__":
    main()
