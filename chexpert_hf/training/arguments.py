"""The fields of a recipe, and how a recipe becomes arguments.

A recipe is one flat YAML file per run (no inheritance). Its keys are fields of four dataclasses:
:class:`ModelArguments`, :class:`DataArguments`, :class:`PolicyArguments` and
:class:`CheXpertTrainingArguments` (the Transformers ``TrainingArguments`` with defaults chosen for CheXpert).
``--recipe NAME`` reads ``recipes/NAME.yaml``, ``--config PATH`` any YAML file; every field is also a command
line flag, and a flag overrides the file. A key that is no field is an error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from chexpert_hf.labels import (
    BLANK_POLICIES,
    CHEXPERT_LABELS,
    COMPETITION_LABELS,
    UNCERTAINTY_POLICIES,
    check_label_names,
)
from chexpert_hf.models.freeze import POLICIES

logger = logging.getLogger(__name__)

# recipes/ sits beside the package in a source checkout (``pip install -e .``); elsewhere ./recipes is used
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def recipes_dir() -> Path:
    """The folder ``--recipe NAME`` reads: the checkout's ``recipes/``, else ``recipes/`` in the current folder."""
    for candidate in (RECIPES_DIR, Path.cwd() / "recipes"):
        if candidate.is_dir():
            return candidate
    return RECIPES_DIR
SAMPLING = ("none", "inverse_frequency", "sqrt_inverse_frequency")
AUGMENTATIONS = ("none", "light")
EVAL_LEVELS = ("study", "image")
VIEWS = ("frontal", "all")


class ConfigurationError(ValueError):
    """A recipe asks for a combination that cannot work (reported in one line, without a traceback)."""


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


@dataclass
class ModelArguments:
    family: str = field(
        default="vit", metadata={"help": "model family: vit, swin, deit, resnet_vit or densenet121"}
    )
    variant: str | None = field(
        default=None, metadata={"help": "size within the family (vit: base|large, swin: tiny|base, ...)"}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder to start from (default: the variant's pretrained checkpoint)"},
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "random weights from the variant's configuration (nothing downloaded)"}
    )
    config_overrides: dict | str | None = field(
        default=None,
        metadata={"help": "model configuration fields to change, a YAML mapping or a JSON string "
                  "(e.g. '{\"hidden_size\": 96}'); how the demo builds its tiny ViT"},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "input side in pixels (default: the checkpoint's own, 224 from scratch)"}
    )
    labels: str = field(
        default="competition",
        metadata={"help": "'competition' (the 5 CheXpert competition labels), 'all' (14) or a comma-separated list"},
    )

    def __post_init__(self) -> None:
        from chexpert_hf.models import FAMILIES

        _choice("model family", self.family, list(FAMILIES))
        if self.variant is not None:
            _choice(f"{self.family} variant", self.variant, list(FAMILIES[self.family].variants))
        if isinstance(self.config_overrides, str):
            try:
                self.config_overrides = json.loads(self.config_overrides)
            except json.JSONDecodeError as error:
                raise ValueError(f"config_overrides is not valid JSON: {error}") from None
        if self.config_overrides is not None and not isinstance(self.config_overrides, dict):
            raise ValueError(f"config_overrides must be a mapping, got {self.config_overrides!r}")
        self.label_names()  # fails early on an unknown label

    def label_names(self) -> list[str]:
        if self.labels == "competition":
            return list(COMPETITION_LABELS)
        if self.labels == "all":
            return list(CHEXPERT_LABELS)
        return check_label_names([name.strip() for name in self.labels.split(",") if name.strip()])


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": "a folder written by `chexpert-hf prepare`, or a raw CheXpert root (the folder holding "
                  "train.csv and valid.csv), prepared on first use into data_cache_dir; empty: a synthetic "
                  "CheXpert is generated (the demo, no download)"},
    )
    validation_split: str = field(
        default="official",
        metadata={"help": "'official' (CheXpert's valid.csv) or 'patients:<fraction>' (a patient-disjoint "
                  "share of train)"},
    )
    views: str = field(default="frontal", metadata={"help": "'frontal' (the usual benchmark) or 'all'"})
    eval_level: str = field(
        default="study", metadata={"help": "'study' (max over a study's views, as the CheXpert paper) or 'image'"}
    )
    augmentation: str = field(
        default="none",
        metadata={"help": "'none' or 'light' (small rotation, scale and shift; never a flip: laterality matters)"},
    )
    prepare_image_size: int = field(
        default=320, metadata={"help": "shorter side when a raw CheXpert tree is prepared on first use"}
    )
    prepare_num_proc: int | None = field(
        default=None,
        metadata={"help": "worker processes that prepare a raw tree on first use (default: the CPUs this process "
                  "may use, as os.sched_getaffinity reports them under container or SLURM limits)"},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "where raw trees are prepared and synthetic data is generated "
                  "(default: $CHEXPERT_HF_CACHE or ~/.cache/chexpert_hf)"},
    )
    synthetic_patients: int = field(default=1500, metadata={"help": "training patients of the synthetic CheXpert"})
    synthetic_valid_patients: int = field(
        default=300, metadata={"help": "validation patients (one study each) of the synthetic CheXpert"}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the synthetic CheXpert"})
    decode_cache: bool = field(
        default=False,
        metadata={"help": "decode every image once into memory at the model's size, in every process (small datasets "
                  "such as the demo; CheXpert's 191k frontal images at 224 px take 9.6 GB per process, 77 GB on "
                  "8 GPUs); refused when this machine's processes would need more than its available memory"},
    )
    cache_features: bool = field(
        default=False,
        metadata={"help": "head strategy only: run the frozen backbone once over the training and validation images "
                  "(no augmentation), store the pooled features next to the prepared dataset (keyed by the "
                  "backbone's weights, image size and precision; later runs reuse them) and train the head on them; "
                  "the output is a normal full checkpoint"},
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "where cached features go (default: <prepared dataset>.features)"}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N training images (quick checks)"}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "use only the first N validation images (quick checks)"}
    )

    def __post_init__(self) -> None:
        _choice("views", self.views, VIEWS)
        _choice("eval_level", self.eval_level, EVAL_LEVELS)
        _choice("augmentation", self.augmentation, AUGMENTATIONS)
        if self.prepare_num_proc is not None and self.prepare_num_proc < 1:
            raise ValueError(f"prepare_num_proc must be at least 1, got {self.prepare_num_proc}")
        self.validation_fraction()

    def validation_fraction(self) -> float | None:
        """``None`` for the official split, else the share of training patients held out."""
        if self.validation_split == "official":
            return None
        kind, _, value = self.validation_split.partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if kind != "patients" or not 0.0 < fraction < 1.0:
            raise ValueError(
                f"validation_split must be 'official' or 'patients:<fraction between 0 and 1>', "
                f"got {self.validation_split!r}"
            )
        return fraction


