"""The ``chexpert-hf`` console script and its subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chexpert_hf import __version__

DEFAULT_NUM_PROC = max(1, min(8, os.cpu_count() or 1))


def _synthesize(args: argparse.Namespace) -> int:
    from chexpert_hf.data.synthetic import synthesize

    summary = synthesize(
        args.output,
        args.num_patients,
        valid_patients=args.valid_patients,
        test_patients=args.test_patients,
        seed=args.seed,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{split} {count:,} images" for split, count in summary.images.items())
    print(f"wrote {summary.root}: {counts}, {summary.lesions:,} lesion boxes in lesions.csv")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from chexpert_hf.data.prepare import prepare

    if args.push_to_hub:  # before hours of decoding, not after
        from chexpert_hf.hub.push import check_hub_access

        user = check_hub_access(repo_id=args.push_to_hub, repo_type="dataset")
        print(f"will push to the Hub as {user}: dataset {args.push_to_hub} (private)")
    summary = prepare(
        args.data_dir,
        args.output,
        image_size=args.image_size,
        num_proc=args.num_proc,
        strict=args.strict,
        frontal_only=args.frontal_only,
        overwrite=args.overwrite,
    )
    print(f"prepared {summary.output} in {summary.seconds:.0f} s")
    for line in summary.lines():
        print("  " + line)
    if args.push_to_hub:
        from chexpert_hf.hub.push import push_prepared_dataset

        url = push_prepared_dataset(summary.output, args.push_to_hub)
        print(f"pushed {summary.output} to {url} (private)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.evaluate import evaluate_model, recipe_settings, score_predictions, write_evaluation
    from chexpert_hf.evaluation.reports import scores_table

    model_mode = args.model is not None
    if model_mode == (args.predictions is not None):
        raise ValueError("give either --model (with --data) or --predictions (with --groundtruth)")
    if model_mode and args.data is None:
        raise ValueError("--model needs --data: a prepared dataset folder or a CheXpert root")
    if not model_mode and args.groundtruth is None:
        raise ValueError("--predictions needs --groundtruth: CheXpert's valid.csv or the test set's groundtruth.csv")
    level = "-image" if args.per_image else ""
    if model_mode:
        trained = recipe_settings(args.model)
        scored, predictions, summary = evaluate_model(
            args.model, args.data, split=args.split, per_image=args.per_image,
            views=args.views or trained.get("views", "all"), batch_size=args.batch_size, device=args.device,
            trust_remote_code=args.trust_remote_code, n_bootstrap=args.bootstrap, seed=args.seed,
            prepare_image_size=args.prepare_image_size or trained.get("prepare_image_size", 320),
        )
        local = Path(args.model).is_dir()
        output = args.output or (Path(args.model) / f"eval-{args.split}{level}" if local
                                 else Path(f"eval-{args.model.rstrip('/').split('/')[-1]}-{args.split}{level}"))
        title = f"CheXpert evaluation: {summary['model']}, {args.split} split"
    else:
        scored, summary = score_predictions(args.predictions, args.groundtruth, per_image=args.per_image,
                                            n_bootstrap=args.bootstrap, seed=args.seed)
        predictions = None
        output = args.output or Path(f"eval-{Path(args.predictions).stem}{level}")
        title = f"CheXpert evaluation: {summary['predictions']} against {summary['groundtruth']}"
        if summary["unscored_predictions"]:
            print(f"note: {summary['unscored_predictions']} {summary['level']}(ies) of {args.predictions} are not in "
                  f"{args.groundtruth} and were not scored")
    paths = write_evaluation(output, scored, summary, title=title, predictions=predictions)
    print(scores_table(scored.scores))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.evaluate import predictions_frame, write_predictions_csv
    from chexpert_hf.evaluation.inference import load_classifier, predict_files

    loaded = load_classifier(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    probabilities = predict_files(loaded, args.images, batch_size=args.batch_size)
    frame = predictions_frame([str(path) for path in args.images], probabilities, loaded.labels)
    if args.output:
        write_predictions_csv(args.output, frame)
    print(predictions_text(frame))
    if args.output:
        print(f"wrote {args.output}")
    return 0


def predictions_text(frame) -> str:
    """Per-image probabilities as an aligned table (labels across, images down)."""
    labels = list(frame.columns[1:])
    width = max(12, *(len(str(path)) for path in frame["Path"]))
    lines = ["image".ljust(width) + "".join(f"  {label:>{max(6, len(label))}}" for label in labels)]
    for row in frame.itertuples(index=False):
        cells = "".join(f"  {value:>{max(6, len(label))}.3f}" for label, value in zip(labels, row[1:], strict=True))
        lines.append(str(row[0]).ljust(width) + cells)
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.inference import load_classifier
    from chexpert_hf.explain.localization import localization_text, read_lesions
    from chexpert_hf.explain.maps import METHODS
    from chexpert_hf.explain.run import check_output, explain, read_image_files, read_split

    if (args.images is None) == (args.data is None):
        raise ValueError("give either --images IMG [IMG ...] or --data PREPARED_DIR (with --split and --num-images)")
    methods = [name.strip() for name in args.method.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or args.method!r}; methods: {', '.join(METHODS)}")
    labels = [name.strip() for name in args.labels.split(",") if name.strip()] if args.labels else None
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    # what the output folder must not hold (the model folder, the data): checked before the model loads
    keep = [path for path in (args.model, args.data, args.lesions, *(args.images or ()))
            if path and Path(path).exists()]
    check_output(args.output, args.overwrite, keep)
    lesions = read_lesions(args.lesions) if args.lesions else None
    loaded = load_classifier(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    if args.images is not None:
        radiographs, skipped = read_image_files(args.images)
        for message in skipped:
            print(f"skipped unreadable image {message}", file=sys.stderr)
        if skipped:
            print(f"skipped {len(skipped)} of {len(args.images)} images (unreadable)", file=sys.stderr)
        if not radiographs:
            raise ValueError("none of the images could be read")
    else:
        from chexpert_hf.evaluation.evaluate import recipe_settings

        trained = recipe_settings(args.model)
        radiographs = read_split(args.data, loaded.labels, split=args.split, num_images=args.num_images,
                                 views=args.views,
                                 prepare_image_size=args.prepare_image_size or trained.get("prepare_image_size", 320))
    result = explain(loaded, radiographs, args.output, methods=methods, labels=labels, top_k=args.top_k,
                     layer=args.target_layer, lesions=lesions, tolerance=args.tolerance,
                     sanity_check=args.sanity_check, batch_size=args.batch_size, seed=args.seed,
                     overwrite=args.overwrite, keep=keep)
    if result.localization is not None:
        print(localization_text(result.localization))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.maps} maps of {result.images} images to {result.output}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from chexpert_hf.hub.push import push_output_folder

    url = push_output_folder(args.output_dir, args.repo_id, private=args.private)
    print(f"pushed {args.output_dir} to {url}" + (" (private)" if args.private else ""))
    return 0


def _models(args: argparse.Namespace) -> int:
    from chexpert_hf.labels import COMPETITION_LABELS
    from chexpert_hf.models.freeze import POLICIES, policy_table

    rows = policy_table(list(COMPETITION_LABELS) if args.labels == "competition" else None)
    print(models_markdown(rows, POLICIES) if args.markdown else models_text(rows, POLICIES))
    return 0


def models_markdown(rows: list[dict], policies: tuple[str, ...]) -> str:
    """The README's table: trainable parameters per family, variant and freeze policy."""
    header = "| family | variant | default checkpoint | " + " | ".join(f"`{p}`" for p in policies) + " |"
    lines = [header, "|---|---|---|" + "---:|" * len(policies)]
    for row in rows:
        counts = " | ".join(f"{row[p]:,}" for p in policies)
        lines.append(f"| `{row['family']}` | {row['variant']} | `{row['checkpoint']}` | {counts} |")
    return "\n".join(lines)


