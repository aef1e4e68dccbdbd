"""Ensembles: several models' scores on the same rows combined into one score, scored as one model.

Every top entry of the CheXpert leaderboard was an ensemble. Two ways to combine, per label:

* ``mean`` (the default): the mean of the members' scores. For probabilities it is a probability again, so
  calibration and thresholds apply to it;
* ``rank``: the mean of the members' ranks (``scipy.stats.rankdata``, ties averaged, divided by the number of rows,
  so in (0, 1]). For members whose scores are on different scales (logits of one model, probabilities of another, a
  sum of several), where a mean would let one member dominate. A mean rank is not a probability.

The members must score the same rows (the caller matches them first) and the same labels, named alike; their
column order may differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COMBINATIONS = ("mean", "rank")


def combine(members: Sequence[np.ndarray], how: str = "mean") -> np.ndarray:
    """The ensemble's ``(N, L)`` scores from the members' ``(N, L)`` scores (same rows, same column order)."""
    if how not in COMBINATIONS:
        raise ValueError(f"unknown ensemble combination {how!r}; choose one of: {', '.join(COMBINATIONS)}")
    if not members:
        raise ValueError("an ensemble needs at least one member")
    arrays = [np.asarray(member, dtype=np.float64) for member in members]
    shapes = [array.shape for array in arrays]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"ensemble members must all have the same (rows, labels) shape; got {shapes}")
    stacked = np.stack(arrays)
    if how == "rank":
        from scipy.stats import rankdata

        stacked = rankdata(stacked, axis=1) / stacked.shape[1]  # per member and label, over the rows
    return stacked.mean(axis=0)


def check_same_labels(names: Sequence[str], labels: Sequence[Sequence[str]]) -> None:
    """A ValueError naming the member and the difference unless every member scores the same set of labels."""
    first = set(labels[0])
    for name, member in zip(names[1:], labels[1:], strict=True):
        missing, extra = sorted(first - set(member)), sorted(set(member) - first)
        if missing or extra:
            parts = [f"lacks {missing}" if missing else "", f"adds {extra}" if extra else ""]
            raise ValueError(
                f"ensemble member {name} scores other labels than {names[0]}: "
                f"{'; '.join(part for part in parts if part)}. Members must score the same labels"
            )


def column_order(labels: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Indices that put columns named ``labels`` in the order of ``wanted``."""
    return [list(labels).index(label) for label in wanted]
