"""Calibration: whether a probability of ``p`` means "positive ``p`` of the time", per label.

AUROC and AUPRC use only the order of the scores; a model can rank well and still say 0.9 where 30% of the studies
are positive. Two numbers per label measure how far the probabilities are from the observed frequencies:

* the **Brier score**, the mean of ``(probability - outcome)**2`` (``sklearn.metrics.brier_score_loss``): lower is
  better; it mixes calibration with discrimination;
* the **expected calibration error** (ECE) over :data:`ECE_BINS` equal-width bins of the probability on [0, 1]:
  the sum over non-empty bins of the bin's share of the rows times ``|fraction positive - mean probability|`` in
  the bin; 0 for perfectly calibrated probabilities.

Bins are ``[a, b)`` half-open, except the last, which is closed (``[a, 1]``), with the edges of
``np.linspace(0, 1, bins + 1)`` (:func:`bin_edges`): a probability exactly on an edge goes to the bin above it, and
1.0 to the last bin. The reliability diagram (:func:`calibration_figure`) plots each bin's fraction positive against
its mean probability, with the diagonal for perfect calibration and the bins' counts.

Targets are evaluation targets (1, 0, NaN = left out; see :func:`chexpert_hf.evaluation.metrics.evaluation_targets`);
a NaN entry is left out of its label only. A label with one class only (or no rows) is listed in ``skipped_labels``,
as :func:`chexpert_hf.evaluation.metrics.score` does. Calibration reads a score as a probability, so scores outside
[0, 1] (logits, an ensemble's sums) are not calibrated: :func:`calibration` then returns the reason instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss

from chexpert_hf.evaluation.metrics import _check_pair, scores_are_probabilities
from chexpert_hf.labels import COMPETITION_LABELS, check_label_names
from chexpert_hf.outputs import CALIBRATION_PNG
from chexpert_hf.utils import markdown_table

#: Bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15


#: The reason :func:`calibration` gives when the scores are not probabilities.
NOT_PROBABILITIES = (
    "the scores are not probabilities (some lie outside [0, 1]), so calibration, which reads a score as a "
    "probability, is not computed"
)

# the labels the figure draws when no competition label was calibrated
_FALLBACK_PANELS = 5


def bin_edges(bins: int = ECE_BINS) -> np.ndarray:
    """The ``bins + 1`` edges of equal-width bins on [0, 1]."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    return np.linspace(0.0, 1.0, bins + 1)


