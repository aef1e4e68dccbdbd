"""``chexpert-hf benchmark``: a grid of recipes × seeds, each its own ``accelerate launch`` run, and its tables.

Each run is ``accelerate launch -m chexpert_hf.training.train --recipe NAME --seed S --output_dir DIR/runs/NAME/seedS``
(plus the recipe-field overrides given to the benchmark), its output in ``DIR/logs/NAME-seedS.log``. A run is
finished when its folder holds ``run_info.json`` (the training job writes it last) and ``benchmark_run.json``
(written here after the run succeeded: the settings it ran with). A second invocation with the same ``DIR``
skips the finished runs whose settings are unchanged and runs the rest from scratch, so an interrupted grid
resumes. At the end the finished runs are read into ``DIR/results.csv`` (one row per run),
``DIR/results.md`` (one row per recipe: mean ± std over seeds, ranks with ties) and
``DIR/auroc_by_strategy.png``.

A recipe whose ``model_name_or_path`` is the ``output_dir`` of another recipe (``demo_head`` starts from
``outputs/demo_pretrain``, which ``demo_pretrain`` writes) gets that recipe trained first, once, when its
output holds no finished model or one the benchmark trained with other settings, and only while a run that starts
from it is not finished. Such prerequisite runs are not part of the results. A run records the hash of the local
weights it started from, so a retrained starting point makes its runs stale.

The pieces, one module per stage: ``plan`` (:func:`~chexpert_hf.benchmark.plan.plan` resolves and checks
everything before anything runs), ``launch`` (:func:`~chexpert_hf.benchmark.launch.execute` launches what is not
finished, through a launcher, by default ``launch_run``; the tests pass a fake) and ``results`` (``collect`` reads
the run folders, ``write_results`` writes the three files) and, with ``--explain``, ``explain`` (where each
recipe's models look, over its seeds). :func:`benchmark`, here, does them all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from chexpert_hf.benchmark.explain import ExplainSettings, explain_grid, explain_markdown
from chexpert_hf.benchmark.launch import Echo, Launcher, execute
from chexpert_hf.benchmark.plan import parse_recipe_list, parse_seeds, plan, run_state
from chexpert_hf.benchmark.results import collect, write_results


def benchmark(
    recipes: Sequence[str],
    seeds: Sequence[int],
    output: str | os.PathLike,
    overrides: Sequence[str] = (),
    accelerate_config: str | os.PathLike | None = None,
    *,
    command: str = "",
    launcher: Launcher | None = None,
    echo: Echo = print,
    explain: ExplainSettings | None = None,
) -> int:
    """Plan, run what is not finished, collect and write the results; 0 when every grid run finished, else 1.
    With ``explain``, every recipe's finished runs are also explained (:mod:`chexpert_hf.benchmark.explain`)."""
    if explain is not None:
        explain.check()
    the_plan = plan(recipes, seeds, output, overrides, accelerate_config)
    skipped = sum(run_state(run)[0] == "finished" for run in the_plan.runs)
    echo(
        f"benchmark: {len(the_plan.recipes)} recipe(s) × {len(the_plan.seeds)} seed(s) = {len(the_plan.runs)} "
        f"runs into {the_plan.output}" + (f" ({skipped} finished before)" if skipped else "")
    )
    interrupted = False
    try:
        execute(the_plan, launcher=launcher, echo=echo)
    except KeyboardInterrupt:
        interrupted = True
        echo(
            "benchmark: interrupted; the run in progress was stopped. Run the same command again to resume: "
            "finished runs are skipped"
        )
    rows = collect(the_plan)
    explained: list[str] = []
    if explain is not None and not interrupted:
        try:
            explained = explain_markdown(explain_grid(the_plan, rows, explain, echo=echo), explain)
        except KeyboardInterrupt:
            interrupted = True
            echo("benchmark: interrupted while explaining; the tables are written without the maps")
    paths = write_results(
        the_plan.output,
        rows,
        recipes=the_plan.recipes,
        seeds=the_plan.seeds,
        command=command or "chexpert-hf benchmark",
        explained=explained,
    )
    failed = sum(row["status"] != "finished" for row in rows)
    echo(
        f"benchmark: {len(rows) - failed} of {len(rows)} runs finished"
        + (f", {failed} {'not finished' if interrupted else 'failed'}" if failed else "")
        + f"; wrote {', '.join(str(path) for path in paths.values())}"
    )
    if interrupted:
        return 130
    return 1 if failed else 0


# The command line parses --recipes and --seeds with these before it calls benchmark().
__all__ = ["benchmark", "parse_recipe_list", "parse_seeds"]
