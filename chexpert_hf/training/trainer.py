"""The Trainer subclass: its hooks for weighted sampling, masked BCE, AdamW with layer decay, on-device
preprocessing, the non-finite-loss stop, checkpoint loading and (through :class:`HubStagingMixin`) staged pushes.

What the hooks use lives beside them: the sampling weights and sampler in :mod:`chexpert_hf.training.sampling`
(with the formula), the loss in :mod:`chexpert_hf.training.losses`, the augmentation in
:mod:`chexpert_hf.training.augmentation`, the stop in :mod:`chexpert_hf.training.nonfinite`, the Hub staging in
:mod:`chexpert_hf.hub.staging`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from chexpert_hf.data.transforms import to_float
from chexpert_hf.hub.staging import HubStagingMixin
from chexpert_hf.models.freeze import param_groups
from chexpert_hf.outputs import PYTORCH_WEIGHTS, PYTORCH_WEIGHTS_INDEX, SAFE_WEIGHTS, SAFE_WEIGHTS_INDEX
from chexpert_hf.training.arguments import ConfigurationError
from chexpert_hf.training.augmentation import augmentation_generator, light_affine
from chexpert_hf.training.losses import masked_bce_with_logits
from chexpert_hf.training.nonfinite import NonFiniteLossError, NonFiniteLossGuard
from chexpert_hf.training.sampling import SamplerEpoch, WeightedEpochSampler, epoch_samplers
from chexpert_hf.utils import give_new_file_mode

logger = logging.getLogger(__name__)


def _holds_weights(folder: str) -> bool:
    return any(
        Path(folder, name).is_file()
        for name in (SAFE_WEIGHTS, SAFE_WEIGHTS_INDEX, PYTORCH_WEIGHTS, PYTORCH_WEIGHTS_INDEX)
    )


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every tensor of ``model``'s state dict (names and bytes, in name order): equal exactly when the
    weights are bit for bit the same, as DDP keeps them on every process."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class CheXpertTrainer(HubStagingMixin, Trainer):
    """``Trainer`` for multi-label CheXpert.

    Extra arguments: ``family`` (for layer decay), ``image_mean``/``image_std``/``num_channels`` (batches arrive
    as ``uint8`` and are normalised on the device), ``sample_weights`` (None: shuffle), ``pos_weight``,
    ``layer_decay`` and ``augmentation`` (``"none"`` or ``"light"``). Every Hub push goes through a staging folder
    (:class:`chexpert_hf.hub.staging.HubStagingMixin`).
    """

    def __init__(
        self,
        *args: Any,
        family: str,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        num_channels: int = 3,
        sample_weights: np.ndarray | None = None,
        pos_weight: Sequence[float] | None = None,
        layer_decay: float = 1.0,
        augmentation: str = "none",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.family = family
        self.image_mean, self.image_std, self.num_channels = list(image_mean), list(image_std), num_channels
        self.sample_weights = sample_weights
        self.pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.layer_decay = layer_decay
        self.augmentation = augmentation
        # our loss is a per-batch mean: the Trainer divides it by the gradient-accumulation steps
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False
        self.label_names = ["labels", "row_index"]
        self._first_bad_step: torch.Tensor | None = None
        self.finite_guard = NonFiniteLossGuard(self)
        self.add_callback(self.finite_guard)
        self.epoch_setter = SamplerEpoch()
        self.add_callback(self.epoch_setter)
        self._augmented = (-1, -1)  # (optimizer step, batch within it) of the last augmented batch

    # --- data ----------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return WeightedEpochSampler(self.sample_weights, seed=seed)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        loader = super().get_train_dataloader()
        self.epoch_setter.samplers = epoch_samplers(loader)
        return loader

    def _next_augmentation_generator(self, device: torch.device) -> torch.Generator:
        step = self.state.global_step
        batch = self._augmented[1] + 1 if self._augmented[0] == step else 0
        self._augmented = (step, batch)
        return augmentation_generator(self.args.seed, self.args.process_index, step, batch, device)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs["pixel_values"]
        if pixels.dtype == torch.uint8:
            pixels = pixels.float()
            if self.augmentation == "light" and self.model.training:
                pixels = light_affine(pixels, self._next_augmentation_generator(pixels.device))
            inputs["pixel_values"] = to_float(pixels, self.image_mean, self.image_std, self.num_channels)
        return inputs

    # --- loss ----------------------------------------------------------------------------------------------
    def _loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(pixel_values=inputs["pixel_values"]).logits
        targets = inputs["labels"]
        if self.pos_weight is not None and self.pos_weight.device != logits.device:
            self.pos_weight = self.pos_weight.to(logits.device)  # once, not a copy every step
        return masked_bce_with_logits(logits, targets, self.pos_weight), logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, logits = self._loss(model, inputs)
        if model.training:
            self._record_finite(loss)
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, logits = self._loss(model, inputs)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), logits.detach().float(), (inputs["labels"], inputs["row_index"])

    # --- non-finite loss -----------------------------------------------------------------------------------
    def _record_finite(self, loss: torch.Tensor) -> None:
        """Remember (on the device, without a sync) the first optimizer step whose loss was not finite."""
        step = self.state.global_step + 1
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        unset = self._first_bad_step == 0
        self._first_bad_step = torch.where(
            bad & unset, torch.full_like(self._first_bad_step, step), self._first_bad_step
        )

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` when a loss was not finite on any process (every process calls this
        at the same steps, so they stop together: a NaN on one rank reaches all weights through the all-reduce)."""
        if self._first_bad_step is None:
            return
        steps = self._first_bad_step.reshape(1)
        if self.args.world_size > 1:
            steps = self.accelerator.gather(steps)
        bad = steps[steps > 0]
        first_bad = int(bad.min().item()) if bad.numel() else 0
        if first_bad:
            last = self.finite_guard.last_checkpoint
            kept = f"the last good checkpoint is {last}" if last else "this run had saved no checkpoint yet"
            raise NonFiniteLossError(
                f"the training loss was not finite (NaN or inf) at step {first_bad}; training stopped before "
                f"saving anything after it; {kept}. Lower learning_rate, check the inputs, or use bf16 instead of fp16."
            )

    # --- loading checkpoints (resume, best model) ---------------------------------------------------------------
    def _load_weights_from(self, folder: str) -> bool:
        """Load a checkpoint's weights into the model through ``from_pretrained``; False when it cannot.

        Transformers 5 saves ViT-family weights under their original (4.x) names, and the Trainer's own loading
        (``load_state_dict`` on the raw file) then silently misses every encoder weight: transformers issues
        #43701 and #48805. ``from_pretrained`` applies the renaming, so the weights go through it and are copied
        in with ``strict=True``. FSDP, DeepSpeed and adapters keep the Trainer's own paths.
        """
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return False
        model = self.full_model()
        if not hasattr(model, "config") or not callable(getattr(type(model), "from_pretrained", None)):
            return False
        loaded, info = type(model).from_pretrained(folder, config=model.config, output_loading_info=True)
        problems = {
            kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        }
        problems = {kind: keys for kind, keys in problems.items() if keys}
        if problems:
            raise ValueError(f"{folder} does not fit the model being trained: {problems}")
        model.load_state_dict(loaded.state_dict(), strict=True)
        logger.info("loaded the weights of %s", folder)
        return True

    def full_model(self) -> nn.Module:
        """The model a checkpoint holds: the trained model, or with cached features (a head-only model, see
        :class:`chexpert_hf.training.feature_cache.FeatureHeadModel`) the full model whose head it trains."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return getattr(model, "full_model", model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """As the Trainer (every checkpoint and the final model pass here, FSDP's gathered state dict too), except
        that a head trained on cached features is saved inside its full model, so every folder loads with
        ``from_pretrained`` like any other; and the weights get the umask's mode, as the files beside them do."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if getattr(model, "full_model", None) is None:
            super()._save(output_dir, state_dict)
        elif self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            model.full_model.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.args.should_save:
            give_new_file_mode(output_dir, "*.safetensors")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if model is not None or not self._load_weights_from(resume_from_checkpoint):  # FSDP passes the wrapped model
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is not None and not _holds_weights(best):
            # Only global rank 0 writes weights: on another node with its own disk the folder holds at most this
            # process's RNG state. Keep the weights; the training job then finds that the processes differ and
            # stops with the remedy (chexpert_hf.training.train.check_same_weights).
            logger.warning(
                "process %d: the best checkpoint %s holds no model weights on this machine's disk",
                self.args.process_index,
                best,
            )
            return
        if best is None or not self._load_weights_from(best):
            super()._load_best_model()
        else:
            logger.info(
                "the final model is the best checkpoint, %s (%s %s)",
                best,
                self.args.metric_for_best_model,
                self.state.best_metric,
            )

    # --- optimizer -----------------------------------------------------------------------------------------
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW over :func:`chexpert_hf.models.freeze.param_groups`: only trainable parameters, no weight decay on
        biases, norms and position tables, and layer-wise learning-rate decay when ``layer_decay`` < 1.

        The groups go to the optimizer highest learning rate first, so the rate the Trainer logs (the first
        group's) is the head's, the recipe's ``learning_rate``.
        """
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
                raise ConfigurationError(
                    "layer-wise parameter groups need FSDP2 (fsdp_version: 2, as in "
                    "accelerate_configs/fsdp.yaml): FSDP1 flattens the parameters they use"
                )
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
            is_class = isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
            if not is_class or special:  # factories (Muon, Dion ...), GaLore, LOMO, layer-wise optimizers
                raise ConfigurationError(
                    f"optim={self.args.optim} builds its own parameter groups, which would drop the freeze policy's "
                    f"groups and layer decay; use an AdamW variant (adamw_torch_fused)"
                )
            if "adamw" not in optimizer_cls.__name__.lower():
                logger.warning("optim=%s is not AdamW; the recipes are tuned for AdamW", self.args.optim)
            groups = param_groups(
                opt_model, self.family, self.args.learning_rate, self.args.weight_decay, self.layer_decay
            )
            groups.sort(key=lambda group: -group["lr"])  # stable: the order is the same on every run
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            trainable = sum(p.numel() for group in groups for p in group["params"])
            total = sum(p.numel() for p in getattr(opt_model, "full_model", opt_model).parameters())
            logger.info(
                "optimizer %s: %d parameter groups, %s trainable / %s frozen parameters (%.2f%%), layer_decay %s",
                optimizer_cls.__name__,
                len(groups),
                f"{trainable:,}",
                f"{total - trainable:,}",
                100 * trainable / max(total, 1),
                self.layer_decay,
            )
        return self.optimizer
