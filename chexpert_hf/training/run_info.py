"""A finished run's accounts: ``run_info.json`` (what it cost) and the facts its model card states.

``chexpert-hf benchmark`` collects ``run_info.json``; the card's facts become a
:class:`chexpert_hf.hub.model_card.CardInfo` here, in training/, because hub/ may not import the training stage.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch
import transformers

from chexpert_hf.hub.model_card import CardInfo
from chexpert_hf.models import FAMILIES, checkpoint_name
from chexpert_hf.training.arguments import Recipe


def hardware(args, threads: int | None) -> str:
    """What the run trained on, for the card: GPU model and count, or the CPU and its threads."""
    if args.device.type == "cuda":
        return f"{args.world_size} × {torch.cuda.get_device_name(args.device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"CPU ({cpu}), {args.world_size} process(es) × {threads or torch.get_num_threads()} thread(s)"


def mixed_precision(args) -> str:
    """``bf16``, ``fp16`` or ``fp32``: the training arguments' mixed precision."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process in MiB and what was measured: CUDA memory allocated by tensors since training
    began, or on the CPU the peak resident set size of the whole process (data preparation included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"  # Linux reports KiB


def variant_label(recipe: Recipe, built) -> str:
    """The variant as a table should name it: ``base``/``large`` for a family's own configuration or checkpoint;
    ``custom`` for a configuration with overrides; the folder name or Hub id of any other checkpoint."""
    if recipe.model.from_scratch:
        return "custom" if recipe.model.config_overrides else built.variant
    if built.source == FAMILIES[recipe.model.family].variants[built.variant].checkpoint:
        return built.variant
    return checkpoint_name(built.source) or built.variant


def collect_run_info(
    recipe: Recipe,
    built,
    summary,
    train_metrics: dict,
    log_history: list[dict],
    threads: int | None,
    extraction_seconds: float | None,
    resumed_from: str | None = None,
) -> dict:
    """What the run cost, for ``run_info.json``. Training images/s leaves out the evaluations inside training; a
    resumed run has none (its time covers only the part after the checkpoint, its history the whole run)."""
    args = recipe.training
    runtime = float(train_metrics.get("train_runtime", 0.0))
    eval_seconds = sum(float(entry.get("eval_runtime", 0.0)) for entry in log_history)
    images = float(train_metrics.get("train_samples_per_second", 0.0)) * runtime
    step_seconds = runtime - eval_seconds
    peak, kind = peak_memory(args.device)
    total = summary.trainable_params + summary.frozen_params
    return {
        "recipe": recipe.name,
        "family": recipe.model.family,
        "variant": variant_label(recipe, built),
        "freeze_policy": recipe.policy.freeze_policy,
        "seed": args.seed,
        "image_size": built.image_size,
        "trainable_parameters": summary.trainable_params,
        "total_parameters": total,
        "trainable_share": summary.trainable_params / total if total else 0.0,
        "train_seconds": runtime,
        "eval_seconds_in_training": eval_seconds,
        "train_images": round(images),
        "train_images_per_second": images / step_seconds if step_seconds > 0 and not resumed_from else None,
        "resumed_from": Path(resumed_from).name if resumed_from else None,
        "feature_extraction_seconds": extraction_seconds,
        "peak_memory_mib": peak,
        "peak_memory_kind": kind,
        "precision": mixed_precision(args),
        "world_size": args.world_size,
        "hardware": hardware(args, threads),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model(source: str) -> str | None:
    """The Hub id the weights started from; None for random weights or a local folder (no local path in a card)."""
    candidate = source.split(" + ")[-1]  # the hybrid built from two checkpoints: its ViT encoder's
    if source == "config" or Path(candidate).exists() or not _HUB_ID.match(candidate):
        return None
    return candidate


def card_info_from_run(
    recipe: Recipe, built, summary, splits, scores: dict, train_seconds: float | None, threads: int | None
) -> CardInfo:
    """The model card's facts for a finished run: the recipe, the model it built, the data and the scores."""
    model_args, data_args, policy, args = recipe.model, recipe.data, recipe.policy, recipe.training
    synthetic = not data_args.data_dir
    if synthetic:
        described = (
            f"synthetic CheXpert from chexpert_hf's generator ({data_args.synthetic_patients:,} training "
            f"and {data_args.synthetic_valid_patients:,} validation patients, seed {data_args.synthetic_seed})"
            f", prepared at {data_args.prepare_image_size} px"
        )
    else:
        described = f"{Path(data_args.data_dir).name}, prepared at {data_args.prepare_image_size} px"
    fraction = data_args.validation_fraction()
    hyperparameters = {
        "optimizer": f"{args.optim.value if hasattr(args.optim, 'value') else args.optim}",
        "learning_rate": args.learning_rate,
        "layer_decay": policy.layer_decay,
        "weight_decay": args.weight_decay,
        "lr_scheduler": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "epochs": args.num_train_epochs,
        "per_device_batch_size": args.per_device_train_batch_size,
        "effective_batch_size": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        "augmentation": data_args.augmentation,
        "precision": mixed_precision(args),
        "seed": args.seed,
    }
    return CardInfo(
        model_name=(args.hub_model_id or Path(args.output_dir).resolve().name).split("/")[-1],
        family=model_args.family,
        variant=built.variant,
        base_model=base_model(built.source),
        freeze_policy=policy.freeze_policy,
        trainable_parameters=summary.trainable_params,
        total_parameters=summary.trainable_params + summary.frozen_params,
        image_size=built.image_size,
        labels=list(splits.validation.label_names),
        uncertainty_policy=policy.uncertainty_policy,
        blank_policy=policy.blank_policy,
        sampling=policy.sampling,
        pos_weight=policy.pos_weight,
        hyperparameters=hyperparameters,
        hardware=hardware(args, threads),
        wall_time_seconds=train_seconds,
        synthetic_data=synthetic,
        dataset_id="chexpert-synthetic" if synthetic else "chexpert",
        dataset_description=described,
        views=data_args.views,
        split_sizes={"train": len(splits.train), "validation": len(splits.validation)},
        evaluated_split="validation" if fraction is None else f"validation (held-out {fraction:g} of patients)",
        eval_level=data_args.eval_level,
        metrics=scores,
        repo_id=args.hub_model_id if args.push_to_hub else None,
        trust_remote_code=model_args.family == "resnet_vit",
    )
