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
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from chexpert_hf.evaluation.thresholds import parse_rule
from chexpert_hf.labels import (
    BLANK_POLICIES,
    CHEXPERT_LABELS,
    COMPETITION_LABELS,
    UNCERTAINTY_POLICIES,
    check_label_names,
)
from chexpert_hf.models import FAMILIES
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
# The fields with a fixed set of values are typed by it: HfArgumentParser turns a Literal into argparse choices,
# and parse_recipe checks a recipe file's values against the same choices, so no dataclass checks them again.
FamilyName = Literal[tuple(FAMILIES)]
View = Literal[VIEWS]
EvalLevel = Literal[EVAL_LEVELS]
Augmentation = Literal[AUGMENTATIONS]
FreezePolicy = Literal[POLICIES]
UncertaintyPolicy = Literal[tuple(UNCERTAINTY_POLICIES)]
BlankPolicy = Literal[BLANK_POLICIES]
Sampling = Literal[SAMPLING]
# How a field with choices is named in the error for a value outside them (otherwise by its own name).
CHOICE_NAMES = {
    "family": "model family",
    "freeze_policy": "freeze policy",
    "uncertainty_policy": "uncertainty policy",
    "blank_policy": "blank policy",
}


class ConfigurationError(ValueError):
    """A recipe asks for a combination that cannot work (reported in one line, without a traceback)."""


def choice_error(field_name: str, value: Any, choices: Sequence[Any]) -> str:
    """The one message for a value outside a field's choices, whether it came from a flag or a recipe file."""
    name = CHOICE_NAMES.get(field_name, field_name)
    return f"unknown {name} {value!r}; choose one of: {', '.join(str(choice) for choice in choices)}"


