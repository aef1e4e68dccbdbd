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

Confidence intervals
--------------------
With ``n_bootstrap`` resamples, :func:`score` adds 95% percentile intervals (``auroc_ci95`` per label,
``mean_auroc_ci95``) from a bootstrap over studies (images at image level): each resample draws the studies with
replacement, once for all labels, so the interval of the mean accounts for the labels' correlation. Studies are put
in the order of their ids first, so the interval depends on the seed and the data, not on the row order. A resample
in which a label has one class only has no AUROC for that label and is left out of its interval (counted in
``bootstrap.undefined``).

Probabilities
-------------
The metrics are rank-based, so only the order of the scores counts; only finiteness is checked. Any finite real
number is a score (a logit, the sum of an ensemble's outputs); the result says in ``scores_are_probabilities``
whether every score lies in [0, 1], which metrics that read a score as a probability need. The order must not
be lost on the way: a float32 sigmoid is exactly 1.0 from a logit of about 16.7, so confident studies would tie. Every
path turns logits into probabilities with :func:`sigmoid`, in float64 (the Trainer's :class:`SplitScorer`, ``chexpert-hf
evaluate --model``, ``predict``), so they score the same numbers bit for bit. float64 tells logits apart to about
``1e-16 / (1 - p)``: 1e-5 at a logit of 25, 1e-3 at 30; they start to tie near 34 and are all 1.0 above 36.7, in
every path alike. Written out (``predictions.csv``), probabilities keep all 17 digits, so a file scored again gives
the same result.
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

#: Confidence level of the bootstrap intervals, and the resamples the reports use.
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Independent per-label probabilities from logits, in float64: the one conversion every scoring path uses."""
    logits = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf below x = -709: the probability is 0, rightly
        return 1.0 / (1.0 + np.exp(-logits))


def scores_are_probabilities(scores: np.ndarray) -> bool:
    """Whether every score lies in [0, 1]. The rank metrics (AUROC, AUPRC) take any finite score (logits, sums of
    several models' outputs); metrics that read a score as a probability (calibration) need this to be true."""
    scores = np.asarray(scores, dtype=np.float64)
    return bool(np.all((scores >= 0.0) & (scores <= 1.0)))


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


def scored_rows(
    probabilities: np.ndarray, targets: np.ndarray, study_ids: Sequence[Any] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The rows :func:`score` scores: per study (aggregated) with ``study_ids``, else as given."""
    if study_ids is None:
        return _check_pair(probabilities, targets)
    study_probabilities, study_targets, _ = aggregate_studies(probabilities, targets, study_ids)
    return study_probabilities, study_targets


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
    *,
    row_ids: Sequence[Any] | np.ndarray | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """AUROC and AUPRC per label, their means, and the labels that could not be scored.

    ``probabilities`` and ``targets`` have shape ``(N, L)``; ``targets`` are evaluation targets (0, 1, NaN for
    "left out"; see :func:`evaluation_targets`) and ``label_names`` names the ``L`` columns. With ``study_ids``
    (one per row) the rows are first aggregated to studies (:func:`aggregate_studies`).

    Returns ``{"mean_auroc", "mean_auroc_all", "n_studies" | "n_images", "per_label", "skipped_labels"}``:
    ``mean_auroc`` averages the competition labels that were scored, ``mean_auroc_all`` every scored label (NaN
    when there are none); ``per_label`` maps each scored label to its auroc, auprc, positives and negatives.
    With ``n_bootstrap > 0`` each scored label also gets ``auroc_ci95`` (``[low, high]``), the result gets
    ``mean_auroc_ci95`` and ``mean_auroc_all_ci95``, and ``bootstrap`` records the settings. The bootstrap
    resamples studies in the order of their ids (rows in the order of ``row_ids``, when given, at image level), so
    the same data in another row order gets the same intervals.
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
    ids = np.arange(len(probabilities)) if row_ids is None else np.asarray(row_ids)
    if ids.shape != (len(probabilities),):
        raise ValueError(f"row_ids has shape {ids.shape}; expected one id per row, ({len(probabilities)},)")
    if study_ids is not None:
        probabilities, targets, ids = aggregate_studies(probabilities, targets, study_ids)
        count_key = "n_studies"

    per_label = {}
    for column, name in enumerate(names):
        result = _score_label(probabilities[:, column], targets[:, column])
        if result is not None:
            per_label[name] = result
    competition = [per_label[name]["auroc"] for name in COMPETITION_LABELS if name in per_label]
    result = {
        "mean_auroc": _mean(competition),
        "mean_auroc_all": _mean([result["auroc"] for result in per_label.values()]),
        count_key: len(probabilities),
        "per_label": per_label,
        "skipped_labels": [name for name in names if name not in per_label],
        "scores_are_probabilities": scores_are_probabilities(probabilities),
    }
    if n_bootstrap > 0 and per_label:
        order = np.argsort(ids, kind="stable")  # resample in id order: the interval ignores the row order
        scored = [names.index(name) for name in per_label]
        draws = bootstrap_auroc(probabilities[order][:, scored], targets[order][:, scored], n_bootstrap, seed)
        low, high = 50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)
        undefined = {}
        for column, name in enumerate(per_label):
            values = draws[:, column]
            finite = values[np.isfinite(values)]
            per_label[name]["auroc_ci95"] = _interval(finite, low, high)
            if len(finite) < len(values):
                undefined[name] = int(len(values) - len(finite))
        competition_columns = [column for column, name in enumerate(per_label) if name in COMPETITION_LABELS]
        result["mean_auroc_ci95"] = _mean_interval(draws[:, competition_columns], low, high)
        result["mean_auroc_all_ci95"] = _mean_interval(draws, low, high)
        result["bootstrap"] = {
            "resamples": int(n_bootstrap),
            "seed": int(seed),
            "confidence": float(confidence),
            "unit": "study" if count_key == "n_studies" else "image",
            "undefined": undefined,
        }
    return result


def bootstrap_auroc(
    probabilities: np.ndarray, targets: np.ndarray, n_resamples: int, seed: int = 0, chunk: int = 200
) -> np.ndarray:
    """AUROC of every column over ``n_resamples`` bootstrap resamples of the rows: an ``(n_resamples, L)`` array.

    Every resample draws ``N`` rows with replacement (one draw shared by all columns) from
    ``numpy.random.default_rng(seed)``; a column's AUROC on a resample is the Mann-Whitney statistic with each row
    weighted by how often it was drawn (ties count one half), which is what ``sklearn.metrics.roc_auc_score``
    gives on the resampled rows, computed for all resamples at once. Rows whose target is NaN are left out of
    their column; a resample without both classes in a column gives NaN there.
    """
    probabilities, targets = _check_pair(probabilities, targets)
    rows = len(probabilities)
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, probabilities.shape[1]))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        drawn = rng.integers(0, rows, size=(size, rows))
        flat = (drawn + rows * np.arange(size)[:, None]).ravel()
        # float32 holds draw counts and their partial sums exactly (below 2**24) at half the memory traffic
        counts = np.bincount(flat, minlength=size * rows).reshape(size, rows).astype(np.float32)
        for column in range(probabilities.shape[1]):
            out[start : start + size, column] = _weighted_auroc(probabilities[:, column], targets[:, column], counts)
    return out


