"""The training job, top to bottom: seed, data, model, freeze, trainer, train, evaluate, save, push.

    accelerate launch [--config_file accelerate_configs/X.yaml] recipes/train.py --recipe NAME [--field value ...]
    chexpert-hf train --recipe NAME [--field value ...]          # the same, without accelerate launch

``OUTPUT_DIR`` (``output_dir``, default ``outputs/<recipe>``) receives the model (safetensors, ``config.json``
with ``id2label`` and ``problem_type``), the image processor, ``recipe.yaml``, ``train_results.json``,
``eval_results.json``, ``all_results.json``, ``trainer_state.json`` and the checkpoints.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .configs import ConfigurationError, PolicyArguments, Recipe, parse_recipe
from .data.training import DecodeCollator, load_training_splits, resolve_prepared
from .freeze import apply_freeze_policy
from .metrics import SplitScorer, scores_table
from .models import build_model, input_channels
from .trainer import CheXpertTrainer, NonFiniteLossError, balanced_pos_weight, sample_weights

logger = logging.getLogger("chexpert_hf")


def _setup_logging(recipe: Recipe) -> None:
    level = logging.INFO if recipe.training.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(recipe.training.get_process_log_level())


def _cpu_threads(args) -> int | None:
    """Set the intra-op threads of a CPU run: ``cpu_threads``, else the usable CPUs shared by this machine's
    processes. ``accelerate launch`` without a config file sets OMP_NUM_THREADS=1, a third of the demo's speed."""
    if args.device.type != "cpu":
        return None
    if args.cpu_threads is not None:
        threads = args.cpu_threads
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size) or 1)
        threads = max(1, cpus // max(local_processes, 1))
    torch.set_num_threads(threads)
    return threads


def _resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """``resume_from_checkpoint``: a checkpoint folder, or ``true``/``last`` for the newest one in output_dir."""
    if value is None or value.lower() in ("", "false", "none"):
        return None
    if value.lower() in ("true", "last"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(f"resume_from_checkpoint={value}: no checkpoint-* folder in {output_dir}")
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint: {value} is not a folder")
    return value


def _pos_weight(policy: PolicyArguments, targets: np.ndarray, labels: list[str]) -> list[float] | None:
    if policy.pos_weight == "balanced":
        return balanced_pos_weight(targets).tolist()
    values = policy.pos_weight_values()
    if values is not None and len(values) != len(labels):
        raise ConfigurationError(f"pos_weight has {len(values)} values but the model has {len(labels)} labels: "
                                 f"{labels}")
    return values


def run(recipe: Recipe) -> dict[str, float]:
    """Train and evaluate as ``recipe`` says; returns the final evaluation metrics."""
    model_args, data_args, policy, args = recipe.model, recipe.data, recipe.policy, recipe.training
    _setup_logging(recipe)
    labels = model_args.label_names()

    threads = _cpu_threads(args)
    if threads is not None:
        logger.info("training on the CPU with %d thread(s) per process, %d process(es)", threads, args.world_size)

    resume = _resume_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.do_train else None

    # --- seed ----------------------------------------------------------------------------------------------
    set_seed(args.seed, deterministic=args.full_determinism)

    # --- data ----------------------------------------------------------------------------------------------
    with args.main_process_first(desc="preparing the dataset"):
        prepared = resolve_prepared(
            data_args.data_dir,
            cache_dir=data_args.data_cache_dir,
            image_size=data_args.prepare_image_size,
            synthetic=(data_args.synthetic_patients, data_args.synthetic_valid_patients, data_args.synthetic_seed),
            num_proc=max(1, min(8, os.cpu_count() or 1)),
        )
    splits = load_training_splits(
        prepared,
        labels,
        validation_fraction=data_args.validation_fraction(),
        views=data_args.views,
        uncertainty_policy=policy.uncertainty_policy,
        blank_policy=policy.blank_policy,
        seed=args.seed,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )
    logger.info("data %s: %d training and %d validation images (%s views), labels %s",
                prepared, len(splits.train), len(splits.validation), data_args.views, labels)

    # --- model ---------------------------------------------------------------------------------------------
    built = build_model(
        model_args.family,
        model_name_or_path=model_args.model_name_or_path,
        variant=model_args.variant,
        labels=labels,
        image_size=model_args.image_size,
        from_scratch=model_args.from_scratch,
        config_overrides=model_args.config_overrides,
    )
    logger.info("model %s (%s) from %s at %d px", model_args.family, built.variant, built.source, built.image_size)

    # --- freeze --------------------------------------------------------------------------------------------
    summary = apply_freeze_policy(built.model, model_args.family, policy.freeze_policy)
    logger.info("%s", summary)

    if data_args.decode_cache:
        for split in (splits.train, splits.validation):
            split.decode_all(built.image_size)

    # --- trainer -------------------------------------------------------------------------------------------
    scorer = SplitScorer(splits.validation.raw, splits.validation.study_ids, labels, data_args.eval_level)
    trainer = CheXpertTrainer(
        model=built.model,
        args=args,
        train_dataset=splits.train,
        eval_dataset=splits.validation,
        data_collator=DecodeCollator(built.image_size),
        processing_class=built.processor,
        compute_metrics=scorer,
        family=model_args.family,
        image_mean=built.processor.image_mean,
        image_std=built.processor.image_std,
        num_channels=input_channels(built.model),
        sample_weights=None if policy.sampling == "none" else sample_weights(splits.train.targets, policy.sampling),
        pos_weight=_pos_weight(policy, splits.train.targets, labels),
        layer_decay=policy.layer_decay,
        augmentation=data_args.augmentation,
    )
    if trainer.is_fsdp_enabled and model_args.family == "densenet121":
        raise ConfigurationError("FSDP cannot wrap DenseNet-121 (timm's model has no block that FSDP can shard); "
                                 "train it with DDP: accelerate_configs/multi_gpu.yaml")
    if trainer.is_world_process_zero():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "recipe.yaml").write_text(recipe.to_yaml())

    # --- train ---------------------------------------------------------------------------------------------
    if args.do_train:
        if resume:
            logger.info("resuming from %s", resume)
            trainer.finite_guard.last_checkpoint = resume
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()

    # --- evaluate ------------------------------------------------------------------------------------------
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero() and scorer.last_scores is not None:
        print(scores_table(scorer.last_scores), flush=True)

    # --- save ----------------------------------------------------------------------------------------------
    if args.do_train:
        trainer.save_model()  # the model (safetensors, config.json) and the image processor

    # --- push ----------------------------------------------------------------------------------------------
    if args.push_to_hub:
        trainer.push_to_hub()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the recipe and run it; a bad recipe or data folder ends with a one-line error and status 2."""
    from .data.tables import CheXpertFormatError

    try:
        recipe = parse_recipe(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"chexpert-hf train: error: {error}", file=sys.stderr)
        return 2
    try:
        run(recipe)
    except (ConfigurationError, FileNotFoundError, CheXpertFormatError, NonFiniteLossError) as error:
        print(f"chexpert-hf train: error: {error}", file=sys.stderr)
        return 2 if not isinstance(error, NonFiniteLossError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