@dataclass
class PolicyArguments:
    freeze_policy: str = field(
        default="full", metadata={"help": "what trains: 'head', 'last_block' (head + last block) or 'full'"}
    )
    layer_decay: float = field(
        default=1.0, metadata={"help": "layer-wise learning-rate decay (1 = off); depth d gets lr * decay**(top-d)"}
    )
    uncertainty_policy: str = field(
        default="u_mixed",
        metadata={"help": "what uncertain (-1) labels become: " + ", ".join(UNCERTAINTY_POLICIES)
                  + " (u_mixed: U-Ones for Atelectasis and Edema, U-Zeros for the rest)"},
    )
    blank_policy: str = field(
        default="negative", metadata={"help": "what blank labels become: 'negative' or 'mask' (left out of the loss)"}
    )
    sampling: str = field(
        default="none",
        metadata={"help": "training sampler: 'none' (shuffle), 'inverse_frequency' or 'sqrt_inverse_frequency' "
                  "(weighted draws with replacement; formula in chexpert_hf/training/trainer.py)"},
    )
    pos_weight: str = field(
        default="none",
        metadata={"help": "BCE pos_weight: 'none', 'balanced' (negatives/positives per label, from the training "
                  "targets) or comma-separated numbers, one per label"},
    )

    def __post_init__(self) -> None:
        _choice("freeze policy", self.freeze_policy, POLICIES)
        _choice("uncertainty policy", self.uncertainty_policy, list(UNCERTAINTY_POLICIES))
        _choice("blank policy", self.blank_policy, BLANK_POLICIES)
        _choice("sampling", self.sampling, SAMPLING)
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        self.pos_weight_values()

    def pos_weight_values(self) -> list[float] | None:
        """The numbers of ``pos_weight``; None for 'none' and 'balanced' (computed from the training targets)."""
        if self.pos_weight in ("none", "balanced"):
            return None
        try:
            values = [float(value) for value in self.pos_weight.split(",")]
        except ValueError:
            values = [-1.0]
        if any(value <= 0 for value in values):
            raise ValueError(
                f"pos_weight must be 'none', 'balanced' or positive numbers separated by commas, "
                f"got {self.pos_weight!r}"
            )
        return values


