"""The ``chexpert-hf`` console script and its subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__

DEFAULT_NUM_PROC = max(1, min(8, os.cpu_count() or 1))


def _synthesize(args: argparse.Namespace) -> int:
    from .data.synthetic import synthesize

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
    from .data.prepare import prepare

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
    return 0


def _models(args: argparse.Namespace) -> int:
    from .freeze import POLICIES, policy_table
    from .labels import COMPETITION_LABELS

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
    prep.set_defaults(handler=_prepare)

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

    commands.add_parser(
        "train",
        help="train a recipe, as `accelerate launch recipes/train.py` does (`chexpert-hf train --help`: the fields)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its flags are the recipe fields: parsed by chexpert_hf.train, not here
        from .train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .data.builder import StrictSkipError
    from .data.tables import CheXpertFormatError

    try:
        return args.handler(args)
    except (CheXpertFormatError, StrictSkipError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"chexpert-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
