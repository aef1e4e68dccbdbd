"""The Trainer subclass: weighted sampling, masked BCE, AdamW with layer decay, on-device preprocessing.

Weighted sampling (``sampling: inverse_frequency``)
    For label ``j`` let ``p_j`` be the mean training target over the rows where it is not masked (the positive
    rate; soft targets count by their value). A row's weight is the mean over its unmasked labels of

        ``y_ij / (2 p_j) + (1 - y_ij) / (2 (1 - p_j))``

    so for every label, positives and negatives carry the same total weight (N/2 each) and a row that is positive
    for rare findings is drawn more often. ``sqrt_inverse_frequency`` uses the square root of that weight (a
    softer rebalancing). Weights are scaled to mean 1 and drawn with replacement, N draws per epoch.

    Every process draws the same sequence, seeded by (seed, epoch); Accelerate then deals the batches out to
    the processes, so one epoch over N processes covers exactly the draws of one process.

Loss
    Binary cross-entropy with logits over the entries whose target is not NaN (the uncertainty policy's
    ``u_ignore`` and ``blank_policy: mask`` produce NaN), averaged over those entries; an optional ``pos_weight``
    per label. The multi-label loss built into Transformers models does not mask, so it is never used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy
from transformers.utils import PushInProgress, hf_api

from chexpert_hf.data.transforms import to_float
from chexpert_hf.hub.push import check_hub_access, stage_checkpoint_folder, stage_model_folder, trainer_repo_id
from chexpert_hf.models.freeze import param_groups
from chexpert_hf.training.arguments import ConfigurationError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


def positive_rates(targets: np.ndarray) -> np.ndarray:
    """Per-label mean target over the unmasked rows (NaN = masked), clipped away from 0 and 1."""
    targets = np.asarray(targets, dtype=np.float64)
    counted = (~np.isnan(targets)).sum(axis=0)
    rates = np.nansum(targets, axis=0) / np.maximum(counted, 1)
    floor = 1.0 / max(len(targets), 2)
    return np.clip(rates, floor, 1.0 - floor)


def sample_weights(targets: np.ndarray, method: str) -> np.ndarray:
    """Per-row sampling weights (mean 1) for multi-label ``targets``; see the module doc for the formula."""
    if method not in ("inverse_frequency", "sqrt_inverse_frequency"):
        raise ValueError(f"unknown sampling {method!r}; choose inverse_frequency or sqrt_inverse_frequency")
    targets = np.asarray(targets, dtype=np.float64)
    rates = positive_rates(targets)
    per_entry = targets / (2 * rates) + (1 - targets) / (2 * (1 - rates))
    known = ~np.isnan(per_entry)
    counts = known.sum(axis=1)
    weights = np.where(counts > 0, np.nansum(per_entry, axis=1) / np.maximum(counts, 1), 1.0)
    if method == "sqrt_inverse_frequency":
        weights = np.sqrt(weights)
    return weights / weights.mean()


class WeightedEpochSampler(torch.utils.data.Sampler[int]):
    """``num_samples`` indices drawn with replacement by ``weights``, the same on every process for one epoch."""

    def __init__(self, weights: Sequence[float], num_samples: int | None = None, seed: int = 0):
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if self.weights.ndim != 1 or not len(self.weights) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be a non-empty 1-D array of non-negative numbers, not all 0")
        self.num_samples = len(self.weights) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.draws(self.epoch))

    def __len__(self) -> int:
        return self.num_samples


def _epoch_samplers(loader: Any) -> list[Any]:
    """The samplers with ``set_epoch`` inside a (prepared) training dataloader, however Accelerate wrapped them."""
    found, stack, seen = [], [loader], set()
    while stack:
        item = stack.pop()
        for name in ("batch_sampler", "sampler"):
            child = getattr(item, name, None)
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            if hasattr(child, "set_epoch"):
                found.append(child)
            stack.append(child)
    return found


class SamplerEpoch(TrainerCallback):
    """Sets the training samplers' epoch from the training state at the start of every epoch.

    Transformers calls ``set_epoch`` on the dataloader, but on a run resumed mid-epoch under several processes the
    dataloader is Accelerate's batch-skipping copy, whose ``set_epoch`` does not reach a sampler inside its batch
    sampler shard: the resumed epoch would replay epoch 0's draws. ``state.epoch`` is the resumed checkpoint's
    (e.g. 2.5 for half of the third epoch) or, at an epoch's start, exactly the epochs completed."""

    def __init__(self):
        self.samplers: list[Any] = []

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        epoch = math.floor((state.epoch or 0.0) + 1e-6)
        for sampler in self.samplers:
            sampler.set_epoch(epoch)


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy over the entries of ``targets`` that are not NaN (0 when all are masked)."""
    known = ~torch.isnan(targets)
    safe_targets = torch.where(known, targets, torch.zeros_like(targets))
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), safe_targets.float(), pos_weight=pos_weight, reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def balanced_pos_weight(targets: np.ndarray) -> np.ndarray:
    """Negatives over positives per label (unmasked entries; soft targets count by value)."""
    rates = positive_rates(targets)
    return (1 - rates) / rates


# ---------------------------------------------------------------------------------------------------------------
# Augmentation (on the device, a batch at a time; never a flip: laterality matters on a radiograph)
# ---------------------------------------------------------------------------------------------------------------

LIGHT_AUGMENTATION = {"degrees": 7.0, "scale": (0.95, 1.05), "translate": 0.04}


def light_affine(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A small random rotation, scale and shift per image of a float ``(B, C, H, W)`` batch (zeros outside),
    drawn from ``generator`` (on the batch's device; None: torch's default generator)."""
    batch = pixels.shape[0]
    device = pixels.device
    angle = (torch.empty(batch, device=device).uniform_(-1, 1, generator=generator)
             * math.radians(LIGHT_AUGMENTATION["degrees"]))
    low, high = LIGHT_AUGMENTATION["scale"]
    scale = torch.empty(batch, device=device).uniform_(low, high, generator=generator)
    shift = (torch.empty(batch, 2, device=device).uniform_(-1, 1, generator=generator)
             * 2 * LIGHT_AUGMENTATION["translate"])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augmentation_generator(seed: int, process: int, step: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator for one training batch's augmentation: seeded by (seed, process, optimizer step, batch within
    the step), so every process draws its own transforms (every process is seeded alike, so torch's default
    generator would give each the same) and a run resumed from a checkpoint draws what the uninterrupted run did."""
    state = np.random.SeedSequence([seed, process, step, batch]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


# ---------------------------------------------------------------------------------------------------------------
# Non-finite loss
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------------------------------------------


def _holds_weights(folder: str) -> bool:
    return any(Path(folder, name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                          "pytorch_model.bin", "pytorch_model.bin.index.json"))


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every tensor of ``model``'s state dict (names and bytes, in name order): equal exactly when the
    weights are bit for bit the same, as DDP keeps them on every process."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class CheXpertTrainer(Trainer):
    """``Trainer`` for multi-label CheXpert.

    Extra arguments: ``family`` (for layer decay), ``image_mean``/``image_std``/``num_channels`` (batches arrive
    as ``uint8`` and are normalised on the device), ``sample_weights`` (None: shuffle), ``pos_weight``,
    ``layer_decay`` and ``augmentation`` (``"none"`` or ``"light"``).
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
        self.epoch_setter.samplers = _epoch_samplers(loader)
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
        self._first_bad_step = torch.where(bad & unset, torch.full_like(self._first_bad_step, step),
                                           self._first_bad_step)

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
        problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys",
                                                                     "mismatched_keys")}
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
        """As the Trainer, except that a head trained on cached features is saved inside its full model, so every
        checkpoint and the final folder load with ``from_pretrained`` like any other."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if getattr(model, "full_model", None) is None:
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model.full_model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if model is not None or not self._load_weights_from(resume_from_checkpoint):  # FSDP passes the wrapped model
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is not None and not _holds_weights(best):
            # Only global rank 0 writes weights: on another node with its own disk the folder holds at most this
            # process's RNG state. Keep the weights; the training job then finds that the processes differ and
            # stops with the remedy (chexpert_hf.training.train.check_same_weights).
            logger.warning("process %d: the best checkpoint %s holds no model weights on this machine's disk",
                           self.args.process_index, best)
            return
        if best is None or not self._load_weights_from(best):
            super()._load_best_model()
        else:
            logger.info("the final model is the best checkpoint, %s (%s %s)", best, self.args.metric_for_best_model,
                        self.state.best_metric)

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
                raise ConfigurationError("layer-wise parameter groups need FSDP2 (fsdp_version: 2, as in "
                                         "accelerate_configs/fsdp.yaml): FSDP1 flattens the parameters they use")
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
                optimizer_cls.__name__, len(groups), f"{trainable:,}", f"{total - trainable:,}",
                100 * trainable / max(total, 1), self.layer_decay,
            )
        return self.optimizer

    # --- the Hub: every push goes through an allowlisted, sanitized, audited staging folder -------------------
    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Check for a token that can push (and a reachable Hub) before anything else, then create the repo."""
        if self.is_world_process_zero():
            check_hub_access(token if token is not None else self.args.hub_token,
                             repo_id=trainer_repo_id(self.args.hub_model_id, self.args.output_dir))
        super().init_hf_repo(token=token, private=private)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the training job writes our own card, and the Trainer's generic one must never replace it."""

    def _staging_folder(self, name: str) -> str:
        """A new folder to stage one upload in, under a temporary folder next to the outputs (same disk)."""
        root = getattr(self, "_hub_staging_root", None)
        if root is None or not os.path.isdir(root):
            os.makedirs(self.args.output_dir, exist_ok=True)
            root = self._hub_staging_root = tempfile.mkdtemp(prefix=".hub-staging-", dir=self.args.output_dir)
        return tempfile.mkdtemp(prefix=f"{name}-", dir=root)

    def _remove_staging_root(self) -> None:
        root = getattr(self, "_hub_staging_root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
            self._hub_staging_root = None

    def _upload_staged(self, folder: str, commit_message: str, token: str | None, revision: str | None,
                       blocking: bool, path_in_repo: str | None = None):
        """Upload ``folder``; it is removed once its upload has finished (at once when blocking), never before."""
        try:
            result = hf_api().upload_folder(repo_id=self.hub_model_id, folder_path=folder, path_in_repo=path_in_repo,
                                            commit_message=commit_message, token=token, run_as_future=not blocking,
                                            revision=revision)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if blocking:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            result.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
        return result

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any):
        """Upload the staged output folder (:func:`chexpert_hf.hub.push.stage_model_folder`), not the folder itself:
        never ``training_args.bin``, TensorBoard logs, predictions or checkpoints, and never without the card."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:  # push_to_hub=False in the arguments
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        revision = revision if revision is not None else self.args.hub_revision
        self._finish_current_push()
        staging = self._staging_folder("model")
        try:
            stage_model_folder(self.args.output_dir, staging, token=token)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        result = self._upload_staged(staging, commit_message, token, revision, blocking)
        if blocking:
            self._finish_current_push()  # nothing is uploading now: the staging root goes too
        return result

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """As the base class (in the background, one push at a time unless ``hub_always_push``), but uploading staged
        copies: the checkpoint's model with the card, metrics and recipe that exist so far, and for ``checkpoint`` /
        ``all_checkpoints`` the checkpoint's resume files (never ``training_args.bin``)."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.args.save_strategy == SaveStrategy.STEPS:
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch)}"
        token, revision = self.args.hub_token, self.args.hub_revision

        model_staging = self._staging_folder("model")
        checkpoint_staging = None
        try:
            stage_model_folder(self.args.output_dir, model_staging, token=token, model_dir=checkpoint_folder,
                               require_card=False)  # the card is written after training
            if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
                checkpoint_staging = self._staging_folder("checkpoint")
                stage_checkpoint_folder(checkpoint_folder, checkpoint_staging, token=token)
        except BaseException:
            for folder in (model_staging, checkpoint_staging):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            raise
        jobs = [self._upload_staged(model_staging, commit_message, token, revision, blocking=False)]
        if checkpoint_staging is not None:
            path_in_repo = ("last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT
                            else Path(checkpoint_folder).name)
            jobs.append(self._upload_staged(checkpoint_staging, commit_message + ", checkpoint", token, revision,
                                            blocking=False, path_in_repo=path_in_repo))
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def _finish_current_push(self) -> None:
        """Wait for the uploads in progress, then remove the staging folders (each goes when its upload ends)."""
        super()._finish_current_push()
        if getattr(self, "push_in_progress", None) is None or self.push_in_progress.is_done():
            self._remove_staging_root()