def _weighted_auroc(scores: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one column under each row of ``weights`` (``(B, N)`` draw counts); NaN where a class is absent."""
    order = np.flatnonzero(~np.isnan(truth))
    order = order[np.argsort(scores[order], kind="stable")]
    if len(order) == 0:
        return np.full(len(weights), np.nan)
    drawn = weights[:, order]  # one gather: kept rows, by increasing score
    pos = drawn * (truth[order] == 1.0)  # drawn positives per row
    neg = drawn - pos
    starts = np.flatnonzero(np.diff(scores[order], prepend=-np.inf))  # first row of each group of tied scores
    if len(starts) < len(order):  # ties: a positive and a negative with the same score count one half
        pos = np.add.reduceat(pos, starts, axis=1)
        neg = np.add.reduceat(neg, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # drawn negatives with a strictly lower score
    pairs = pos.sum(axis=1, dtype=np.float64) * neg.sum(axis=1, dtype=np.float64)
    wins = (pos * (below + 0.5 * neg)).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def _interval(values: np.ndarray, low: float, high: float) -> list[float]:
    if len(values) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, low)), float(np.percentile(values, high))]


def _mean_interval(draws: np.ndarray, low: float, high: float) -> list[float] | None:
    """Interval of the per-resample mean over the columns (resamples with an undefined column left out)."""
    if draws.shape[1] == 0:
        return None
    means = draws.mean(axis=1)
    return _interval(means[np.isfinite(means)], low, high)


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
    arrives twice (padding to equal batches) counts once. ``last_scores`` keeps the full :func:`score` result,
    ``last_scored`` the rows it scored (probabilities, targets: per study at study level), for the ROC figure, and
    ``last_probabilities`` every image's probabilities in the split's row order (the run's ``predictions.csv``).
    Set ``n_bootstrap`` before an evaluation to get confidence intervals (left at 0 during training: they are
    only wanted for the final report).
    """

    def __init__(
        self,
        raw_labels: np.ndarray,
        study_ids: Sequence[str],
        label_names: Sequence[str],
        level: str = "study",
        n_bootstrap: int = 0,
        seed: int = 0,
    ):
        if level not in ("study", "image"):
            raise ValueError(f"unknown evaluation level {level!r}; choose study or image")
        self.targets = evaluation_targets(raw_labels)
        self.study_ids = np.asarray(study_ids)
        self.label_names = list(label_names)
        self.level = level
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.last_scores: dict[str, Any] | None = None
        self.last_scored: tuple[np.ndarray, np.ndarray] | None = None
        self.last_probabilities: np.ndarray | None = None  # per image, in the split's row order
        self._reported_skips: list[str] = []

    def __call__(self, prediction: Any) -> dict[str, float]:
        logits = np.asarray(prediction.predictions)
        rows = np.asarray(prediction.label_ids[1], dtype=np.int64).reshape(-1)
        rows, first = np.unique(rows, return_index=True)
        if len(rows) != len(self.targets):
            raise ValueError(f"scored {len(rows)} distinct rows, the split has {len(self.targets)}")
        probabilities = sigmoid(logits[first])  # float64, as every other scoring path: labels are independent
        self.last_probabilities = probabilities  # rows are every row of the split, sorted: its row order
        studies = self.study_ids[rows] if self.level == "study" else None
        self.last_scores = score(
            probabilities,
            self.targets[rows],
            self.label_names,
            study_ids=studies,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
        )
        self.last_scored = scored_rows(probabilities, self.targets[rows], studies)
        skipped = self.last_scores["skipped_labels"]
        if skipped and skipped != self._reported_skips:
            logger.warning("not scored (one class only in this split): %s", ", ".join(skipped))
            self._reported_skips = skipped
        return flat_metrics(self.last_scores)
