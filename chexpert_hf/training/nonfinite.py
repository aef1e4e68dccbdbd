"""Stopping on a NaN or infinite training loss before anything is saved after it.

The trainer records the first bad step on the device (``CheXpertTrainer._record_finite``, no synchronisation per
step) and checks it across processes (``CheXpertTrainer.check_finite``); the callback here decides when to check.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

if TYPE_CHECKING:
    from chexpert_hf.training.trainer import CheXpertTrainer


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NonFiniteLossGuard(TrainerCallback):
    """Stops training when a loss was not finite, before anything is saved after it.

    The trainer records the first bad step on the device (no synchronisation per step); this callback reads it
    only when the Trainer is about to log, evaluate or save, and at the end, so the last checkpoint written is
    always one from before the bad step. It remembers the checkpoints this run wrote, for the error message.
    """

    def __init__(self, trainer: CheXpertTrainer):
        self.trainer = trainer
        self.last_checkpoint: str | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.trainer.check_finite()

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.trainer.check_finite()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.last_checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
