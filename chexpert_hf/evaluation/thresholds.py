"""Operating points: a decision threshold per label, chosen by a rule on one split, and what it gives on another.

A study (image) is called positive for a label when its score is **at or above** the label's threshold, as
``sklearn.metrics.roc_curve`` counts its points. Three rules choose a threshold from a split's scores and targets
(evaluation targets: 1, 0, NaN = left out):

* ``youden`` (the default): the threshold that maximises sensitivity + specificity − 1 (Youden's J); of tied
  thresholds, the highest (the most specific);
* ``sensitivity:X``: the highest threshold whose sensitivity is at least ``X`` (the most specific one that finds
  that share of the positives);
* ``specificity:X``: the lowest threshold whose specificity is at least ``X`` (the most sensitive one that clears
  that share of the negatives).

Thresholds are scores the split actually holds, so a threshold applied again to the same split gives exactly the
sensitivity and specificity the rule saw. When a rule can only be met by calling nothing positive (``specificity:1``
with a negative scored highest), the threshold is the next float above the highest score.

A model keeps its thresholds in ``config.json`` (:data:`CONFIG_THRESHOLDS`, a dict by label name) with the rule and
the split they were chosen on (:data:`CONFIG_THRESHOLD_SOURCE`), so they travel with ``save_pretrained`` /
``from_pretrained`` and with the checkpoint on the Hub. Sensitivity, specificity, PPV and NPV at a threshold come with
95% Wilson score intervals (statsmodels), which stay inside [0, 1] and behave at 0 and n successes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chexpert_hf.evaluation.metrics import CONFIDENCE

#: ``config.json`` keys: the thresholds by label name, and where they come from (rule, split, level, studies).
CONFIG_THRESHOLDS = "decision_thresholds"
CONFIG_THRESHOLD_SOURCE = "decision_threshold_source"

DEFAULT_RULE = "youden"
_RULE = re.compile(r"^(youden|(sensitivity|specificity):([0-9]*\.?[0-9]+))$")


@dataclass(frozen=True)
class ThresholdRule:
    kind: str  # "youden", "sensitivity" or "specificity"
    target: float | None = None  # the sensitivity or specificity to reach

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_rule(text: str) -> ThresholdRule:
    """``youden``, ``sensitivity:0.9`` or ``specificity:0.9`` (a target in (0, 1]); anything else is a ValueError
    that says what is accepted."""
    match = _RULE.match(str(text).strip())
    target = float(match.group(3)) if match and match.group(3) else None
    if not match or (target is not None and not 0.0 < target <= 1.0):
        raise ValueError(
            f"threshold rule {text!r} is not one of: youden, sensitivity:X, specificity:X (X in (0, 1], "
            "for example sensitivity:0.9)"
        )
    return ThresholdRule(match.group(2) or "youden", target)


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """The Wilson score interval of a proportion ``successes / total``; None when ``total`` is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if total <= 0:
        return None
    low, high = proportion_confint(int(successes), int(total), alpha=1.0 - confidence, method="wilson")
    return [float(low), float(high)]


def _labelled(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    kept = ~np.isnan(truth)
    return scores[kept], truth[kept]


def choose_threshold(scores: np.ndarray, truth: np.ndarray, rule: ThresholdRule | str) -> float | None:
    """The threshold ``rule`` picks for one label (NaN targets left out); None when the label has one class only."""
    from sklearn.metrics import roc_curve

    rule = parse_rule(rule) if isinstance(rule, str) else rule
    scores, truth = _labelled(scores, truth)
    if not (truth == 1).any() or not (truth == 0).any():
        return None
    fpr, tpr, cut = roc_curve(truth, scores, drop_intermediate=False)  # cut decreases; cut[0] is +inf
    if rule.kind == "youden":
        chosen = int(np.argmax(tpr - fpr))  # the first maximum: the highest threshold among ties
    elif rule.kind == "sensitivity":
        chosen = int(np.argmax(tpr >= rule.target - 1e-12))  # tpr increases: the first that reaches the target
    else:
        meets = np.flatnonzero(1.0 - fpr >= rule.target - 1e-12)  # fpr increases: the last that keeps the target
        chosen = int(meets[-1])
    if not math.isfinite(cut[chosen]):  # nothing is called positive: just above the highest score
        return float(np.nextafter(scores.max(), np.inf))
    return float(cut[chosen])


def choose_thresholds(
    scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], rule: ThresholdRule | str
) -> dict[str, float]:
    """A threshold per label (by name) for every label with both classes."""
    chosen = {}
    for column, label in enumerate(labels):
        threshold = choose_threshold(scores[:, column], targets[:, column], rule)
        if threshold is not None:
            chosen[label] = threshold
    return chosen


def thresholds_with_source(
    scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], rule: ThresholdRule | str, split: str, level: str
) -> tuple[dict[str, float], dict[str, Any]]:
    """:func:`choose_thresholds` on the rows given, and the record of where they come from (rule, split, level,
    count of rows) that is saved beside them in ``config.json``."""
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    source = {"rule": str(rule), "split": split, "level": level, "count": int(len(scores))}
    return choose_thresholds(scores, targets, labels, rule), source


