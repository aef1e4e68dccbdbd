"""``chexpert-hf benchmark ... --explain``: where each recipe's models look, over its seeds.

After the grid, every recipe's finished runs are explained together (:func:`chexpert_hf.explain.run.explain_models`)
on the same validation images, into ``DIR/explain/<recipe>/`` (one folder per run, and ``localization.json`` with
every method and label as mean ± std over the seeds). The maps are scored against lesion boxes when there are any
(the synthetic data's ``lesions.csv``, found by itself; or ``--explain_lesions FILE``) and always checked against
the randomized model. ``results.md`` gains a section with one row per recipe and method.

A recipe whose runs and explain settings are unchanged since the last time (``benchmark_explain.json`` in its
folder records both) is not explained again. One recipe that cannot be explained (a family without the method,
a missing file) is reported and the others go on; the benchmark's exit status is not changed by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from chexpert_hf.benchmark.plan import Plan, read_json
from chexpert_hf.explain.localization import DEFAULT_TOLERANCE, baseline_text
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.outputs import LOCALIZATION_JSON, RECIPE_YAML, RUN_INFO
from chexpert_hf.utils import markdown_table

logger = logging.getLogger(__name__)

EXPLAIN_FOLDER = "explain"
STAMP = "benchmark_explain.json"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class ExplainSettings:
    """What ``--explain`` does: the first ``images`` frontal validation images (0: all), the methods (None: each
    family's default), the lesion boxes (None: the data's own ``lesions.csv`` where it has one)."""

    images: int = 64
    methods: tuple[str, ...] | None = None
    lesions: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    overlays: str = "sheets"
    device: str | None = None

    def check(self) -> None:
        from chexpert_hf.explain.maps import METHODS
        from chexpert_hf.explain.run import OVERLAYS

        if self.images < 0:
            raise ValueError(f"--explain_images must be 0 (all) or more, got {self.images}")
        unknown = [name for name in self.methods or () if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown --explain_method {', '.join(unknown)}; methods: {', '.join(METHODS)}")
        if self.lesions is not None and not Path(self.lesions).is_file():
            raise FileNotFoundError(f"--explain_lesions: no such file: {self.lesions}")
        if self.overlays not in OVERLAYS:
            raise ValueError(f"overlays must be one of {', '.join(OVERLAYS)}, got {self.overlays!r}")


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_data(run_dir: Path) -> tuple[Path, Path | None, int, str]:
    """The prepared dataset a finished run validated on, its lesion boxes (None where the data has none), the size
    it was prepared at and the views, from the run's resolved ``recipe.yaml``."""
    from chexpert_hf.data.loading import cache_root, resolve_prepared, synthetic_root

    recipe = yaml.safe_load((run_dir / RECIPE_YAML).read_text()) or {}
    data_dir, cache = recipe.get("data_dir"), recipe.get("data_cache_dir")
    size = int(recipe.get("prepare_image_size") or 320)
    synthetic = tuple(
        int(recipe.get(key, default))
        for key, default in (("synthetic_patients", 1500), ("synthetic_valid_patients", 300), ("synthetic_seed", 0))
    )
    prepared = resolve_prepared(data_dir, cache_dir=cache, image_size=size, synthetic=synthetic)
    if data_dir in (None, ""):
        lesions = synthetic_root(cache_root(cache), *synthetic) / "lesions.csv"
    else:
        lesions = Path(data_dir).expanduser() / "lesions.csv"
    views = recipe.get("views") if recipe.get("views") in ("frontal", "all") else "frontal"
    return Path(prepared), (lesions if lesions.is_file() else None), size, views


def _stamp(run_dirs: Sequence[Path], settings: ExplainSettings, lesions: Path | None) -> dict[str, Any]:
    return {
        "runs": {str(run_dir): _sha256(run_dir / RUN_INFO) for run_dir in run_dirs},
        "settings": {**asdict(settings), "methods": list(settings.methods or [])},
        "lesions": str(lesions) if lesions else None,
        "lesions_sha256": _sha256(lesions) if lesions else None,
    }


