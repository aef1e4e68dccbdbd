"""``chexpert-hf benchmark``: a grid of recipes × seeds, each under ``accelerate launch``, and its tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpellingRaw, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "benchmark",
        help="Train a grid of recipes × seeds, each under `accelerate launch`, and tabulate the results.",
        formatter_class=OneSpellingRaw,
        allow_abbrev=False,  # an abbreviated flag must stay a recipe-field override, not become one of ours
        usage="chexpert-hf benchmark --recipes R1,R2,... [--seeds 0,1,2] [--output DIR] "
        "[--accelerate_config FILE] [--field value ...]",
        description="Train every recipe with every seed, each run its own `accelerate launch -m "
        "chexpert_hf.training.train` "
        "process\n(DIR/runs/RECIPE/seedS, its output in DIR/logs/RECIPE-seedS.log), then write DIR/results.csv (one "
        "row per run),\nDIR/results.md (one row per recipe: mean ± std over seeds, ranks with ties) and "
        "DIR/auroc_by_strategy.png.\n\n"
        "Any other --field value pair overrides that recipe field in every run (e.g. --num_train_epochs 1); they "
        "are\nchecked against every recipe before anything runs. --seed and --output_dir are set by the benchmark.\n"
        "Runs go seed by seed (every recipe's first seed, then the next). A failed run does not stop the others; "
        "the\nexit status is 1 when any run failed; Ctrl-C stops the run in progress (all its processes), writes the "
        "tables of\nwhat finished and exits 130. Run the same command again to resume: runs that finished with the "
        "same\nsettings (recipe file, seed, overrides, accelerate config, the local weights a run starts from) are "
        "skipped,\nthe rest rerun from scratch. A recipe that starts from another recipe's output_dir "
        "(model_name_or_path)\ngets that recipe trained first, once, when its output holds no finished model or was "
        "trained with other\nsettings, and only while a run still needs it.\n\n" + docs("benchmark").strip(),
        epilog="example:\n  chexpert-hf benchmark --recipes demo_head,demo_last_block,demo_full --seeds 0,1,2 "
        "--output outputs/benchmark_demo\n  chexpert-hf benchmark --recipes vit_head,vit_full --seeds 0,1 "
        "--accelerate_config accelerate_configs/single_gpu.yaml \\\n      --data_dir data/CheXpert-v1.0-small "
        "--output outputs/benchmark_vit",
    )
    parser.add_argument(
        "--recipes",
        required=True,
        metavar="R1,R2,...",
        help="comma-separated recipe names (from recipes/) or paths to recipe .yaml files",
    )
    parser.add_argument(
        "--seeds", default="0", metavar="S1,S2,...", help="comma-separated integer seeds, one run each (default: 0)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("outputs/benchmark"),
        metavar="DIR",
        help="folder for the runs, logs and results (default: outputs/benchmark)",
    )
    parser.add_argument(
        "--accelerate_config",
        "--accelerate-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="accelerate config file for every run (passed as --config_file; default: one process, "
        "no mixed precision, no dynamo)",
    )
    explain = parser.add_argument_group("where the models look (--explain)")
    explain.add_argument(
        "--explain",
        action="store_true",
        help="after the grid, explain each recipe's finished runs on the same validation images into "
        "DIR/explain/<recipe>/ and add the pointing game (against the data's lesions.csv where it has one) and "
        "the randomized-model check, mean ± std over the seeds, to results.md",
    )
    explain.add_argument(
        "--explain_images",
        "--explain-images",
        type=int,
        default=64,
        metavar="N",
        help="the first N frontal validation images (default: 64; 0: all)",
    )
    explain.add_argument(
        "--explain_method",
        "--explain-method",
        default=None,
        metavar="M1,M2",
        help="methods, comma-separated (default: each family's own: attention_relevance for ViT, DeiT and the "
        "hybrid, gradcam for Swin and DenseNet)",
    )
    explain.add_argument(
        "--explain_lesions",
        "--explain-lesions",
        default=None,
        metavar="FILE",
        help="lesion boxes (path,label,x0,y0,x1,y1) to score the maps against (default: the data's own "
        "lesions.csv, as the synthetic data has)",
    )
    explain.add_argument(
        "--explain_overlays",
        "--explain-overlays",
        choices=("all", "sheets", "none"),
        default="sheets",
        help="pictures to draw (default: sheets, one per image with every label; all: also each label's overlay)",
    )
    parser.set_defaults(handler=run, passes_unknown_flags=True)  # they are recipe-field overrides for every run
    return parser


def run(args: argparse.Namespace) -> int:
    import shlex

    from chexpert_hf.benchmark.grid import benchmark, parse_recipe_list, parse_seeds

    recipes, seeds = parse_recipe_list(args.recipes), parse_seeds(args.seeds)
    overrides = list(getattr(args, "overrides", []))
    config = ["--accelerate_config", str(args.accelerate_config)] if args.accelerate_config else []
    command = shlex.join(
        [
            "chexpert-hf",
            "benchmark",
            "--recipes",
            args.recipes,
            "--seeds",
            args.seeds,
            "--output",
            str(args.output),
            *config,
            *overrides,
        ]
    )
    settings = None
    if not args.explain:
        given = [
            flag
            for flag, value, default in (
                ("--explain_images", args.explain_images, 64),
                ("--explain_method", args.explain_method, None),
                ("--explain_lesions", args.explain_lesions, None),
                ("--explain_overlays", args.explain_overlays, "sheets"),
            )
            if value != default
        ]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --explain")
    else:
        from chexpert_hf.benchmark.explain import ExplainSettings

        methods = [name.strip() for name in (args.explain_method or "").split(",") if name.strip()]
        settings = ExplainSettings(
            images=args.explain_images,
            methods=tuple(methods) or None,
            lesions=args.explain_lesions,
            overlays=args.explain_overlays,
        )
        explain_flags = ["--explain", "--explain_images", str(args.explain_images)]
        explain_flags += ["--explain_method", args.explain_method] if args.explain_method else []
        explain_flags += ["--explain_lesions", args.explain_lesions] if args.explain_lesions else []
        explain_flags += ["--explain_overlays", args.explain_overlays] if args.explain_overlays != "sheets" else []
        command += " " + shlex.join(explain_flags)
    return benchmark(recipes, seeds, args.output, overrides, args.accelerate_config, command=command, explain=settings)
