"""Run under ``accelerate launch --num_processes 2``: train a tiny model whose loss turns NaN on rank 1 only, from
optimizer step 3 on; each rank writes the error it stopped with (or "finished") to OUTPUT/rank<R>.txt.

    accelerate launch --config_file accelerate_configs/cpu.yaml --num_processes 2 \
        tests/scripts/nan_on_one_rank.py OUTPUT
"""

import faulthandler
import os
import sys
from pathlib import Path

import torch
from tiny_training import Rows, cpu_arguments, tiny_vit  # beside this script

from chexpert_hf.training.distributed import end_process_group
from chexpert_hf.training.nonfinite import NonFiniteLossError
from chexpert_hf.training.trainer import CheXpertTrainer


def main(output: str) -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    args = cpu_arguments(
        Path(output) / "run",
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        max_steps=6,
        logging_steps=100,
    )
    trainer = CheXpertTrainer(
        model=model, args=args, train_dataset=Rows(64), family="vit", image_mean=[0.5], image_std=[0.5], num_channels=1
    )
    rank = trainer.args.process_index

    def poison(module, inputs, result):
        if rank == 1 and trainer.state.global_step >= 2 and module.training:
            result.logits = result.logits * float("nan")
        return result

    model.register_forward_hook(poison)
    try:
        trainer.train()
        outcome = "finished"
    except NonFiniteLossError as error:
        outcome = str(error)
    Path(output, f"rank{rank}.txt").write_text(outcome)
    end_process_group()
    # Skip interpreter finalization: under load Gloo has aborted a process there (SIGABRT) after both ranks had
    # written their outcome; the outcome files, not the exit, are what the test checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    faulthandler.enable()  # a native abort prints where every thread was
    main(sys.argv[1])