def explain_recipe(
    recipe: str, run_dirs: Sequence[Path], output: Path, settings: ExplainSettings, *, progress: bool = True
) -> dict[str, Any]:
    """Explain one recipe's finished runs into ``output`` (replaced); returns what ``results.md`` shows."""
    from chexpert_hf.evaluation.inference import load_classifier
    from chexpert_hf.explain.localization import read_lesions
    from chexpert_hf.explain.maps import default_method, model_family
    from chexpert_hf.explain.run import explain_models, split_images

    prepared, found, size, views = run_data(run_dirs[0])
    lesions_path = Path(settings.lesions) if settings.lesions else found
    stamp = _stamp(run_dirs, settings, lesions_path)
    previous = read_json(output / STAMP)
    if previous == stamp and (output / LOCALIZATION_JSON).is_file():
        summary = json.loads((output / LOCALIZATION_JSON).read_text())
        return {"recipe": recipe, "folder": output, "summary": summary, "lesions": lesions_path, "reused": True}

    def load(model: str):
        loaded = load_classifier(model, device=settings.device)
        if labels is not None and loaded.labels != labels:
            raise ValueError(f"{model} scores {loaded.labels}, the recipe's first run {labels}")
        return loaded

    labels = None
    first = load(str(run_dirs[0]))
    labels = first.labels
    methods = list(settings.methods or [default_method(model_family(first.model))])
    del first
    radiographs = split_images(
        prepared, labels, split="validation", num_images=settings.images, views=views, prepare_image_size=size
    )
    summary, _ = explain_models(
        load,
        [str(run_dir) for run_dir in run_dirs],
        radiographs,
        output,
        overwrite=True,
        keep=[*run_dirs, prepared, *([lesions_path] if lesions_path else [])],
        methods=methods,
        lesions=read_lesions(lesions_path) if lesions_path else None,
        tolerance=settings.tolerance,
        sanity_check=True,
        overlays=settings.overlays,
        progress=progress,
    )
    (output / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return {"recipe": recipe, "folder": output, "summary": summary, "lesions": lesions_path, "reused": False}


def explain_grid(
    the_plan: Plan, rows: Sequence[dict[str, Any]], settings: ExplainSettings, *, echo: Echo = print
) -> list[dict[str, Any]]:
    """Explain every recipe with at least one finished run (:func:`explain_recipe`), in the grid's order; a recipe
    that fails is echoed and listed with its ``error``."""
    explained = []
    for recipe in the_plan.recipes:
        run_dirs = [
            the_plan.output / row["run_dir"] for row in rows if row["recipe"] == recipe and row["status"] == "finished"
        ]
        if not run_dirs:
            continue
        output = the_plan.output / EXPLAIN_FOLDER / recipe
        try:
            entry = explain_recipe(recipe, run_dirs, output, settings)
        except Exception as error:  # noqa: BLE001 - one recipe's failure must not lose the others' maps
            logger.debug("explaining %s failed", recipe, exc_info=True)
            echo(f"benchmark: could not explain {recipe}: {error}")
            explained.append({"recipe": recipe, "folder": output, "error": str(error)})
            continue
        seeds = len(run_dirs)
        for method, result in entry["summary"]["methods"].items():
            echo(f"benchmark: explain {recipe} ({method}, {seeds} seed(s)): {baseline_text(result['baselines'])}")
        explained.append(entry)
    return explained


def _cell(spread: dict | None, digits: int = 3) -> str:
    if not spread or spread.get("mean") is None:
        return "—"
    text = f"{spread['mean']:.{digits}f}"
    return text + (f" ± {spread['std']:.{digits}f}" if spread.get("std") is not None else "")


def explain_markdown(explained: Sequence[dict[str, Any]], settings: ExplainSettings) -> list[str]:
    """The ``results.md`` section: one row per recipe and method (mean ± std over its seeds), then the hit rate per
    competition label, then whether every label beat both baselines in every seed."""
    if not explained:
        return []
    images = "all" if settings.images == 0 else f"the first {settings.images}"
    lines = [
        "## Where the models look (`--explain`)",
        "",
        f"{images} frontal validation images, each recipe's seeds explained on the same images; pointing game "
        f"against the lesion boxes (tolerance {settings.tolerance:g} px) where the data has them, and the "
        "randomized-model check. Mean ± sample std over the seeds; each recipe's maps and scores are in "
        f"`{EXPLAIN_FOLDER}/<recipe>/`.",
        "",
    ]
    header = ["recipe", "method", "seeds", "hit rate", "uniform map", "randomized model", "right label",
              "wrong label", "Spearman between labels", "Spearman vs randomized", "× chance"]  # fmt: skip
    table, per_label, checks = [], [], []
    for entry in explained:
        name = f"`{entry['recipe']}`"
        if "error" in entry:
            checks.append(f"- {name}: not explained: {entry['error']}")
            continue
        seeds = len(entry["summary"]["models"])
        for method, result in entry["summary"]["methods"].items():
            overall = result["overall"]
            table.append(
                [name, f"`{method}`", str(seeds)]
                + [_cell(overall[key]) for key in ("hit_rate", "uniform_random_hit_rate", "randomized_model_hit_rate")]
                + [_cell(overall[key]) for key in ("right_label_hit_rate", "wrong_label_hit_rate")]
                + [_cell(overall[key]) for key in ("spearman_between_labels", "spearman_vs_randomized")]
                + [_cell(result["baselines"]["hit_rate_over_chance"], 2)]
            )
            per_label.append(
                [name, f"`{method}`"]
                + [
                    _cell(result["per_label"][label]["hit_rate"]) if label in result["per_label"] else "—"
                    for label in COMPETITION_LABELS
                ]
            )
            if result["per_label"]:
                checks.append(f"- {name}, `{method}`: {baseline_text(result['baselines'])}")
    if table:
        lines += markdown_table(header, table, "llr" + "r" * (len(header) - 3), tight_rule=True)
        lines += ["", "Hit rate per competition label (mean ± std over seeds; — : no boxed positive):", ""]
        lines += markdown_table(
            ["recipe", "method", *COMPETITION_LABELS], per_label, "ll" + "r" * len(COMPETITION_LABELS), tight_rule=True
        )
    if checks:
        lines += ["", *checks]
    return lines


__all__ = ["EXPLAIN_FOLDER", "ExplainSettings", "explain_grid", "explain_markdown", "explain_recipe", "run_data"]
