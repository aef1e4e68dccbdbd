"""Run under ``accelerate launch --num_processes N``: each process writes the row indices of the training batches
it receives from CheXpertTrainer's dataloader in epochs 0 and 1, for datasets of each ROWS count, to
OUTPUT/rank<R>.json.

    accelerate launch --config_file accelerate_configs/cpu.yaml --num_processes 2 \
        tests/scripts/sampler_draws.py OUTPUT BATCH SEED ROWS [ROWS ...]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tiny_training import cpu_arguments, tiny_vit  # beside this script

from chexpert_hf.training.distributed import end_process_group
from chexpert_hf.training.sampling import sample_weights
from chexpert_hf.training.trainer import CheXpertTrainer


class Rows(torch.utils.data.Dataset):
    def __init__(self, targets: np.ndarray):
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        return {"row_index": index, "labels": self.targets[index]}


def collate(items: list[dict]) -> dict:
    return {
        "row_index": torch.tensor([item["row_index"] for item in items]),
        "labels": torch.tensor(np.stack([item["labels"] for item in items])),
    }


def targets_for(rows: int) -> np.ndarray:
    return (np.random.default_rng(0).random((rows, 3)) < [0.1, 0.3, 0.6]).astype(np.float32)


def epochs_seen(rows: int, batch: int, seed: int, output: str) -> tuple[dict, object]:
    targets = targets_for(rows)
    model = tiny_vit(3, width=8, image_size=8, patch_size=4, channels=3)
    args = cpu_arguments(Path(output) / "run", per_device_train_batch_size=batch, seed=seed)
    trainer = CheXpertTrainer(
        model=model,
        args=args,
        train_dataset=Rows(targets),
        data_collator=collate,
        family="vit",
        image_mean=[0.5],
        image_std=[0.5],
        sample_weights=sample_weights(targets, "inverse_frequency"),
    )
    loader = trainer.get_train_dataloader()
    epochs = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        epochs[epoch] = [batch["row_index"].tolist() for batch in loader]
    return epochs, trainer.args


def main(output: str, batch: int, seed: int, row_counts: list[int]) -> None:
    seen = {}
    for rows in row_counts:
        seen[rows], args = epochs_seen(rows, batch, seed, output)
    Path(output, f"rank{args.process_index}.json").write_text(json.dumps({"world_size": args.world_size, "rows": seen}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(rows) for rows in sys.argv[4:]])
    end_process_group()