def operating_point(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts, sensitivity, specificity, PPV and NPV (each with its 95% Wilson interval; None where its
    denominator is 0) of calling ``score >= threshold`` positive; NaN targets left out."""
    scores, truth = _labelled(scores, truth)
    called = scores >= threshold
    positive = truth == 1
    tp, fn = int((called & positive).sum()), int((~called & positive).sum())
    fp, tn = int((called & ~positive).sum()), int((~called & ~positive).sum())
    point: dict[str, Any] = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, hits, total in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        point[name] = hits / total if total else None
        point[f"{name}_ci95"] = wilson_interval(hits, total)
    return point


def operating_points(
    scores: np.ndarray, targets: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """:func:`operating_point` for every label that has a threshold, by label name."""
    return {
        label: operating_point(scores[:, column], targets[:, column], thresholds[label])
        for column, label in enumerate(labels)
        if label in thresholds
    }


def threshold_split_name(validation_split: str) -> str:
    """How a training run's validation split is named where its thresholds are recorded: ``validation`` for
    CheXpert's official one (the split ``chexpert-hf evaluate --split validation`` scores), else the held-out share
    of the training patients (``train, patients:0.1 held out``), which no later evaluation scores again."""
    return "validation" if validation_split == "official" else f"train, {validation_split} held out"


def saved_thresholds(config: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """The thresholds a model's config holds (by label name) and where they were chosen; empty dicts when none."""
    from chexpert_hf.labels import canonical_label

    thresholds = getattr(config, CONFIG_THRESHOLDS, None) or {}
    source = getattr(config, CONFIG_THRESHOLD_SOURCE, None) or {}
    if not isinstance(thresholds, Mapping) or not isinstance(source, Mapping):
        raise ValueError(f"config.json: {CONFIG_THRESHOLDS} and {CONFIG_THRESHOLD_SOURCE} must be objects (dicts)")
    checked = {}
    for label, value in thresholds.items():
        name = canonical_label(str(label))
        if name is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(
                f"config.json: {CONFIG_THRESHOLDS}[{label!r}] = {value!r}; each key must be a CheXpert label and "
                "each value a finite number (`chexpert-hf evaluate --set-thresholds RULE` writes them again)"
            )
        checked[name] = float(value)
    return checked, dict(source)


def store_thresholds(config: Any, thresholds: Mapping[str, float], source: Mapping[str, Any]) -> None:
    """Put thresholds (and their source: rule, split, level, count) on a model config, for ``save_pretrained``."""
    setattr(config, CONFIG_THRESHOLDS, {label: float(value) for label, value in thresholds.items()})
    setattr(config, CONFIG_THRESHOLD_SOURCE, dict(source))


def rate_text(point: Mapping[str, Any], name: str, missing: str = "n/a") -> str:
    """``point[name]`` with its interval, ``0.812 (0.747–0.922)``; ``missing`` where the rate is undefined."""
    value, interval = point.get(name), point.get(f"{name}_ci95")
    if not isinstance(value, int | float) or not math.isfinite(value):
        return missing
    return f"{value:.3f} ({interval[0]:.3f}–{interval[1]:.3f})" if interval else f"{value:.3f}"


def operating_points_markdown(block: Mapping[str, Any]) -> list[str]:
    """The ``## Operating points`` section of ``metrics.md``: where the thresholds come from, a warning when they
    were chosen on the split scored, and per label the threshold, the counts and the four rates with intervals."""
    from chexpert_hf.labels import COMPETITION_LABELS
    from chexpert_hf.utils import markdown_table

    source = block["source"]
    chosen_level, level = source.get("level", "study"), block.get("evaluated_level", "study")
    where = f"chosen by the rule `{source.get('rule', 'unknown')}` on {source.get('split', 'an unrecorded split')}"
    if source.get("count"):
        where += f" ({source['count']:,} {'studies' if chosen_level == 'study' else 'images'})"
    lines = [
        "## Operating points",
        "",
        f"At the decision thresholds saved with the model, {where}; {'a study' if level == 'study' else 'an image'} "
        "is called positive when its score is at or above the label's threshold. 95% Wilson intervals.",
    ]
    if block.get("optimistic"):
        lines += [
            "",
            f"**Optimistic:** the thresholds were chosen on this split ({block['evaluated_split']}), so these rates "
            "are what the rule saw, not what a new set of studies would give.",
        ]
    if chosen_level != level:
        lines += [
            "",
            f"**Levels differ:** the thresholds were chosen on {chosen_level} scores and are applied here to "
            f"{level} scores (a study's score is the maximum over its images, so it is higher than its images').",
        ]
    if block.get("without_threshold"):
        lines += [
            "",
            f"No threshold for {', '.join(block['without_threshold'])}: one class only where they were chosen.",
        ]
    rows = []
    for label, point in block["per_label"].items():
        rows.append(
            [
                f"{label} ★" if label in COMPETITION_LABELS else label,
                f"{point['threshold']:.4g}",
                rate_text(point, "sensitivity"),
                rate_text(point, "specificity"),
                rate_text(point, "ppv"),
                rate_text(point, "npv"),
                f"{point['tp']}/{point['fp']}/{point['tn']}/{point['fn']}",
            ]
        )
    header = ["label", "threshold", "sensitivity", "specificity", "PPV", "NPV", "TP/FP/TN/FN"]
    return [*lines, "", *markdown_table(header, rows, "lrrrrrr", tight_rule=True)]
