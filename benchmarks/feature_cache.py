"""Head-only training with cached features against the same training on the fly, measured in one run.

    python benchmarks/feature_cache.py                      # demo_head, 10 epochs, seeds 0,1,2 (~10 min on 2 CPUs)
    python benchmarks/feature_cache.py --seeds 0 --epochs 2 # a quick look

Every seed trains the recipe twice through the real training job (``chexpert_hf.training.train``): ``cache_features:
false`` (the frozen backbone runs on every image in every epoch) and ``cache_features: true`` with a feature cache
that starts empty, so the first cached seed pays for the extraction and the later ones reuse it. Reported per
run: the Trainer's training time (all epochs, with their per-epoch evaluations), the extraction time, the whole
job's wall time and the validation mean AUROC; then the speed-up of the training itself (on the fly ÷ cached) and
of the first cached run with its extraction, and the AUROC of both modes as mean ± std over the seeds.

``demo_head`` starts from ``outputs/demo_pretrain``; it is trained first (``--recipe demo_pretrain``) if missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chexpert_hf.benchmark.results import mean_std_text
from chexpert_hf.outputs import RUN_INFO
from chexpert_hf.training.train import main as train_main
from chexpert_hf.utils import markdown_table


def _run(recipe: str, output: Path, seed: int, epochs: int, cached: bool, cache_dir: Path, extra: list[str]) -> dict:
    arguments = [
        "--recipe",
        recipe,
        "--seed",
        str(seed),
        "--num_train_epochs",
        str(epochs),
        "--output_dir",
        str(output),
        "--cache_features",
        str(cached).lower(),
        "--feature_cache_dir",
        str(cache_dir),
        "--disable_tqdm",
        "true",
        *extra,
    ]
    began = time.perf_counter()
    status = train_main(arguments)
    wall = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"training {recipe} (seed {seed}, cache_features {cached}) failed with status {status}")
    info = json.loads((output / RUN_INFO).read_text())
    metrics = json.loads((output / "metrics.json").read_text())
    return {
        "seed": seed,
        "cached": cached,
        "train_seconds": info["train_seconds"],
        "extraction_seconds": info["feature_extraction_seconds"] or 0.0,
        "wall_seconds": wall,
        "mean_auroc": metrics["mean_auroc"],
        "hardware": info["hardware"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo_head", help="a head-only recipe (default: demo_head)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per run (default: 10)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--output", help="where the runs go (default: a temporary folder, removed at the end)")
    parser.add_argument("--json", help="also write the runs and the ratios to this JSON file")
    args, extra = parser.parse_known_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]

    if args.recipe.startswith("demo_") and not (Path("outputs/demo_pretrain") / RUN_INFO).is_file():
        print("outputs/demo_pretrain is missing: training recipe demo_pretrain first", flush=True)
        if train_main(["--recipe", "demo_pretrain", "--disable_tqdm", "true"]) != 0:
            return 1

    with tempfile.TemporaryDirectory(prefix="feature-cache-bench-") as scratch:
        root = Path(args.output) if args.output else Path(scratch)
        cache_dir = root / "features"
        if cache_dir.exists() and any(cache_dir.iterdir()):
            raise SystemExit(f"{cache_dir} is not empty: the first cached run must extract; give another --output")
        runs = []
        for seed in seeds:
            for cached in (False, True):
                mode = "cached" if cached else "on_the_fly"
                runs.append(_run(args.recipe, root / f"{mode}-seed{seed}", seed, args.epochs, cached, cache_dir, extra))
                print(
                    f"seed {seed} {mode}: training {runs[-1]['train_seconds']:.1f} s, extraction "
                    f"{runs[-1]['extraction_seconds']:.1f} s, AUROC {runs[-1]['mean_auroc']:.4f}",
                    flush=True,
                )

    fly = [run for run in runs if not run["cached"]]
    cached = [run for run in runs if run["cached"]]
    fly_seconds = statistics.mean(run["train_seconds"] for run in fly)
    cached_seconds = statistics.mean(run["train_seconds"] for run in cached)
    extraction = cached[0]["extraction_seconds"]
    summary = {
        "recipe": args.recipe,
        "epochs": args.epochs,
        "seeds": seeds,
        "hardware": runs[0]["hardware"],
        "on_the_fly_train_seconds": fly_seconds,
        "cached_train_seconds": cached_seconds,
        "extraction_seconds": extraction,
        "speedup_training": fly_seconds / cached_seconds,
        "speedup_with_extraction": fly_seconds / (cached_seconds + extraction),
        "auroc_on_the_fly": [run["mean_auroc"] for run in fly],
        "auroc_cached": [run["mean_auroc"] for run in cached],
    }
    print(f"\n{args.recipe}, {args.epochs} epochs, seeds {args.seeds}, on {summary['hardware']}")
    rows = [
        ["on the fly", f"{fly_seconds:.1f}", "–", mean_std_text(summary["auroc_on_the_fly"])],
        [
            "cached features",
            f"{cached_seconds:.1f}",
            f"{extraction:.1f} (first seed; later seeds reuse it)",
            mean_std_text(summary["auroc_cached"]),
        ],
    ]
    header = ["mode", "training (s, mean over seeds)", "extraction (s)", "mean AUROC (mean ± std)"]
    print("\n".join(markdown_table(header, rows, "lrrr", tight_rule=True)))
    print(
        f"speed-up of the training: {summary['speedup_training']:.1f}x; of a first run including its extraction: "
        f"{summary['speedup_with_extraction']:.1f}x"
    )
    if len(seeds) > 1:
        gap = abs(statistics.mean(summary["auroc_on_the_fly"]) - statistics.mean(summary["auroc_cached"]))
        spread = max(statistics.stdev(summary["auroc_on_the_fly"]), statistics.stdev(summary["auroc_cached"]))
        summary["auroc_gap"], summary["auroc_seed_spread"] = gap, spread
        print(
            f"mean AUROC difference {gap:.4f}, seed spread (larger std) {spread:.4f}: "
            f"{'within' if gap <= spread else 'OUTSIDE'} the seed spread"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
