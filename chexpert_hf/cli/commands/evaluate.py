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
        "bootstrap over studies, and prints the table. Also: calibration (Brier, ECE, calibration.png), "
        "operating points at the model's saved thresholds (--set-thresholds chooses them), subgroups by sex, age "
        "and view (subgroups.md), radiologists on the ROC (--readers), and ensembles (several --model or "
        "--predictions)." + docs("evaluation"),
    )
    parser.add_argument(
        "--model",
        action="extend",
        nargs="+",
        help="a trained output folder or a Hub model id; several (--model A --model B): their ensemble",
    )
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
    parser.add_argument(
        "--predictions",
        type=Path,
        action="extend",
        nargs="+",
        help="a predictions CSV to score instead of running a model; several: their ensemble",
    )
    parser.add_argument(
        "--ensemble",
        choices=("mean", "rank"),
        default="mean",
        help="how several models' scores are combined: the mean, or the mean rank (for scores that are not "
        "probabilities, or on different scales)",
    )
    parser.add_argument(
        "--readers",
        type=Path,
        action="extend",
        nargs="+",
        default=[],
        metavar="READER.csv",
        help="radiologists' reads of the same studies (a Study or Path column and 0/1 label columns): each "
        "reader's sensitivity and specificity, drawn on roc.png, and whether it lies under the model's ROC curve",
    )
    parser.add_argument(
        "--subgroups",
        default=None,
        help="subgroups to score, a comma-separated subset of sex,age,view, or none (default: those the data has)",
    )
    parser.add_argument(
        "--set_thresholds",
        "--set-thresholds",
        dest="set_thresholds",
        metavar="RULE",
        default=None,
        help="choose a decision threshold per label on this split by RULE (youden, sensitivity:X or "
        "specificity:X) and save them in the model folder's config.json (one local --model)",
    )
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
    from chexpert_hf.evaluation.clinical import parse_subgroups

    model_mode = bool(args.model)
    if model_mode == bool(args.predictions):
        raise ValueError("give either --model (with --data_dir) or --predictions (with --groundtruth)")
    if model_mode and args.data_dir is None:
        raise ValueError("--model needs --data_dir: a prepared dataset folder or a CheXpert root")
    if not model_mode and args.groundtruth is None:
        raise ValueError("--predictions needs --groundtruth: CheXpert's valid.csv or the test set's groundtruth.csv")
    if args.set_thresholds is not None:
        from chexpert_hf.evaluation.thresholds import parse_rule

        parse_rule(args.set_thresholds)  # before any model runs
        if not model_mode or len(args.model) != 1 or not (Path(args.model[0]) / "config.json").is_file():
            raise ValueError("--set-thresholds saves thresholds into one local model folder: give one --model FOLDER")
    if args.readers and args.per_image:
        raise ValueError("--readers compares study-level reads: leave out --per_image")
    members = len(args.model or args.predictions)
    if args.ensemble != "mean" and members == 1:
        print(f"note: --ensemble {args.ensemble} combines several models; with one it changes nothing")
    wanted = parse_subgroups(args.subgroups)
    readers = _read_readers(args.readers)  # before a model runs: a bad file is reported at once
    scored, summary, output, title, split = _model(args) if model_mode else _predictions(args)
    return _report(args, scored, summary, output, title, split, wanted, readers)


def _read_readers(paths: list[Path]) -> dict:
    from chexpert_hf.evaluation.readers import read_reader

    readers = {}
    for path in paths:
        name = path.stem if path.stem not in readers else str(path)
        if name in readers:
            raise ValueError(f"--readers: {path} is given twice")
        readers[name] = read_reader(path)
    return readers


def _match_readers(reader_rows: dict, keys, labels: list[str]) -> tuple[dict, list[str]]:
    """Each reader's reads of the scored studies, on the labels every reader has (each must have every competition
    label scored: an error names the file); notes the reader studies that are not scored."""
    from chexpert_hf.evaluation.readers import match_reader
    from chexpert_hf.labels import COMPETITION_LABELS

    required = [label for label in labels if label in COMPETITION_LABELS]
    compared = [label for label in labels if all(label in rows.labels for rows in reader_rows.values())]
    reads = {}
    for name, rows in reader_rows.items():
        match_reader(rows, keys, required)  # the error that names what the file lacks
        reads[name] = match_reader(rows, keys, compared)
        extra = len(set(rows.study) - set(keys))
        if extra:
            print(f"note: {extra} stud(ies) of {rows.path} are not among the scored studies and were not compared")
    return reads, compared


