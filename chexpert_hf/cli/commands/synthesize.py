"""``chexpert-hf synthesize``: a synthetic CheXpert tree, the dataset every demo and test starts from."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpelling, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "synthesize",
        help="Write a synthetic CheXpert-v1.0-small tree (the embedded default dataset).",
        formatter_class=OneSpelling,
        description="Write OUTPUT/CheXpert-v1.0-small/{train.csv,valid.csv,lesions.csv,train/,valid/} with "
        "radiograph-like images whose findings leave learnable visual signatures, labels at CheXpert's real "
        "per-study rates (including -1 uncertain and blanks), and lesions.csv giving where each localised "
        "finding was drawn. Deterministic in --seed." + docs("data"),
    )
    parser.add_argument("--output", required=True, type=Path, help="folder to write CheXpert-v1.0-small into")
    parser.add_argument(
        "--num_patients", "--num-patients", type=int, default=200, help="training patients (default: 200)"
    )
    parser.add_argument(
        "--valid_patients",
        "--valid-patients",
        type=int,
        default=None,
        help="validation patients, one study each (default: max(20, num_patients // 5))",
    )
    parser.add_argument(
        "--test_patients",
        "--test-patients",
        type=int,
        default=0,
        help="test patients; writes test/ and a study-level groundtruth.csv (default: 0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--num_proc", "--num-proc", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CheXpert-v1.0-small")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
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
