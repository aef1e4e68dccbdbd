"""The files an evaluation leaves: ``metrics.json``, ``metrics.md``, ``roc.png`` (and the same table as text).

``metrics.json`` holds :func:`chexpert_hf.evaluation.metrics.score`'s result as it is (means, their intervals, per-label
AUROC/AUPRC/counts with ``auroc_ci95``, skipped labels, bootstrap settings), plus what was scored (``split``,
``level``, ``source``). Every file is written to a temporary name and renamed, so a failed evaluation leaves the
previous files or none, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chexpert_hf.evaluation.calibration import calibration_figure, calibration_markdown, figure_labels
from chexpert_hf.evaluation.thresholds import operating_points_markdown
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.outputs import CALIBRATION_PNG, METRICS_JSON, METRICS_MD, ROC_PNG
from chexpert_hf.utils import atomic_write, json_safe, markdown_table, write_text


def _ci(entry: dict[str, Any], key: str) -> str:
    interval = entry.get(key)
    if not interval or any(value is None or math.isnan(value) for value in interval):
        return ""
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _count(scores: dict[str, Any]) -> tuple[int, str]:
    return (scores["n_studies"], "studies") if "n_studies" in scores else (scores["n_images"], "images")


def mean_label(scores: dict[str, Any]) -> str:
    """What the headline mean covers: "competition labels" when all five were scorable, else "N of 5 competition
    labels", so that a mean of one label (a split where the others have one class only) never reads as the usual
    five-label mean."""
    covered = sum(label in scores["per_label"] for label in COMPETITION_LABELS)
    if covered == len(COMPETITION_LABELS):
        return "competition labels"
    return f"{covered} of {len(COMPETITION_LABELS)} competition labels"


def scores_table(scores: dict[str, Any]) -> str:
    """The scores as a plain-text table (the one printed at the end of training and evaluation)."""
    with_ci = "bootstrap" in scores
    ci_header = f"{'95% CI':>15}" if with_ci else ""
    lines = [f"{'label':<28}{'AUROC':>8}{ci_header}{'AUPRC':>8}{'pos':>7}{'neg':>7}"]
    for label, entry in scores["per_label"].items():
        ci = f"{_ci(entry, 'auroc_ci95'):>15}" if with_ci else ""
        lines.append(
            f"{label:<28}{entry['auroc']:>8.4f}{ci}{entry['auprc']:>8.4f}{entry['positives']:>7}{entry['negatives']:>7}"
        )
    for label in scores["skipped_labels"]:
        lines.append(f"{label:<28}{'skipped: one class only':>30}")
    count, unit = _count(scores)
    mean_ci = f" (95% CI {_ci(scores, 'mean_auroc_ci95')})" if _ci(scores, "mean_auroc_ci95") else ""
    over = ", competition labels" if mean_label(scores) == "competition labels" else f" over {mean_label(scores)}"
    lines.append(
        f"mean AUROC{over}: {_number(scores['mean_auroc'])}{mean_ci}; all scored labels: "
        f"{_number(scores['mean_auroc_all'])} ({count} {unit})"
    )
    return "\n".join(lines)


def metrics_markdown(scores: dict[str, Any], title: str, details: Sequence[str] = ()) -> str:
    """``metrics.md``: a heading, what was scored, the per-label table with intervals, the means, the figure."""
    count, unit = _count(scores)
    bootstrap = scores.get("bootstrap")
    lines = [f"# {title}", ""]
    lines += [f"- {detail}" for detail in details]
    lines.append(
        f"- scored: {count:,} {unit}"
        + (
            " (a study's probability is the maximum over its images, its label the maximum over its images' labels)"
            if unit == "studies"
            else ""
        )
    )
    if not scores.get("scores_are_probabilities", True):
        lines.append(
            f"- scores: not probabilities ({scores.get('scores_kind', 'some lie outside [0, 1]')}); AUROC and AUPRC "
            "use only their order, so they "
            "are computed as for probabilities; metrics that read a score as a probability (calibration) are skipped"
        )
    if bootstrap:
        units = "studies" if bootstrap["unit"] == "study" else "images"
        lines.append(
            f"- 95% confidence intervals: percentile bootstrap over {units}, "
            f"{bootstrap['resamples']:,} resamples, seed {bootstrap['seed']}"
        )
    rows = [
        [
            f"{label} ★" if label in COMPETITION_LABELS else label,
            f"{entry['auroc']:.4f}",
            _ci(entry, "auroc_ci95"),
            f"{entry['auprc']:.4f}",
            f"{entry['positives']:,}",
            f"{entry['negatives']:,}",
        ]
        for label, entry in scores["per_label"].items()
    ]
    # the two means fill the first three columns only
    rows.append(
        [f"**mean, {mean_label(scores)} ★**", f"**{_number(scores['mean_auroc'])}**", _ci(scores, "mean_auroc_ci95")]
    )
    rows.append(["mean, all scored labels", _number(scores["mean_auroc_all"]), _ci(scores, "mean_auroc_all_ci95")])
    header = ["label", "AUROC", "95% CI", "AUPRC", "positives", "negatives"]
    lines += ["", *markdown_table(header, rows, "lrrrrr", tight_rule=True), ""]
    lines.append("★ the five CheXpert competition labels; their mean AUROC is the headline number.")
    if scores["skipped_labels"]:
        lines += [
            "",
            "Not scored (one class only in this split, so AUROC is undefined): "
            + ", ".join(scores["skipped_labels"])
            + ".",
        ]
    undefined = (bootstrap or {}).get("undefined") or {}
    if undefined:
        listed = ", ".join(f"{label} {n}" for label, n in undefined.items())
        lines += ["", f"Resamples left out of an interval because the label had one class only there: {listed}."]
    lines += ["", f"![ROC curves]({ROC_PNG})", ""]
    lines += clinical_sections(scores)
    return "\n".join(lines)


def clinical_sections(scores: dict[str, Any]) -> list[str]:
    """The sections :mod:`chexpert_hf.evaluation.clinical` adds to ``metrics.md``, for those ``scores`` holds:
    operating points, calibration, readers (each followed by a blank line)."""
    lines: list[str] = []
    if "operating_points" in scores:
        lines += [*operating_points_markdown(scores["operating_points"]), ""]
    if "calibration" in scores:
        lines += [*calibration_markdown(scores["calibration"]), ""]
    if "readers" in scores:
        from chexpert_hf.evaluation.readers import readers_markdown  # readers reads files through evaluate

        lines += [*readers_markdown(scores["readers"])]
        if lines[-1] != "":
            lines.append("")
    return lines


def roc_figure(probabilities: np.ndarray, targets: np.ndarray, label_names: Sequence[str], scores: dict[str, Any]):
    """One ROC curve per scored label (AUROC in the legend; competition labels drawn solid), as a Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from sklearn.metrics import RocCurveDisplay, roc_curve

    figure = Figure(figsize=(7.5, 6.5), dpi=120)
    axes = figure.add_subplot()
    colors = {}
    for column, label in enumerate(label_names):
        entry = scores["per_label"].get(label)
        if entry is None:
            continue
        kept = ~np.isnan(targets[:, column])
        fpr, tpr, _ = roc_curve(targets[kept, column], probabilities[kept, column])
        display = RocCurveDisplay(fpr=fpr, tpr=tpr, name=f"{label} ({entry['auroc']:.3f})").plot(
            ax=axes,
            curve_kwargs={"linestyle": "-" if label in COMPETITION_LABELS else "--", "linewidth": 1.4},
        )
        colors[label] = display.line_.get_color()
    if "readers" in scores:  # each reader's operating point, coloured as its label's curve
        from chexpert_hf.evaluation.readers import draw_readers

        draw_readers(axes, scores["readers"], colors)
    axes.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle=":", label="chance (0.500)")
    count, unit = _count(scores)
    axes.set(
        xlabel="false positive rate (1 − specificity)",
        ylabel="true positive rate (sensitivity)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
    )
    covered = "competition" if mean_label(scores) == "competition labels" else mean_label(scores)
    axes.set_title(
        f"ROC per label, {count:,} {unit}; mean AUROC ({covered}) {_number(scores['mean_auroc'])}", fontsize=10
    )
    axes.legend(loc="lower right", fontsize=7, title="label (AUROC)", title_fontsize=7)
    figure.tight_layout()
    return figure


def write_reports(
    folder: str | os.PathLike,
    scores: dict[str, Any],
    probabilities: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str],
    *,
    title: str,
    details: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``roc.png`` into ``folder``; returns their paths.

    ``probabilities``/``targets`` are the scored rows (study-level when scoring studies) in ``label_names``
    order; ``extra`` adds keys to ``metrics.json`` (what was scored).
    """
    folder = Path(folder)
    paths = {name: folder / name for name in (METRICS_JSON, METRICS_MD, ROC_PNG)}
    figure = roc_figure(np.asarray(probabilities), np.asarray(targets), list(label_names), scores)
    atomic_write(paths[ROC_PNG], lambda name: figure.savefig(name, format="png"))
    if "calibration" in scores and figure_labels(scores["calibration"]):
        paths[CALIBRATION_PNG] = folder / CALIBRATION_PNG
        reliability = calibration_figure(scores["calibration"])
        atomic_write(paths[CALIBRATION_PNG], lambda name: reliability.savefig(name, format="png"))
    write_text(paths[METRICS_MD], metrics_markdown(scores, title, details))
    payload = json_safe({**scores, **(extra or {})})
    write_text(paths[METRICS_JSON], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return paths
