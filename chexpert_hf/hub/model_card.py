"""The model card (``OUTPUT_DIR/README.md``) of a training run: Hub metadata, a model-index and a written body.

The metadata and the ``model-index`` go through huggingface_hub's card tools (:class:`~huggingface_hub.ModelCard`,
:class:`~huggingface_hub.ModelCardData`, :class:`~huggingface_hub.EvalResult`), so the Hub reads the evaluation
results exactly as :func:`card_metrics` reads them back. Only the Markdown body is written here.

Every AUROC in the ``model-index`` is the float of ``metrics.json`` as it is (YAML writes a float's shortest exact
form), so the card and the metrics file agree to the last digit. An undefined (NaN) mean is left out of the
``model-index``; the body says why.

A card is public once pushed: :func:`build_model_card` refuses any field that holds an absolute local path, a
patient identifier (``patient`` followed by digits, as in CheXpert's folder names) or something that looks like an
access token, and names the field.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from chexpert_hf.evaluation.thresholds import rate_text
from chexpert_hf.hub.privacy import PATH, PATIENT, first_leak
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.outputs import MODEL_CARD, ROC_PNG
from chexpert_hf.utils import atomic_write, format_duration, markdown_table

CHEXPERT_URL = "https://stanfordmlgroup.github.io/competitions/chexpert/"
CHEXPERT_LICENSE_NAME = "chexpert-research-use-agreement"
SYNTHETIC_LICENSE = "apache-2.0"

TASK_TYPE = "image-classification"
METRIC_TYPE = "roc_auc"
_LABEL_METRIC_PREFIX = "AUROC "
_MEAN_ALL_NAME = "Mean AUROC (all scored labels)"
# "Mean AUROC (5 competition labels)", or "(4 of 5 competition labels)" when one could not be scored.
_MEAN_COMPETITION_PATTERN = re.compile(r"Mean AUROC \((?:\d+ of )?\d+ competition labels\)")
PLACEHOLDER_REPO_ID = "path/to/model"

FAMILY_NAMES = {
    "vit": "ViT (Vision Transformer)",
    "swin": "Swin Transformer",
    "deit": "DeiT (data-efficient image Transformer)",
    "resnet_vit": "ResNet + ViT hybrid (a ResNet stem feeding a ViT encoder)",
    "densenet121": "DenseNet-121 (the convolutional baseline of the CheXpert paper)",
}
FREEZE_DESCRIPTIONS = {
    "head": "head only: the backbone is frozen and only the new classification head is trained (a linear probe)",
    "last_block": "head and last block: the classification head and the backbone's last block are trained",
    "full": "full fine-tuning: every parameter is trained",
}
UNCERTAINTY_DESCRIPTIONS = {
    "u_ignore": "U-Ignore: uncertain labels are left out of the loss",
    "u_zeros": "U-Zeros: uncertain labels count as negative",
    "u_ones": "U-Ones: uncertain labels count as positive",
    "u_mixed": "U-Mixed: uncertain counts as positive for Atelectasis and Edema and as negative for the rest",
    "u_smooth": "U-Smooth: uncertain labels become random soft targets between 0.55 and 0.85 by default",
}
BLANK_DESCRIPTIONS = {
    "negative": "blank labels (finding not mentioned in the report) count as negative",
    "mask": "blank labels (finding not mentioned in the report) are left out of the loss",
}
SAMPLING_DESCRIPTIONS = {
    "none": "every training image once per epoch, shuffled",
    "inverse_frequency": "inverse label frequency: images positive for rare findings are drawn more often",
    "sqrt_inverse_frequency": "square root of the inverse label frequency (a milder rebalancing)",
}
VIEW_DESCRIPTIONS = {
    "frontal": "frontal views only (PA and AP)",
    "all": "frontal and lateral views",
}

CHEXPERT_BIBTEX = """\
@inproceedings{irvin2019chexpert,
  title     = {{CheXpert}: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author    = {Irvin, Jeremy and Rajpurkar, Pranav and Ko, Michael and Yu, Yifan and Ciurea-Ilcus, Silviana and
               Chute, Chris and Marklund, Henrik and Haghgoo, Behzad and Ball, Robyn and Shpanskaya, Katie and
               Seekins, Jayne and Mong, David A. and Halabi, Safwan S. and Sandberg, Jesse K. and Jones, Ricky and
               Larson, David B. and Langlotz, Curtis P. and Patel, Bhavik N. and Lungren, Matthew P. and
               Ng, Andrew Y.},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {33},
  number    = {01},
  pages     = {590--597},
  year      = {2019},
  doi       = {10.1609/aaai.v33i01.3301590}
}"""


@dataclass
class CardInfo:
    """Everything the card says about one training run; ``metrics`` is the run's ``metrics.json`` dict."""

    model_name: str  # repo name or output folder name; never a path
    family: str  # vit | swin | deit | resnet_vit | densenet121
    variant: str  # base, large, tiny, small ...
    base_model: str | None  # Hub id the weights started from; None for random init or a local folder
    freeze_policy: str  # head | last_block | full
    trainable_parameters: int
    total_parameters: int
    image_size: int
    labels: list[str]  # canonical CheXpert names, in the model's output order
    uncertainty_policy: str  # u_ignore | u_zeros | u_ones | u_mixed | u_smooth
    blank_policy: str  # negative | mask
    sampling: str  # none | inverse_frequency | sqrt_inverse_frequency
    pos_weight: str | None
    hyperparameters: dict[str, Any]  # rendered as a table, in this order
    hardware: str
    wall_time_seconds: float | None
    synthetic_data: bool  # True for the demo's synthetic CheXpert
    dataset_id: str  # the `datasets` metadata and the model-index dataset type
    dataset_description: str
    views: str  # frontal | all
    split_sizes: dict[str, int]  # images per split
    evaluated_split: str  # validation | test
    eval_level: str  # study | image
    metrics: dict[str, Any] = field(repr=False)  # the metrics.json dict
    repo_id: str | None = None  # Hub id for the usage snippets; None: a placeholder
    trust_remote_code: bool = False  # True when the modelling code ships next to the weights (resnet_vit)
    roc_figure: str | None = ROC_PNG  # a file next to README.md, or None
    license: str | None = None  # None: apache-2.0 for synthetic data, else "other" with the CheXpert agreement
    subgroups: dict[str, Any] | None = field(default=None, repr=False)  # subgroups.json of the evaluated split


# --- safety checks ------------------------------------------------------------------------------------------------


def _check_text(field_name: str, text: str) -> None:
    """A ValueError naming ``field_name`` when ``text`` holds a token, an absolute path or a patient id (the patterns
    of :mod:`chexpert_hf.hub.privacy`, which the publishing audit applies too); a token is never quoted."""
    leak = first_leak(text, value=True)
    if leak is None:
        return
    if leak.kind == PATH:
        raise ValueError(f"{field_name} must not be or contain an absolute local path (the card is public): {text!r}")
    if leak.kind == PATIENT:
        raise ValueError(f"{field_name} must not contain a patient identifier (the card is public): {text!r}")
    raise ValueError(f"{field_name} looks like it contains an access token; refusing to write it into the card")


def _strings_in(value: Any, name: str) -> Iterable[tuple[str, str]]:
    """``(field name, text)`` for every string inside ``value``, keys included."""
    if isinstance(value, str):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings_in(key, f"{name} key")
            yield from _strings_in(item, f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            yield from _strings_in(item, f"{name}[{index}]")
    elif isinstance(value, os.PathLike):
        yield name, os.fspath(value)


def check_card_info(info: CardInfo) -> None:
    """Refuse (ValueError naming the field) anything that must never reach a public card."""
    for name in ("model_name", "base_model", "repo_id", "dataset_description"):
        value = getattr(info, name)
        if value is not None:
            _check_text(name, str(value))
    if not info.model_name.strip():
        raise ValueError("model_name is empty")
    if info.roc_figure is not None:
        figure = PurePosixPath(info.roc_figure.replace("\\", "/"))
        if not info.roc_figure or figure.is_absolute() or ".." in figure.parts:
            raise ValueError(f"roc_figure must be a file name next to README.md, got {info.roc_figure!r}")
    # Free-text fields and the hyperparameter table end up in the card as well.
    others = (
        "family", "variant", "freeze_policy", "labels", "uncertainty_policy", "blank_policy", "sampling", "pos_weight",
        "hyperparameters", "hardware", "dataset_id", "views", "split_sizes", "evaluated_split", "eval_level",
        "roc_figure", "license",
    )  # fmt: skip
    for name in others:
        for field_name, text in _strings_in(getattr(info, name), name):
            _check_text(field_name, text)
    for field_name, text in _strings_in(info.metrics, "metrics"):
        _check_text(field_name, text)


# --- numbers and formatting ---------------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a Python float, or None when it is missing or not finite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _interval(value: Any) -> tuple[float, float] | None:
    if value is None or len(value) != 2:
        return None
    low, high = _finite(value[0]), _finite(value[1])
    return None if low is None or high is None else (low, high)


def format_interval(interval: tuple[float, float] | None) -> str:
    return "—" if interval is None else f"{interval[0]:.4f}–{interval[1]:.4f}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_format_value(item) for item in value)
    elif value is None:
        text = "—"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _share(trainable: int, total: int) -> str:
    if total <= 0:
        return f"{trainable:,} trainable parameters"
    percent = 100.0 * trainable / total
    # Two decimals, or three significant digits for a small share (a linear probe trains ~0.01 % of a ViT-B).
    digits = 2 if percent >= 1 or percent == 0 else 2 - math.floor(math.log10(percent))
    return f"{trainable:,} of {total:,} parameters trainable ({percent:.{digits}f} %)"


def _competition_mean_name(scored: int) -> str:
    total = len(COMPETITION_LABELS)
    count = f"{scored}" if scored == total else f"{scored} of {total}"
    return f"Mean AUROC ({count} competition labels)"


# --- metadata -----------------------------------------------------------------------------------------------------


def _dataset_name(info: CardInfo) -> str:
    return f"{info.dataset_description} ({info.evaluated_split}, {info.eval_level} level)"


def _eval_results(info: CardInfo) -> list[EvalResult]:
    """One EvalResult per finite AUROC: each scored label, then the competition mean and the all-label mean."""
    metrics = info.metrics
    per_label = metrics.get("per_label", {})
    common = dict(
        task_type=TASK_TYPE,
        task_name="Multi-label chest X-ray classification",
        dataset_type=info.dataset_id,
        dataset_name=_dataset_name(info),
        dataset_split=info.evaluated_split,
        metric_type=METRIC_TYPE,
    )
    results = []
    for label in _ordered_labels(info.labels, per_label):
        value = _finite(per_label[label].get("auroc"))
        if value is not None:
            results.append(EvalResult(metric_name=f"{_LABEL_METRIC_PREFIX}{label}", metric_value=value, **common))
    mean = _finite(metrics.get("mean_auroc"))
    if mean is not None:
        scored = sum(1 for label in COMPETITION_LABELS if label in per_label)
        results.append(EvalResult(metric_name=_competition_mean_name(scored), metric_value=mean, **common))
    mean_all = _finite(metrics.get("mean_auroc_all"))
    if mean_all is not None:
        results.append(EvalResult(metric_name=_MEAN_ALL_NAME, metric_value=mean_all, **common))
    return results


def _license(info: CardInfo) -> dict[str, str]:
    if info.license is not None:
        return {"license": info.license}
    if info.synthetic_data:
        return {"license": SYNTHETIC_LICENSE}
    return {"license": "other", "license_name": CHEXPERT_LICENSE_NAME, "license_link": CHEXPERT_URL}


def _card_data(info: CardInfo) -> ModelCardData:
    tags = [
        "chexpert", "chest-x-ray", "radiology", "medical-imaging", "multi-label-image-classification",
        info.family.replace("_", "-"),
    ]  # fmt: skip
    if info.family in ("vit", "swin", "deit", "resnet_vit"):
        tags.append("vision-transformer")
    if info.synthetic_data:
        tags.append("synthetic-data")
    results = _eval_results(info)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        base_model=info.base_model,
        datasets=[info.dataset_id],
        metrics=[METRIC_TYPE],
        tags=tags,
        model_name=info.model_name,
        eval_results=results or None,
        **_license(info),
    )


# --- body ---------------------------------------------------------------------------------------------------------


def _ordered_labels(labels: Iterable[str], per_label: Mapping[str, Any]) -> list[str]:
    """The scored labels in the model's output order, then any scored label the output order does not name."""
    ordered = [label for label in labels if label in per_label]
    return ordered + [label for label in per_label if label not in ordered]


def _overview(info: CardInfo) -> list[str]:
    family = FAMILY_NAMES.get(info.family, info.family)
    if info.base_model:
        origin = f"fine-tuned from [`{info.base_model}`](https://huggingface.co/{info.base_model})"
    else:
        origin = "trained without a published starting checkpoint (random initialisation or a local checkpoint)"
    data = "a synthetic, CheXpert-like data set" if info.synthetic_data else "CheXpert chest radiographs"
    outputs = "\n".join(f"{index}. {label}" for index, label in enumerate(info.labels))
    return [
        f"# {info.model_name}",
        "",
        f"A {family}, variant `{info.variant}`, {origin}, on {data} at {info.image_size} × {info.image_size} "
        f"pixels. It is a **multi-label** classifier of {len(info.labels)} radiographic findings: each output is an "
        "independent probability, the sigmoid of its logit (findings are not mutually exclusive, so never use "
        "softmax or argmax).",
        "",
        "Outputs, in order (`model.config.id2label`):",
        "",
        "```text",
        outputs,
        "```",
    ]


def _recipe(info: CardInfo) -> list[str]:
    lines = [
        "## Training recipe",
        "",
        f"- **Family / variant**: {FAMILY_NAMES.get(info.family, info.family)} / `{info.variant}`",
        f"- **Starting weights**: {f'`{info.base_model}`' if info.base_model else 'none from the Hub'}",
        f"- **Strategy**: `{info.freeze_policy}` — {FREEZE_DESCRIPTIONS.get(info.freeze_policy, info.freeze_policy)}",
        f"- **Trainable parameters**: {_share(info.trainable_parameters, info.total_parameters)}",
        f"- **Input size**: {info.image_size} × {info.image_size} pixels",
        f"- **Uncertainty policy**: `{info.uncertainty_policy}` — "
        f"{UNCERTAINTY_DESCRIPTIONS.get(info.uncertainty_policy, info.uncertainty_policy)}",
        f"- **Blank policy**: `{info.blank_policy}` — {BLANK_DESCRIPTIONS.get(info.blank_policy, info.blank_policy)}",
        f"- **Sampling**: `{info.sampling}` — {SAMPLING_DESCRIPTIONS.get(info.sampling, info.sampling)}",
        f"- **Positive class weight** (`pos_weight` of the BCE loss): {info.pos_weight or 'none'}",
        "- **Loss**: binary cross-entropy with logits, averaged over the label entries that are not masked",
        f"- **Hardware**: {info.hardware}",
        f"- **Training wall time**: {format_duration(info.wall_time_seconds)}",
    ]
    if info.hyperparameters:
        rows = [[f"`{key}`", _format_value(value)] for key, value in info.hyperparameters.items()]
        lines += ["", "Hyperparameters:", "", *markdown_table(["Hyperparameter", "Value"], rows)]
    return lines


def _data(info: CardInfo) -> list[str]:
    lines = ["## Data", ""]
    if info.synthetic_data:
        lines += [
            "> **Synthetic data.** This model was trained and evaluated on images produced by the project's "
            "synthetic CheXpert generator (drawn radiograph-like images with planted findings), not on real "
            "radiographs. Its numbers show that the training pipeline works; they say nothing about performance "
            "on real chest X-rays.",
            "",
        ]
    views = VIEW_DESCRIPTIONS.get(info.views, info.views)
    lines += [f"- **Data set**: {info.dataset_description} (`{info.dataset_id}`)", f"- **Views**: {views}"]
    if not info.synthetic_data:
        lines.append(
            f"- **Source and terms**: CheXpert, Stanford ML Group, under its research use agreement ({CHEXPERT_URL})"
        )
    if info.split_sizes:
        rows = [[split, f"{count:,}"] for split, count in info.split_sizes.items()]
        lines += ["", *markdown_table(["Split", "Images"], rows, "lr")]
    return lines


def _level_sentence(info: CardInfo) -> str:
    metrics = info.metrics
    if info.eval_level == "study":
        count = metrics.get("n_studies")
        counted = f" ({count:,} studies)" if isinstance(count, int) else ""
        return (
            f"Scored per **study**{counted}, as in the CheXpert paper: a study's probability for a finding is the "
            "maximum over its images (views), and it is positive when any of its images is."
        )
    count = metrics.get("n_images")
    counted = f" ({count:,} images)" if isinstance(count, int) else ""
    return f"Scored per **image**{counted}: every image counts on its own."


def _bootstrap_sentence(metrics: Mapping[str, Any], unit: str, has_intervals: bool) -> str:
    bootstrap = metrics.get("bootstrap")
    if bootstrap:
        confidence = bootstrap.get("confidence")
        level = f"{100 * float(confidence):g}% " if confidence is not None else ""
        unit = {"study": "studies", "image": "images"}.get(bootstrap.get("unit"), unit)
        sentence = (
            f"The {level}confidence intervals are percentile intervals of a bootstrap over {unit} (drawn with "
            f"replacement, the same draw for every label): {bootstrap.get('resamples', 'an unrecorded number of')} "
            f"resamples, seed {bootstrap.get('seed', 'not recorded')}."
        )
        undefined = {label: count for label, count in (bootstrap.get("undefined") or {}).items() if count}
        if undefined:
            counts = ", ".join(f"{label} {count}" for label, count in undefined.items())
            sentence += f" Resamples with one class only for a label were left out of its interval ({counts})."
        return sentence
    if has_intervals:
        return "The bootstrap settings behind the confidence intervals were not recorded."
    return "No confidence intervals were computed for this run."


def _results(info: CardInfo) -> list[str]:
    metrics = info.metrics
    per_label = metrics.get("per_label", {})
    unit = "studies" if info.eval_level == "study" else "images"
    lines = [
        "## Results",
        "",
        f"On the **{info.evaluated_split}** split of {info.dataset_description}. {_level_sentence(info)}",
        "",
    ]
    rows = []
    has_intervals = False
    for label in _ordered_labels(info.labels, per_label):
        result = per_label[label]
        interval = _interval(result.get("auroc_ci95"))
        has_intervals = has_intervals or interval is not None
        auroc, auprc = _finite(result.get("auroc")), _finite(result.get("auprc"))
        rows.append([
            label,
            "—" if auroc is None else f"{auroc:.4f}",
            format_interval(interval),
            "—" if auprc is None else f"{auprc:.4f}",
            _format_value(result.get("positives")),
            _format_value(result.get("negatives")),
        ])  # fmt: skip
    if rows:
        lines += markdown_table(["Finding", "AUROC", "95% CI", "AUPRC", "Positives", "Negatives"], rows, "lrrrrr")
    else:
        lines.append("No label could be scored on this split.")
    lines.append("")

    scored_competition = [label for label in COMPETITION_LABELS if label in per_label]
    missing_competition = [label for label in COMPETITION_LABELS if label not in per_label]
    mean = _finite(metrics.get("mean_auroc"))
    mean_interval = _interval(metrics.get("mean_auroc_ci95"))
    has_intervals = has_intervals or mean_interval is not None
    if mean is None:
        lines.append(
            "- **Mean AUROC, competition labels**: undefined: none of the five competition labels "
            f"({', '.join(COMPETITION_LABELS)}) could be scored on this split, so this mean is left out of the "
            "model-index."
        )
    else:
        ci = f" (95% CI {format_interval(mean_interval)})" if mean_interval else ""
        over = f"{len(scored_competition)} competition labels"
        if missing_competition:
            over += f"; not scored: {', '.join(missing_competition)}"
        lines.append(f"- **Mean AUROC, competition labels** ({over}): **{mean:.4f}**{ci}")
    mean_all = _finite(metrics.get("mean_auroc_all"))
    mean_all_interval = _interval(metrics.get("mean_auroc_all_ci95"))
    has_intervals = has_intervals or mean_all_interval is not None
    if mean_all is None:
        lines.append("- **Mean AUROC, all scored labels**: undefined (no label scored), left out of the model-index")
    else:
        ci = f" (95% CI {format_interval(mean_all_interval)})" if mean_all_interval else ""
        lines.append(f"- **Mean AUROC, all scored labels** ({len(per_label)} labels): {mean_all:.4f}{ci}")
    lines += ["", _bootstrap_sentence(metrics, unit, has_intervals)]

    skipped = list(metrics.get("skipped_labels") or [])
    if skipped:
        lines += [
            "",
            f"**Skipped labels**: {', '.join(skipped)}. The {info.evaluated_split} split has only one class "
            "(all positive or, usually, all negative) for these findings, so their AUROC is undefined; they count "
            "in neither mean. The model still outputs a probability for them.",
        ]
    lines += [
        "",
        "The model-index in this card's metadata holds the same AUROC values at full precision; the CheXpert "
        "paper's headline number is the mean over the five competition labels.",
    ]
    if info.roc_figure:
        lines += ["", f"![ROC curves]({info.roc_figure})"]
    for section in (_operating_points(info), _calibration(info), _subgroups(info)):
        if section:
            lines += ["", *section]
    return lines


def _operating_points(info: CardInfo) -> list[str]:
    """The decision thresholds saved in config.json, with sensitivity and specificity on the split they were chosen
    on (where this card's evaluation chose them: optimistic, and said so)."""
    block = info.metrics.get("operating_points")
    if not block or not block.get("per_label"):
        return []
    source = block.get("source", {})
    lines = [
        "### Decision thresholds",
        "",
        f"`config.json` holds a decision threshold per label (`decision_thresholds`), chosen by the rule "
        f"`{source.get('rule', 'unknown')}` on the {source.get('split', 'unrecorded')} split; "
        f"{'an image' if source.get('level') == 'image' else 'a study (its maximum over its images)'} is positive "
        "when its probability is at or above it. On that split (95% Wilson intervals):",
        "",
    ]
    rows = [
        [label, f"{point['threshold']:.4g}", rate_text(point, "sensitivity", "—"), rate_text(point, "specificity", "—")]
        for label, point in block["per_label"].items()
    ]
    lines += markdown_table(["Finding", "Threshold", "Sensitivity", "Specificity"], rows, "lrrr")
    if block.get("optimistic"):
        lines += [
            "",
            "These rates are measured on the split the thresholds were chosen on, so they are optimistic; "
            "expect lower on new studies.",
        ]
    return lines


def _calibration(info: CardInfo) -> list[str]:
    result = info.metrics.get("calibration")
    if not result:
        return []
    if "skipped" in result:
        return ["### Calibration", "", str(result["skipped"])]
    rows = [
        [label, f"{entry['ece']:.4f}", f"{entry['brier']:.4f}"]
        for label in _ordered_labels(info.labels, result.get("per_label", {}))
        for entry in [result["per_label"][label]]
    ]
    if not rows:
        return []
    return [
        "### Calibration",
        "",
        f"Expected calibration error over {result.get('bins', 15)} equal-width probability bins (0: the "
        "probabilities are the observed frequencies) and the Brier score, on the same split:",
        "",
        *markdown_table(["Finding", "ECE", "Brier"], rows, "lrr"),
    ]


def _subgroups(info: CardInfo) -> list[str]:
    result = info.subgroups
    if not result or not result.get("attributes"):
        return []
    labels = list(result.get("labels") or [])
    rows = []
    for attribute, entry in result["attributes"].items():
        for group, scored in entry["groups"].items():
            cells = []
            for label in labels:
                label_entry = scored["per_label"].get(label, {})
                auroc = _finite(label_entry.get("auroc"))
                cells.append("too small" if label_entry.get("too_small") or auroc is None else f"{auroc:.3f}")
            rows.append([f"{attribute}: {group}", _format_value(scored.get("n")), *cells])
    minimum = result.get("min_class", 10)
    unit = "Images" if result.get("unit") == "image" else "Studies"
    return [
        "### Subgroups",
        "",
        f"AUROC per group of the same split (a group needs {minimum} positives and {minimum} negatives of a finding "
        "to be scored; intervals and the false-negative rate at the thresholds are in `subgroups.md`):",
        "",
        *markdown_table(["Group", unit, *labels], rows, "lr" + "r" * len(labels)),
    ]


def _usage(info: CardInfo) -> list[str]:
    model_id = info.repo_id or PLACEHOLDER_REPO_ID
    remote = ", trust_remote_code=True" if info.trust_remote_code else ""
    lines = ["## How to use", ""]
    if info.trust_remote_code:
        lines += [
            "The modelling code ships next to the weights, so loading needs `trust_remote_code=True` "
            "(read the code files first).",
            "",
        ]
    lines += [
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModelForImageClassification",
        "",
        f'model_id = "{model_id}"',
        f"processor = AutoImageProcessor.from_pretrained(model_id{remote})",
        f"model = AutoModelForImageClassification.from_pretrained(model_id{remote}).eval()",
        "",
        'image = Image.open("chest_xray.png")  # a grey-scale radiograph; the processor resizes and normalises it',
        'inputs = processor(images=image, return_tensors="pt")',
        "with torch.no_grad():",
        "    logits = model(**inputs).logits",
        "probabilities = torch.sigmoid(logits)[0]  # multi-label: sigmoid per finding, not softmax",
        "for index, probability in enumerate(probabilities.tolist()):",
        '    print(f"{model.config.id2label[index]}: {probability:.3f}")',
        "```",
        "",
        "Or with a pipeline, which returns every finding's probability with `top_k=None`:",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classifier = pipeline("image-classification", model="{model_id}", top_k=None{remote})',
        'for prediction in classifier("chest_xray.png", function_to_apply="sigmoid"):',
        '    print(prediction["label"], round(prediction["score"], 3))',
        "```",
    ]
    return lines


def _limitations(info: CardInfo) -> list[str]:
    lines = [
        "## Intended use and limitations",
        "",
        "- **Research only.** This model is a benchmark artefact. It is not a medical device, has not been "
        "clinically validated or cleared by any regulator, and must not be used for diagnosis, triage or any "
        "decision about a patient.",
        "- **Noisy labels.** CheXpert's training labels were extracted from free-text radiology reports by an "
        "automatic labeler (the CheXpert labeler), not read from the images; they contain errors and many "
        "uncertain mentions, whose handling (the uncertainty policy above) changes the results.",
        "- **One hospital.** CheXpert comes from a single institution (Stanford Hospital) and its patient "
        "population, scanners and protocols. Expect lower and differently calibrated performance under "
        "distribution shift: other hospitals, devices, populations, paediatric patients, or other image processing.",
        "- **No fairness evaluation.** No subgroup analysis (by sex, age, race, view or device) was done; "
        "performance may differ between groups.",
        "- **Probabilities are not calibrated** for any particular decision threshold, and AUROC says nothing about "
        "how a threshold would perform in a given clinical setting.",
    ]
    if info.synthetic_data:
        lines.append(
            "- **Synthetic training data.** This particular model never saw a real radiograph; it only demonstrates "
            "the training and evaluation pipeline."
        )
    return lines


def _citation() -> list[str]:
    return [
        "## Citation",
        "",
        "The data set and the evaluation protocol (five competition labels, study-level scoring) are from:",
        "",
        "```bibtex",
        CHEXPERT_BIBTEX,
        "```",
    ]


def _body(info: CardInfo) -> str:
    sections = [_overview(info), _recipe(info), _data(info), _results(info), _usage(info), _limitations(info)]
    sections.append(_citation())
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


# --- public API ---------------------------------------------------------------------------------------------------


def build_model_card(info: CardInfo) -> ModelCard:
    """The card for ``info``: metadata and model-index through huggingface_hub, and the Markdown body.

    Raises ValueError (naming the field) for an absolute path, a patient identifier or a token in any field.
    """
    check_card_info(info)
    data = _card_data(info)
    # Parsing the rendered text (rather than attaching `data`) proves the YAML block reads back.
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(info)}")


