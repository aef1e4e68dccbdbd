"""What the Trainer subclass costs per step over a bare PyTorch loop doing the same work, measured in one run.

    python benchmarks/trainer_overhead.py [--steps 60] [--warmup 10] [--batch-size 64] [--repeats 3]

Both sides train the demo's model (a ViT 96 wide, 4 layers, patch 8, 64 px, 5 labels; random weights) on the same
in-memory ``uint8`` batches with the same collate function, normalisation on the device, masked BCE, AdamW
(weight decay 0.01) and a cosine schedule, on the CPU. The bare loop is the minimum that work needs; the Trainer
side is ``CheXpertTrainer`` with saving and evaluation off and the demo's logging interval (20 steps).
Step times come from the same clock at the end of each step after ``--warmup`` steps; the two sides alternate
``--repeats`` times and the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification, get_cosine_schedule_with_warmup

from chexpert_hf.data.loading import DecodeCollator
from chexpert_hf.data.transforms import to_float
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models import label_config
from chexpert_hf.training.arguments import CheXpertTrainingArguments
from chexpert_hf.training.losses import masked_bce_with_logits
from chexpert_hf.training.trainer import CheXpertTrainer

SIZE, LABELS = 64, COMPETITION_LABELS  # the demo's image size and labels


class InMemory(torch.utils.data.Dataset):
    """Decoded images and targets in memory, fetched a batch at a time (as the demo's decode cache is)."""

    def __init__(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pixels = torch.from_numpy(rng.integers(0, 256, (count, 1, SIZE, SIZE), dtype=np.uint8))
        self.targets = rng.integers(0, 2, (count, len(LABELS))).astype(np.float32)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitems__(self, indices: list[int]) -> dict:
        rows = np.asarray(indices, dtype=np.int64)
        return {"pixels": self.pixels[torch.from_numpy(rows)], "labels": self.targets[rows], "row_index": rows}


def model() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(
        ViTConfig(
            hidden_size=96,
            num_hidden_layers=4,
            num_attention_heads=3,
            intermediate_size=384,
            patch_size=8,
            image_size=SIZE,
            **label_config(LABELS),
        )
    )


def bare_loop(data: InMemory, steps: int, batch_size: int) -> list[float]:
    net = model().train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=DecodeCollator(SIZE)
    )
    stamps = []
    batches = iter(loader)
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        pixels = to_float(batch["pixel_values"].float(), [0.5] * 3, [0.5] * 3, 3)
        loss = masked_bce_with_logits(net(pixel_values=pixels).logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # the Trainer clips at max_grad_norm=1.0 too
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return stamps


class Stamps(TrainerCallback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())


def trainer_loop(data: InMemory, steps: int, batch_size: int, logging_steps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        args = CheXpertTrainingArguments(
            output_dir=folder,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=2e-3,
            weight_decay=0.01,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 20),
            use_cpu=True,
            report_to="none",
            eval_strategy="no",
            save_strategy="no",
            logging_steps=logging_steps,
            dataloader_num_workers=0,
            disable_tqdm=True,
            dataloader_drop_last=True,
        )
        stamps = Stamps()
        trainer = CheXpertTrainer(
            model=model(),
            args=args,
            train_dataset=data,
            data_collator=DecodeCollator(SIZE),
            family="vit",
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            num_channels=3,
            callbacks=[stamps],
        )
        trainer.train()
    return stamps.stamps


def per_step(stamps: list[float], warmup: int) -> float:
    return (stamps[-1] - stamps[warmup - 1]) / (len(stamps) - warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per side and repeat (default: 60)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the timing (default: 10)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the two sides (default: 3)")
    parser.add_argument(
        "--logging-steps",
        type=int,
        default=20,
        help="the Trainer's logging interval (default: 20, the demo's; each log reads the loss)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and fewer than --steps")
    data = InMemory(args.batch_size * 16)
    bare, trainer = [], []
    for repeat in range(args.repeats):
        bare.append(per_step(bare_loop(data, args.steps, args.batch_size), args.warmup))
        trainer.append(per_step(trainer_loop(data, args.steps, args.batch_size, args.logging_steps), args.warmup))
        print(
            f"repeat {repeat + 1}: bare {1000 * bare[-1]:.1f} ms/step, Trainer {1000 * trainer[-1]:.1f} ms/step",
            file=sys.stderr,
            flush=True,
        )
    b, t = statistics.median(bare), statistics.median(trainer)
    print(
        f"bare loop {1000 * b:.1f} ms/step, CheXpertTrainer {1000 * t:.1f} ms/step (medians of {args.repeats}; "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads): overhead {100 * (t / b - 1):+.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
