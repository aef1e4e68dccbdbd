"""One epoch of head-only training on cached features at CheXpert's size, through the real Trainer subclass.

    python benchmarks/cached_head_epoch.py [--rows 191027] [--dim 768] [--labels 14] [--batch-size 128]
                                           [--workers 0] [--device cpu|cuda] [--epochs 2]

What ``cache_features: true`` trains after the extraction:
:class:`chexpert_hf.training.feature_cache.FeatureHeadModel` around
a ViT-B head (``--dim`` 768; ViT-L: 1024, Swin-B: 1024, DenseNet-121: 1024), fed by ``LabelledImages``-style
batches of float32 rows from memory, with ``CheXpertTrainer``'s masked BCE, AdamW and cosine schedule; no
evaluation or saving. The rows are random (the speed of a linear head does not depend on its inputs). Prints
the seconds of each epoch (the first includes the optimizer's and loader's start-up) and rows/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification

from chexpert_hf.data.loading import DecodeCollator
from chexpert_hf.labels import CHEXPERT_LABELS
from chexpert_hf.models import label_config
from chexpert_hf.training.arguments import CheXpertTrainingArguments
from chexpert_hf.training.feature_cache import FeatureHeadModel
from chexpert_hf.training.trainer import CheXpertTrainer


class CachedRows(torch.utils.data.Dataset):
    """Feature rows and targets in memory, a batch per fetch (as ``LabelledImages`` with features does)."""

    def __init__(self, rows: int, dim: int, labels: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.features = rng.standard_normal((rows, dim), dtype=np.float32)
        self.targets = rng.integers(0, 2, (rows, labels)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.features)

    def __getitems__(self, indices: list[int]) -> dict:
        rows = np.asarray(indices, dtype=np.int64)
        return {"features": torch.from_numpy(self.features[rows]), "labels": self.targets[rows], "row_index": rows}


class EpochClock(TrainerCallback):
    def __init__(self):
        self.started, self.seconds = 0.0, []

    def on_epoch_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=int, default=191_027, help="rows per epoch (CheXpert's frontal training images: 191,027)"
    )
    parser.add_argument("--dim", type=int, default=768, help="feature width (ViT-B: 768)")
    parser.add_argument("--labels", type=int, default=len(CHEXPERT_LABELS), help="head outputs (default 14)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    labels = list(CHEXPERT_LABELS)[: args.labels]
    config = ViTConfig(
        hidden_size=args.dim,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=4,
        image_size=32,
        patch_size=16,
        **label_config(labels),
    )
    head = FeatureHeadModel(ViTForImageClassification(config))
    data = CachedRows(args.rows, args.dim, len(labels))
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as output:
        training = CheXpertTrainingArguments(
            output_dir=output,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=1e-3,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=500,
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=args.workers,
            use_cpu=args.device == "cpu",
            metric_for_best_model=None,
        )
        trainer = CheXpertTrainer(
            model=head,
            args=training,
            train_dataset=data,
            data_collator=DecodeCollator(32),
            family="vit",
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            callbacks=[clock],
        )
        trainer.train()
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"head {args.dim} → {len(labels)}, {args.rows:,} rows, batch {args.batch_size}, {args.workers} workers, "
        f"{device}"
    )
    for epoch, seconds in enumerate(clock.seconds, 1):
        print(f"epoch {epoch}: {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
