"""``chexpert-hf train``: a recipe trained, as ``accelerate launch recipes/train.py`` does.

Its flags are the recipe fields, parsed by :func:`chexpert_hf.training.arguments.parse_recipe`; this parser only
names the command in ``chexpert-hf --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from chexpert_hf.cli.commands._common import docs


def add_parser(commands) -> argparse.ArgumentParser:
    return commands.add_parser(
        "train",
        help="Train a recipe, as `accelerate launch recipes/train.py` does (`chexpert-hf train --help`: the fields).",
        description="Fine-tune a model on CheXpert from a recipe." + docs("training"),
        add_help=False,
    )


def run(argv: Sequence[str]) -> int:
    from chexpert_hf.training.train import main as train_main

    return train_main(list(argv))
