"""``chexpert-hf compare``: two or more models' predictions on the same studies, tested against each other."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpelling, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "compare",
        help="Test whether models differ on the same studies: DeLong per label, a paired bootstrap on the mean.",
        formatter_class=OneSpelling,
        description="Compares two or more models scored on the same studies (each INPUT a predictions CSV, such as "
        "evaluate --model or a training run writes, or an output folder holding one): for every pair, or every "
        "input against --reference, each competition label's AUROC difference with DeLong's test, the difference "
        "of the 5-label mean with a paired bootstrap over studies, and Holm-adjusted p-values over the whole table. "
        "Scoring is per study. Writes OUTPUT/compare.json, compare.md (better / tie / worse at 0.05 after "
        "adjustment) and compare.png (a forest plot), and prints the table." + docs("evaluation"),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="predictions CSVs or output folders (two or more)")
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument(
        "--groundtruth",
        type=Path,
        help="CheXpert's valid.csv, the test set's groundtruth.csv, or a training run's validation_labels.csv "
        "(a run folder: its validation_labels.csv)",
    )
    truth.add_argument("--data_dir", "--data", "--data-dir", help="a prepared dataset folder: ground truth of --split")
    parser.add_argument(
        "--split", choices=("validation", "test"), default="validation", help="split of --data (default: validation)"
    )
    parser.add_argument(
        "--views",
        choices=("all", "frontal"),
        default="all",
        help="images of --data's split whose labels count (default: all); frontal for runs validated on frontal views",
    )
    parser.add_argument("--reference", help="compare every input with this one (its name as the table shows it)")
    parser.add_argument("--output", type=Path, default=None, help="folder for the reports (default: ./compare-A-B...)")
    parser.add_argument(
        "--bootstrap", type=int, default=2000, help="paired bootstrap resamples (default: 2000; at least 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from chexpert_hf.evaluation.compare import compare, compare_text, load_inputs, write_compare
    from chexpert_hf.evaluation.evaluate import groundtruth_from_prepared, read_groundtruth
    from chexpert_hf.outputs import VALIDATION_LABELS_CSV

    if args.bootstrap < 2000:
        raise ValueError(f"--bootstrap {args.bootstrap}: a paired bootstrap p-value needs at least 2000 resamples")
    if args.groundtruth is not None:
        path = args.groundtruth / VALIDATION_LABELS_CSV if args.groundtruth.is_dir() else args.groundtruth
        truth, source = read_groundtruth(path), str(path)
    else:
        truth = groundtruth_from_prepared(args.data_dir, args.split, args.views)
        source = f"{args.data_dir}, {args.split} split ({args.views} views)"
    inputs = load_inputs(args.inputs, truth)
    result = compare(inputs, reference=args.reference, resamples=args.bootstrap, seed=args.seed)
    output = args.output or Path("compare-" + "-".join(item.name.replace("/", "_") for item in inputs))
    paths = write_compare(output, result, source)
    print(compare_text(result))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0
