"""What a clinical reader asks of an evaluation beyond AUROC, added to one scored evaluation in one place.

Reviewers of chest X-ray classifiers (TRIPOD+AI, CLAIM) ask four more questions of the scored rows (studies at study
level), each answered by its own module and collected here, for ``chexpert-hf evaluate`` and for a training run's
final validation alike:

* what the model does at its decision thresholds (:mod:`~chexpert_hf.evaluation.thresholds`): sensitivity,
  specificity, PPV and NPV with Wilson intervals at the thresholds saved with the model, and on which split they
  were chosen; chosen on the split being scored, they are flagged as optimistic;
* whether its probabilities mean what they say (:mod:`~chexpert_hf.evaluation.calibration`): Brier score, ECE and
  a reliability diagram, for probabilities only;
* how it stands against radiologists on the same studies (:mod:`~chexpert_hf.evaluation.readers`);
* whether it fails some patients more than others (:mod:`~chexpert_hf.evaluation.subgroups`): AUROC and the
  false-negative rate at the thresholds per sex, age band and view.

The first three go into ``metrics.json`` (keys ``operating_points``, ``calibration``, ``readers``) and ``metrics.md``;
subgroups have their own files (``subgroups.json``, ``.md``, ``.png``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from chexpert_hf.evaluation.calibration import calibration
from chexpert_hf.evaluation.metrics import BOOTSTRAP_RESAMPLES
from chexpert_hf.evaluation.readers import compare_readers
from chexpert_hf.evaluation.subgroups import ATTRIBUTES, subgroup_scores
from chexpert_hf.evaluation.thresholds import operating_points

logger = logging.getLogger(__name__)


def parse_subgroups(text: str | None) -> tuple[str, ...] | None:
    """``--subgroups``: None (the default: every attribute the data has), ``none`` (off), or a comma-separated
    subset of ``sex,age,view``; anything else is a ValueError listing them."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    wanted = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [part for part in wanted if part not in ATTRIBUTES]
    if unknown or not wanted:
        raise ValueError(
            f"--subgroups {text!r}: choose a comma-separated subset of {','.join(ATTRIBUTES)}, or none; "
            f"unknown: {unknown or [text]}"
        )
    return wanted


def threshold_block(
    probabilities: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    source: Mapping[str, Any],
    evaluated_split: str,
    evaluated_level: str = "study",
) -> dict[str, Any]:
    """``metrics.json["operating_points"]``: the thresholds' source, the split and level scored, whether it is the
    split they were chosen on (``optimistic``), the labels that have no threshold, and each label's operating point
    there."""
    return {
        "source": dict(source),
        "evaluated_split": evaluated_split,
        "evaluated_level": evaluated_level,
        "optimistic": source.get("split") == evaluated_split,
        "without_threshold": [label for label in labels if label not in thresholds],
        "per_label": operating_points(probabilities, targets, labels, thresholds),
    }


def add_clinical_scores(
    scores: dict[str, Any],
    probabilities: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    *,
    evaluated_split: str,
    evaluated_level: str = "study",
    thresholds: Mapping[str, float] | None = None,
    threshold_source: Mapping[str, Any] | None = None,
    readers: Mapping[str, np.ndarray] | None = None,
    reader_labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Add ``operating_points`` (with thresholds), ``calibration`` (always: a reason when the scores are not
    probabilities) and ``readers`` (with reader reads on the same rows, one column per label of ``reader_labels``,
    by default every label) to ``scores``, in place; returns it."""
    if thresholds:
        scores["operating_points"] = threshold_block(
            probabilities, targets, labels, thresholds, threshold_source or {}, evaluated_split, evaluated_level
        )
    if scores.get("scores_are_probabilities", True):
        scores["calibration"] = calibration(probabilities, targets, labels)
    else:  # outside [0, 1] (calibration says so itself), or inside but not probabilities (mean ranks)
        kind = scores.get("scores_kind", "some lie outside [0, 1]")
        scores["calibration"] = {
            "skipped": f"the scores are not probabilities ({kind}), so calibration, which reads a score as a "
            "probability, is not computed"
        }
    if readers:
        compared = list(reader_labels or labels)
        columns = [list(labels).index(label) for label in compared]
        scores["readers"] = compare_readers(probabilities[:, columns], targets[:, columns], compared, readers)
    return scores


def subgroups_for(
    probabilities: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    groups: Mapping[str, np.ndarray] | None,
    wanted: tuple[str, ...] | None,
    *,
    keys: np.ndarray | None,
    thresholds: Mapping[str, float] | None,
    unit: str,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    source: str = "the ground truth",
) -> dict[str, Any] | None:
    """Subgroup scores for the attributes ``wanted`` (None: every one the data has a value for), or None when none
    is to be scored. Asking for an attribute the data does not have is a ValueError naming ``source``."""
    if wanted == ():
        return None
    available = {name: values for name, values in (groups or {}).items() if any(v is not None for v in values)}
    if wanted is not None:
        lacking = [name for name in wanted if name not in available]
        if lacking:
            raise ValueError(
                f"--subgroups {','.join(wanted)}: {source} has no {', '.join(lacking)} for any "
                f"{unit} (a valid.csv has Sex, Age, Frontal/Lateral and AP/PA columns; the test set's "
                "groundtruth.csv has none)"
            )
        available = {name: available[name] for name in wanted}
    if not available:
        return None
    return subgroup_scores(
        probabilities,
        targets,
        labels,
        available,
        thresholds=thresholds or None,
        n_bootstrap=n_bootstrap,
        seed=seed,
        unit=unit,
        row_ids=keys,
    )
