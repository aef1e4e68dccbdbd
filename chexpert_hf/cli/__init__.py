"""The ``chexpert-hf`` command: one parser, one subcommand per stage."""

from chexpert_hf.cli.main import main

__all__ = ["main"]
