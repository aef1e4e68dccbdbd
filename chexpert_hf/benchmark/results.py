"""The benchmark's results: one row per grid run read from its folder (scores, cost, and the stability of its
validation curve), the statistics over seeds (mean ± sample std, ranks with ties), the paired tests against the
best recipe, and the files ``results.csv``, ``results.md``, ``auroc_by_strategy.png``, ``learning_curves.png`` and
``compare.json`` / ``compare.md`` / ``compare.png`` (the paired tests in full)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chexpert_hf.benchmark.launch import human_seconds
from chexpert_hf.benchmark.plan import BENCHMARK_RUN, Plan, read_json, run_state
from chexpert_hf.benchmark.significance import against_best
from chexpert_hf.benchmark.stability import STABILITY_KEYS, learning_curves_figure, read_curve, stability
from chexpert_hf.evaluation.compare import ALPHA, COMPARE_RESAMPLES, write_compare
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models.freeze import POLICIES
from chexpert_hf.outputs import (
    AUROC_FIGURE_PNG,
    LEARNING_CURVES_PNG,
    METRICS_JSON,
    RESULTS_CSV,
    RESULTS_MD,
    RUN_INFO,
    TRAINER_STATE,
)
from chexpert_hf.utils import atomic_write, markdown_table, write_text

FIGURE = AUROC_FIGURE_PNG
logger = logging.getLogger(__name__)


def auroc_column(label: str) -> str:
    return f"auroc_{label}"


COLUMNS = (
    "recipe",
    "seed",
    "status",
    "family",
    "variant",
    "freeze_policy",
    "mean_auroc",
    "mean_auroc_ci_low",
    "mean_auroc_ci_high",
    *(auroc_column(label) for label in COMPETITION_LABELS),
    *STABILITY_KEYS,
    "trainable_parameters",
    "total_parameters",
    "trainable_share",
    "wall_seconds",
    "train_seconds",
    "train_images_per_second",
    "feature_extraction_seconds",
    "peak_memory_mib",
    "peak_memory_kind",
    "precision",
    "world_size",
    "hardware",
    "run_dir",
    "log",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def collect(the_plan: Plan, unfinished: dict[tuple[str, int], str] | None = None) -> list[dict[str, Any]]:
    """One row per grid run (recipe by recipe), read from its folder: ``status`` is ``finished`` when the run
    folder is finished (``run_info.json`` and ``benchmark_run.json`` with the current settings), else what
    ``unfinished`` says for it (a SLURM job's ``pending``, ``running`` or ``requeued``), else ``failed``."""
    rows = []
    unfinished = unfinished or {}
    for run in the_plan.grid():
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(
            recipe=run.recipe,
            seed=run.seed,
            status=unfinished.get((run.recipe, run.seed), "failed"),
            family=run.family,
            variant=run.variant or None,
            freeze_policy=run.freeze_policy,
            run_dir=os.path.relpath(run.output_dir, the_plan.output),
            log=os.path.relpath(run.log, the_plan.output),
        )
        info = read_json(run.output_dir / RUN_INFO)
        metrics = read_json(run.output_dir / METRICS_JSON)
        record = read_json(run.output_dir / BENCHMARK_RUN)
        if run_state(run)[0] == "finished" and info is not None and metrics is not None:
            row["status"] = "finished"
            for key in (
                "family",
                "variant",
                "freeze_policy",
                "trainable_parameters",
                "total_parameters",
                "trainable_share",
                "train_seconds",
                "train_images_per_second",
                "feature_extraction_seconds",
                "peak_memory_mib",
                "peak_memory_kind",
                "precision",
                "world_size",
                "hardware",
            ):
                if key in info:
                    row[key] = info[key]
            row["mean_auroc"] = _number(metrics.get("mean_auroc"))
            interval = metrics.get("mean_auroc_ci95") or [None, None]
            row["mean_auroc_ci_low"], row["mean_auroc_ci_high"] = (_number(value) for value in interval[:2])
            per_label = metrics.get("per_label") or {}
            for label in COMPETITION_LABELS:
                row[auroc_column(label)] = _number((per_label.get(label) or {}).get("auroc"))
            row["wall_seconds"] = _number((record or {}).get("wall_seconds"))
            row.update(stability(_curve(run.output_dir / TRAINER_STATE)))
        rows.append(row)
    return rows


def _curve(path: Path):
    """The run's validation curve; a damaged state file costs the stability numbers, not the results (a warning)."""
    try:
        return read_curve(path)
    except ValueError as error:
        logger.warning("no stability numbers: %s", error)
        return None


def _spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None with fewer than 2 values)."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def mean_std_text(values: Sequence[float]) -> str:
    """``0.8123 ± 0.0101`` (mean ± sample std); one value: ``0.8123``; none: ``—``."""
    mean, std = _spread([value for value in values if value is not None])
    if mean is None:
        return "—"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _clearly_better(first: tuple[str, float, float | None], second: tuple[str, float, float | None]) -> bool:
    """``first``'s mean beats ``second``'s by at least the larger of their seed standard deviations (by anything
    when either spread is unknown)."""
    gap = first[1] - second[1]
    if first[2] is None or second[2] is None:
        return gap > 0
    return gap > 0 and gap >= max(first[2], second[2])


