"""The names of the files a command leaves in its output folder, in one place.

Writers, readers (the benchmark, the publishing allowlist) and tests name a file through these constants, so a
rename cannot leave one of them looking for the old name.
"""

# --- evaluation (chexpert_hf.evaluation.reports / evaluate), also the training run's final evaluation ------------
METRICS_JSON = "metrics.json"  # the scores of an evaluation (chexpert_hf.evaluation.reports)
METRICS_MD = "metrics.md"  # the same as a Markdown table
ROC_PNG = "roc.png"  # ROC curves of the competition labels
PREDICTIONS_CSV = "predictions.csv"  # per-image probabilities (evaluate); holds patient ids, so never published
# the raw labels of the images a training run validated on (valid.csv's format): ground truth for compare
VALIDATION_LABELS_CSV = "validation_labels.csv"  # holds patient ids, so never published
CALIBRATION_PNG = "calibration.png"  # reliability diagrams of the competition labels (evaluation.calibration)
SUBGROUPS_JSON = "subgroups.json"  # AUROC and under-diagnosis per sex, age band, view (evaluation.subgroups)
SUBGROUPS_MD = "subgroups.md"  # the same as tables
SUBGROUPS_PNG = "subgroups.png"  # per-group AUROC with intervals

# --- compare (chexpert_hf.evaluation.compare) ------------------------------------------------------------------
COMPARE_JSON = "compare.json"  # every paired comparison: AUROCs, differences, intervals, p-values
COMPARE_MD = "compare.md"  # the same as a table a person reads
COMPARE_PNG = "compare.png"  # the forest plot of the differences

# --- training (chexpert_hf.training.train and the transformers Trainer) -------------------------------------------
# what a training run cost; written last by chexpert_hf.training.train, read by the benchmark
RUN_INFO = "run_info.json"
RECIPE_YAML = "recipe.yaml"  # the resolved recipe of a run
MODEL_CARD = "README.md"  # the model card (chexpert_hf.hub.model_card)
TRAINER_STATE = "trainer_state.json"  # the Trainer's log history and best checkpoint
RESULTS_JSONS = ("train_results.json", "eval_results.json", "all_results.json")  # Trainer.save_metrics
TRAINING_ARGS_BIN = "training_args.bin"  # a pickle holding hub_token in clear: never published
# what a checkpoint needs to resume, beside the model
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")
RNG_STATE_PATTERN = "rng_state*.pth"  # one per process

# --- a saved model (save_pretrained) -------------------------------------------------------------------------------
MODEL_CONFIG = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"  # a sharded model's index
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
GENERATION_CONFIG = "generation_config.json"
PYTORCH_WEIGHTS = "pytorch_model.bin"  # the legacy weight format (read, never written by this project)
PYTORCH_WEIGHTS_INDEX = "pytorch_model.bin.index.json"

# --- explain (chexpert_hf.explain.run) -----------------------------------------------------------------------------
HEATMAPS_NPZ = "heatmaps.npz"  # the raw maps, one folder per method
LOCALIZATION_JSON = "localization.json"  # the pointing-game scores (with lesions.csv or --sanity-check)

# --- prepare (chexpert_hf.data.prepare) ----------------------------------------------------------------------------
SKIPPED_CSV = "skipped.csv"  # rows prepare left out, and why (local paths: never published)
PREPARE_INFO_JSON = "prepare_info.json"  # split sizes, skipped counts, label order and the source folder
DATASET_DICT_JSON = "dataset_dict.json"  # written by datasets' save_to_disk: marks a prepared folder

# --- benchmark (chexpert_hf.benchmark); the training stage marks a finished run with BENCHMARK_RUN too -----------
BENCHMARK_RUN = "benchmark_run.json"  # written once a run of the grid succeeded
RESULTS_CSV = "results.csv"  # one row per run
RESULTS_MD = "results.md"  # the ranked summary
AUROC_FIGURE_PNG = "auroc_by_strategy.png"
LEARNING_CURVES_PNG = "learning_curves.png"  # validation AUROC and losses per epoch, per recipe
