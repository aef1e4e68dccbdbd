"""``chexpert-hf push``: a training output folder published to the Hub, without what must stay private."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexpert_hf.cli.commands._common import OneSpelling, docs


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "push",
        help="Publish a training output folder (model, card, ROC figure, metrics) to the Hub.",
        formatter_class=OneSpelling,
        description="Publish OUTPUT_DIR to a Hub model repository: the weights (safetensors), config, image "
        "processor, model card (README.md), roc.png, metrics and a recipe.yaml with local paths removed. Never "
        "published: training_args.bin, TensorBoard logs, predictions (patient ids), checkpoints. The login "
        "(HF_TOKEN or `hf auth login`) is checked first." + docs("hub"),
    )
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR", help="a training output folder")
    parser.add_argument("--repo_id", "--repo-id", required=True, help="the Hub repository, e.g. user/vit-base-chexpert")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from chexpert_hf.hub.push import push_output_folder

    url = push_output_folder(args.output_dir, args.repo_id, private=args.private)
    print(f"pushed {args.output_dir} to {url}" + (" (private)" if args.private else ""))
    return 0
