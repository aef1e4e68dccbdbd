"""One module per ``chexpert-hf`` subcommand: ``add_parser(commands)`` adds its subparser, ``run`` runs it."""

from chexpert_hf.cli.commands import (
    benchmark,
    compare,
    evaluate,
    explain,
    models,
    predict,
    prepare,
    push,
    synthesize,
    train,
)

# in the order ``chexpert-hf --help`` lists them
COMMANDS = (synthesize, prepare, evaluate, compare, predict, explain, push, models, benchmark, train)

__all__ = ["COMMANDS"]
