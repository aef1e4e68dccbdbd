"""What several commands share: the help layout, the model options, the docs pointer."""

from __future__ import annotations

import argparse
import os

DEFAULT_NUM_PROC = max(1, min(8, os.cpu_count() or 1))


def docs(page: str) -> str:
    """The sentence every description ends with, so ``--help`` leads to the longer explanation."""
    return f" Docs: docs/{page}.md"


class OneSpelling(argparse.HelpFormatter):
    """Shows each option by its first spelling only: the older spellings still parse, but one is taught."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{action.option_strings[0]} {metavar}"


class OneSpellingRaw(OneSpelling, argparse.RawDescriptionHelpFormatter):
    """:class:`OneSpelling` that keeps the description's own line breaks."""


def add_model_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """The options of every command that runs a model."""
    parser.add_argument(
        "--batch_size",
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"images per forward pass (default: {batch_size})",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--trust_remote_code",
        "--trust-remote-code",
        action="store_true",
        help="allow a model whose code ships with it (the ResNet+ViT hybrid) to run that code",
    )
