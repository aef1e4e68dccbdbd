"""``chexpert-hf prepare``: a CheXpert tree decoded once into a self-contained Arrow dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import DEFAULT_NUM_PROC, OneSpelling, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "prepare",
        help="Turn a CheXpert tree into a self-contained Arrow dataset.",
        formatter_class=OneSpelling,
        description="Decode every image once (grayscale, shorter side --image_size), embed it with the raw "
        "labels (1/0/-1/blank) and metadata into a datasets.DatasetDict saved at OUTPUT (train, validation, "
        "and test when a groundtruth.csv is present). Unreadable images are skipped and listed in "
        "OUTPUT/skipped.csv; --strict stops at the first one instead. The output appears only when complete."
        + docs("data"),
    )
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        "--data",
        required=True,
        type=Path,
        help="the folder that holds train.csv and valid.csv (e.g. .../CheXpert-v1.0-small)",
    )
    parser.add_argument("--output", required=True, type=Path, help="folder to write the prepared dataset to")
    parser.add_argument(
        "--image_size", "--image-size", type=int, default=320, help="shorter side in pixels (default: 320)"
    )
    parser.add_argument(
        "--num_proc",
        "--num-proc",
        type=int,
        default=DEFAULT_NUM_PROC,
        help=f"worker processes (default: {DEFAULT_NUM_PROC}, the CPU count up to 8)",
    )
    parser.add_argument("--strict", action="store_true", help="stop with an error at the first unreadable image")
    parser.add_argument("--frontal_only", "--frontal-only", action="store_true", help="leave lateral views out")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument(
        "--push_to_hub",
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="then publish the prepared dataset to this Hub dataset repository, always private: "
        "CheXpert's Research Use Agreement does not allow public redistribution. The Hub login "
        "(HF_TOKEN or `hf auth login`) is checked before preparing starts",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
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
