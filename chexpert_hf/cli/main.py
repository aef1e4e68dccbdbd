"""The ``chexpert-hf`` console script: the top-level parser; each subcommand lives in ``cli/commands/<name>.py``."""

from __future__ import annotations

import argparse
import difflib
import sys

from chexpert_hf import __version__
from chexpert_hf.cli.commands import COMMANDS, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chexpert-hf",
        description="Benchmark Vision Transformers on CheXpert chest X-rays with Hugging Face Transformers. "
        "Docs: README.md and docs/ (one page per stage).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``."""
    return parser._subparsers._group_actions[0].choices[name]


def unknown_option_message(command: argparse.ArgumentParser, extras: list[str]) -> str:
    """One line for arguments a command does not take, naming the closest option for a misspelt flag."""
    flags = [token for token in extras if token.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(extras)}"
    given = flags[0].split("=", 1)[0]
    options = [option for action in command._actions for option in action.option_strings]
    close = difflib.get_close_matches(given, options, n=1) or difflib.get_close_matches(
        given.replace("-", "_").replace("__", "--", 1), options, n=1
    )
    return f"unknown option {given!r}" + (f"; did you mean {close[0]!r}?" if close else "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its flags are the recipe fields: parsed by chexpert_hf.training.arguments
        return train.run(argv[1:])
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if getattr(args, "passes_unknown_flags", False):  # benchmark: recipe-field overrides for every run
        args.overrides = extras
    elif extras:
        print(
            f"chexpert-hf {args.command}: error: {unknown_option_message(subparser(parser, args.command), extras)}",
            file=sys.stderr,
        )
        return 2
    from chexpert_hf.data.builder import StrictSkipError
    from chexpert_hf.data.chexpert_csv import CheXpertFormatError
    from chexpert_hf.data.images import UnreadableImage
    from chexpert_hf.hub.push import HubAccessError, PublishError

    try:
        return args.handler(args)
    except (
        CheXpertFormatError,
        StrictSkipError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
        UnreadableImage,
        HubAccessError,
        PublishError,
    ) as error:
        print(f"chexpert-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