def write_model_card(folder: str | Path, info: CardInfo) -> Path:
    """Write ``folder/README.md`` with :func:`chexpert_hf.utils.atomic_write` (on disk, then renamed; the mode of
    any new file under the umask); returns its path.

    The card is built before anything touches the disk, so a refused ``info`` leaves the folder as it was.
    """
    text = str(build_model_card(info))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MODEL_CARD
    atomic_write(target, lambda name: Path(name).write_text(text, encoding="utf-8", newline=""))
    return target


def _load_card(card: ModelCard | str | Path) -> ModelCard:
    if isinstance(card, ModelCard):
        return card
    path = Path(card)
    if path.is_dir():
        path = path / MODEL_CARD
    if not path.is_file():
        # ModelCard.load would treat a missing path as a Hub repo id and go to the network.
        raise FileNotFoundError(f"no model card at {path}")
    return ModelCard.load(path)


def card_metrics(card: ModelCard | str | Path) -> dict[str, float]:
    """The AUROCs of a card's model-index, read through huggingface_hub's parser.

    ``card`` is a ModelCard, a README.md path or the folder holding it (never a Hub id: no network). Returns
    ``{"mean_auroc": ..., "mean_auroc_all": ..., "<Label>": auroc, ...}`` with the keys the card holds (a NaN mean
    is not in the card, so it is not in the result).
    """
    results = _load_card(card).data.eval_results or []
    found: dict[str, float] = {}
    for result in results:
        if result.metric_type != METRIC_TYPE:
            continue
        name = result.metric_name or ""
        if name == _MEAN_ALL_NAME:
            key = "mean_auroc_all"
        elif _MEAN_COMPETITION_PATTERN.fullmatch(name):
            key = "mean_auroc"
        elif name.startswith(_LABEL_METRIC_PREFIX):
            key = name[len(_LABEL_METRIC_PREFIX) :]
        else:
            raise ValueError(f"unexpected {METRIC_TYPE} metric {name!r} in the model-index")
        if key in found:
            raise ValueError(f"the model-index holds {name!r} twice")
        found[key] = float(result.metric_value)
    return found


__all__ = ["CardInfo", "build_model_card", "card_metrics", "check_card_info", "format_duration", "write_model_card"]