@dataclass
class ModelArguments:
    family: FamilyName = field(
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
        metadata={
            "help": "model configuration fields to change, a YAML mapping or a JSON string "
            "(e.g. '{\"hidden_size\": 96}'); how the demo builds its tiny ViT"
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "input side in pixels (default: the checkpoint's own, 224 from scratch)"}
    )
    labels: str = field(
        default="competition",
        metadata={"help": "'competition' (the 5 CheXpert competition labels), 'all' (14) or a comma-separated list"},
    )

    def __post_init__(self) -> None:
        variants = list(FAMILIES[self.family].variants) if self.family in FAMILIES else []
        if self.variant is not None and variants and self.variant not in variants:  # depends on family: checked here
            raise ValueError(f"unknown {self.family} variant {self.variant!r}; choose one of: {', '.join(variants)}")
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
        metadata={
            "help": "a folder written by `chexpert-hf prepare`, or a raw CheXpert root (the folder holding "
            "train.csv and valid.csv), prepared on first use into data_cache_dir; empty: a synthetic "
            "CheXpert is generated (the demo, no download)"
        },
    )
    validation_split: str = field(
        default="official",
        metadata={
            "help": "'official' (CheXpert's valid.csv) or 'patients:<fraction>' (a patient-disjoint share of train)"
        },
    )
    views: View = field(default="frontal", metadata={"help": "'frontal' (the usual benchmark) or 'all'"})
    eval_level: EvalLevel = field(
        default="study", metadata={"help": "'study' (max over a study's views, as the CheXpert paper) or 'image'"}
    )
    threshold_rule: str = field(
        default="youden",
        metadata={
            "help": "how the decision threshold saved per label in config.json is chosen on the validation split: "
            "'youden' (max sensitivity + specificity - 1), 'sensitivity:X' or 'specificity:X'"
        },
    )
    augmentation: Augmentation = field(
        default="none",
        metadata={"help": "'none' or 'light' (small rotation, scale and shift; never a flip: laterality matters)"},
    )
    prepare_image_size: int = field(
        default=320, metadata={"help": "shorter side when a raw CheXpert tree is prepared on first use"}
    )
    prepare_num_proc: int | None = field(
        default=None,
        metadata={
            "help": "worker processes that prepare a raw tree on first use (default: the CPUs this process "
            "may use, as os.sched_getaffinity reports them under container or SLURM limits)"
        },
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "where raw trees are prepared and synthetic data is generated "
            "(default: $CHEXPERT_HF_CACHE or ~/.cache/chexpert_hf)"
        },
    )
    synthetic_patients: int = field(default=1500, metadata={"help": "training patients of the synthetic CheXpert"})
    synthetic_valid_patients: int = field(
        default=300, metadata={"help": "validation patients (one study each) of the synthetic CheXpert"}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the synthetic CheXpert"})
    decode_cache: bool = field(
        default=False,
        metadata={
            "help": "decode every image once into memory at the model's size, in every process (small datasets "
            "such as the demo; CheXpert's 191k frontal images at 224 px take 9.6 GB per process, 77 GB on "
            "8 GPUs); refused when this machine's processes would need more than its available memory"
        },
    )
    cache_features: bool = field(
        default=False,
        metadata={
            "help": "head strategy only: run the frozen backbone once over the training and validation images "
            "(no augmentation), store the pooled features next to the prepared dataset (keyed by the "
            "backbone's weights, image size and precision; later runs reuse them) and train the head on them; "
            "the output is a normal full checkpoint"
        },
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
        if self.prepare_num_proc is not None and self.prepare_num_proc < 1:
            raise ValueError(f"prepare_num_proc must be at least 1, got {self.prepare_num_proc}")
        self.validation_fraction()
        parse_rule(self.threshold_rule)

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
    freeze_policy: FreezePolicy = field(
        default="full", metadata={"help": "what trains: 'head', 'last_block' (head + last block) or 'full'"}
    )
    layer_decay: float = field(
        default=1.0, metadata={"help": "layer-wise learning-rate decay (1 = off); depth d gets lr * decay**(top-d)"}
    )
    uncertainty_policy: UncertaintyPolicy = field(
        default="u_mixed",
        metadata={
            "help": "what uncertain (-1) labels become: "
            + ", ".join(UNCERTAINTY_POLICIES)
            + " (u_mixed: U-Ones for Atelectasis and Edema, U-Zeros for the rest)"
        },
    )
    blank_policy: BlankPolicy = field(
        default="negative", metadata={"help": "what blank labels become: 'negative' or 'mask' (left out of the loss)"}
    )
    sampling: Sampling = field(
        default="none",
        metadata={
            "help": "training sampler: 'none' (shuffle), 'inverse_frequency' or 'sqrt_inverse_frequency' "
            "(weighted draws with replacement; formula in chexpert_hf/training/sampling.py)"
        },
    )
    pos_weight: str = field(
        default="none",
        metadata={
            "help": "BCE pos_weight: 'none', 'balanced' (negatives/positives per label, from the training "
            "targets) or comma-separated numbers, one per label"
        },
    )

    def __post_init__(self) -> None:
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
        metadata={
            "help": "train even when output_dir holds an earlier run, deleting its checkpoints and results "
            "first (without it such a run is refused; --resume_from_checkpoint last continues it instead)"
        },
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads per process when training on the CPU (default: this machine's CPUs divided "
            "by its processes; `accelerate launch` without a config file would leave 1)"
        },
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
        training = {
            key: value
            for key, value in self.values.items()
            if key not in ours and key != "resume_from_checkpoint" and not key.endswith("_token")
        }
        header = (
            f"# resolved recipe {self.name!r}: TrainingArguments not listed here were left at their defaults\n"
            f"# reproduce with: accelerate launch recipes/train.py --config recipe.yaml\n"
        )
        resolved = {
            key: value.value if isinstance(value, Enum) else value for key, value in {**ours, **training}.items()
        }
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


# The fields most runs change, shown first in ``chexpert-hf train --help`` (after --recipe and --config).
COMMON_FIELDS = (
    "output_dir",
    "data_dir",
    "family",
    "variant",
    "model_name_or_path",
    "labels",
    "freeze_policy",
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "seed",
    "resume_from_checkpoint",
)
_GROUPS = (
    (ModelArguments, "model"),
    (DataArguments, "data"),
    (PolicyArguments, "policies (uncertain and blank labels, loss, sampling)"),
    (CheXpertTrainingArguments, "Transformers TrainingArguments (the defaults chosen for CheXpert)"),
)


class _OneSpelling(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag by its recipe-field spelling (``--data_dir``); the hyphenated twin still parses."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{action.option_strings[0]} {metavar}"


class RecipeParser(HfArgumentParser):
    """The recipe fields as flags, whose every error is one line (a ValueError) rather than the full usage."""

    def error(self, message: str):
        # "argument --use_cpu/--use-cpu: ..." names the flag once, as the help does
        raise ValueError(re.sub(r"^argument (--[\w-]+)(?:/--[\w-]+)*: ", r"\1: ", message))

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(None, choice_error(action.dest, value, action.choices))


def _parser() -> RecipeParser:
    """The one parser of ``chexpert-hf train``: --recipe and --config, the common fields, then one group per
    dataclass (HfArgumentParser lists every field in one group, in dataclass order, --recipe last)."""
    parser = RecipeParser(
        DATACLASSES,
        prog="chexpert-hf train",
        usage="chexpert-hf train [--recipe NAME | --config FILE] [--field value ...]",
        formatter_class=_OneSpelling,
        allow_abbrev=False,  # --learning_rat 3 must be an error, not learning_rate=3
        description="Fine-tune a model on CheXpert. A recipe (--recipe NAME or --config FILE) gives the fields; "
        "every field below is also a flag, and a flag overrides the recipe. Docs: docs/training.md",
    )
    parser.add_argument(
        "--recipe", metavar="NAME", help="a recipe in recipes/ by name: " + ", ".join(available_recipes())
    )
    parser.add_argument("--config", metavar="FILE", help="a recipe YAML file anywhere")
    options = parser._optionals
    options.title = "recipe"
    common = parser.add_argument_group("most used fields")
    groups = {dc: parser.add_argument_group(title) for dc, title in _GROUPS}
    owner = {item.name: dc for dc in DATACLASSES for item in dataclasses.fields(dc)}
    fields = [action for action in options._group_actions if action.dest in owner]
    options._group_actions[:] = [action for action in options._group_actions if action.dest not in owner]
    for action in fields:
        (common if action.dest in COMMON_FIELDS else groups[owner[action.dest]])._group_actions.append(action)
    common._group_actions.sort(key=lambda action: COMMON_FIELDS.index(action.dest))
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest not in ("help", "recipe", "config")}


def _coerce(key: str, value: Any, action: argparse.Action, source: str) -> Any:
    """A YAML value through the flag's own type (so ``lr: 1e-4``, which YAML reads as a string, is a float), and
    checked against the flag's choices, as a flag's value is."""
    convert = action.type
    if convert is str and isinstance(value, bool | int | float):  # `resume_from_checkpoint: true`, `pos_weight: 3`
        value = str(value).lower() if isinstance(value, bool) else str(value)
    elif isinstance(value, str) and convert not in (None, str) and callable(convert):
        try:
            value = convert(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"{source}: key {key!r} has value {value!r}, which is not valid: {error}") from None
    if action.choices is not None and value is not None and value not in action.choices:
        raise ValueError(f"{source}: {choice_error(key, value, action.choices)}")
    return value


def _unknown_flag(extras: Sequence[str], fields: Sequence[str]) -> str:
    """One line for what the parser does not know, with the closest field as for a recipe file's keys."""
    flags = [token for token in extras if token.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(extras)}: fields are given as --field value"
    name = flags[0].lstrip("-").split("=", 1)[0].replace("-", "_")
    hint = difflib.get_close_matches(name, fields, n=1)
    return f"unknown field {name!r}" + (
        f"; did you mean {hint[0]!r}?" if hint else "; `chexpert-hf train --help` lists the fields"
    )


def _given(argv: Sequence[str], parser: argparse.ArgumentParser) -> set[str]:
    """The fields named on the command line (every flag is spelt out: abbreviations are refused)."""
    dests = set()
    for token in argv:
        action = parser._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("--") else None
        if action is not None:
            dests.add(action.dest)
    return dests


def parse_recipe(argv: Sequence[str] | None = None) -> Recipe:
    """The recipe named on the command line, overridden by the other flags, as dataclasses.

    One parser, one pass: the recipe file's values (checked and typed as flags are) become the parser's defaults,
    and the flags override them. An unknown key or flag is an error that names the closest field."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    selector = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    selector.add_argument("--recipe", action="append")
    selector.add_argument("--config", action="append")
    chosen, _ = selector.parse_known_args(argv)
    asks_help = "-h" in argv or "--help" in argv
    if len(chosen.recipe or ()) + len(chosen.config or ()) > 1 and not asks_help:
        raise ValueError("give either --recipe NAME or --config FILE, not both")
    recipe, config = (chosen.recipe or [None])[-1], (chosen.config or [None])[-1]
    values: dict[str, Any] = {}
    name, source = "defaults", "command line"
    if recipe:
        known = available_recipes()
        if not known:
            raise ValueError(
                f"no recipes found in {recipes_dir()}: the recipes/ folder comes with the source "
                f"checkout (git clone, then pip install -e .); or give --config PATH"
            )
        if recipe not in known:
            raise ValueError(f"unknown recipe {recipe!r}; available: {', '.join(known)}")
        path = recipes_dir() / f"{recipe}.yaml"
        values, name, source = read_recipe_file(path), recipe, str(path)
    elif config:
        path = Path(config)
        values, name, source = read_recipe_file(path), path.stem, str(path)

    actions = _actions(parser)
    unknown = [key for key in values if key not in actions]
    if unknown:
        hints = {key: difflib.get_close_matches(key, actions, n=1) for key in unknown}
        described = ", ".join(
            f"{key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for key, hint in hints.items()
        )
        raise ValueError(f"{source}: unknown key(s) {described}; `chexpert-hf train --help` lists the fields")
    values = {key: _coerce(key, value, actions[key], source) for key, value in values.items()}
    parser.set_defaults(**values)  # `--help` with a recipe shows its values as the defaults
    namespace, extras = parser.parse_known_args(argv)
    if extras:
        raise ValueError(_unknown_flag(extras, list(actions)))
    values.update({dest: getattr(namespace, dest) for dest in _given(argv, parser) & set(actions)})
    values.setdefault("output_dir", str(Path("outputs") / name))
    model, data, policy, training = parser.parse_dict(values)
    return Recipe(model, data, policy, training, name, values)