def _model(args: argparse.Namespace):
    from chexpert_hf.evaluation.evaluate import evaluate_model, recipe_settings
    from chexpert_hf.evaluation.thresholds import thresholds_with_source

    level = "-image" if args.per_image else ""
    trained = recipe_settings(args.model[0])
    scored, predictions, summary = evaluate_model(
        args.model if len(args.model) > 1 else args.model[0],
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
        ensemble=args.ensemble,
    )
    scored.predictions = predictions
    if args.set_thresholds is not None:  # saved in the model's config.json once every report is written
        summary["thresholds"], summary["threshold_source"] = thresholds_with_source(
            scored.probabilities, scored.targets, scored.labels, args.set_thresholds, args.split, summary["level"]
        )
    first = args.model[0]
    if len(args.model) > 1:
        output = args.output or Path(f"eval-ensemble-{args.split}{level}")
    elif Path(first).is_dir():
        output = args.output or Path(first) / f"eval-{args.split}{level}"
    else:
        output = args.output or Path(f"eval-{first.rstrip('/').split('/')[-1]}-{args.split}{level}")
    title = f"CheXpert evaluation: {summary['model']}, {args.split} split"
    return scored, summary, output, title, args.split


def _predictions(args: argparse.Namespace):
    from chexpert_hf.evaluation.evaluate import score_predictions

    level = "-image" if args.per_image else ""
    scored, summary = score_predictions(
        args.predictions,
        args.groundtruth,
        per_image=args.per_image,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        ensemble=args.ensemble,
    )
    stem = Path(args.predictions[0]).stem if len(args.predictions) == 1 else "ensemble"
    output = args.output or Path(f"eval-{stem}{level}")
    title = f"CheXpert evaluation: {summary['predictions']} against {summary['groundtruth']}"
    if summary["unscored_predictions"]:
        print(
            f"note: {summary['unscored_predictions']} {summary['level']}(ies) of the predictions are not in "
            f"{args.groundtruth} and were not scored"
        )
    return scored, summary, output, title, summary["groundtruth"]


def _report(args, scored, summary, output: Path, title: str, split: str, wanted, reader_rows: dict) -> int:
    from chexpert_hf.evaluation.clinical import add_clinical_scores, subgroups_for
    from chexpert_hf.evaluation.evaluate import write_evaluation
    from chexpert_hf.evaluation.readers import readers_text
    from chexpert_hf.evaluation.reports import scores_table
    from chexpert_hf.evaluation.subgroups import subgroups_text

    thresholds = summary.pop("thresholds", None)
    source = summary.pop("threshold_source", None)
    readers, reader_labels = _match_readers(reader_rows, scored.keys, scored.labels)
    add_clinical_scores(
        scored.scores,
        scored.probabilities,
        scored.targets,
        scored.labels,
        evaluated_split=split,
        evaluated_level=summary["level"],
        thresholds=thresholds,
        threshold_source=source,
        readers=readers,
        reader_labels=reader_labels,
    )
    subgroups = subgroups_for(
        scored.probabilities,
        scored.targets,
        scored.labels,
        scored.groups,
        wanted,
        keys=scored.keys,
        thresholds=thresholds,
        unit=summary["level"],
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        source=str(args.data_dir if args.model else args.groundtruth),
    )
    paths = write_evaluation(output, scored, summary, title=title, predictions=scored.predictions, subgroups=subgroups)
    if args.set_thresholds is not None:
        from chexpert_hf.evaluation.evaluate import save_model_thresholds

        saved = save_model_thresholds(args.model[0], thresholds, source)
        print(f"saved {len(thresholds)} decision thresholds ({source['rule']}, chosen on {split}) in {saved}")
        without = [label for label in scored.labels if label not in thresholds]
        if without:
            print(f"note: no threshold for {', '.join(without)}: one class only on {split}")
    print(scores_table(scored.scores))
    if "readers" in scored.scores:
        print(readers_text(scored.scores["readers"]))
    if subgroups is not None:
        print(subgroups_text(subgroups))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0
