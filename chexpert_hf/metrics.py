"""CheXpert validation scoring: per-label AUROC and AUPRC, the competition mean, and study-level aggregation.

This module is the single implementation of validation scoring; the Trainer's ``compute_metrics``, the CLI and the
``evaluate`` module in :data:`EVALUATE_MODULE` all call :func:`score`.

Evaluation targets
------------------
Raw CheXpert labels are ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) and ``NaN`` (blank: the finding was
not mentioned in the report). :func:`evaluation_targets` turns them into the targets that are scored:

* ``1`` -> ``1``;
* ``0`` and ``NaN`` -> ``0``: an unmentioned finding counts as absent, as in the CheXpert paper;
* ``-1`` -> ``NaN``: an uncertain entry is left out of that label's score only (the image still counts for the
  other labels).

The official validation set was labelled by radiologists and has neither ``-1`` nor blanks, so there the mapping is
the identity; it matters when scoring a split carved out of the (automatically labelled) training set.

Studies
-------
CheXpert scores studies, not images: with ``study_ids`` the probability of a study is the maximum over its images
(as in the CheXpert paper) and its target is the maximum over its images' non-``NaN`` targets.

A label whose targets hold one class only (the official validation set has no Fracture positive, for example) has
no AUROC; it is listed in ``skipped_labels`` and counts in neither mean.

The metrics are rank-based, so any score that is monotone in the probability (logits, for example) gives the same
numbers; only finiteness is checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from chexpert_hf.labels import COMPETITION_LABELS, check_label_names

logger = logging.getLogger(__name__)

#: Folder of the ``evaluate`` module: ``evaluate.load(str(EVALUATE_MODULE))``.
EVALUATE_MODULE: Path = Path(__file__).resolve().parent / "chexpert_auroc"

_RAW_VALUES = (-1.0, 0.0, 1.0)


def evaluation_targets(raw: np.ndarray) -> np.ndarray:
    """Float targets for scoring from raw labels: ``1`` -> 1, ``0`` and blank ``NaN`` -> 0, uncertain ``-1`` -> NaN.

    ``NaN`` in the result means "leave this entry out of its label's score". Any value other than 1, 0, -1 or NaN
    is a ValueError: it would mean the labels were already transformed (by an uncertainty policy, say).
    """
    values = np.asarray(raw, dtype=np.float64)
    bad = ~(np.isnan(values) | np.isin(values, _RAW_VALUES))
    if bad.any():
        found = sorted(set(values[bad].tolist()))
        raise ValueError(f"raw CheXpert labels must be 1, 0, -1 or NaN; found {found[:5]}")
    targets = np.where(np.isnan(values), 0.0, values)
    targets[values == -1.0] = np.nan
    return targets


def aggregate_studies(
    probabilities: np.ndarray, targets: np.ndarray, study_ids: Sequence[Any] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per study, in order of first appearance: ``(probabilities, targets, study_ids)``.

    The probability of a study is the maximum over its images; its target is the maximum of its images' non-NaN
    targets (NaN when they are all NaN), so one positive image makes the study positive.
    """
    probabilities, targets = _check_pair(probabilities, targets)
    ids = np.asarray(study_ids)
    if ids.shape != (len(probabilities),):
        raise ValueError(f"study_ids has shape {ids.shape}; expected one id per row, ({len(probabilities)},)")
    if len(ids) == 0:
        return probabilities, targets, ids
    study, first_rows = _study_index(ids)
    order = np.argsort(study, kind="stable")
    starts = np.flatnonzero(np.diff(study[order], prepend=-1))
    study_probabilities = np.maximum.reduceat(probabilities[order], starts, axis=0)
    study_targets = np.fmax.reduceat(targets[order], starts, axis=0)  # fmax ignores NaN unless both are NaN
    return study_probabilities, study_targets, ids[first_rows]


def _study_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row the index of its study, studies numbered by first appearance; and each study's first row."""
    _, first_rows, inverse = np.unique(ids, return_index=True, return_inverse=True)
    appearance = np.argsort(first_rows)  # sorted-unique positions in order of first appearance
    rank = np.empty_like(appearance)
    rank[appearance] = np.arange(len(appearance))
    return rank[inverse.reshape(-1)], first_rows[appearance]


