"""Paired tests in the benchmark: every recipe against the best one, on the same validation studies.

A recipe's predictions are the mean over its finished seeds of each study's probability (every run's final
validation writes ``predictions.csv`` and ``validation_labels.csv``); the recipe with the highest mean AUROC over
seeds is the reference. Each other recipe is tested against it with :func:`chexpert_hf.evaluation.compare.compare`:
DeLong per competition label, the paired bootstrap over studies on the 5-label mean, Holm over every test of the
table. The seed-spread rank says whether recipes differ by more than training noise; the paired test says whether
the seed-averaged models differ on these studies. Runs must have validated on the same studies with the same labels
(``validation_split: official``); otherwise no test is made and the reason is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.evaluation.compare import MEAN, Input, compare
from chexpert_hf.evaluation.evaluate import Matched, match_to_groundtruth, read_groundtruth, read_predictions
from chexpert_hf.outputs import PREDICTIONS_CSV, VALIDATION_LABELS_CSV

logger = logging.getLogger(__name__)


def seed_averaged(run_dirs: Sequence[Path]) -> Matched:
    """The mean over runs of each study's scores, with the runs' ground truth; a run that validated on other
    studies or labels than the first is a ValueError naming it."""
    matched = [
        match_to_groundtruth(
            read_predictions(run_dir / PREDICTIONS_CSV), read_groundtruth(run_dir / VALIDATION_LABELS_CSV)
        )
        for run_dir in run_dirs
    ]
    first = matched[0]
    for other, run_dir in zip(matched[1:], run_dirs[1:], strict=True):
        if not _same_truth(other, first):
            raise ValueError(f"{run_dir} validated on other studies or labels than {run_dirs[0]}")
    scores = np.mean([item.scores for item in matched], axis=0)
    return Matched(first.keys, scores, first.targets, first.labels, first.unit, 0)


def _same_truth(first: Matched, second: Matched) -> bool:
    """The same studies in the same order, the same labels and targets (NaN where the other has NaN)."""
    return (
        first.labels == second.labels
        and np.array_equal(first.keys, second.keys)
        and np.array_equal(first.targets, second.targets, equal_nan=True)
    )


def against_best(finished: Mapping[str, Sequence[Path]], best: str, *, resamples: int, seed: int = 0) -> dict[str, Any]:
    """``{"reference", "recipes": {recipe: {"mean": row, "labels": {label: row}}}, "result"}`` (rows as
    ``compare.json``'s), or ``{"reason": ...}`` when no test could be made."""
    names = [name for name, dirs in finished.items() if dirs]
    if best not in names or len(names) < 2:
        return {"reason": "fewer than two recipes finished a run"}
    missing = [
        str(run_dir / name)
        for dirs in finished.values()
        for run_dir in dirs
        for name in (PREDICTIONS_CSV, VALIDATION_LABELS_CSV)
        if not (run_dir / name).is_file()
    ]
    if missing:
        return {"reason": f"{len(missing)} run file(s) missing, such as {missing[0]} (runs of an older version)"}
    try:
        averaged = {name: seed_averaged(list(finished[name])) for name in names}
    except (ValueError, CheXpertFormatError) as error:
        return {"reason": str(error)}
    reference = averaged[best]
    for name, matched in averaged.items():
        if not _same_truth(matched, reference):
            return {"reason": f"{name} validated on other studies or labels than {best}"}
    inputs = [Input(name, f"mean of {len(finished[name])} seed(s)", averaged[name]) for name in names]
    result = compare(inputs, reference=best, resamples=resamples, seed=seed)
    recipes: dict[str, dict[str, Any]] = {}
    for row in result["comparisons"]:
        entry = recipes.setdefault(row["a"], {"labels": {}})
        if row["label"] == MEAN:
            entry["mean"] = row
        else:
            entry["labels"][row["label"]] = row
    return {"reference": best, "recipes": recipes, "result": result}