_TRAINING_FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments)}


def _default(name: str, value: Any) -> Any:
    """The parent's field ``name`` (its help text) with another default."""
    return field(default=value, metadata=_TRAINING_FIELDS[name].metadata)


@dataclass
class CheXpertTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults that suit multi-label CheXpert training."""

    do_train: bool = _default("do_train", True)
    weight_decay: float = _default("weight_decay", 0.01)
    lr_scheduler_type: SchedulerType | str = _default("lr_scheduler_type", "cosine")
    warmup_steps: float = _default("warmup_steps", 0.05)
    eval_strategy: IntervalStrategy | str = _default("eval_strategy", "epoch")
    save_strategy: SaveStrategy | str = _default("save_strategy", "epoch")
    save_total_limit: int | None = _default("save_total_limit", 2)
    metric_for_best_model: str | None = _default("metric_for_best_model", "mean_auroc")
    remove_unused_columns: bool = _default("remove_unused_columns", False)  # images are decoded by the collator
    logging_nan_inf_filter: bool = _default("logging_nan_inf_filter", False)  # it syncs the GPU every step
    logging_steps: float = _default("logging_steps", 50)
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "train even when output_dir holds an earlier run, deleting its checkpoints and results "
                  "first (without it such a run is refused; --resume_from_checkpoint last continues it instead)"},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads per process when training on the CPU (default: this machine's CPUs divided "
                  "by its processes; `accelerate launch` without a config file would leave 1)"},
    )

    def __post_init__(self) -> None:
        requested = self.tf32
        if requested and not torch.cuda.is_available():
            # a speed knob for Ampere+ GPUs; Transformers refuses it elsewhere, which would stop a CPU smoke run
            logger.warning("tf32 asked for but no CUDA GPU is available: ignored")
            requested = None
        # Transformers sets TF32 through torch's new precision API (torch >= 2.9), after which torch's legacy
        # getters, which Inductor and other libraries read, raise: the flags are set here instead (set_tf32).
        self.tf32 = None
        super().__post_init__()
        self.tf32 = requested
        if requested is not None:
            set_tf32(requested)
        elif _new_precision_api_in_use():  # torch_compile with bf16 makes Transformers enable TF32 its own way
            set_tf32(True)


def _new_precision_api_in_use() -> bool:
    return getattr(torch.backends, "fp32_precision", "none") != "none"


def set_tf32(enabled: bool) -> None:
    """Turn TF32 matmuls and convolutions on or off through torch's legacy flags, the one API of this project.

    torch >= 2.9 also has per-backend ``fp32_precision`` flags; once they are set directly, the legacy getters
    (``torch.get_float32_matmul_precision()``, ``torch.backends.cuda.matmul.allow_tf32``) raise. The legacy
    setters write through to the new flags, so after this call both APIs read the same state.
    """
    if hasattr(torch.backends, "fp32_precision"):
        torch.backends.fp32_precision = "none"  # hand every backend back to the legacy flags below
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


DATACLASSES = (ModelArguments, DataArguments, PolicyArguments, CheXpertTrainingArguments)
# Fields that take a mapping (config_overrides, accelerator_config, fsdp_config ...), read from the annotations:
# HfArgumentParser rewrites ``Field.type`` in place, so the fields themselves no longer say.
MAPPING_FIELDS = frozenset(
    name for dc in DATACLASSES for name, hint in typing.get_type_hints(dc).items() if "dict" in str(hint)
)


@dataclass
class Recipe:
    model: ModelArguments
    data: DataArguments
    policy: PolicyArguments
    training: CheXpertTrainingArguments
    name: str
    values: dict[str, Any]  # the keys given in the file and on the command line, after overrides

    def to_yaml(self) -> str:
        """The resolved recipe: every field of ours, and each TrainingArguments field that was given."""
        ours = {}
        for part in (self.model, self.data, self.policy):
            ours.update(dataclasses.asdict(part))
        # resume_from_checkpoint is how this run started, not what it is: run again, it would resume the result.
        # Tokens (hub_token) never reach a file.
        training = {key: value for key, value in self.values.items()
                    if key not in ours and key != "resume_from_checkpoint" and not key.endswith("_token")}
        header = (
            f"# resolved recipe {self.name!r}: TrainingArguments not listed here were left at their defaults\n"
            f"# reproduce with: accelerate launch recipes/train.py --config recipe.yaml\n"
        )
        resolved = {key: value.value if isinstance(value, Enum) else value
                    for key, value in {**ours, **training}.items()}
        return header + yaml.safe_dump(resolved, sort_keys=False)


def available_recipes(directory: Path | None = None) -> list[str]:
    return sorted(path.stem for path in (directory or recipes_dir()).glob("*.yaml"))


def read_recipe_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    with open(path) as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a flat mapping of field: value, got a {type(values).__name__}")
    nested = [key for key, value in values.items() if isinstance(value, dict) and key not in MAPPING_FIELDS]
    if nested:
        raise ValueError(f"{path}: recipes are flat; key(s) {nested} hold a mapping but take a single value")
    return values


def _parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        DATACLASSES,
        prog="chexpert-hf train",
        allow_abbrev=False,  # --learning_rat 3 must be an error, not learning_rate=3
        description="Fine-tune a model on CheXpert. A recipe (--recipe NAME or --config FILE) gives the fields; "
        "every field below is also a flag, and a flag overrides the recipe.",
    )
    parser.add_argument("--recipe", help="a recipe in recipes/ by name: " + ", ".join(available_recipes()))
    parser.add_argument("--config", help="a recipe YAML file anywhere")
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest not in ("help", "recipe", "config")}


def _coerce(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    """A YAML value through the flag's own type (so ``lr: 1e-4``, which YAML reads as a string, is a float)."""
    convert = action.type
    if convert is str and isinstance(value, bool | int | float):  # `resume_from_checkpoint: true`, `pos_weight: 3`
        return str(value).lower() if isinstance(value, bool) else str(value)
    if not isinstance(value, str) or convert in (None, str) or not callable(convert):
        return value
    try:
        return convert(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: key {key!r} has value {value!r}, which is not valid: {error}") from None


def parse_recipe(argv: Sequence[str] | None = None) -> Recipe:
    """The recipe named on the command line, overridden by the other flags, as dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _parser().parse_args(argv)  # prints the help and exits
    selector = argparse.ArgumentParser(add_help=False)
    selector.add_argument("--recipe")
    selector.add_argument("--config")
    chosen, rest = selector.parse_known_args(argv)
    if chosen.recipe and chosen.config:
        raise ValueError("give either --recipe NAME or --config FILE, not both")
    values: dict[str, Any] = {}
    name, source = "defaults", "command line"
    if chosen.recipe:
        known = available_recipes()
        if not known:
            raise ValueError(f"no recipes found in {recipes_dir()}: the recipes/ folder comes with the source "
                             f"checkout (git clone, then pip install -e .); or give --config PATH")
        if chosen.recipe not in known:
            raise ValueError(f"unknown recipe {chosen.recipe!r}; available: {', '.join(known)}")
        path = recipes_dir() / f"{chosen.recipe}.yaml"
        values, name, source = read_recipe_file(path), chosen.recipe, str(path)
    elif chosen.config:
        path = Path(chosen.config)
        values, name, source = read_recipe_file(path), path.stem, str(path)

    actions = _actions(_parser())
    unknown = [key for key in values if key not in actions]
    if unknown:
        hints = {key: difflib.get_close_matches(key, actions, n=1) for key in unknown}
        described = ", ".join(f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              for key, hint in hints.items())
        raise ValueError(f"{source}: unknown key(s) {described}; `chexpert-hf train --help` lists the fields")
    values = {key: _coerce(key, value, actions[key], source) for key, value in values.items()}

    overrides = _parser()
    for action in overrides._actions:
        if action.dest != "help":
            action.default, action.required = argparse.SUPPRESS, False
    given = vars(overrides.parse_args(rest))
    given.pop("recipe", None)
    given.pop("config", None)
    values.update(given)
    values.setdefault("output_dir", str(Path("outputs") / name))
    model, data, policy, training = _parser().parse_dict(values)
    return Recipe(model, data, policy, training, name, values)
