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

import json
import os
from collections.abc import Sequence
from pathlib import Path

from chexpert_hf.benchmark.explain import ExplainSettings, explain_grid, explain_markdown
from chexpert_hf.benchmark.launch import Echo, Launcher, device_groups, execute, visible_gpus
from chexpert_hf.benchmark.plan import (
    Plan,
    accelerate_processes,
    parse_recipe_list,
    parse_seeds,
    plan,
    prerequisite_state,
    read_json,
    run_state,
)
from chexpert_hf.benchmark.results import collect, write_results
from chexpert_hf.benchmark.slurm import (
    EXECUTORS,
    GRID_JSON,
    SlurmSettings,
    cancel,
    check_cluster,
    follow,
    follow_hint,
    grid_record,
    read_jobs,
    run_key,
    status_rows,
    submit,
)
from chexpert_hf.utils import write_text


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
    executor: str = "local",
    parallel: int = 1,
    slurm: SlurmSettings | None = None,
) -> int:
    """Plan, run what is not finished, collect and write the results; 0 when every grid run finished, else 1.
    With ``explain``, every recipe's finished runs are also explained (:mod:`chexpert_hf.benchmark.explain`).

    ``executor``: ``local`` (here, ``parallel`` runs at a time, each on its own GPUs), ``slurm`` (one SLURM job per
    run through submitit, waited for: :mod:`chexpert_hf.benchmark.slurm`) or ``debug`` (submitit's in-process
    executor)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if explain is not None:
        explain.check()
    if executor != "local" and parallel != 1:
        raise ValueError("--parallel is for --executor local; a SLURM grid runs as many jobs as the cluster allows")
    the_plan = plan(recipes, seeds, output, overrides, accelerate_config)
    processes = accelerate_processes(the_plan.accelerate_config)
    devices = device_groups(parallel, processes, visible_gpus()) if parallel > 1 else None
    gpus = 0
    if executor != "local":
        slurm = slurm or SlurmSettings()
        gpus = slurm.check(processes, the_plan.accelerate_config is not None)
        if executor == "slurm":
            check_cluster(slurm)
    save_grid(the_plan, recipes, seeds, executor, command)
    skipped = sum(run_state(run)[0] == "finished" for run in the_plan.runs)
    echo(
        f"benchmark: {len(the_plan.recipes)} recipe(s) × {len(the_plan.seeds)} seed(s) = {len(the_plan.runs)} "
        f"runs into {the_plan.output}" + (f" ({skipped} finished before)" if skipped else "")
    )
    interrupted = False
    unfinished: dict[tuple[str, int], str] = {}
    try:
        if executor == "local":
            execute(the_plan, launcher=launcher, echo=echo, parallel=parallel, devices=devices)
        else:
            submission = submit(the_plan, executor, slurm, gpus, echo=echo)
            follow(the_plan.output, submission, executor, slurm.poll_seconds, echo=echo)
    except KeyboardInterrupt:
        interrupted = True
        if executor == "local":
            echo(
                "benchmark: interrupted; the run in progress was stopped. Run the same command again to resume: "
                "finished runs are skipped"
            )
        else:
            echo("benchmark: stopped waiting; " + follow_hint(the_plan.output))
    if executor == "slurm":
        unfinished = grid_states(the_plan)
    return _report(the_plan, command, echo, explain, interrupted, unfinished)


def _report(
    the_plan: Plan,
    command: str,
    echo: Echo,
    explain: ExplainSettings | None,
    interrupted: bool,
    unfinished: dict[tuple[str, int], str],
) -> int:
    """Collect, explain when asked, write the tables; the exit status (130 interrupted, 1 any run not finished)."""
    rows = collect(the_plan, unfinished)
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
    failed = sum(row["status"] == "failed" for row in rows)
    waiting = sum(row["status"] not in ("finished", "failed") for row in rows)
    done = len(rows) - failed - waiting
    echo(
        f"benchmark: {done} of {len(rows)} runs finished"
        + (f", {failed} {'not finished' if interrupted and not waiting else 'failed'}" if failed else "")
        + (f", {waiting} pending or running" if waiting else "")
        + f"; wrote {', '.join(str(path) for path in paths.values())}"
    )
    if interrupted:
        return 130
    return 1 if failed or waiting else 0


# --- the grid as recorded in its folder: --status, --collect, --cancel ------------------------------------------


def save_grid(the_plan: Plan, recipes: Sequence[str], seeds: Sequence[int], executor: str, command: str) -> None:
    """``DIR/benchmark.json``: what the grid is, so that ``--status``, ``--collect`` and ``--cancel`` need only
    ``--output``."""
    record = grid_record(the_plan, recipes, seeds, executor, {"command": command or "chexpert-hf benchmark"})
    write_text(the_plan.output / GRID_JSON, json.dumps(record, indent=2) + "\n")


def load_grid(output: str | os.PathLike) -> tuple[Plan, dict]:
    """The plan of the grid recorded in ``output`` (:func:`save_grid`)."""
    folder = Path(output).expanduser().resolve()
    record = read_json(folder / GRID_JSON)
    if record is None:
        raise FileNotFoundError(
            f"{folder / GRID_JSON} not found: {folder} is not a benchmark's output folder (give the --output of a "
            "benchmark that was started)"
        )
    the_plan = plan(record["recipes"], record["seeds"], folder, record["overrides"], record["accelerate_config"])
    return the_plan, record


def grid_states(the_plan: Plan) -> dict[tuple[str, int], str]:
    """The state of every grid run that is not finished, from its SLURM job (pending, running, requeued, failed)."""
    jobs = read_jobs(the_plan.output)
    states = {row["key"]: row["state"] for row in status_rows(the_plan.output, jobs)}
    out = {}
    for run in the_plan.runs:
        state = states.get(run_key(run))
        if state in ("pending", "running", "requeued"):
            out[run.recipe, run.seed] = state
    return out


def grid_status(output: str | os.PathLike, echo: Echo = print) -> int:
    """``--status``: every run of the grid with its job id, state and log."""
    the_plan, record = load_grid(output)
    jobs = read_jobs(the_plan.output)
    by_key = {row["key"]: row for row in status_rows(the_plan.output, jobs)} if jobs else {}
    lines = []
    runs = [prerequisite.run for prerequisite in the_plan.prerequisites] + the_plan.grid()
    for run in runs:
        row = by_key.get(run_key(run))
        finished = prerequisite_state(run)[0] == "ready" if run.prerequisite else run_state(run)[0] == "finished"
        if finished:
            state = "done"
        elif row is not None:
            state = row["state"] + (f" ({row['detail']})" if row["detail"] else "")
        else:
            state = "not started" if not run.log.exists() else "failed"
        job = row["job_id"] if row else "—"
        lines.append((run.title, job, state, os.path.relpath(run.log, the_plan.output)))
    width = max(len(line[0]) for line in lines)
    echo(f"benchmark {the_plan.output} ({record.get('executor', 'local')} executor):")
    echo(f"  {'run':<{width}}  {'job':>10}  {'state':<40} log")
    for title, job, state, log in lines:
        echo(f"  {title:<{width}}  {job:>10}  {state:<40} {log}")
    return 0


def grid_collect(output: str | os.PathLike, echo: Echo = print, explain: ExplainSettings | None = None) -> int:
    """``--collect``: the tables of what has finished so far."""
    the_plan, record = load_grid(output)
    unfinished = grid_states(the_plan) if record.get("executor") == "slurm" else {}
    status = _report(the_plan, record.get("command", ""), echo, explain, False, unfinished)
    return 0 if status in (0, 1) else status


def grid_cancel(output: str | os.PathLike, echo: Echo = print) -> int:
    """``--cancel``: cancel the grid's pending and running SLURM jobs."""
    the_plan, _ = load_grid(output)
    cancel(the_plan.output, echo=echo)
    return 0


# The command line parses --recipes and --seeds with these before it calls benchmark().
__all__ = ["benchmark", "grid_cancel", "grid_collect", "grid_status", "parse_recipe_list", "parse_seeds"]
