"""Run under ``accelerate launch --num_processes 2``: the training job's multi-process behaviour, one part at a time.
Each process writes OUTPUT/<part>-rank<R>.json.

    accelerate launch --config_file accelerate_configs/cpu.yaml --num_processes 2 \
        tests/scripts/distributed_training.py OUTPUT RECIPE PART [PART ...]

Parts:
  augment   the light augmentation of one uint8 batch, drawn by two trainers built one after the other (a rerun),
            at two optimizer steps and two batches within a step
  resume    for each sampling mode: a run straight through; the same run stopped right after its mid-epoch
            checkpoint, then resumed from it (RECIPE's save_steps falls inside a later epoch)
  rank_dirs a run whose output_dir differs per process (node-local disks) with load_best_model_at_end: its exit
            code and error line

Every process also writes OUTPUT/exit-rank<R>.json as the very last thing before it exits: whether its process group
was still open then (the training entry must have closed it, or Gloo can abort the process during shutdown).
"""

import atexit
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tiny_training import cpu_arguments, tiny_vit  # beside this script

from chexpert_hf.training.nonfinite import NonFiniteLossGuard
from chexpert_hf.training.train import main as train_main
from chexpert_hf.training.trainer import CheXpertTrainer

RANK = int(os.environ.get("RANK", "0"))


def augment(output: Path, recipe: str) -> dict:
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 1, 16, 16), dtype=np.uint8))
    draws = []
    for _rerun in range(2):
        model = tiny_vit(width=8)
        args = cpu_arguments(output / "augment", seed=3)
        trainer = CheXpertTrainer(
            model=model,
            args=args,
            family="vit",
            image_mean=[0.5],
            image_std=[0.5],
            num_channels=1,
            augmentation="light",
        )
        trainer.model.train()
        seen = {}
        for step, batch in ((0, 0), (0, 1), (1, 0)):
            trainer.state.global_step = step
            augmented = trainer._prepare_inputs({"pixel_values": pixels.clone()})["pixel_values"]
            seen[f"{step}.{batch}"] = augmented.reshape(-1).tolist()
        draws.append(seen)
    return {"draws": draws}


class Interrupted(Exception):
    """Stands for the run being killed right after a checkpoint was written."""


def _killed_after_first_save(original):
    def on_save(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        raise Interrupted(state.global_step)

    return on_save


def resume(output: Path, recipe: str) -> dict:
    codes = {}
    for sampling in ("inverse_frequency", "none"):
        base = ["--config", recipe, "--sampling", sampling]
        codes[f"{sampling}/straight"] = train_main([*base, "--output_dir", str(output / sampling / "straight")])
        stopped = ["--output_dir", str(output / sampling / "resumed")]
        original = NonFiniteLossGuard.on_save
        NonFiniteLossGuard.on_save = _killed_after_first_save(original)
        try:
            train_main([*base, *stopped])
            codes[f"{sampling}/interrupted"] = "not interrupted"
        except Interrupted as stop:
            codes[f"{sampling}/interrupted"] = int(str(stop))
        finally:
            NonFiniteLossGuard.on_save = original
        codes[f"{sampling}/resumed"] = train_main([*base, *stopped, "--resume_from_checkpoint", "last"])
    return codes


def rank_dirs(output: Path, recipe: str) -> dict:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = train_main(
            [
                "--config",
                recipe,
                "--output_dir",
                str(output / "rank_dirs" / f"rank{RANK}"),
                "--max_steps",
                "6",
                "--save_steps",
                "3",
                "--eval_strategy",
                "steps",
                "--eval_steps",
                "3",
                "--load_best_model_at_end",
                "true",
            ]
        )
    return {"code": code, "stderr": stderr.getvalue()}


PARTS = {"augment": augment, "resume": resume, "rank_dirs": rank_dirs}


def record_group_at_exit(output: Path) -> None:
    """Registered before anything else, so it runs after every other exit handler (they run last in, first out)."""
    state = {"group_open": torch.distributed.is_initialized()}
    (output / f"exit-rank{RANK}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    output, recipe = Path(sys.argv[1]), sys.argv[2]
    atexit.register(record_group_at_exit, output)
    for part in sys.argv[3:]:
        result = PARTS[part](output, recipe)
        (output / f"{part}-rank{RANK}.json").write_text(json.dumps(result))
