"""``chexpert-hf models``: the model families, their variants and what each freeze policy trains."""

from __future__ import annotations

import argparse

from chexpert_hf.cli.commands._common import OneSpelling, docs
from chexpert_hf.utils import markdown_table


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "models",
        help="List the model families, their variants and trainable parameters per freeze policy.",
        formatter_class=OneSpelling,
        description="Build every family and variant at full size on the meta device (shapes only: no memory, "
        "no download) and count the parameters each freeze policy (head, last_block, full) leaves trainable."
        + docs("models"),
    )
    parser.add_argument(
        "--labels",
        choices=("all", "competition"),
        default="all",
        help="head size: all 14 CheXpert labels (default) or the 5 competition labels",
    )
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table used in docs/models.md")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from chexpert_hf.labels import COMPETITION_LABELS
    from chexpert_hf.models.freeze import POLICIES, policy_table

    rows = policy_table(list(COMPETITION_LABELS) if args.labels == "competition" else None)
    print(models_markdown(rows, POLICIES) if args.markdown else models_text(rows, POLICIES))
    return 0


def models_markdown(rows: list[dict], policies: tuple[str, ...]) -> str:
    """docs/models.md's table: trainable parameters per family, variant and freeze policy."""
    header = ["family", "variant", "default checkpoint", *(f"`{p}`" for p in policies)]
    cells = (
        [f"`{row['family']}`", row["variant"], f"`{row['checkpoint']}`", *(f"{row[p]:,}" for p in policies)]
        for row in rows
    )
    return "\n".join(markdown_table(header, cells, "lll" + "r" * len(policies), tight_rule=True))


def models_text(rows: list[dict], policies: tuple[str, ...]) -> str:
    widths = (12, 8, 46)
    lines = ["family       variant  default checkpoint" + " " * 28 + "".join(f"{p:>14}" for p in policies)]
    for row in rows:
        cells = [row["family"].ljust(widths[0]), row["variant"].ljust(widths[1]), row["checkpoint"].ljust(widths[2])]
        lines.append(" ".join(cells) + "".join(f"{row[p]:>14,}" for p in policies))
    return "\n".join(lines)