def bin_index(probabilities: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The bin (0 to ``bins - 1``) of each probability: ``[a, b)`` bins, the last closed, so an edge goes up.

    A value outside [0, 1] (or NaN) is a ValueError: binning is only meaningful for probabilities.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not scores_are_probabilities(probabilities):
        raise ValueError("probabilities must lie in [0, 1] (calibration reads a score as a probability)")
    index = np.searchsorted(bin_edges(bins), probabilities, side="right") - 1
    return np.minimum(index, bins - 1).astype(np.int64)


def _kept(probabilities: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 probabilities and 0/1 truth with the NaN-truth rows left out; a ValueError on bad input."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if probabilities.ndim != 1 or truth.shape != probabilities.shape:
        raise ValueError(
            f"probabilities and truth must be 1-D of the same length; got {probabilities.shape} and {truth.shape}"
        )
    if not scores_are_probabilities(probabilities):
        raise ValueError("probabilities must lie in [0, 1] (calibration reads a score as a probability)")
    kept = ~np.isnan(truth)
    truth = truth[kept]
    if not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError("truth must be 0, 1 or NaN")
    return probabilities[kept], truth


def brier_score(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared difference between probability and outcome over the non-NaN truth entries (NaN if none)."""
    probabilities, truth = _kept(probabilities, truth)
    if len(truth) == 0:
        return float("nan")
    return float(brier_score_loss(truth, probabilities, pos_label=1))


def _bin_sums(probabilities: np.ndarray, truth: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per bin: the count, the sum of the probabilities and the number of positives."""
    index = bin_index(probabilities, bins)
    counts = np.bincount(index, minlength=bins)
    probability_sums = np.bincount(index, weights=probabilities, minlength=bins)
    positives = np.bincount(index, weights=truth, minlength=bins)
    return counts, probability_sums, positives


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over non-empty bins of (bin count / n) * |fraction positive - mean probability|; NaN truth left out.

    NaN when no entry is left.
    """
    probabilities, truth = _kept(probabilities, truth)
    if len(truth) == 0:
        return float("nan")
    counts, probability_sums, positives = _bin_sums(probabilities, truth, bins)
    # (count / n) * |positives / count - sum / count| = |positives - sum| / n; empty bins add 0
    return float(np.abs(positives - probability_sums).sum() / len(truth))


def reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram's data: per bin the count, mean probability and fraction positive, and the edges.

    ``mean_probability`` and ``fraction_positive`` are None for an empty bin; NaN truth entries are left out.
    """
    probabilities, truth = _kept(probabilities, truth)
    counts, probability_sums, positives = _bin_sums(probabilities, truth, bins)
    return {
        "counts": [int(count) for count in counts],
        "mean_probability": [float(s / c) if c else None for s, c in zip(probability_sums, counts, strict=True)],
        "fraction_positive": [float(p / c) if c else None for p, c in zip(positives, counts, strict=True)],
        "edges": [float(edge) for edge in bin_edges(bins)],
    }


def calibration(
    probabilities: np.ndarray, targets: np.ndarray, labels: Sequence[str], bins: int = ECE_BINS
) -> dict[str, Any]:
    """Brier score, ECE and reliability data per label of ``(N, L)`` probabilities and 0/1/NaN targets.

    Returns ``{"bins", "per_label": {label: {"brier", "ece", "n", "positives", "reliability"}}, "skipped_labels"}``
    (``skipped_labels``: one class only, or no rows), JSON-ready. When a score lies outside [0, 1] the result is
    ``{"skipped": reason}`` instead, for the reports to say why there is no calibration.
    """
    names = check_label_names(labels)
    probabilities, targets = _check_pair(probabilities, targets)
    if probabilities.shape[1] != len(names):
        raise ValueError(f"probabilities have {probabilities.shape[1]} columns but {len(names)} label names were given")
    bad = ~(np.isnan(targets) | np.isin(targets, (0.0, 1.0)))
    if bad.any():
        found = sorted(set(targets[bad].tolist()))[:5]
        raise ValueError(f"targets must be 0, 1 or NaN; found {found} (use evaluation_targets on raw labels)")
    if not scores_are_probabilities(probabilities):
        return {"skipped": NOT_PROBABILITIES}
    per_label = {}
    for column, name in enumerate(names):
        scores, truth = _kept(probabilities[:, column], targets[:, column])
        positives = int(truth.sum())
        if positives == 0 or positives == len(truth):
            continue  # one class only (or none): the reports list it with the labels AUROC skips
        per_label[name] = {
            "brier": brier_score(scores, truth),
            "ece": expected_calibration_error(scores, truth, bins),
            "n": len(truth),
            "positives": positives,
            "reliability": reliability(scores, truth, bins),
        }
    return {"bins": bins, "per_label": per_label, "skipped_labels": [name for name in names if name not in per_label]}


def figure_labels(result: dict[str, Any], labels: Sequence[str] | None = None) -> list[str]:
    """The labels :func:`calibration_figure` draws: ``labels`` (default: the competition labels; when none of them
    was calibrated, the first five calibrated labels) that have calibration data. Empty: no figure to write."""
    per_label = result.get("per_label") or {}
    if labels is not None:
        return [label for label in labels if label in per_label]
    chosen = [label for label in COMPETITION_LABELS if label in per_label]
    return chosen or list(per_label)[:_FALLBACK_PANELS]


def _title(label: str, entry: dict[str, Any]) -> str:
    return f"{label}\nECE {entry['ece']:.3f} · Brier {entry['brier']:.3f} · n {entry['n']:,}"


def calibration_figure(result: dict[str, Any], labels: Sequence[str] | None = None):
    """Reliability diagrams as a Figure: one panel per label of :func:`figure_labels`, three to a row.

    Each panel plots the fraction positive against the mean probability of every non-empty bin, with the diagonal
    (perfect calibration) and the bin counts as bars on a log-scaled twin axis (probabilities crowd near 0, so the
    counts span orders of magnitude); ECE and Brier are in the title. A ValueError when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    drawn = figure_labels(result, labels)
    if not drawn:
        reason = result.get("skipped") or "no label was calibrated"
        raise ValueError(f"no reliability diagram to draw: {reason}")
    columns = min(len(drawn), 3)
    rows = math.ceil(len(drawn) / columns)
    figure = Figure(figsize=(3.9 * columns, 3.7 * rows), dpi=120)
    for panel, label in enumerate(drawn):
        entry = result["per_label"][label]
        data = entry["reliability"]
        edges = np.asarray(data["edges"])
        axes = figure.add_subplot(rows, columns, panel + 1)
        counts_axes = axes.twinx()
        counts_axes.bar(
            edges[:-1],
            data["counts"],
            width=np.diff(edges),
            align="edge",
            color="0.85",
            edgecolor="0.65",
            linewidth=0.5,
        )
        counts_axes.set_yscale("log")
        counts_axes.set_ylim(bottom=0.5)  # a bin of one row still shows a bar
        counts_axes.set_ylabel("rows per bin (log)", fontsize=7, color="0.4")
        counts_axes.tick_params(labelsize=7, colors="0.4")
        axes.set_zorder(counts_axes.get_zorder() + 1)  # the curve above the bars
        axes.patch.set_visible(False)
        axes.plot([0, 1], [0, 1], color="0.5", linewidth=0.8, linestyle=":", label="perfect calibration")
        points = [
            (mean, fraction)
            for mean, fraction in zip(data["mean_probability"], data["fraction_positive"], strict=True)
            if mean is not None
        ]
        x, y = zip(*points, strict=True)
        axes.plot(x, y, marker="o", markersize=3.5, linewidth=1.2, color="C0", label="bins")
        axes.set(xlim=(0, 1), ylim=(0, 1.02))
        for square in (axes, counts_axes):  # a square box, not aspect="equal", which a twin axis overrides
            square.set_box_aspect(1)
        axes.set_xlabel("mean predicted probability", fontsize=8)
        axes.set_ylabel("observed fraction positive", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.set_title(_title(label, entry), fontsize=8.5)
        if panel == 0:
            axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    return figure


def calibration_markdown(result: dict[str, Any]) -> list[str]:
    """The ``## Calibration`` section of ``metrics.md`` as lines: how ECE is computed, the per-label table, the
    figure; the heading and the reason when calibration was skipped. No blank line before or after."""
    lines = ["## Calibration", ""]
    if "skipped" in result:
        reason = result["skipped"].rstrip(".")
        return [*lines, f"{reason[:1].upper()}{reason[1:]}."]
    lines.append(
        "Brier score: mean of (probability − outcome)²; ECE (expected calibration error): over "
        f"{result['bins']} equal-width bins of the probability on [0, 1] (each [a, b), the last closed), "
        "|fraction positive − mean probability| of each bin, weighted by the bin's share of the studies "
        "(images at image level); 0 is perfect calibration."
    )
    rows = [
        [
            f"{label} ★" if label in COMPETITION_LABELS else label,
            f"{entry['brier']:.4f}",
            f"{entry['ece']:.4f}",
            f"{entry['n']:,}",
            f"{entry['positives']:,}",
        ]
        for label, entry in result["per_label"].items()
    ]
    if rows:
        lines += ["", *markdown_table(["label", "Brier", "ECE", "n", "positives"], rows, "lrrrr", tight_rule=True)]
    if result["skipped_labels"]:
        lines += ["", "Not calibrated (one class only, or no rows): " + ", ".join(result["skipped_labels"]) + "."]
    if figure_labels(result):
        lines += ["", f"![Calibration]({CALIBRATION_PNG})"]
    return lines
