"""``chexpert-hf evaluate``: a model on a prepared split, or a predictions file, scored as the leaderboard did."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpelling, add_model_options, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "evaluate",
        help="Score a model on a prepared split, or a predictions CSV against CheXpert ground truth.",
        formatter_class=OneSpelling,
        description="Two ways: --model PATH_OR_HUB_ID --data_dir PREPARED_DIR runs the model over a split and "
        "scores it; --predictions PRED.csv --groundtruth GT.csv scores a predictions file as the CheXpert "
        "leaderboard did (PRED: a Study or Path column and one probability column per label, any subset and "
        "order, such as `chexpert-hf predict --output` writes; GT: valid.csv or the test set's groundtruth.csv). "
        "Scoring is per study (maximum over its images) unless --per_image. Writes OUTPUT/metrics.json, "
        "metrics.md, roc.png (and predictions.csv for a model), with 95% confidence intervals from a seeded "
        "bootstrap over studies, and prints the table." + docs("evaluation"),
    )
    parser.add_argument("--model", help="a trained output folder or a Hub model id")
    parser.add_argument(
        "--data_dir", "--data", "--data-dir", help="a prepared dataset folder (chexpert-hf prepare) or a CheXpert root"
    )
    parser.add_argument(
        "--split", choices=("validation", "test"), default="validation", help="split to score (default: validation)"
    )
    parser.add_argument(
        "--views",
        choices=("all", "frontal"),
        default=None,
        help="images to run the model on (default: the views of the model's recipe.yaml, else all)",
    )
    parser.add_argument(
        "--prepare_image_size",
        "--prepare-image-size",
        type=int,
        default=None,
        help="when --data_dir is a CheXpert root: the size it is prepared at, once, into the cache "
        "(default: the model's recipe.yaml, else 320)",
    )
    parser.add_argument("--predictions", type=Path, help="a predictions CSV to score instead of running a model")
    parser.add_argument("--groundtruth", type=Path, help="CheXpert's valid.csv or the test set's groundtruth.csv")
    parser.add_argument("--per_image", "--per-image", action="store_true", help="score images instead of studies")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the reports (default: MODEL/eval-SPLIT for a local model, else ./eval-NAME)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for the 95%% confidence intervals (default: 1000; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    add_model_options(parser, batch_size=64)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.evaluate import evaluate_model, recipe_settings, score_predictions, write_evaluation
    from chexpert_hf.evaluation.reports import scores_table

    model_mode = args.model is not None
    if model_mode == (args.predictions is not None):
        raise ValueError("give either --model (with --data_dir) or --predictions (with --groundtruth)")
    if model_mode and args.data_dir is None:
        raise ValueError("--model needs --data_dir: a prepared dataset folder or a CheXpert root")
    if not model_mode and args.groundtruth is None:
        raise ValueError("--predictions needs --groundtruth: CheXpert's valid.csv or the test set's groundtruth.csv")
    level = "-image" if args.per_image else ""
    if model_mode:
        trained = recipe_settings(args.model)
        scored, predictions, summary = evaluate_model(
            args.model,
            args.data_dir,
            split=args.split,
            per_image=args.per_image,
            views=args.views or trained.get("views", "all"),
            batch_size=args.batch_size,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            prepare_image_size=args.prepare_image_size or trained.get("prepare_image_size", 320),
        )
        local = Path(args.model).is_dir()
        output = args.output or (
            Path(args.model) / f"eval-{args.split}{level}"
            if local
            else Path(f"eval-{args.model.rstrip('/').split('/')[-1]}-{args.split}{level}")
        )
        title = f"CheXpert evaluation: {summary['model']}, {args.split} split"
    else:
        scored, summary = score_predictions(
            args.predictions, args.groundtruth, per_image=args.per_image, n_bootstrap=args.bootstrap, seed=args.seed
        )
        predictions = None
        output = args.output or Path(f"eval-{Path(args.predictions).stem}{level}")
        title = f"CheXpert evaluation: {summary['predictions']} against {summary['groundtruth']}"
        if summary["unscored_predictions"]:
            print(
                f"note: {summary['unscored_predictions']} {summary['level']}(ies) of {args.predictions} are not in "
                f"{args.groundtruth} and were not scored"
            )
    paths = write_evaluation(output, scored, summary, title=title, predictions=predictions)
    print(scores_table(scored.scores))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0
