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
        usage="chexpert-hf benchmark --recipes R1,R2,... [--seeds 0,1,2] [--output DIR] [--executor local|slurm|debug] "
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
        "trained with other\nsettings, and only while a run still needs it.\n\n--executor slurm makes every run a "
        "SLURM job through submitit (waited for; --status, --collect and --cancel\nfollow the grid from --output "
        "alone: docs/cluster.md); --parallel N runs N local runs at a time on disjoint GPUs.\n\n"
        + docs("benchmark").strip(),
        epilog="example:\n  chexpert-hf benchmark --recipes demo_head,demo_last_block,demo_full --seeds 0,1,2 "
        "--output outputs/benchmark_demo\n  chexpert-hf benchmark --recipes vit_head,vit_full --seeds 0,1 "
        "--accelerate_config accelerate_configs/single_gpu.yaml \\\n      --data_dir data/CheXpert-v1.0-small "
        "--output outputs/benchmark_vit",
    )
    parser.add_argument(
        "--recipes",
        default=None,
        metavar="R1,R2,...",
        help="comma-separated recipe names (from recipes/) or paths to recipe .yaml files (required, except with "
        "--status, --collect or --cancel)",
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
    where = parser.add_argument_group("where the runs go (docs/cluster.md)")
    where.add_argument(
        "--executor",
        choices=("local", "slurm", "debug"),
        default="local",
        help="local: here, one run after another (default); slurm: one SLURM job per run through submitit, waited "
        "for; debug: submitit's in-process executor, for developing",
    )
    where.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="local: N runs at a time, each given its own GPUs (CUDA_VISIBLE_DEVICES, as many as the accelerate "
        "config's num_processes); without GPUs they share the CPUs",
    )
    slurm = [
        ("partition", str, "PART", "partition to submit to (default: the cluster's default; checked against sinfo)"),
        ("gpus_per_job", int, "G", "GPUs per job (default: the accelerate config's num_processes; 0 without one)"),
        ("cpus_per_gpu", int, "C", "CPUs per GPU (a job without GPUs: CPUs per job; default 1)"),
        ("mem", str, "MEM", "memory per job, as sbatch --mem takes it (64G, 16000M)"),
        ("time", str, "TIME", "time limit per job, a SLURM time (default 4:00:00): a job that reaches it is requeued "
         "and resumes from its newest checkpoint"),
        ("account", str, "ACCOUNT", "sbatch --account"),
        ("qos", str, "QOS", "sbatch --qos"),
        ("constraint", str, "FEATURES", "sbatch --constraint (e.g. h100)"),
        ("array_parallelism", int, "N", "at most N jobs of the grid's job array at once"),
        ("max_retries", int, "N", "restarts (preemption, time limit) before a run is reported failed (default 2)"),
    ]  # fmt: skip
    for name, kind, metavar, text in slurm:
        where.add_argument(
            f"--slurm_{name}",
            f"--slurm-{name.replace('_', '-')}",
            type=kind,
            default=2 if name == "max_retries" else ("4:00:00" if name == "time" else None),
            metavar=metavar,
            help=text,
        )
    where.add_argument(
        "--slurm_setup",
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line each job runs first (repeatable): module load ..., source .venv/bin/activate",
    )
    where.add_argument(
        "--slurm_extra",
        "--slurm-extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, without its dashes (repeatable): --slurm_extra exclusive=user",
    )
    where.add_argument(
        "--slurm_poll",
        "--slurm-poll",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often the waiting benchmark asks squeue (default 10)",
    )
    state = parser.add_argument_group("a grid already started (with --output DIR only)")
    state.add_argument("--status", action="store_true", help="list every run with its job id, state and log")
    state.add_argument("--collect", action="store_true", help="write the tables of what has finished so far")
    state.add_argument("--cancel", action="store_true", help="cancel the grid's pending and running SLURM jobs")
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


def _slurm_settings(args: argparse.Namespace):
    from chexpert_hf.benchmark.slurm import SlurmSettings

    extra = {}
    for item in args.slurm_extra:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--slurm_extra {item!r}: give KEY=VALUE (an sbatch option without its dashes)")
        extra[key.strip()] = value.strip()
    return SlurmSettings(
        partition=args.slurm_partition,
        gpus_per_job=args.slurm_gpus_per_job,
        cpus_per_gpu=args.slurm_cpus_per_gpu,
        mem=args.slurm_mem,
        time=args.slurm_time,
        account=args.slurm_account,
        qos=args.slurm_qos,
        constraint=args.slurm_constraint,
        array_parallelism=args.slurm_array_parallelism,
        setup=list(args.slurm_setup),
        extra=extra,
        max_retries=args.slurm_max_retries,
        poll_seconds=args.slurm_poll,
    )


def _slurm_flags(args: argparse.Namespace) -> list[str]:
    """The --slurm_* flags given, as the command line that reproduces the grid repeats them."""
    flags = []
    for name, default in (("partition", None), ("gpus_per_job", None), ("cpus_per_gpu", None), ("mem", None),
                          ("time", "4:00:00"), ("account", None), ("qos", None), ("constraint", None),
                          ("array_parallelism", None), ("max_retries", 2)):  # fmt: skip
        value = getattr(args, f"slurm_{name}")
        if value != default:
            flags += [f"--slurm_{name}", str(value)]
    for line in args.slurm_setup:
        flags += ["--slurm_setup", line]
    for item in args.slurm_extra:
        flags += ["--slurm_extra", item]
    return flags


def run(args: argparse.Namespace) -> int:
    import shlex

    from chexpert_hf.benchmark.grid import (
        benchmark,
        grid_cancel,
        grid_collect,
        grid_status,
        parse_recipe_list,
        parse_seeds,
    )

    actions = [name for name in ("status", "collect", "cancel") if getattr(args, name)]
    if len(actions) > 1:
        raise ValueError(f"give one of --status, --collect, --cancel, not {' and '.join('--' + a for a in actions)}")
    if actions:
        if args.recipes is not None:
            raise ValueError(f"--{actions[0]} reads the grid from --output DIR; leave out --recipes")
        if actions[0] == "status":
            return grid_status(args.output)
        if actions[0] == "cancel":
            return grid_cancel(args.output)
        return grid_collect(args.output)
    if args.recipes is None:
        raise ValueError("--recipes is required (or --status, --collect, --cancel with --output DIR)")
    given = [flag for flag in _slurm_flags(args) if flag.startswith("--slurm_")]
    given += ["--slurm_poll"] if args.slurm_poll != 10.0 else []
    if args.executor == "local" and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(f"{', '.join(dict.fromkeys(given))} {verb} only with --executor slurm or debug")
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
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --explain")
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
    if args.executor != "local":
        command += " " + shlex.join(["--executor", args.executor, *_slurm_flags(args)])
    elif args.parallel != 1:
        command += " " + shlex.join(["--parallel", str(args.parallel)])
    return benchmark(
        recipes,
        seeds,
        args.output,
        overrides,
        args.accelerate_config,
        command=command,
        explain=settings,
        executor=args.executor,
        parallel=args.parallel,
        slurm=_slurm_settings(args) if args.executor != "local" else None,
    )
