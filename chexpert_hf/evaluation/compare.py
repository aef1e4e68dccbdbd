"""Paired comparison of models scored on the same studies: DeLong's test per label, a paired bootstrap of the
competition mean, and Holm's adjustment over every test of the table.

Two models scored on the same studies are correlated: a hard study is hard for both. A test that ignores this
(comparing two independent confidence intervals) misses real differences; the tests here use the pairing.

* **Per label: DeLong's test** (DeLong, DeLong & Clarke-Pearson 1988) for two correlated AUROCs. Each model's
  AUROC is a Mann-Whitney statistic; its structural components (for a positive study, the share of negatives it
  outranks; for a negative, the share of positives that outrank it; ties count one half) give the covariance of
  the two AUROCs, and ``z = (A - B) / sd(A - B)`` is normal under "same AUROC". The components are computed from
  midranks as in Sun & Xu (2014), ``O(n log n)`` per model. The 95% interval of the difference is ``A - B ± 1.96
  sd``.
* **The mean over the competition labels: a paired bootstrap.** Each of :data:`COMPARE_RESAMPLES` resamples draws
  the studies with replacement, once for both models and every label, and takes the difference of the two
  models' mean AUROC on it. The interval is the 2.5th to 97.5th percentile of those differences; the two-sided p
  is twice the smaller share of differences on either side of zero, each share counted as ``(k + 1) / (B + 1)``
  so that p is never 0 from a finite number of resamples. A resample where a label has one class only has no
  AUROC there and is left out (counted as ``undefined``).
* **Holm-Bonferroni** (``statsmodels``) adjusts every p of the table together, per-label and mean rows alike; a
  row reads *better* or *worse* when its adjusted p is below :data:`ALPHA`, else *tie*. A label on which neither
  AUROC can vary (both 1.0, say: every structural component is 1) has nothing to test; its row reads *tie*
  (p = 1) and is not counted in the adjustment.

Only the order of the scores counts: logits, probabilities and sums of several models' outputs compare alike.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.evaluation.evaluate import KeyedRows, Matched, match_to_groundtruth, read_predictions
from chexpert_hf.evaluation.metrics import CONFIDENCE, bootstrap_auroc, scores_are_probabilities
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.outputs import COMPARE_JSON, COMPARE_MD, COMPARE_PNG, PREDICTIONS_CSV
from chexpert_hf.utils import atomic_write, json_safe, markdown_table, write_text

logger = logging.getLogger(__name__)

#: Significance level of the verdicts (after Holm's adjustment) and the paired bootstrap's resamples.
ALPHA = 0.05
COMPARE_RESAMPLES = 2000
MEAN = "mean"  # the label of a comparison of the competition mean
_SHOWN = 5


# --- the tests --------------------------------------------------------------------------------------------------


def delong_covariance(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The AUROC of each row of ``scores`` (``(k, n)``: k models scoring the same n cases) and their ``(k, k)``
    covariance, by DeLong's structural components computed from midranks (Sun & Xu 2014). ``truth`` is 0/1 with
    both classes present."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    truth = np.asarray(truth)
    positive, negative = scores[:, truth == 1], scores[:, truth == 0]
    m, n = positive.shape[1], negative.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's variance needs at least 2 positive and 2 negative cases; got {m} and {n}")
    combined = rankdata(np.concatenate([positive, negative], axis=1), method="average", axis=1)
    within_positive = rankdata(positive, method="average", axis=1)
    within_negative = rankdata(negative, method="average", axis=1)
    # a positive's rank among all cases minus its rank among positives = negatives below it (ties: one half)
    v10 = (combined[:, :m] - within_positive) / n
    v01 = 1.0 - (combined[:, m:] - within_negative) / m  # share of positives above each negative
    auroc = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auroc, covariance


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """DeLong's test of "A and B have the same AUROC" on cases both scored; NaN targets are left out."""
    truth = np.asarray(truth, dtype=np.float64)
    kept = ~np.isnan(truth)
    auroc, covariance = delong_covariance(np.vstack([scores_a[kept], scores_b[kept]]), truth[kept])
    difference = float(auroc[0] - auroc[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    degenerate = variance <= 1e-300  # no structural component varies (both perfect, say): nothing to test
    if degenerate:
        z, p, sd = (0.0, 1.0, 0.0) if abs(difference) < 1e-15 else (math.copysign(math.inf, difference), 0.0, 0.0)
    else:
        sd = math.sqrt(variance)
        z = difference / sd
        p = float(2.0 * norm.sf(abs(z)))
    half = float(norm.ppf(0.5 + CONFIDENCE / 2.0)) * sd
    return {
        "auroc_a": float(auroc[0]),
        "auroc_b": float(auroc[1]),
        "difference": difference,
        "ci95": [difference - half, difference + half],
        "z": z,
        "p": p,
        "degenerate": degenerate,
        "positives": int((truth[kept] == 1).sum()),
        "negatives": int((truth[kept] == 0).sum()),
    }


def paired_bootstrap(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    targets: np.ndarray,
    *,
    resamples: int = COMPARE_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The difference of two models' mean AUROC over the columns (``(n, L)`` each, the same cases and targets),
    with a paired bootstrap interval and two-sided p (see the module doc). Cases are resampled jointly: one draw
    per resample for both models and every column."""
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    columns = scores_a.shape[1]
    # one call, the two models side by side: every column of a resample sees the same drawn cases
    draws = bootstrap_auroc(np.hstack([scores_a, scores_b]), np.hstack([targets, targets]), resamples, seed)
    differences = draws[:, :columns].mean(axis=1) - draws[:, columns:].mean(axis=1)
    defined = differences[np.isfinite(differences)]
    observed = _mean_auroc(scores_a, targets) - _mean_auroc(scores_b, targets)
    if len(defined) == 0:
        return {"difference": observed, "ci95": [math.nan, math.nan], "p": math.nan, "undefined": resamples}
    below = (np.count_nonzero(defined <= 0.0) + 1) / (len(defined) + 1)
    above = (np.count_nonzero(defined >= 0.0) + 1) / (len(defined) + 1)
    low, high = np.percentile(defined, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return {
        "difference": observed,
        "ci95": [float(low), float(high)],
        "p": float(min(1.0, 2.0 * min(below, above))),
        "undefined": int(resamples - len(defined)),
    }


def _mean_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    values = []
    for column in range(scores.shape[1]):
        kept = ~np.isnan(targets[:, column])
        values.append(roc_auc_score(targets[kept, column], scores[kept, column]))
    return float(np.mean(values))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (``statsmodels``), in the given order; NaN stays NaN and is not counted."""
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    if finite.any():
        adjusted[finite] = multipletests(values[finite], alpha=ALPHA, method="holm")[1]
    return adjusted.tolist()


def verdict(difference: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` (A against B) when the adjusted p is below ``alpha``, else ``tie``; ``—`` untested."""
    if p_adjusted is None or not math.isfinite(p_adjusted):
        return "—"
    if p_adjusted < alpha:
        return "better" if difference > 0 else "worse"
    return "tie"


# --- comparing inputs -------------------------------------------------------------------------------------------


@dataclass
class Input:
    """One compared model: its name in the tables, where its predictions came from, and them matched to the
    ground truth's studies."""

    name: str
    source: str
    matched: Matched


def predictions_path(path: str | os.PathLike) -> Path:
    """A predictions CSV as given, or an output folder's ``predictions.csv``."""
    path = Path(path)
    if path.is_dir():
        inside = path / PREDICTIONS_CSV
        if not inside.is_file():
            raise FileNotFoundError(
                f"{path} is a folder without {PREDICTIONS_CSV}: give a predictions CSV, or an output folder of "
                "chexpert-hf train or evaluate --model"
            )
        return inside
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file or output folder")
    return path


def input_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short distinct names: a folder's name or a file's stem (``predictions`` is its folder's name), with as many
    parent folders as it takes to tell them apart (``demo_head/seed0`` and ``demo_full/seed0``)."""
    parts = []
    for path in paths:
        path = Path(path).resolve()
        if path.name == PREDICTIONS_CSV:
            path = path.parent
        elif path.suffix.lower() == ".csv":
            path = path.with_suffix("")
        parts.append(path.parts)
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) < len(names):
        raise ValueError(f"the inputs name the same file more than once: {', '.join(map(str, paths))}")
    return names


def check_same_studies(rows: Sequence[KeyedRows], names: Sequence[str]) -> None:
    """Every input must score the same studies: an error names the studies one lacks that another has."""
    sets = [set(row.study.tolist()) for row in rows]
    union = set().union(*sets)
    for name, row, studies in zip(names, rows, sets, strict=True):
        lacking = sorted(union - studies)
        if lacking:
            other = next(names[index] for index, other in enumerate(sets) if other - studies)
            more = f" and {len(lacking) - _SHOWN} more" if len(lacking) > _SHOWN else ""
            shown = ", ".join(lacking[:_SHOWN]) + more
            raise CheXpertFormatError(
                f"{row.path} ({name}) lacks {len(lacking)} study(ies) that {other} scores: {shown}; compare needs "
                "every input to score the same studies"
            )


def load_inputs(paths: Sequence[str | os.PathLike], truth: KeyedRows) -> list[Input]:
    """Read every input (a predictions CSV or an output folder), check they score the same studies, and match each
    to the ground truth's studies (an image-level file is reduced to studies by the maximum over images)."""
    if len(paths) < 2:
        raise ValueError("compare needs at least two inputs (predictions CSVs or output folders)")
    files = [predictions_path(path) for path in paths]
    names = input_names(paths)
    rows = [read_predictions(file) for file in files]
    check_same_studies(rows, names)
    inputs = []
    for name, file, row in zip(names, files, rows, strict=True):
        matched = match_to_groundtruth(row, truth)
        if matched.unscored:
            logger.warning("%d study(ies) of %s are not in %s: not compared", matched.unscored, file, truth.path)
        inputs.append(Input(name, str(file), matched))
    return inputs


def pairs(names: Sequence[str], reference: str | None = None) -> list[tuple[int, int]]:
    """Every pair in input order, or every input against ``reference`` (the reference second)."""
    if reference is None:
        return [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
    if reference not in names:
        raise ValueError(f"--reference {reference!r} is not one of the inputs: {', '.join(names)}")
    index = names.index(reference)
    return [(other, index) for other in range(len(names)) if other != index]


def compare(
    inputs: Sequence[Input],
    *,
    reference: str | None = None,
    labels: Sequence[str] = COMPETITION_LABELS,
    resamples: int = COMPARE_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Every pair (or every input against ``reference``): DeLong per label, the paired bootstrap on the mean over
    the labels both score, Holm over all the table's p-values. Returns what ``compare.json`` holds."""
    names = [item.name for item in inputs]
    keys = inputs[0].matched.keys
    for item in inputs[1:]:
        if not np.array_equal(item.matched.keys, keys):
            raise ValueError(f"{item.name} was matched to other studies than {inputs[0].name}")
    rows = []
    for a, b in pairs(names, reference):
        first, second = inputs[a].matched, inputs[b].matched
        compared = []
        for label in labels:
            row = {"a": names[a], "b": names[b], "label": label}
            missing = [item.name for item in (inputs[a], inputs[b]) if label not in item.matched.labels]
            if missing:
                row["note"] = f"not scored by {' and '.join(missing)}"
            else:
                truth = first.targets[:, first.labels.index(label)]
                kept = truth[~np.isnan(truth)]
                if not (kept == 1).any() or not (kept == 0).any():
                    row["note"] = "one class only in the ground truth"
                elif (kept == 1).sum() < 2 or (kept == 0).sum() < 2:
                    row["note"] = "fewer than 2 cases of a class: no variance to test"
                else:
                    row.update(
                        test="DeLong",
                        **delong_test(
                            first.scores[:, first.labels.index(label)],
                            second.scores[:, second.labels.index(label)],
                            truth,
                        ),
                    )
                    compared.append(label)
            rows.append(row)
        mean_row = {"a": names[a], "b": names[b], "label": MEAN, "labels": compared}
        if compared:
            columns_a = [first.labels.index(label) for label in compared]
            columns_b = [second.labels.index(label) for label in compared]
            targets = first.targets[:, columns_a]
            order = np.argsort(keys, kind="stable")  # resample in study-id order: the result ignores the row order
            boot = paired_bootstrap(
                first.scores[order][:, columns_a],
                second.scores[order][:, columns_b],
                targets[order],
                resamples=resamples,
                seed=seed,
            )
            auroc_a = float(np.mean([row["auroc_a"] for row in rows[-len(labels) :] if row["label"] in compared]))
            auroc_b = float(np.mean([row["auroc_b"] for row in rows[-len(labels) :] if row["label"] in compared]))
            mean_row.update(test="paired bootstrap", auroc_a=auroc_a, auroc_b=auroc_b, **boot)
        else:
            mean_row["note"] = "no label both scored"
        rows.append(mean_row)
    # a degenerate test (no variance: the same AUROC, 1.0 for both say) tests nothing and is not counted
    adjusted = holm([math.nan if row.get("degenerate") else row.get("p", math.nan) for row in rows])
    for row, p_holm in zip(rows, adjusted, strict=True):
        if "p" in row:
            row["p_holm"] = row["p"] if row.get("degenerate") else p_holm
            row["verdict"] = verdict(row["difference"], row["p_holm"])
    return {
        "level": "study",
        "n_studies": int(len(keys)),
        "inputs": [
            {
                "name": item.name,
                "source": item.source,
                "labels": item.matched.labels,
                "scores_are_probabilities": scores_are_probabilities(item.matched.scores),
            }
            for item in inputs
        ],
        "reference": reference,
        "settings": {
            "alpha": ALPHA,
            "adjustment": "holm",
            "per_label_test": "DeLong (structural components, Sun & Xu 2014 midranks)",
            "mean_test": "paired bootstrap over studies",
            "resamples": int(resamples),
            "seed": int(seed),
            "confidence": CONFIDENCE,
        },
        "comparisons": rows,
    }


# --- the reports ------------------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: Any) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def _p(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _interval(row: dict[str, Any]) -> str:
    interval = row.get("ci95")
    if not interval or not all(math.isfinite(value) for value in interval):
        return "—"
    return f"{interval[0]:+.4f} to {interval[1]:+.4f}"


HEADER = ["A", "B", "label", "AUROC A", "AUROC B", "Δ (A − B)", "95% CI", "test", "p", "p (Holm)", "A is"]


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The cells of the comparison table, one row per test (the mean rows in bold)."""
    cells = []
    for row in result["comparisons"]:
        label = row["label"]
        if label == MEAN:
            covered = row.get("labels") or []
            label = f"**mean of {len(covered)}**" if covered else "**mean**"
        verdict_text = row.get("verdict") or row.get("note", "—")
        cells.append(
            [
                row["a"],
                row["b"],
                label,
                _number(row.get("auroc_a")),
                _number(row.get("auroc_b")),
                _signed(row.get("difference")),
                _interval(row),
                row.get("test", "—"),
                _p(row.get("p")),
                _p(row.get("p_holm")),
                f"**{verdict_text}**" if row["label"] == MEAN and "verdict" in row else verdict_text,
            ]
        )
    return cells


def compare_markdown(result: dict[str, Any], groundtruth: str) -> str:
    settings = result["settings"]
    lines = ["# CheXpert paired comparison", ""]
    lines.append(f"- ground truth: {groundtruth}; {result['n_studies']:,} studies, every input scored on all of them")
    for item in result["inputs"]:
        note = "" if item["scores_are_probabilities"] else " (scores, not probabilities: only their order is used)"
        lines.append(f"- {item['name']}: `{item['source']}`{note}")
    if result["reference"]:
        lines.append(f"- every input against the reference, {result['reference']}")
    lines += [
        "- per label: DeLong's test for two correlated AUROCs (structural components, midranks as in Sun & Xu "
        "2014); 95% CI = Δ ± 1.96 sd",
        f"- mean over the labels both inputs score: paired bootstrap over studies ({settings['resamples']:,} "
        f"resamples, seed {settings['seed']}, one draw for both models and every label); 95% percentile CI, "
        "p = twice the smaller share of resampled differences on either side of 0",
        f"- p (Holm): Holm-Bonferroni over the {_counted(result)} tests of the table; A is better / worse when it "
        f"is below {settings['alpha']}, else tie"
        + (
            f" ({_degenerate(result)} label row(s) where neither AUROC can vary, such as both 1.0, test nothing: "
            "tie, not counted)"
            if _degenerate(result)
            else ""
        ),
        "",
        *markdown_table(HEADER, table_rows(result), "lllrrrrlrrl", tight_rule=True),
        "",
        f"![differences with 95% CIs]({COMPARE_PNG})",
        "",
    ]
    return "\n".join(lines)


def _degenerate(result: dict[str, Any]) -> int:
    return sum(bool(row.get("degenerate")) for row in result["comparisons"])


def _counted(result: dict[str, Any]) -> int:
    return sum("p" in row and not row.get("degenerate") for row in result["comparisons"])


def compare_text(result: dict[str, Any]) -> str:
    """The table as aligned plain text (what the command prints)."""
    rows = [HEADER, *([cell.replace("**", "") for cell in row] for row in table_rows(result))]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


_COLOURS = {"better": "tab:green", "worse": "tab:red", "tie": "0.35", "—": "0.7"}


def forest_figure(result: dict[str, Any]):
    """The forest plot: one line per test, the difference A − B with its 95% CI, a line at 0; the mean rows as
    diamonds; colour by verdict. A Figure (no pyplot state)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    tested = [row for row in result["comparisons"] if "difference" in row]
    figure = Figure(figsize=(8.0, 1.2 + 0.32 * max(1, len(tested))), dpi=120)
    axes = figure.add_subplot()
    ticks = []
    for position, row in enumerate(reversed(tested)):
        low, high = row.get("ci95") or [math.nan, math.nan]
        colour = _COLOURS.get(row.get("verdict", "—"), "0.35")
        mean = row["label"] == MEAN
        if math.isfinite(low) and math.isfinite(high):
            axes.plot([low, high], [position, position], color=colour, linewidth=2.2 if mean else 1.4)
        axes.plot(row["difference"], position, marker="D" if mean else "o", markersize=7 if mean else 5, color=colour)
        label = "mean" if mean else row["label"]
        ticks.append(f"{row['a']} − {row['b']}: {label}")
    axes.axvline(0.0, color="0.5", linewidth=0.8, linestyle="--")
    axes.set_yticks(range(len(ticks)), ticks, fontsize=7)
    axes.set_ylim(-0.7, max(0, len(ticks) - 1) + 0.7)
    axes.set_xlabel("difference in AUROC, A − B (95% CI)")
    axes.set_title(
        f"Paired comparison on {result['n_studies']:,} studies (colour: verdict after Holm, α = {ALPHA})", fontsize=9
    )
    handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=name) for name, colour in _COLOURS.items()]
    axes.legend(handles=handles[:3], fontsize=7, loc="best", title="A is", title_fontsize=7)
    axes.grid(axis="x", linewidth=0.4, alpha=0.6)
    if not tested:
        axes.text(0.5, 0.5, "no label could be compared", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    return figure


def write_compare(output: str | os.PathLike, result: dict[str, Any], groundtruth: str) -> dict[str, Path]:
    """``compare.json``, ``compare.md`` and ``compare.png`` in ``output`` (each written whole, or not at all)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {name: output / name for name in (COMPARE_JSON, COMPARE_MD, COMPARE_PNG)}
    figure = forest_figure(result)
    atomic_write(paths[COMPARE_PNG], lambda name: figure.savefig(name, format="png"))
    write_text(paths[COMPARE_MD], compare_markdown(result, groundtruth))
    payload = json_safe({"groundtruth": groundtruth, **result})
    write_text(paths[COMPARE_JSON], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return paths