def score(
    probabilities: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    study_ids: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """AUROC and AUPRC per label, their means, and the labels that could not be scored.

    ``probabilities`` and ``targets`` have shape ``(N, L)``; ``targets`` are evaluation targets (0, 1, NaN for
    "left out"; see :func:`evaluation_targets`) and ``label_names`` names the ``L`` columns. With ``study_ids``
    (one per row) the rows are first aggregated to studies (:func:`aggregate_studies`).

    Returns ``{"mean_auroc", "mean_auroc_all", "n_studies" | "n_images", "per_label", "skipped_labels"}``:
    ``mean_auroc`` averages the competition labels that were scored, ``mean_auroc_all`` every scored label (NaN
    when there are none); ``per_label`` maps each scored label to its auroc, auprc, positives and negatives.
    """
    names = check_label_names(label_names)
    probabilities, targets = _check_pair(probabilities, targets)
    if probabilities.shape[1] != len(names):
        raise ValueError(f"probabilities have {probabilities.shape[1]} columns but {len(names)} label names were given")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinite values")
    bad = ~(np.isnan(targets) | np.isin(targets, (0.0, 1.0)))
    if bad.any():
        found = sorted(set(targets[bad].tolist()))[:5]
        raise ValueError(f"targets must be 0, 1 or NaN; found {found} (use evaluation_targets on raw labels)")
    count_key = "n_images"
    if study_ids is not None:
        probabilities, targets, _ = aggregate_studies(probabilities, targets, study_ids)
        count_key = "n_studies"

    per_label = {}
    for column, name in enumerate(names):
        result = _score_label(probabilities[:, column], targets[:, column])
        if result is not None:
            per_label[name] = result
    competition = [per_label[name]["auroc"] for name in COMPETITION_LABELS if name in per_label]
    return {
        "mean_auroc": _mean(competition),
        "mean_auroc_all": _mean([result["auroc"] for result in per_label.values()]),
        count_key: len(probabilities),
        "per_label": per_label,
        "skipped_labels": [name for name in names if name not in per_label],
    }


def _check_pair(probabilities: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 arrays of the same ``(N, L)`` shape, or a ValueError that names the mismatch."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, L); got {probabilities.shape}")
    if targets.shape != probabilities.shape:
        raise ValueError(f"targets have shape {targets.shape} but probabilities have shape {probabilities.shape}")
    return probabilities, targets


def _score_label(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float | int] | None:
    """AUROC, AUPRC and class counts for one label over its non-NaN targets; None when a class is missing."""
    kept = ~np.isnan(targets)
    truth, scores = targets[kept], probabilities[kept]
    positives = int((truth == 1.0).sum())
    negatives = int((truth == 0.0).sum())
    if positives == 0 or negatives == 0:
        return None  # AUROC is undefined; sklearn would raise (AUROC) or warn (AUPRC)
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "auprc": float(average_precision_score(truth, scores)),
        "positives": positives,
        "negatives": negatives,
    }


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def snake_case(label: str) -> str:
    """``"Pleural Effusion"`` -> ``"pleural_effusion"``: a label name as part of a metric key."""
    return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")


def flat_metrics(scores: dict[str, Any]) -> dict[str, float]:
    """The flat metrics the Trainer logs (it adds the ``eval_`` prefix): means, per-label AUROC/AUPRC, the count.

    Keys: ``mean_auroc``, ``mean_auroc_all``, ``auroc_<label>`` and ``auprc_<label>`` for each scored label
    (``<label>`` in :func:`snake_case`), and ``n_studies`` or ``n_images``. Skipped labels have no key.
    """
    flat = {"mean_auroc": scores["mean_auroc"], "mean_auroc_all": scores["mean_auroc_all"]}
    for name, result in scores["per_label"].items():
        flat[f"auroc_{snake_case(name)}"] = result["auroc"]
        flat[f"auprc_{snake_case(name)}"] = result["auprc"]
    for count_key in ("n_studies", "n_images"):
        if count_key in scores:
            flat[count_key] = int(scores[count_key])
    return flat


class SplitScorer:
    """``compute_metrics`` for the Trainer: scores a validation split given the rows' raw labels and studies.

    The Trainer hands over ``label_ids = (targets, row_index)``; ``row_index`` says which dataset row each
    prediction belongs to, so the score is right whatever order a multi-process gather produced, and a row that
    arrives twice (padding to equal batches) counts once. ``last_scores`` keeps the full :func:`score` result.
    """

    def __init__(self, raw_labels: np.ndarray, study_ids: Sequence[str], label_names: Sequence[str],
                 level: str = "study"):
        if level not in ("study", "image"):
            raise ValueError(f"unknown evaluation level {level!r}; choose study or image")
        self.targets = evaluation_targets(raw_labels)
        self.study_ids = np.asarray(study_ids)
        self.label_names = list(label_names)
        self.level = level
        self.last_scores: dict[str, Any] | None = None
        self._reported_skips: list[str] = []

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits = np.asarray(prediction.predictions, dtype=np.float64)
        rows = np.asarray(prediction.label_ids[1], dtype=np.int64).reshape(-1)
        rows, first = np.unique(rows, return_index=True)
        if len(rows) != len(self.targets):
            raise ValueError(f"scored {len(rows)} distinct rows, the split has {len(self.targets)}")
        probabilities = 1.0 / (1.0 + np.exp(-logits[first]))  # sigmoid: labels are independent
        studies = self.study_ids[rows] if self.level == "study" else None
        self.last_scores = score(probabilities, self.targets[rows], self.label_names, study_ids=studies)
        skipped = self.last_scores["skipped_labels"]
        if skipped and skipped != self._reported_skips:
            logger.warning("not scored (one class only in this split): %s", ", ".join(skipped))
            self._reported_skips = skipped
        return flat_metrics(self.last_scores)


def scores_table(scores: dict[str, Any]) -> str:
    """The per-label scores as a plain-text table."""
    level = "studies" if "n_studies" in scores else "images"
    lines = [f"{'label':<28}{'AUROC':>8}{'AUPRC':>8}{'pos':>7}{'neg':>7}"]
    for label, entry in scores["per_label"].items():
        lines.append(f"{label:<28}{entry['auroc']:>8.4f}{entry['auprc']:>8.4f}"
                     f"{entry['positives']:>7}{entry['negatives']:>7}")
    for label in scores["skipped_labels"]:
        lines.append(f"{label:<28}{'skipped: one class only':>30}")
    lines.append(f"mean AUROC, competition labels: {scores['mean_auroc']:.4f}; all scored labels: "
                 f"{scores['mean_auroc_all']:.4f} ({scores.get('n_' + level)} {level})")
    return "\n".join(lines)
