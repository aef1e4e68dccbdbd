"""A model against radiologists ("readers") on the same studies, as the CheXpert paper compared them: how many of
the readers lie under the model's ROC curve.

A reader file is a CSV with a ``Study`` (or ``Path``) column and one 0/1 column per label the reader read, named as in
CheXpert's CSVs, in any order. Every cell must be 0 or 1 (``0.0`` / ``1.0`` too): a blank, an uncertain ``-1`` or a
probability is an error naming the file, line and column, since a reader's operating point needs a decision on every
study. An image-level file (``Path``) is reduced to studies by the maximum over a study's images, as predictions are.

A reader's operating point is (1 − specificity, sensitivity) on the studies ground truth labels (NaN targets left
out). The model's ROC curve is ``sklearn.metrics.roc_curve`` with every point kept, read between its points by linear
interpolation; a vertical segment (tied positives) is reached, so at a false-positive rate the curve has a point at,
its sensitivity is the highest there. A reader lies *under the curve* when the curve's sensitivity at the reader's
false-positive rate is strictly above the reader's sensitivity: a reader exactly on the curve is not under it.
Sensitivity and specificity come with 95% Wilson intervals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexpert_hf.data.chexpert_csv import CheXpertFormatError, read_table
from chexpert_hf.evaluation.evaluate import KeyedRows, _by_study, _key_columns, _parse_keys, named_label_columns
from chexpert_hf.evaluation.thresholds import wilson_interval
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.utils import markdown_table

_SHOWN = 5  # rows or studies named in an error message
# Two rates closer than this are the same point: 1 − specificity computed in floating point finds the curve's point,
# and a reader exactly on an interpolated segment is on it, not under it. Real rates differ by at least 1 / n².
_TOLERANCE = 1e-12
_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">", "h", "p", "d")


# --- reader files ----------------------------------------------------------------------------------------------


def read_reader(path: str | os.PathLike) -> KeyedRows:
    """A reader file: its key column and its 0/1 label columns (picked by name), validated (see the module doc)."""
    table = read_table(Path(path))
    level, key_column = _key_columns(table)
    columns = named_label_columns(table, key_column, "a reader file", "0/1")
    study, image = _parse_keys(table, level, key_column)
    labels = list(columns)
    values = np.empty((len(table.frame), len(labels)))
    for index, label in enumerate(labels):
        column = columns[label]
        cells = table.frame[column].str.strip()
        numbers = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~((numbers == 0.0) | (numbers == 1.0))
        if bad.any():
            rows = np.flatnonzero(bad)
            more = f" ({len(rows)} such values in this column)" if len(rows) > 1 else ""
            raise CheXpertFormatError(
                f"{table.where(int(rows[0]), column)}: reader value {cells.iat[int(rows[0])]!r} is not 0 or 1; a "
                f"reader's read is 1 (positive) or 0 (negative) for every study, never blank, uncertain (-1) or a "
                f"probability{more}"
            )
        values[:, index] = numbers
    return KeyedRows(Path(path), level, study, image, values, labels, table.lines)


def match_reader(reader: KeyedRows, truth_keys: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The reader's 0/1 reads, ``(len(truth_keys), len(labels))``, in the order of ``truth_keys``
    (``"patientNNNNN/studyN"``, as :attr:`Matched.keys`; ``.../file`` image keys match an image-level file image by
    image). An image-level file is reduced to studies by the maximum over a study's images. A study the reader lacks,
    or a label it has no column for, is an error naming them; studies beyond ``truth_keys`` are ignored."""
    labels = list(labels)
    absent = [label for label in labels if label not in reader.labels]
    if absent:
        raise CheXpertFormatError(
            f"{reader.path} has no column for label(s) {absent}, which are scored; it has: {', '.join(reader.labels)}"
        )
    truth_keys = np.asarray(truth_keys, dtype=object)
    per_image = len(truth_keys) > 0 and str(truth_keys[0]).count("/") == 2
    if per_image:
        if reader.level != "image":
            raise CheXpertFormatError(
                f"{reader.path}: images are scored one by one, which needs one row per image (a Path column); this "
                "file has one row per study"
            )
        keys, values, unit = reader.image, reader.values, "image"
    elif reader.level == "image":
        keys, values = _by_study(reader.study, reader.values, np.maximum, -np.inf)
        unit = "study"
    else:
        keys, values, unit = reader.study, reader.values, "study"
    position = {key: row for row, key in enumerate(keys)}
    missing = [key for key in truth_keys if key not in position]
    if missing:
        shown = ", ".join(str(key) for key in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise CheXpertFormatError(
            f"{reader.path}: no read for {len(missing)} {unit}(ies) of the ground truth: {shown}{more}; a reader must "
            f"read every scored {unit}"
        )
    rows = np.array([position[key] for key in truth_keys], dtype=np.int64)
    columns = [reader.labels.index(label) for label in labels]
    return values[rows][:, columns].astype(np.float64)


# --- the ROC curve between its points ----------------------------------------------------------------------------


def _interpolate(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
    return float(y0 + (x - x0) * (y1 - y0) / (x1 - x0))


def _curve_at(along: np.ndarray, other: np.ndarray, value: float, pick_highest: bool, name: str) -> float:
    along, other = np.asarray(along, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if along.ndim != 1 or along.shape != other.shape or not len(along):
        raise ValueError(f"the curve needs two 1-D arrays of one length, got shapes {along.shape} and {other.shape}")
    exact = np.abs(along - value) <= _TOLERANCE
    if exact.any():
        return float(other[exact].max() if pick_highest else other[exact].min())
    below, above = np.flatnonzero(along < value), np.flatnonzero(along > value)
    if not len(below) or not len(above):
        raise ValueError(f"{name} {value!r} lies outside the curve's range [{along.min()!r}, {along.max()!r}]")
    low, high = int(below[-1]), int(above[0])
    return _interpolate(value, along[low], other[low], along[high], other[high])


def curve_tpr_at(fpr_points: np.ndarray, tpr_points: np.ndarray, x: float) -> float:
    """The ROC curve's true-positive rate at false-positive rate ``x``, from ``roc_curve`` points (fpr
    non-decreasing): the highest tpr of the points at ``x`` (a vertical segment is reached), else the linear
    interpolation between the last point with fpr < ``x`` and the first with fpr > ``x``."""
    return _curve_at(fpr_points, tpr_points, x, pick_highest=True, name="false-positive rate")


def curve_fpr_at(fpr_points: np.ndarray, tpr_points: np.ndarray, y: float) -> float:
    """The lowest false-positive rate at which the ROC curve reaches true-positive rate ``y``: the lowest fpr of the
    points at ``y``, else the linear interpolation between the last point with tpr < ``y`` and the first with
    tpr > ``y``."""
    return _curve_at(tpr_points, fpr_points, y, pick_highest=False, name="true-positive rate")


# --- readers against the model -----------------------------------------------------------------------------------


def reader_point(reads: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """A reader's counts, sensitivity and specificity (each with its 95% Wilson interval; None where its denominator
    is 0) on one label; NaN targets left out."""
    reads, truth = np.asarray(reads, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if reads.shape != truth.shape or reads.ndim != 1:
        raise ValueError(f"reads and truth must be 1-D arrays of one length, got {reads.shape} and {truth.shape}")
    kept = ~np.isnan(truth)
    reads, truth = reads[kept], truth[kept]
    if not np.isin(reads, (0.0, 1.0)).all() or not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError("reads must be 0 or 1, and truth 0, 1 or NaN (left out)")
    called, positive = reads == 1.0, truth == 1.0
    tp, fn = int((called & positive).sum()), int((~called & positive).sum())
    fp, tn = int((called & ~positive).sum()), int((~called & ~positive).sum())
    point: dict[str, Any] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, hits, total in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp)):
        point[name] = hits / total if total else None
        point[f"{name}_ci95"] = wilson_interval(hits, total)
    return point


def compare_readers(
    scores: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    readers: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Each reader's operating point per label against the model's ROC curve on the same rows.

    ``scores`` and ``targets`` (1 / 0 / NaN = left out) are ``(N, len(labels))``, as :class:`Matched` holds them;
    ``readers`` maps a reader's name to its ``(N, len(labels))`` 0/1 reads (:func:`match_reader`). Labels with one
    class only are skipped. ``mean_under_curve`` is the mean, over the competition labels compared, of the number of
    readers under the curve (NaN when none is). The result holds only JSON types (and that NaN).
    """
    from sklearn.metrics import roc_curve

    labels = list(labels)
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    expected = (len(targets), len(labels))
    if scores.shape != expected or targets.shape != expected:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be {expected}")
    if not readers:
        raise ValueError("no readers to compare with")
    reads = {str(name): np.asarray(values, dtype=np.float64) for name, values in readers.items()}
    for name, values in reads.items():
        if values.shape != expected:
            raise ValueError(f"reader {name!r}: reads are {values.shape}, expected {expected} like the scores")
    per_label: dict[str, Any] = {}
    skipped = []
    for column, label in enumerate(labels):
        truth = targets[:, column]
        kept = ~np.isnan(truth)
        if not (truth[kept] == 1).any() or not (truth[kept] == 0).any():
            skipped.append(label)
            continue
        fpr, tpr, _ = roc_curve(truth[kept], scores[kept, column], drop_intermediate=False)
        entries = {}
        for name, values in reads.items():
            point = reader_point(values[:, column], truth)
            # fp / (fp + tn) is 1 − specificity as roc_curve computes its fpr, so the reader finds the curve's points
            reader_fpr = point["fp"] / (point["fp"] + point["tn"])
            model_tpr = curve_tpr_at(fpr, tpr, reader_fpr)
            entries[name] = {
                **point,
                "model_sensitivity_at_reader_specificity": model_tpr,
                "model_specificity_at_reader_sensitivity": 1.0 - curve_fpr_at(fpr, tpr, point["sensitivity"]),
                "under_curve": bool(model_tpr > point["sensitivity"] + _TOLERANCE),
            }
        per_label[label] = {
            "readers": entries,
            "under_curve": sum(entry["under_curve"] for entry in entries.values()),
            "reader_mean": {
                key: float(np.mean([entry[key] for entry in entries.values()]))
                for key in ("sensitivity", "specificity")
            },
            "positives": int((truth[kept] == 1).sum()),
            "negatives": int((truth[kept] == 0).sum()),
        }
    covered = [label for label in COMPETITION_LABELS if label in per_label]
    mean = float(np.mean([per_label[label]["under_curve"] for label in covered])) if covered else math.nan
    return {
        "readers": list(reads),
        "per_label": per_label,
        "mean_under_curve": mean,
        "mean_under_curve_labels": covered,
        "skipped_labels": skipped,
    }


# --- reports -----------------------------------------------------------------------------------------------------


def _rate(value: float | None, interval: Sequence[float] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def _over(result: dict[str, Any]) -> str:
    covered = result.get("mean_under_curve_labels")
    if covered is None:
        covered = [label for label in COMPETITION_LABELS if label in result["per_label"]]
    if len(covered) == len(COMPETITION_LABELS):
        return "the competition labels"
    return f"{len(covered)} of {len(COMPETITION_LABELS)} competition labels"


def _mean(result: dict[str, Any]) -> str:
    value = result["mean_under_curve"]
    return "n/a" if value is None or math.isnan(value) else f"{value:.1f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def readers_markdown(result: dict[str, Any]) -> list[str]:
    """The ``## Readers`` section of ``metrics.md``: each reader's operating point per label against the model's
    ROC curve, how many readers lie under it per label, and the mean over the competition labels."""
    names = result["readers"]
    lines = [
        "## Readers",
        "",
        "A reader lies *under the curve* when the model's ROC curve, interpolated linearly between its points, passes "
        "strictly above the reader's operating point (1 − specificity, sensitivity): at the reader's specificity the "
        "model is more sensitive. Intervals are 95% Wilson intervals.",
        "",
    ]
    rows = []
    for label, entry in result["per_label"].items():
        shown = f"{label} ★" if label in COMPETITION_LABELS else label
        for name in names:
            point = entry["readers"][name]
            rows.append(
                [
                    shown,
                    _cell(name),
                    _rate(point["sensitivity"], point["sensitivity_ci95"]),
                    _rate(point["specificity"], point["specificity_ci95"]),
                    _rate(point["model_sensitivity_at_reader_specificity"]),
                    _rate(point["model_specificity_at_reader_sensitivity"]),
                    "yes" if point["under_curve"] else "no",
                ]
            )
    header = [
        "label",
        "reader",
        "sensitivity (95% CI)",
        "specificity (95% CI)",
        "model sens. at reader spec.",
        "model spec. at reader sens.",
        "under the curve",
    ]
    lines += [*markdown_table(header, rows, "llrrrrc", tight_rule=True), ""]
    counts = [
        [
            f"{label} ★" if label in COMPETITION_LABELS else label,
            f"{entry['under_curve']} of {len(names)}",
            _rate(entry["reader_mean"]["sensitivity"]),
            _rate(entry["reader_mean"]["specificity"]),
        ]
        for label, entry in result["per_label"].items()
    ]
    header = ["label", "readers under the curve", "readers' mean sensitivity", "readers' mean specificity"]
    lines += [*markdown_table(header, counts, "lrrr", tight_rule=True), ""]
    lines.append(f"Readers under the ROC curve, mean over {_over(result)}: {_mean(result)}")
    if result["skipped_labels"]:
        lines += ["", "Not compared (one class only): " + ", ".join(result["skipped_labels"]) + "."]
    lines.append("")
    return lines


def readers_text(result: dict[str, Any]) -> str:
    """The comparison as a short plain-text table for the terminal: per label, the readers under the curve and each
    reader's sensitivity / specificity."""
    names = result["readers"]
    width = max([15, *(len(name) + 2 for name in names)])
    lines = [f"{'label':<28}{'under':>7}  " + "".join(f"{name:>{width}}" for name in names)]
    lines.append(f"{'':<28}{'curve':>7}  " + "".join(f"{'sens / spec':>{width}}" for _ in names))
    for label, entry in result["per_label"].items():
        cells = "".join(
            f"{_rate(point['sensitivity']) + ' / ' + _rate(point['specificity']):>{width}}"
            for point in (entry["readers"][name] for name in names)
        )
        lines.append(f"{label:<28}{entry['under_curve']:>5}/{len(names):<1}  {cells}")
    for label in result["skipped_labels"]:
        lines.append(f"{label:<28}  skipped: one class only")
    lines.append(f"readers under the ROC curve, mean over {_over(result)}: {_mean(result)}")
    return "\n".join(lines)


def draw_readers(axes: Any, result: dict[str, Any], labels_colors: Mapping[str, Any] | None = None) -> Any:
    """Each reader's operating point per label on a ROC ``axes`` (x = 1 − specificity, y = sensitivity): one marker
    per reader, coloured as its label's curve when ``labels_colors`` gives it, and the readers' mean per label as a
    larger ``X``. The legend gets one grey entry per reader and one for the mean (call ``axes.legend()`` after)."""
    from matplotlib.lines import Line2D

    grey = "0.35"
    for index, name in enumerate(result["readers"]):
        marker = _MARKERS[index % len(_MARKERS)]
        for label, entry in result["per_label"].items():
            point = entry["readers"][name]
            color = (labels_colors or {}).get(label, grey)
            axes.scatter(
                [1.0 - point["specificity"]],
                [point["sensitivity"]],
                marker=marker,
                s=28,
                color=color,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
        axes.add_line(
            Line2D(
                [], [], linestyle="none", marker=marker, markersize=5, color=grey, markeredgecolor="black", label=name
            )
        )
    for label, entry in result["per_label"].items():
        color = (labels_colors or {}).get(label, grey)
        mean = entry["reader_mean"]
        axes.scatter(
            [1.0 - mean["specificity"]],
            [mean["sensitivity"]],
            marker="X",
            s=90,
            color=color,
            edgecolors="black",
            linewidths=0.8,
            zorder=4,
        )
    if result["per_label"]:
        axes.add_line(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="X",
                markersize=9,
                color=grey,
                markeredgecolor="black",
                label="readers' mean",
            )
        )
    return axes
