"""The benchmark's results: one row per grid run read from its folder, the statistics over seeds (mean ± sample
std, ranks with ties) and the three files ``results.csv``, ``results.md`` and ``auroc_by_strategy.png``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chexpert_hf.benchmark.launch import human_seconds
from chexpert_hf.benchmark.plan import BENCHMARK_RUN, Plan, read_json, run_state
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models.freeze import POLICIES
from chexpert_hf.outputs import AUROC_FIGURE_PNG, METRICS_JSON, RESULTS_CSV, RESULTS_MD, RUN_INFO
from chexpert_hf.utils import atomic_write, markdown_table, write_text

FIGURE = AUROC_FIGURE_PNG


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


def collect(the_plan: Plan) -> list[dict[str, Any]]:
    """One row per grid run (recipe by recipe), read from its folder: ``status`` is ``finished`` when the run
    folder is finished (``run_info.json`` and ``benchmark_run.json`` with the current settings), else ``failed``."""
    rows = []
    for run in the_plan.grid():
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(
            recipe=run.recipe,
            seed=run.seed,
            status="failed",
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
        rows.append(row)
    return rows


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


def results_markdown(rows: Sequence[dict[str, Any]], recipes: Sequence[str], seeds: Sequence[int], command: str) -> str:
    entries = summary_rows(rows, recipes)
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
            *(mean_std_text(entry["labels"][label]) for label in COMPETITION_LABELS),
            human_seconds(entry["wall_seconds"]),
            "—" if speed is None else f"{speed:,.0f}",
            _percent(entry["trainable_share"]),
            f"{entry['finished']}/{entry['runs']}",
        ]
        table.append(cells)
    lines += markdown_table(header, table, "rlllr" + "r" * (len(COMPETITION_LABELS) + 4), tight_rule=True)
    lines += [
        "",
        "± is the sample standard deviation (ddof = 1) over the finished seeds; without ± only one seed finished. "
        "Rows are in order of mean AUROC over seeds; a recipe's rank is 1 + the number of recipes clearly better "
        "than it, ahead by at least the larger of the two seed standard deviations, so recipes closer than their "
        "seed spread tie: they share a rank, marked `=` (=1, =1, 3). Wall time is per run (launch to exit, data "
        "preparation and evaluation included); images/s counts training steps only.",
    ]
    unjudged = [entry["recipe"] for entry in entries if entry["mean"] is not None and entry["std"] is None]
    if unjudged:
        lines += [
            "",
            f"Note: {', '.join(f'`{name}`' for name in unjudged)} finished fewer than 2 seeds, so no spread "
            "is known and no tie is judged for them.",
        ]
    failed = [row for row in rows if row["status"] != "finished"]
    if failed:
        lines += ["", "Failed runs (not in the means):", ""]
        lines += [f"- `{row['recipe']}` seed {row['seed']}: log `{row['log']}`" for row in failed]
    lines += ["", f"![mean AUROC by model and strategy]({FIGURE})", ""]
    return "\n".join(lines)


def strategy_figure(rows: Sequence[dict[str, Any]], recipes: Sequence[str]):
    """Grouped bars: one group per family (variant), one bar per strategy (head, last_block, full), height the
    mean over seeds of mean AUROC, error bar the seeds' standard deviation. A Figure (no pyplot state)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    groups: dict[str, dict[str, tuple[float, float | None]]] = {}
    for entry in summary_rows(rows, recipes):
        if entry["mean"] is None:
            continue
        group = f"{entry['family']} ({entry['variant']})" if entry["variant"] else entry["family"]
        if entry["freeze_policy"] in groups.get(group, {}):
            group = f"{group}: {entry['recipe']}"  # two recipes with one model and strategy: keep both
        groups.setdefault(group, {})[entry["freeze_policy"]] = (entry["mean"], entry["std"])
    strategies = [policy for policy in POLICIES if any(policy in bars for bars in groups.values())]
    figure = Figure(figsize=(max(6.0, 1.5 + 0.8 * len(groups) * max(1, len(strategies))), 4.8), dpi=120)
    axes = figure.add_subplot()
    width = min(0.8 / max(1, len(strategies)), 0.3)
    lowest = 1.0
    for offset, policy in enumerate(strategies):
        xs, heights, errors = [], [], []
        for index, bars in enumerate(groups.values()):
            if policy in bars:
                mean, std = bars[policy]
                xs.append(index + width * (offset - (len(strategies) - 1) / 2))
                heights.append(mean)
                errors.append(std if std is not None else 0.0)
                lowest = min(lowest, mean - (std or 0.0))
        has_error = any(error > 0 for error in errors)
        bars = axes.bar(
            xs,
            heights,
            width * 0.92,
            yerr=errors if has_error else None,
            capsize=4,
            label=policy,
            color=f"C{POLICIES.index(policy)}",
        )
        axes.bar_label(
            bars, labels=[f"{height:.3f}" for height in heights], label_type="center", fontsize=8, color="white"
        )
    axes.set_xticks(range(len(groups)), list(groups), fontsize=9)
    axes.set_xlim(-0.6, max(1, len(groups)) - 0.4)
    bottom = 0.5 if lowest >= 0.55 else 0.0  # chance level, when every bar is above it
    axes.set_ylim(bottom, 1.0)
    axes.set_ylabel("mean AUROC (5 competition labels)")
    axes.set_title("Mean AUROC by model and fine-tuning strategy (error bars: std over seeds)", fontsize=9)
    if strategies:
        axes.legend(title="strategy", fontsize=8, title_fontsize=8, loc="lower right")
    else:
        axes.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes.transAxes)
    axes.grid(axis="y", linewidth=0.4, alpha=0.6)
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
) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``auroc_by_strategy.png`` into ``output``; returns their paths."""
    output = Path(output)
    paths = {name: output / name for name in (RESULTS_CSV, RESULTS_MD, FIGURE)}
    write_text(paths[RESULTS_CSV], results_csv(rows))
    write_text(paths[RESULTS_MD], results_markdown(rows, recipes, seeds, command))
    figure = strategy_figure(rows, recipes)
    atomic_write(paths[FIGURE], lambda name: figure.savefig(name, format="png"))
    return paths