def models_text(rows: list[dict], policies: tuple[str, ...]) -> str:
    widths = (12, 8, 46)
    lines = ["family       variant  default checkpoint" + " " * 28 + "".join(f"{p:>14}" for p in policies)]
    for row in rows:
        cells = [row["family"].ljust(widths[0]), row["variant"].ljust(widths[1]), row["checkpoint"].ljust(widths[2])]
        lines.append(" ".join(cells) + "".join(f"{row[p]:>14,}" for p in policies))
    return "\n".join(lines)


def _benchmark(args: argparse.Namespace) -> int:
    import shlex

    from chexpert_hf.benchmark.grid import benchmark, parse_recipe_list, parse_seeds

    recipes, seeds = parse_recipe_list(args.recipes), parse_seeds(args.seeds)
    overrides = list(getattr(args, "overrides", []))
    config = ["--accelerate-config", str(args.accelerate_config)] if args.accelerate_config else []
    command = shlex.join(["chexpert-hf", "benchmark", "--recipes", args.recipes, "--seeds", args.seeds, "--output",
                          str(args.output), *config, *overrides])
    return benchmark(recipes, seeds, args.output, overrides, args.accelerate_config, command=command)


def _add_model_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """The options of every command that runs a model."""
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"images per forward pass (default: {batch_size})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model whose code ships with it (the ResNet+ViT hybrid) to run that code")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chexpert-hf",
        description="Benchmark Vision Transformers on CheXpert chest X-rays with Hugging Face Transformers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = commands.add_parser(
        "synthesize",
        help="write a synthetic CheXpert-v1.0-small tree (the embedded default dataset)",
        description="Write OUTPUT/CheXpert-v1.0-small/{train.csv,valid.csv,lesions.csv,train/,valid/} with "
        "radiograph-like images whose findings leave learnable visual signatures, labels at CheXpert's real "
        "per-study rates (including -1 uncertain and blanks), and lesions.csv giving where each localised "
        "finding was drawn. Deterministic in --seed.",
    )
    synth.add_argument("--output", required=True, type=Path, help="folder to write CheXpert-v1.0-small into")
    synth.add_argument("--num-patients", type=int, default=200, help="training patients (default: 200)")
    synth.add_argument("--valid-patients", type=int, default=None,
                       help="validation patients, one study each (default: max(20, num_patients // 5))")
    synth.add_argument("--test-patients", type=int, default=0,
                       help="test patients; writes test/ and a study-level groundtruth.csv (default: 0)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--num-proc", type=int, default=1, help="worker processes (default: 1)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing CheXpert-v1.0-small")
    synth.set_defaults(handler=_synthesize)

    prep = commands.add_parser(
        "prepare",
        help="turn a CheXpert tree into a self-contained Arrow dataset",
        description="Decode every image once (grayscale, shorter side --image-size), embed it with the raw "
        "labels (1/0/-1/blank) and metadata into a datasets.DatasetDict saved at OUTPUT (train, validation, "
        "and test when a groundtruth.csv is present). Unreadable images are skipped and listed in "
        "OUTPUT/skipped.csv; --strict stops at the first one instead. The output appears only when complete.",
    )
    prep.add_argument("--data-dir", required=True, type=Path,
                      help="the folder that holds train.csv and valid.csv (e.g. .../CheXpert-v1.0-small)")
    prep.add_argument("--output", required=True, type=Path, help="folder to write the prepared dataset to")
    prep.add_argument("--image-size", type=int, default=320, help="shorter side in pixels (default: 320)")
    prep.add_argument("--num-proc", type=int, default=DEFAULT_NUM_PROC,
                      help=f"worker processes (default: {DEFAULT_NUM_PROC}, the CPU count up to 8)")
    prep.add_argument("--strict", action="store_true", help="stop with an error at the first unreadable image")
    prep.add_argument("--frontal-only", action="store_true", help="leave lateral views out")
    prep.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    prep.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                      help="then publish the prepared dataset to this Hub dataset repository, always private: "
                      "CheXpert's Research Use Agreement does not allow public redistribution. The Hub login "
                      "(HF_TOKEN or `hf auth login`) is checked before preparing starts")
    prep.set_defaults(handler=_prepare)

    ev = commands.add_parser(
        "evaluate",
        help="score a model on a prepared split, or a predictions CSV against CheXpert ground truth",
        description="Two ways: --model PATH_OR_HUB_ID --data PREPARED_DIR runs the model over a split and scores "
        "it; --predictions PRED.csv --groundtruth GT.csv scores a predictions file as the CheXpert leaderboard "
        "did (PRED: a Study or Path column and one probability column per label, any subset and order; GT: "
        "valid.csv or the test set's groundtruth.csv). Scoring is per study (maximum over its images) unless "
        "--per-image. Writes OUTPUT/metrics.json, metrics.md, roc.png (and predictions.csv for a model), with "
        "95%% confidence intervals from a seeded bootstrap over studies, and prints the table.",
    )
    ev.add_argument("--model", help="a trained output folder or a Hub model id")
    ev.add_argument("--data", help="a prepared dataset folder (chexpert-hf prepare) or a CheXpert root")
    ev.add_argument("--split", choices=("validation", "test"), default="validation",
                    help="split to score (default: validation)")
    ev.add_argument("--views", choices=("all", "frontal"), default=None,
                    help="images to run the model on (default: the views of the model's recipe.yaml, else all)")
    ev.add_argument("--prepare-image-size", type=int, default=None,
                    help="when --data is a CheXpert root: the size it is prepared at, once, into the cache "
                    "(default: the model's recipe.yaml, else 320)")
    ev.add_argument("--predictions", type=Path, help="a predictions CSV to score instead of running a model")
    ev.add_argument("--groundtruth", type=Path, help="CheXpert's valid.csv or the test set's groundtruth.csv")
    ev.add_argument("--per-image", action="store_true", help="score images instead of studies")
    ev.add_argument("--output", type=Path, default=None,
                    help="folder for the reports (default: MODEL/eval-SPLIT for a local model, else ./eval-NAME)")
    ev.add_argument("--bootstrap", type=int, default=1000,
                    help="bootstrap resamples for the 95%% confidence intervals (default: 1000; 0: none)")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    _add_model_options(ev, batch_size=64)
    ev.set_defaults(handler=_evaluate)

    pred = commands.add_parser(
        "predict",
        help="per-label probabilities (sigmoid) for image files",
        description="Run a trained model on image files (JPEG, PNG including 16-bit, grayscale, RGB, RGBA ...), "
        "with the model's own image processor after decoding each file to 8-bit grey, and print one row of "
        "independent per-label probabilities per image. Only safetensors weights are loaded.",
    )
    pred.add_argument("--model", required=True, help="a trained output folder or a Hub model id")
    pred.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    pred.add_argument("--output", type=Path, default=None, help="also write the table as CSV (Path + one column per "
                      "label), the format `chexpert-hf evaluate --predictions` reads")
    _add_model_options(pred, batch_size=32)
    pred.set_defaults(handler=_predict)

    ex = commands.add_parser(
        "explain",
        help="Grad-CAM, Grad-CAM++ or attention-rollout heatmaps, and a check that they point at the findings",
        description="Heatmaps of where a model looks, one per image and label (each map targets that label's "
        "logit). Writes OUTPUT/<image-stem>__<label>.png (the radiograph with the heatmap on top, label and "
        "probability in the corner), OUTPUT/<image-stem>__sheet.png (all requested labels side by side) and "
        "OUTPUT/heatmaps.npz (the maps keyed <image-stem>/<Label>, float32 at the original image size in [0, 1]); "
        "several methods write one folder each. With --lesions (the synthetic data's lesions.csv) it also plays "
        "the pointing game (does the map's maximum fall in the finding's box?) against a uniform-random map, and "
        "re-runs the maps on the model with re-initialised weights (a map that does not change does not depend "
        "on what the model learned), and writes OUTPUT/localization.json.",
    )
    ex.add_argument("--model", required=True, help="a trained output folder or a Hub model id")
    ex.add_argument("--images", nargs="+", type=Path, metavar="IMG", default=None,
                    help="image files to explain (unreadable ones are skipped and named)")
    ex.add_argument("--data", help="or: a prepared dataset folder (chexpert-hf prepare) or a CheXpert root")
    ex.add_argument("--split", choices=("train", "validation", "test"), default="validation",
                    help="with --data: the split to take images from (default: validation)")
    ex.add_argument("--num-images", type=int, default=16,
                    help="with --data: the first N images of the split (default: 16; 0: all)")
    ex.add_argument("--views", choices=("frontal", "all"), default="frontal",
                    help="with --data: which views (default: frontal, the views lesion boxes are drawn on)")
    ex.add_argument("--prepare-image-size", type=int, default=None,
                    help="when --data is a CheXpert root: the size it is prepared at (default: the model's "
                    "recipe.yaml, else 320)")
    ex.add_argument("--labels", default=None,
                    help="comma-separated labels to explain, e.g. 'Cardiomegaly,Pleural Effusion' (default: all "
                    "the model's labels)")
    ex.add_argument("--top-k", type=int, default=None, help="instead: each image's K most probable labels")
    ex.add_argument("--method", default="gradcam",
                    help="gradcam, gradcam++ or attention_rollout (ViT, DeiT and the hybrid), or several separated "
                    "by commas (default: gradcam)")
    ex.add_argument("--target-layer", default=None,
                    help="the layer Grad-CAM reads; only the hybrid has a choice: tokens (default) or cnn")
    ex.add_argument("--lesions", type=Path, default=None,
                    help="lesions.csv (path,label,x0,y0,x1,y1): score the maps with the pointing game and the "
                    "model-randomization check")
    ex.add_argument("--tolerance", type=float, default=15.0,
                    help="pointing-game tolerance in pixels of the original image (default: 15)")
    ex.add_argument("--sanity-check", action="store_true",
                    help="run the model-randomization check even without --lesions")
    ex.add_argument("--seed", type=int, default=0, help="seed of the randomized model's weights (default: 0)")
    ex.add_argument("--output", type=Path, required=True, help="folder to write (it must not exist, unless "
                    "--overwrite)")
    ex.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    _add_model_options(ex, batch_size=8)
    ex.set_defaults(handler=_explain)

    push = commands.add_parser(
        "push",
        help="publish a training output folder (model, card, ROC figure, metrics) to the Hub",
        description="Publish OUTPUT_DIR to a Hub model repository: the weights (safetensors), config, image "
        "processor, model card (README.md), roc.png, metrics and a recipe.yaml with local paths removed. Never "
        "published: training_args.bin, TensorBoard logs, predictions (patient ids), checkpoints. The login "
        "(HF_TOKEN or `hf auth login`) is checked first.",
    )
    push.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR", help="a training output folder")
    push.add_argument("--repo-id", required=True, help="the Hub repository, e.g. user/vit-base-chexpert")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.set_defaults(handler=_push)

    models = commands.add_parser(
        "models",
        help="list the model families, their variants and trainable parameters per freeze policy",
        description="Build every family and variant at full size on the meta device (shapes only: no memory, "
        "no download) and count the parameters each freeze policy (head, last_block, full) leaves trainable.",
    )
    models.add_argument("--labels", choices=("all", "competition"), default="all",
                        help="head size: all 14 CheXpert labels (default) or the 5 competition labels")
    models.add_argument("--markdown", action="store_true", help="print the Markdown table used in the README")
    models.set_defaults(handler=_models)

    bench = commands.add_parser(
        "benchmark",
        help="train a grid of recipes × seeds, each under `accelerate launch`, and tabulate the results",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviated flag must stay a recipe-field override, not become one of ours
        usage="chexpert-hf benchmark --recipes R1,R2,... [--seeds 0,1,2] [--output DIR] "
        "[--accelerate-config FILE] [--field value ...]",
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
        "trained with other\nsettings, and only while a run still needs it.",
        epilog="example:\n  chexpert-hf benchmark --recipes demo_head,demo_last_block,demo_full --seeds 0,1,2 "
        "--output outputs/benchmark_demo\n  chexpert-hf benchmark --recipes vit_head,vit_full --seeds 0,1 "
        "--accelerate-config accelerate_configs/single_gpu.yaml \\\n      --data_dir data/CheXpert-v1.0-small "
        "--output outputs/benchmark_vit",
    )
    bench.add_argument("--recipes", required=True, metavar="R1,R2,...",
                       help="comma-separated recipe names (from recipes/) or paths to recipe .yaml files")
    bench.add_argument("--seeds", default="0", metavar="S1,S2,...",
                       help="comma-separated integer seeds, one run each (default: 0)")
    bench.add_argument("--output", type=Path, default=Path("outputs/benchmark"), metavar="DIR",
                       help="folder for the runs, logs and results (default: outputs/benchmark)")
    bench.add_argument("--accelerate-config", type=Path, default=None, metavar="FILE",
                       help="accelerate config file for every run (passed as --config_file; default: one process, "
                       "no mixed precision, no dynamo)")
    bench.set_defaults(handler=_benchmark)

    commands.add_parser(
        "train",
        help="train a recipe, as `accelerate launch recipes/train.py` does (`chexpert-hf train --help`: the fields)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its flags are the recipe fields: parsed by chexpert_hf.training.train, not here
        from chexpert_hf.training.train import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    if argv[:1] == ["benchmark"]:  # the flags it does not know are recipe-field overrides for every run
        args, overrides = parser.parse_known_args(argv)
        args.overrides = overrides
    else:
        args = parser.parse_args(argv)
    from chexpert_hf.data.builder import StrictSkipError
    from chexpert_hf.data.chexpert_csv import CheXpertFormatError
    from chexpert_hf.data.images import UnreadableImage
    from chexpert_hf.hub.push import HubAccessError, PublishError

    try:
        return args.handler(args)
    except (CheXpertFormatError, StrictSkipError, FileExistsError, FileNotFoundError, ValueError, UnreadableImage,
            HubAccessError, PublishError) as error:
        print(f"chexpert-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