def rank_recipes(stats: Sequence[tuple[str, float | None, float | None]]) -> list[tuple[str, str]]:
    """``(recipe, mean, std)`` → ``(recipe, rank)``, best mean first. A recipe's rank is 1 + the number of recipes
    clearly better than it — ahead by at least the larger of the two seed standard deviations — so recipes whose
    means differ by less than their seed spread tie, without chaining (0.90, 0.89, 0.88 with spread 0.015 rank
    =1, =1, 2: the first and last differ by more than the spread). A shared rank shows ``=`` (``=1``); without a
    known spread (one seed) any difference counts. No mean: rank ``—``."""
    ranked = sorted((item for item in stats if item[1] is not None), key=lambda item: -item[1])
    ranks = [1 + sum(_clearly_better(other, item) for other in ranked) for item in ranked]
    result = [
        (item[0], f"={rank}" if ranks.count(rank) > 1 else str(rank)) for item, rank in zip(ranked, ranks, strict=True)
    ]
    return result + [(item[0], "—") for item in stats if item[1] is None]


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [value for value in values if _number(value) is not None]
    return float(np.mean(numbers)) if numbers else None


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.3g} %"


def summary_rows(rows: Sequence[dict[str, Any]], recipes: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per recipe (best first): the numbers of ``results.md``."""
    entries = []
    for name in recipes:
        mine = [row for row in rows if row["recipe"] == name]
        done = [row for row in mine if row["status"] == "finished"]
        means = [row["mean_auroc"] for row in done if row["mean_auroc"] is not None]
        mean, std = _spread(means)
        first = (done or mine or [{}])[0]
        entries.append(
            {
                "recipe": name,
                "family": first.get("family") or "",
                "variant": first.get("variant") or "",
                "freeze_policy": first.get("freeze_policy") or "",
                "mean": mean,
                "std": std,
                "means": means,
                "labels": {label: [row[auroc_column(label)] for row in done] for label in COMPETITION_LABELS},
                "stability": {key: [row[key] for row in done] for key in STABILITY_KEYS},
                "run_dirs": [row["run_dir"] for row in done],
                "wall_seconds": _mean([row["wall_seconds"] for row in done]),
                "images_per_second": _mean([row["train_images_per_second"] for row in done]),
                "trainable_share": _mean([row["trainable_share"] for row in done]),
                "finished": len(done),
                "runs": len(mine),
            }
        )
    ranked = rank_recipes([(entry["recipe"], entry["mean"], entry["std"]) for entry in entries])
    order = {name: index for index, (name, _) in enumerate(ranked)}
    for entry in entries:
        entry["rank"] = ranked[order[entry["recipe"]]][1]
    return sorted(entries, key=lambda entry: order[entry["recipe"]])


def results_markdown(
    rows: Sequence[dict[str, Any]],
    recipes: Sequence[str],
    seeds: Sequence[int],
    command: str,
    paired: dict[str, Any] | None = None,
    explained: Sequence[str] = (),
) -> str:
    """``results.md``: the ranked table (with each recipe's paired test against the best), the paired tests per
    label, the stability over epochs, the failed runs and the figures. ``paired`` is
    :func:`~chexpert_hf.benchmark.significance.against_best`'s result; ``explained``: the lines of the
    ``--explain`` section (:func:`~chexpert_hf.benchmark.explain.explain_markdown`)."""
    entries = summary_rows(rows, recipes)
    paired = paired or {"reason": "not computed"}
    hardware = sorted({row["hardware"] for row in rows if row["status"] == "finished" and row["hardware"]})
    finished = sum(row["status"] == "finished" for row in rows)
    lines = [
        "# CheXpert benchmark",
        "",
        f"- command: `{command}`",
        f"- machine: {'; '.join(hardware) or 'unknown (no run finished)'}",
        f"- seeds: {', '.join(map(str, seeds))}; {finished} of {len(rows)} runs finished",
        "- mean AUROC: over the 5 competition labels, on the validation split, per run; then over the seeds",
        "",
    ]
    header = [
        "rank",
        "recipe",
        "family (variant)",
        "strategy",
        "mean AUROC",
        "vs best, paired",
        *COMPETITION_LABELS,
        "wall time / run",
        "train images/s",
        "trainable",
        "seeds",
    ]
    table = []
    for entry in entries:
        model = f"{entry['family']} ({entry['variant']})" if entry["variant"] else entry["family"]
        speed = entry["images_per_second"]
        cells = [
            entry["rank"],
            f"`{entry['recipe']}`",
            model,
            entry["freeze_policy"],
            mean_std_text(entry["means"]),
            _paired_cell(paired, entry["recipe"]),
            *(mean_std_text(entry["labels"][label]) for label in COMPETITION_LABELS),
            human_seconds(entry["wall_seconds"]),
            "—" if speed is None else f"{speed:,.0f}",
            _percent(entry["trainable_share"]),
            f"{entry['finished']}/{entry['runs']}",
        ]
        table.append(cells)
    lines += markdown_table(header, table, "rlllrl" + "r" * (len(COMPETITION_LABELS) + 4), tight_rule=True)
    lines += [
        "",
        "- **rank (seed spread)**: ± is the sample standard deviation (ddof = 1) over the finished seeds. Rows are "
        "in order of mean AUROC over seeds; a recipe's rank is 1 + the number of recipes clearly better than it, "
        "ahead by at least the larger of the two seed standard deviations, so recipes closer than their seed "
        "spread tie: they share a rank, marked `=` (=1, =1, 3).",
        "- **vs best, paired**: the recipe's predictions averaged over its seeds against the best recipe's, on the "
        "same validation studies: the difference of the 5-label mean AUROC, a paired bootstrap over studies "
        f"({COMPARE_RESAMPLES:,} resamples) for its p, Holm-adjusted over every test in `compare.md`; better / "
        f"worse when the adjusted p is below {ALPHA}, else tie.",
        "- Wall time is per run (launch to exit, data preparation and evaluation included); images/s counts "
        "training steps only.",
    ]
    unjudged = [entry["recipe"] for entry in entries if entry["mean"] is not None and entry["std"] is None]
    if unjudged:
        lines += [
            "",
            f"Note: {', '.join(f'`{name}`' for name in unjudged)} finished fewer than 2 seeds, so no spread "
            "is known and no tie is judged for them.",
        ]
    lines += ["", *_paired_section(paired), "", *_stability_section(entries)]
    if explained:
        lines += ["", *explained]
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs (not in the means):", ""]
        lines += [f"- `{row['recipe']}` seed {row['seed']}: log `{row['log']}`" for row in failed]
    waiting = [row for row in rows if row["status"] not in ("finished", "failed")]
    if waiting:
        lines += ["", "Not finished yet (not in the means):", ""]
        lines += [f"- `{row['recipe']}` seed {row['seed']}: {row['status']}, log `{row['log']}`" for row in waiting]
    lines += [
        "",
        f"![mean AUROC by model and strategy]({FIGURE})",
        "",
        f"![learning curves]({LEARNING_CURVES_PNG})",
        "",
    ]
    return "\n".join(lines)


def _p_text(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return "p < 0.0001" if value < 1e-4 else f"p = {value:.4f}"


def _paired_cell(paired: dict[str, Any], recipe: str) -> str:
    """``−0.0061 (p = 0.0120) worse``; the reference itself: ``reference``."""
    if "reason" in paired:
        return "—"
    if recipe == paired["reference"]:
        return "reference"
    row = (paired["recipes"].get(recipe) or {}).get("mean")
    if not row or "p_holm" not in row:
        return "—"
    return f"{row['difference']:+.4f} ({_p_text(row['p_holm'])}) {row['verdict']}"


def _paired_section(paired: dict[str, Any]) -> list[str]:
    lines = ["## Paired tests against the best recipe", ""]
    if "reason" in paired:
        return [*lines, f"Not computed: {paired['reason']}."]
    lines.append(
        f"Reference: `{paired['reference']}`. Each cell: the difference in AUROC (recipe − reference, seed-averaged "
        "predictions), the Holm-adjusted p and the verdict; per label DeLong's test, the mean a paired bootstrap. "
        "All the numbers, with intervals: `compare.md`, `compare.json` and the forest plot `compare.png`."
    )
    lines.append("")
    header = ["recipe", "mean of 5", *COMPETITION_LABELS]
    table = []
    for recipe, tests in paired["recipes"].items():
        cells = [f"`{recipe}`", _test_cell(tests.get("mean"))]
        cells += [_test_cell(tests["labels"].get(label)) for label in COMPETITION_LABELS]
        table.append(cells)
    return lines + markdown_table(header, table, "l" + "r" * (len(COMPETITION_LABELS) + 1), tight_rule=True)


def _test_cell(row: dict[str, Any] | None) -> str:
    if not row:
        return "—"
    if "p_holm" not in row:
        return row.get("note", "—")
    return f"{row['difference']:+.4f}, {_p_text(row['p_holm'])}, {row['verdict']}"


def _stat_text(values: Sequence[Any], digits: int = 4) -> str:
    """Mean and range over seeds: ``0.0123 (0.0100–0.0150)``; one value as it is; none ``—``."""
    numbers = [value for value in values if _number(value) is not None]
    if not numbers:
        return "—"
    if len(numbers) == 1:
        return f"{numbers[0]:.{digits}f}"
    return f"{np.mean(numbers):.{digits}f} ({min(numbers):.{digits}f}–{max(numbers):.{digits}f})"


def _losses(train: Sequence[Any], validation: Sequence[Any]) -> str:
    return f"{_stat_text(train, 3)} / {_stat_text(validation, 3)}"


def _stability_section(entries: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "## Stability over epochs",
        "",
        "From each run's validation during training (`trainer_state.json`): mean over seeds, the seeds' range in "
        "brackets. **peak − last**: how much AUROC a run lost after its best epoch (overfitting); **largest drop**: "
        "the largest fall of validation AUROC from one evaluation to the next (instability); **seed std**: the "
        "sample standard deviation of the final mean AUROC over seeds.",
        "",
    ]
    header = [
        "recipe",
        "best epoch",
        "AUROC at best",
        "AUROC at last",
        "peak − last",
        "largest drop",
        "train / val loss at best",
        "train / val loss at last",
        "seed std",
    ]
    table = []
    for entry in entries:
        values = entry["stability"]
        best_epochs = [f"{epoch:g}" for epoch in values["best_epoch"] if _number(epoch) is not None]
        table.append(
            [
                f"`{entry['recipe']}`",
                ", ".join(best_epochs) or "—",
                _stat_text(values["best_auroc"]),
                _stat_text(values["last_auroc"]),
                _stat_text(values["peak_minus_last"]),
                _stat_text(values["largest_drop"]),
                _losses(values["train_loss_best"], values["val_loss_best"]),
                _losses(values["train_loss_last"], values["val_loss_last"]),
                "—" if entry["std"] is None else f"{entry['std']:.4f}",
            ]
        )
    return lines + markdown_table(header, table, "l" + "r" * 8, tight_rule=True)


def strategy_figure(rows: Sequence[dict[str, Any]], recipes: Sequence[str]):
    """One row per recipe (best on top): each seed's mean AUROC as a small dot, the mean over seeds as a large
    one with a bar for ± the seeds' standard deviation, coloured by strategy, on an axis fitted to the data so
    that differences of 0.01 show. A Figure (no pyplot state)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    entries = [entry for entry in summary_rows(rows, recipes) if entry["mean"] is not None]
    figure = Figure(figsize=(7.5, max(3.6, 1.4 + 0.45 * len(entries))), dpi=120)
    axes = figure.add_subplot()
    values = []
    for position, entry in enumerate(reversed(entries)):
        colour = f"C{POLICIES.index(entry['freeze_policy'])}" if entry["freeze_policy"] in POLICIES else "0.3"
        axes.plot(entry["means"], [position] * len(entry["means"]), "o", color=colour, alpha=0.45, markersize=4)
        std = entry["std"] or 0.0
        axes.errorbar(entry["mean"], position, xerr=std, fmt="D", color=colour, markersize=7, capsize=4)
        axes.annotate(
            f"{entry['mean']:.4f}",
            (entry["mean"], position),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=7,
        )
        values += [*entry["means"], entry["mean"] - std, entry["mean"] + std]
    labels = [
        f"{entry['recipe']}\n{entry['family']} ({entry['variant']})" if entry["variant"] else entry["recipe"]
        for entry in reversed(entries)
    ]
    axes.set_yticks(range(len(entries)), labels, fontsize=7)
    axes.set_ylim(-0.7, max(0, len(entries) - 1) + 0.9)
    if values:
        low, high = min(values), max(values)
        margin = max(0.15 * (high - low), 0.002)
        axes.set_xlim(max(0.0, low - margin), min(1.0, high + margin) if high + margin > low else low + 0.01)
    else:
        axes.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("mean AUROC (5 competition labels): dots each seed, diamond the mean ± seed std")
    axes.set_title("Mean AUROC by recipe and fine-tuning strategy (axis fitted to the data)", fontsize=9)
    strategies = [policy for policy in POLICIES if any(entry["freeze_policy"] == policy for entry in entries)]
    if strategies:
        handles = [
            Line2D([], [], color=f"C{POLICIES.index(policy)}", marker="D", linestyle="", label=policy)
            for policy in strategies
        ]
        axes.legend(handles=handles, title="strategy", fontsize=7, title_fontsize=7, loc="best")
    axes.grid(axis="x", linewidth=0.4, alpha=0.6)
    figure.tight_layout()
    return figure


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(COLUMNS)).to_csv(index=False)


def write_results(
    output: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    *,
    recipes: Sequence[str],
    seeds: Sequence[int],
    command: str,
    resamples: int = COMPARE_RESAMPLES,
    explained: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md``, ``auroc_by_strategy.png``, ``learning_curves.png`` and (when two
    recipes finished on the same studies) ``compare.json``, ``compare.md`` and ``compare.png`` into ``output``;
    returns their paths."""
    output = Path(output)
    entries = summary_rows(rows, recipes)
    finished = {entry["recipe"]: [output / run_dir for run_dir in entry["run_dirs"]] for entry in entries}
    best = next((entry["recipe"] for entry in entries if entry["mean"] is not None), "")
    paired = against_best(finished, best, resamples=resamples)
    paths = {name: output / name for name in (RESULTS_CSV, RESULTS_MD, FIGURE, LEARNING_CURVES_PNG)}
    write_text(paths[RESULTS_CSV], results_csv(rows))
    write_text(paths[RESULTS_MD], results_markdown(rows, recipes, seeds, command, paired, explained))
    figure = strategy_figure(rows, recipes)
    atomic_write(paths[FIGURE], lambda name: figure.savefig(name, format="png"))
    curves = {
        name: [curve for run_dir in dirs if (curve := _curve(run_dir / TRAINER_STATE)) is not None]
        for name, dirs in finished.items()
    }
    curves_figure = learning_curves_figure(curves)
    atomic_write(paths[LEARNING_CURVES_PNG], lambda name: curves_figure.savefig(name, format="png"))
    if "result" in paired:
        paths.update(write_compare(output, paired["result"], "each run's validation_labels.csv (the same studies)"))
    return paths
