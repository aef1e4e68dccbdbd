"""The training job, top to bottom: seed, data, model, freeze, trainer, train, evaluate, report and card, save and
push; :func:`run` is that recipe, one short call per stage, and the stages follow it in the same order.

    accelerate launch [--config_file accelerate_configs/X.yaml] recipes/train.py --recipe NAME [--field value ...]
    chexpert-hf train --recipe NAME [--field value ...]          # the same, without accelerate launch

``OUTPUT_DIR`` (``output_dir``, default ``outputs/<recipe>``) receives the model (safetensors, ``config.json``
with ``id2label`` and ``problem_type``), the image processor, ``recipe.yaml``, ``train_results.json``,
``eval_results.json``, ``all_results.json``, ``trainer_state.json``, the checkpoints, the final validation
report (``metrics.json`` with 95% bootstrap intervals, ``metrics.md``, ``roc.png``; every validation image's
probabilities in ``predictions.csv`` and its labels in ``validation_labels.csv``, for ``chexpert-hf compare``), the
model card (``README.md``) and, last, ``run_info.json``: what the run cost (trainable share, training time and images/s
without the evaluations, peak memory, hardware), which ``chexpert-hf benchmark`` collects; a run without it did not
finish.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from chexpert_hf.data.loading import DecodeCollator, load_training_splits, resolve_prepared
from chexpert_hf.evaluation.clinical import add_clinical_scores, subgroups_for
from chexpert_hf.evaluation.evaluate import groundtruth_frame, predictions_frame, prepared_meta, write_predictions_csv
from chexpert_hf.evaluation.metrics import BOOTSTRAP_RESAMPLES, SplitScorer
from chexpert_hf.evaluation.reports import scores_table, write_reports
from chexpert_hf.evaluation.subgroups import scored_groups, write_subgroups
from chexpert_hf.evaluation.thresholds import (
    saved_thresholds,
    store_thresholds,
    threshold_split_name,
    thresholds_with_source,
)
from chexpert_hf.hub.model_card import write_model_card
from chexpert_hf.models import build_model, input_channels
from chexpert_hf.models.freeze import apply_freeze_policy
from chexpert_hf.outputs import (
    BENCHMARK_RUN,
    CALIBRATION_PNG,
    METRICS_JSON,
    METRICS_MD,
    MODEL_CARD,
    MODEL_CONFIG,
    PREDICTIONS_CSV,
    PROCESSOR_FILES,
    PYTORCH_WEIGHTS,
    RECIPE_YAML,
    RESULTS_JSONS,
    ROC_PNG,
    RUN_INFO,
    SAFE_WEIGHTS,
    SUBGROUPS_JSON,
    SUBGROUPS_MD,
    SUBGROUPS_PNG,
    TRAINER_STATE,
    TRAINING_ARGS_BIN,
    VALIDATION_LABELS_CSV,
)
from chexpert_hf.training.arguments import ConfigurationError, PolicyArguments, Recipe, parse_recipe
from chexpert_hf.training.distributed import end_process_group_at_exit
from chexpert_hf.training.feature_cache import FeatureHeadModel, attach_cached_features, default_root, feature_cache
from chexpert_hf.training.fsdp import apply_fsdp_wrap_policy
from chexpert_hf.training.losses import balanced_pos_weight
from chexpert_hf.training.nonfinite import NonFiniteLossError
from chexpert_hf.training.run_info import card_info_from_run, collect_run_info, mixed_precision
from chexpert_hf.training.sampling import sample_weights
from chexpert_hf.training.trainer import CheXpertTrainer, weights_fingerprint
from chexpert_hf.utils import write_text

logger = logging.getLogger("chexpert_hf")


def run(recipe: Recipe) -> dict[str, float]:
    """Train and evaluate as ``recipe`` says; returns the final evaluation metrics."""
    model_args, data_args, policy, args = recipe.model, recipe.data, recipe.policy, recipe.training
    # --- setup: logging, CPU threads, the checkpoint to resume, Hub access, the output folder ------------------
    _setup_logging(recipe)
    labels = model_args.label_names()
    threads = _cpu_threads(args)
    resume = _resume_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.do_train else None
    if args.push_to_hub:  # fail now, not after hours of training: the token must be able to write to the repo
        _check_push_access(args)
    if not resume:
        _claim_output_dir(args)

    # --- seed ----------------------------------------------------------------------------------------------
    set_seed(args.seed, deterministic=args.full_determinism)

    # --- data ----------------------------------------------------------------------------------------------
    prepared, splits = _load_data(recipe, labels)

    # --- model ---------------------------------------------------------------------------------------------
    built = _build_model(recipe, labels)

    # --- freeze --------------------------------------------------------------------------------------------
    summary = apply_freeze_policy(built.model, model_args.family, policy.freeze_policy)
    logger.info("%s", summary)
    _check_image_caches(recipe, built, splits)

    # --- trainer -------------------------------------------------------------------------------------------
    scorer = SplitScorer(splits.validation.raw, splits.validation.study_ids, labels, data_args.eval_level)
    trainer = _build_trainer(recipe, built, splits, scorer, labels)
    extraction_seconds = _cache_features(recipe, built, splits, prepared, trainer) if data_args.cache_features else None
    if trainer.is_world_process_zero():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / RECIPE_YAML).write_text(recipe.to_yaml())

    # --- train ---------------------------------------------------------------------------------------------
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    train_metrics, training_history = _train(trainer, resume) if args.do_train else ({}, [])

    # --- evaluate (with bootstrap confidence intervals) ------------------------------------------------------
    metrics, scores = _evaluate(trainer, scorer)
    if args.do_train and scores is not None:
        _choose_thresholds(recipe, trainer, scorer, labels)

    # --- report and card (first: a save with push_to_hub publishes the card) -------------------------------
    if trainer.is_world_process_zero() and scores is not None:
        subgroups = _write_reports(recipe, built, trainer, scorer, scores, labels, splits.validation)
        if args.do_train:
            info = card_info_from_run(
                recipe, built, summary, splits, scores, train_metrics.get("train_runtime"), threads
            )
            info.subgroups = subgroups
            write_model_card(args.output_dir, info)

    # --- save and push ---------------------------------------------------------------------------------------
    # The model (safetensors, config.json) and the image processor. With push_to_hub, Trainer.save_model also
    # publishes the folder (staged: see chexpert_hf.hub.staging), which is why the card is written first.
    if args.do_train:
        trainer.save_model()
        if trainer.is_world_process_zero():
            info = collect_run_info(
                recipe, built, summary, train_metrics, training_history, threads, extraction_seconds, resume
            )
            write_text(Path(args.output_dir) / RUN_INFO, json.dumps(info, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# The stages, in run()'s order
# ---------------------------------------------------------------------------------------------------------------


def _check_push_access(args) -> None:
    """Stop before training when the token cannot write to the repository the run will push to."""
    from chexpert_hf.hub.push import check_hub_access, trainer_repo_id

    repo_id = trainer_repo_id(args.hub_model_id, args.output_dir)
    user = check_hub_access(args.hub_token, repo_id=repo_id)
    logger.info(
        "will push to the Hub as %s: %s (hub_strategy %s)",
        user,
        repo_id,
        getattr(args.hub_strategy, "value", args.hub_strategy),
    )


def _load_data(recipe: Recipe, labels: list[str]):
    """The prepared dataset's folder and the training and validation splits the recipe asks for."""
    data_args, policy, args = recipe.data, recipe.policy, recipe.training
    # Every process resolves the data: the first to lock the cache entry prepares it, the others wait on the lock
    # (a collective barrier would give up after ddp_timeout while a raw CheXpert tree is prepared).
    prepared = resolve_prepared(
        data_args.data_dir,
        cache_dir=data_args.data_cache_dir,
        image_size=data_args.prepare_image_size,
        synthetic=(data_args.synthetic_patients, data_args.synthetic_valid_patients, data_args.synthetic_seed),
        num_proc=data_args.prepare_num_proc,
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
    logger.info(
        "data %s: %d training and %d validation images (%s views), labels %s",
        prepared,
        len(splits.train),
        len(splits.validation),
        data_args.views,
        labels,
    )
    return prepared, splits


def _build_model(recipe: Recipe, labels: list[str]):
    model_args = recipe.model
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
    return built


def _check_image_caches(recipe: Recipe, built, splits) -> None:
    """``decode_cache``: decode every image now (when this machine's memory holds them); ``cache_features``:
    refuse the settings it cannot honour. Both need the built model (its image size, its trainable part)."""
    data_args, policy, args = recipe.data, recipe.policy, recipe.training
    if data_args.decode_cache:
        check_decode_cache_memory([len(splits.train), len(splits.validation)], built.image_size, _local_processes(args))
        for split in (splits.train, splits.validation):
            split.decode_all(built.image_size)

    if data_args.cache_features:
        if policy.freeze_policy != "head":
            raise ConfigurationError(
                f"cache_features needs freeze_policy: head (the features of a backbone that "
                f"trains change every step); this recipe has {policy.freeze_policy!r}"
            )
        if data_args.augmentation != "none":
            logger.warning(
                "augmentation %r does not apply with cache_features: the features are computed once, "
                "from unaugmented images",
                data_args.augmentation,
            )
        if args.gradient_checkpointing:
            raise ConfigurationError(
                "gradient_checkpointing has nothing to save when only a head trains on cached features: turn it off"
            )


def _build_trainer(recipe: Recipe, built, splits, scorer: SplitScorer, labels: list[str]) -> CheXpertTrainer:
    model_args, data_args, policy, args = recipe.model, recipe.data, recipe.policy, recipe.training
    trainer = CheXpertTrainer(
        model=FeatureHeadModel(built.model) if data_args.cache_features else built.model,
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
    # FSDP shards exactly the family's transformer block (the registry says which; DenseNet is refused)
    apply_fsdp_wrap_policy(trainer.accelerator, model_args.family)
    return trainer


def _train(trainer: CheXpertTrainer, resume: str | None) -> tuple[dict, list[dict]]:
    """Train (from ``resume`` when given); returns the training metrics and the log history before the final
    evaluation adds its own entry."""
    if resume:
        logger.info("resuming from %s", resume)
        trainer.finite_guard.last_checkpoint = resume
    result = trainer.train(resume_from_checkpoint=resume)
    train_metrics, training_history = dict(result.metrics), list(trainer.state.log_history)
    check_same_weights(trainer)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return train_metrics, training_history


def _evaluate(trainer: CheXpertTrainer, scorer: SplitScorer) -> tuple[dict[str, float], dict | None]:
    """The final evaluation, with bootstrap intervals; returns its metrics and the scorer's scores (printed)."""
    scorer.n_bootstrap, scorer.seed = BOOTSTRAP_RESAMPLES, trainer.args.seed
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    scores = scorer.last_scores
    if trainer.is_world_process_zero() and scores is not None:
        print(scores_table(scores), flush=True)
    return metrics, scores


def _choose_thresholds(recipe: Recipe, trainer: CheXpertTrainer, scorer: SplitScorer, labels: list[str]) -> None:
    """A decision threshold per label, chosen by ``threshold_rule`` on the validation rows just scored (studies at
    study level), kept in the model's config so that ``save_pretrained`` writes it into config.json. Every process
    scored the same gathered rows, so every process holds the same thresholds."""
    data_args = recipe.data
    split = threshold_split_name(data_args.validation_split)
    thresholds, source = thresholds_with_source(
        *scorer.last_scored, labels, data_args.threshold_rule, split, data_args.eval_level
    )
    store_thresholds(trainer.model.config, thresholds, source)
    without = [label for label in labels if label not in thresholds]
    if without and trainer.is_world_process_zero():
        logger.warning("no decision threshold for %s: one class only in the validation split", ", ".join(without))


def _write_reports(
    recipe: Recipe, built, trainer: CheXpertTrainer, scorer: SplitScorer, scores: dict, labels: list[str], validation
) -> dict | None:
    """``metrics.json``, ``metrics.md``, ``roc.png``, with the operating points at the thresholds just chosen and
    calibration (:mod:`chexpert_hf.evaluation.clinical`; ``scores`` gains them, for the card);
    ``subgroups.json``/``.md``/``.png`` where the split has sex, age and views (returned, for the card); and every
    validation image's probabilities (``predictions.csv``) with its labels (``validation_labels.csv``), so that
    ``chexpert-hf compare`` can test two runs on the same studies later."""
    model_args, data_args = recipe.model, recipe.data
    output = Path(recipe.training.output_dir)
    paths = validation.dataset["path"][:]
    write_predictions_csv(output / PREDICTIONS_CSV, predictions_frame(paths, scorer.last_probabilities, labels))
    write_predictions_csv(output / VALIDATION_LABELS_CSV, groundtruth_frame(paths, validation.raw, labels))
    probabilities, targets = scorer.last_scored
    thresholds, source = saved_thresholds(trainer.model.config)
    split = threshold_split_name(data_args.validation_split)
    add_clinical_scores(
        scores,
        probabilities,
        targets,
        labels,
        evaluated_split=split,
        evaluated_level=data_args.eval_level,
        thresholds=thresholds,
        threshold_source=source,
    )
    per_image = data_args.eval_level == "image"
    keys, groups = scored_groups(validation.study_ids, prepared_meta(validation.dataset), per_image)
    subgroups = subgroups_for(
        probabilities,
        targets,
        labels,
        groups,
        None,
        keys=keys,
        thresholds=thresholds,
        unit=data_args.eval_level,
        n_bootstrap=BOOTSTRAP_RESAMPLES,
        seed=recipe.training.seed,
    )
    title = f"CheXpert validation: {recipe.name}"
    if subgroups is not None:
        write_subgroups(output, subgroups, f"Subgroups: {title}")
    write_reports(
        recipe.training.output_dir,
        scores,
        *scorer.last_scored,
        labels,
        title=title,
        details=[
            f"model: {model_args.family} ({built.variant}), freeze policy {recipe.policy.freeze_policy}",
            f"validation: {data_args.validation_split}, {data_args.views} views",
        ],
        extra={"split": "validation", "level": data_args.eval_level},
    )
    return subgroups


# ---------------------------------------------------------------------------------------------------------------
# What the stages use
# ---------------------------------------------------------------------------------------------------------------


def _setup_logging(recipe: Recipe) -> None:
    level = logging.INFO if recipe.training.should_log else logging.WARNING
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(recipe.training.get_process_log_level())


def _local_processes(args) -> int:
    """How many processes of this run share this machine."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size) or 1))


def _cpu_threads(args) -> int | None:
    """Set the intra-op threads of a CPU run: ``cpu_threads``, else the usable CPUs shared by this machine's
    processes. ``accelerate launch`` without a config file sets OMP_NUM_THREADS=1, a third of the demo's speed."""
    if args.device.type != "cpu":
        return None
    if args.cpu_threads is not None:
        threads = args.cpu_threads
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cpus // _local_processes(args))
    torch.set_num_threads(threads)
    logger.info("training on the CPU with %d thread(s) per process, %d process(es)", threads, args.world_size)
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


def check_decode_cache_memory(
    rows: Sequence[int], image_size: int, processes: int, available: int | None = None
) -> int:
    """The bytes ``decode_cache`` will hold in each process (one ``uint8`` channel per image); ConfigurationError
    when this machine's processes together would need more than its available memory. Returns the estimate."""
    per_process = sum(rows) * image_size * image_size
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    if per_process * processes > available:
        raise ConfigurationError(
            f"decode_cache would hold {sum(rows):,} images at {image_size} px: {per_process / 1e9:.1f} GB in each of "
            f"this machine's {processes} process(es), {per_process * processes / 1e9:.1f} GB in all, but only "
            f"{available / 1e9:.1f} GB of memory is available; turn decode_cache off (images are then decoded a "
            f"batch at a time) or use fewer processes per machine"
        )
    return per_process


RUN_MARKERS = (SAFE_WEIGHTS, PYTORCH_WEIGHTS, TRAINER_STATE, RUN_INFO, METRICS_JSON)
RUN_FILES = (
    *RUN_MARKERS,
    MODEL_CONFIG,
    PROCESSOR_FILES[0],
    RECIPE_YAML,
    MODEL_CARD,
    TRAINING_ARGS_BIN,
    *RESULTS_JSONS,
    METRICS_MD,
    ROC_PNG,
    CALIBRATION_PNG,
    SUBGROUPS_JSON,
    SUBGROUPS_MD,
    SUBGROUPS_PNG,
    PREDICTIONS_CSV,
    VALIDATION_LABELS_CSV,
    BENCHMARK_RUN,
)


def _earlier_run(output_dir: Path) -> list[str]:
    """What in ``output_dir`` belongs to an earlier run: its checkpoints and the files a run leaves."""
    if not output_dir.is_dir():
        return []
    checkpoints = sorted(path.name for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir())
    return checkpoints + [name for name in RUN_MARKERS if (output_dir / name).exists()]


def _claim_output_dir(args) -> None:
    """Refuse to train over an earlier run unless ``overwrite_output_dir`` says so; then its files go first (by
    the process that saves), so the folder never mixes the old model with new checkpoints."""
    output_dir = Path(args.output_dir)
    found = _earlier_run(output_dir)
    if not found:
        return
    if not args.overwrite_output_dir:
        listed = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ConfigurationError(
            f"output_dir {output_dir} already holds a run ({listed}): continue it with --resume_from_checkpoint "
            f"last, replace it with --overwrite_output_dir true, or choose another --output_dir"
        )
    if args.should_save:
        logger.warning("overwrite_output_dir: removing the earlier run in %s (%s)", output_dir, ", ".join(found))
        for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            if path.is_dir():
                shutil.rmtree(path)
        for name in (*RUN_FILES, "runs"):
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)


def check_same_weights(trainer: CheXpertTrainer) -> None:
    """Stop the run (every process, with one message) when its processes do not hold the same model.

    Only global rank 0 writes checkpoints, and Transformers marks a best checkpoint only where its folder exists:
    with ``load_best_model_at_end`` and an output_dir on each node's own disk, the first node would load the best
    weights and the others keep the last ones, and the final evaluation would gather from both. Under FSDP each
    process holds other shards, so only the best checkpoints are compared."""
    if trainer.args.world_size <= 1:
        return
    from accelerate.utils import gather_object

    fingerprint = None if trainer.is_fsdp_enabled else weights_fingerprint(trainer.full_model())
    best = trainer.state.best_model_checkpoint
    seen = gather_object([(trainer.args.process_index, Path(best).name if best else None, fingerprint)])
    bests = {best for _, best, _ in seen}
    fingerprints = {value for _, _, value in seen}
    if len(bests) == 1 and len(fingerprints) == 1:
        return
    differing = [index for index, best, value in seen if (best, value) != seen[0][1:]]
    best = seen[0][1]
    raise ConfigurationError(
        f"after training, process(es) {', '.join(map(str, differing))} hold other weights than process 0"
        + (f" (the best checkpoint {best} is on process 0's disk only)" if best and len(bests) > 1 else "")
        + ": only global rank 0 writes checkpoints, so every node must see them. Put output_dir on storage all "
        "nodes share, or set save_on_each_node: true (see accelerate_configs/multi_node.yaml); the final "
        "evaluation and save were skipped"
    )


def _pos_weight(policy: PolicyArguments, targets: np.ndarray, labels: list[str]) -> list[float] | None:
    if policy.pos_weight == "balanced":
        return balanced_pos_weight(targets).tolist()
    values = policy.pos_weight_values()
    if values is not None and len(values) != len(labels):
        raise ConfigurationError(
            f"pos_weight has {len(values)} values but the model has {len(labels)} labels: {labels}"
        )
    return values


def _cache_features(recipe: Recipe, built, splits, prepared: Path, trainer: CheXpertTrainer) -> float:
    """Give the training and validation sets the frozen backbone's features (from the cache, or computed now by the
    main process and stored); returns the seconds this process spent extracting."""
    data_args, args = recipe.data, recipe.training
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        raise ConfigurationError(
            "cache_features trains a head of a few thousand weights: run it with DDP or one "
            "device (accelerate_configs/single_gpu.yaml), not FSDP or DeepSpeed"
        )
    precision = mixed_precision(args)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model = built.model.to(args.device)
    cache = feature_cache(
        model,
        recipe.model.family,
        built.source,
        built.image_size,
        built.processor.image_mean,
        built.processor.image_std,
        precision,
        data_args.feature_cache_dir or default_root(prepared),
        prepared=prepared,
    )
    # every process asks; the first to lock a file extracts it, the others wait on the lock (no ddp_timeout)
    result = attach_cached_features(
        model,
        {"train": splits.train, "validation": splits.validation},
        cache,
        image_size=built.image_size,
        mean=built.processor.image_mean,
        std=built.processor.image_std,
        device=args.device,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
        autocast_dtype=autocast,
    )
    # the backbone is not used again: off the accelerator (peak memory is the head's), the head back on it
    built.model.to("cpu")
    trainer.model.to(args.device)
    logger.info(
        "cached features in %s: %s%s",
        result.folder,
        f"extracted {', '.join(result.extracted)} in {result.seconds:.1f} s" if result.extracted else "",
        ("; " if result.extracted and result.reused else "")
        + (f"reused {', '.join(result.reused)}" if result.reused else ""),
    )
    return result.seconds


def _how_to_resume(output_dir: str) -> str:
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is None:
        return f"No checkpoint was saved in {output_dir} yet: run the same command again to start over."
    return (
        f"The newest checkpoint is {last}: add --resume_from_checkpoint last to the same command to continue from it."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the recipe and run it; a bad recipe or data folder ends with a one-line error and status 2."""
    from chexpert_hf.data.chexpert_csv import CheXpertFormatError
    from chexpert_hf.hub.push import HubAccessError, PublishError

    try:
        recipe = parse_recipe(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"chexpert-hf train: error: {error}", file=sys.stderr)
        return 2
    try:
        run(recipe)
        end_process_group_at_exit()
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:  # one line for the whole run, not one per process
            print(f"chexpert-hf train: interrupted. {_how_to_resume(recipe.training.output_dir)}", file=sys.stderr)
        return 130
    except (
        ConfigurationError,
        FileNotFoundError,
        CheXpertFormatError,
        NonFiniteLossError,
        HubAccessError,
        PublishError,
    ) as error:
        print(f"chexpert-hf train: error: {error}", file=sys.stderr)
        if isinstance(error, NonFiniteLossError):  # every process stopped at the same check
            end_process_group_at_exit()
            return 1
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
