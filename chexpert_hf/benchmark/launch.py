"""Launching benchmark runs: each its own ``accelerate launch`` process in its own process group, its output in
its log, and ``benchmark_run.json`` recorded once it succeeded.

:func:`execute` runs the missing prerequisites, then every grid run that is not finished, through a launcher (by
default :func:`launch_run`; the tests pass a fake that writes what a training job would).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chexpert_hf.benchmark.plan import (
    BENCHMARK_RUN,
    Plan,
    Prerequisite,
    Run,
    prerequisite_state,
    read_json,
    resolve_path,
    run_state,
)
from chexpert_hf.hub.model_card import format_duration
from chexpert_hf.outputs import METRICS_JSON, RUN_INFO
from chexpert_hf.utils import write_text

TAIL_LINES = 20

Launcher = Callable[[Run], int]
Echo = Callable[[str], None]


def launch_run(run: Run, command: list[str] | None = None, *, append: bool = False, header: str = "") -> int:
    """Run one training job under ``accelerate launch`` (``command``, default ``run.command``), its stdout and stderr
    into ``run.log`` (appended to with ``append``: a requeued SLURM job's next attempt); its exit status.

    The job gets its own process group: an interrupted benchmark (Ctrl-C) stops the whole job — accelerate and the
    training processes it started — instead of leaving workers running on the GPUs."""
    command = list(command or run.command)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    env = None
    if run.visible_devices is not None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": run.visible_devices}
    with open(run.log, "a" if append else "w", encoding="utf-8") as log:
        if header:
            log.write(f"\n--- {header} ---\n")
        devices = f"CUDA_VISIBLE_DEVICES={run.visible_devices} " if run.visible_devices is not None else ""
        log.write(f"$ {devices}{shlex.join(command)}\n\n")
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            return process.wait()
        except BaseException:
            stop_process_group(process)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)


_RUNNING: set[subprocess.Popen] = set()  # the jobs launch_run has started and not seen end (--parallel: several)
_RUNNING_LOCK = threading.Lock()


def stop_running() -> None:
    """Stop every job :func:`launch_run` has running (from any thread), as Ctrl-C stops the one in progress."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    threads = [threading.Thread(target=stop_process_group, args=(process,)) for process in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def stop_process_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGINT to ``process``'s group (as Ctrl-C would), then SIGTERM, then SIGKILL, each after a wait."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace / 2), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # workers the leader left behind
        os.killpg(process.pid, signal.SIGKILL)


def human_seconds(seconds: float | None) -> str:
    """``125`` → ``2 min 5 s``; ``3725`` → ``1 h 2 min``; unknown → ``—`` (the model card's format)."""
    return format_duration(seconds, missing="—")


def _log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [f"(no log at {path})"]
    # a progress bar rewrites its line with \r: keep what the line ended as
    kept = [line.rsplit("\r", 1)[-1] for line in text.rstrip().splitlines()]
    # accelerate ends a failed job with its own traceback (CalledProcessError); the job's error is above it
    starts = [index for index, line in enumerate(kept) if line.startswith("Traceback (most recent call last)")]
    if (
        starts
        and any("accelerate" in line and "launch" in line for line in kept[starts[-1] :])
        and "CalledProcessError" in kept[-1]
        and starts[-1] > 0
    ):
        kept = kept[: starts[-1]]
    return kept[-lines:]


def _launch(run: Run, launcher: Launcher, echo: Echo) -> tuple[bool, float]:
    """Launch ``run``; whether it finished (exit 0 and its outputs written) and its wall time."""
    start = time.monotonic()
    try:
        code = launcher(run)
    except OSError as error:
        code, reason = None, f"could not start: {error}"
    seconds = time.monotonic() - start
    if code == 0 and not (run.output_dir / RUN_INFO).is_file():
        reason = f"it exited 0 but wrote no {RUN_INFO} in {run.output_dir}"
    elif code == 0 and not run.prerequisite and not (run.output_dir / METRICS_JSON).is_file():
        reason = f"it exited 0 but wrote no {METRICS_JSON} in {run.output_dir}"
    elif code == 0:
        return True, seconds
    elif code is not None:
        reason = f"exit status {code}"
    echo(f"    failed after {human_seconds(seconds)} ({reason}); last lines of {run.log}:")
    for line in _log_tail(run.log):
        echo(f"    | {line}")
    return False, seconds


def _mean_auroc(folder: Path) -> str:
    metrics = read_json(folder / METRICS_JSON) or {}
    value = metrics.get("mean_auroc")
    return f"mean AUROC {value:.4f}" if isinstance(value, int | float) else "mean AUROC n/a"


def _record(run: Run, settings: dict[str, Any], seconds: float, command: list[str] | None = None) -> None:
    """``benchmark_run.json`` in the run's folder: the settings it ran with, its wall time and command."""
    record = {
        **settings,
        "wall_seconds": seconds,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(command or run.command),
    }
    write_text(run.output_dir / BENCHMARK_RUN, json.dumps(record, indent=2) + "\n")


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip() and item.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def device_groups(parallel: int, per_run: int, gpus: list[str]) -> list[str | None]:
    """``parallel`` disjoint ``CUDA_VISIBLE_DEVICES`` values of ``per_run`` GPUs each; ``[None] * parallel`` on a
    machine without GPUs (the runs share the CPUs). Raises ValueError when there are not enough GPUs."""
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    if not gpus:
        return [None] * parallel
    if parallel * per_run > len(gpus):
        raise ValueError(
            f"--parallel {parallel} × {per_run} GPU(s) per run (the accelerate config's num_processes) needs "
            f"{parallel * per_run} GPUs; {len(gpus)} visible ({','.join(gpus)})"
        )
    return [",".join(gpus[index * per_run : (index + 1) * per_run]) for index in range(parallel)]


def execute(
    the_plan: Plan,
    launcher: Launcher | None = None,
    echo: Echo = print,
    parallel: int = 1,
    devices: list[str | None] | None = None,
) -> dict[tuple[str, int], str]:
    """Run the prerequisites that are missing, then every grid run that is not finished; returns
    ``(recipe, seed) → "finished" | "skipped" | "failed"``. A failed run does not stop the others.

    ``parallel`` > 1 runs that many grid runs at once (the prerequisites first, one at a time), each with one of
    ``devices`` as its ``CUDA_VISIBLE_DEVICES`` (:func:`device_groups`)."""
    launcher = launcher or launch_run
    # a prerequisite is needed while a run that starts from it (directly or through another one) is not finished
    needed = {run.recipe for run in the_plan.runs if run_state(run)[0] != "finished"}
    for prerequisite in reversed(the_plan.prerequisites):  # dependents before what they start from
        if needed.intersection(prerequisite.needed_by):
            needed.add(prerequisite.run.recipe)
    blocked: set[Path] = set()  # prerequisite outputs that could not be made
    for prerequisite in the_plan.prerequisites:
        if not _make_prerequisite(prerequisite, the_plan, needed, blocked, launcher, echo):
            blocked.add(resolve_path(prerequisite.path))
    statuses: dict[tuple[str, int], str] = {}
    if parallel <= 1:
        for index, run in enumerate(the_plan.runs, start=1):
            head = f"[{index}/{len(the_plan.runs)}] {run.title}"
            statuses[run.recipe, run.seed] = _run_grid_cell(run, head, the_plan, blocked, launcher, echo)
        return statuses
    return _execute_parallel(the_plan, blocked, launcher, echo, devices or [None] * parallel)


def _execute_parallel(
    the_plan: Plan, blocked: set[Path], launcher: Launcher, echo: Echo, devices: list[str | None]
) -> dict[tuple[str, int], str]:
    """The grid runs ``len(devices)`` at a time, in the grid's order, each launched with a free device group; on
    Ctrl-C every running job is stopped before the interrupt goes on."""
    import queue
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    from dataclasses import replace

    free: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    for group in devices:
        free.put(group)
    lock = threading.Lock()

    def locked_echo(line: str) -> None:
        with lock:
            echo(line)

    def cell(index: int, run: Run) -> str:
        group = free.get()
        try:
            placed = replace(run, visible_devices=group)
            where = f" on GPU {group}" if group is not None else ""
            head = f"[{index}/{len(the_plan.runs)}] {run.title}{where}"
            return _run_grid_cell(placed, head, the_plan, blocked, launcher, locked_echo)
        finally:
            free.put(group)

    statuses: dict[tuple[str, int], str] = {}
    pool = ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="benchmark-run")
    futures = {pool.submit(cell, index, run): run for index, run in enumerate(the_plan.runs, start=1)}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                run = futures[future]
                statuses[run.recipe, run.seed] = future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_running()
        raise
    finally:
        pool.shutdown(wait=True)
    order = {(run.recipe, run.seed): index for index, run in enumerate(the_plan.runs)}
    return dict(sorted(statuses.items(), key=lambda item: order[item[0]]))


def _make_prerequisite(
    prerequisite: Prerequisite, the_plan: Plan, needed: set[str], blocked: set[Path], launcher: Launcher, echo: Echo
) -> bool:
    """Train ``prerequisite`` when it is missing or stale and still needed; False when its output is not there for
    the runs that start from it (it failed, or what it starts from failed)."""
    run = prerequisite.run
    state, why = prerequisite_state(run)
    if state == "ready":
        return True
    users = ", ".join(prerequisite.needed_by)
    if run.recipe not in needed:
        echo(f"{run.recipe} ({prerequisite.path}): {why}, but every run that starts from it has finished: not trained")
        return True
    missing = [path for path in the_plan.depends_on.get(run.recipe, []) if path in blocked]
    if missing:
        echo(f"{run.recipe} is not trained: it starts from {missing[0]}, which failed")
        return False
    verb = "starts" if len(prerequisite.needed_by) == 1 else "start"
    echo(
        f"{users} {verb} from {prerequisite.path}, made by recipe {run.recipe}; {why}: training it first "
        f"(log: {run.log})"
    )
    for stale in (RUN_INFO, BENCHMARK_RUN):  # a failed retraining must not leave the folder looking finished
        (run.output_dir / stale).unlink(missing_ok=True)
    settings = run.settings()
    finished, seconds = _launch(run, launcher, echo)
    if finished:
        _record(run, settings, seconds)
        echo(f"    {run.recipe} finished in {human_seconds(seconds)}, {_mean_auroc(run.output_dir)}")
    return finished


def _run_grid_cell(run: Run, head: str, the_plan: Plan, blocked: set[Path], launcher: Launcher, echo: Echo) -> str:
    """Skip, refuse or launch one grid run (a stale folder is deleted first); ``skipped``, ``finished`` or
    ``failed``."""
    state, why = run_state(run)
    if state == "finished":
        echo(f"{head}: finished before, skipped ({_mean_auroc(run.output_dir)})")
        return "skipped"
    missing = [path for path in the_plan.depends_on.get(run.recipe, []) if path in blocked]
    if missing:
        echo(f"{head}: not run: it starts from {missing[0]}, whose prerequisite run failed")
        return "failed"
    if state == "stale":
        echo(f"{head}: {why}: deleting {run.output_dir} and running it again")
        shutil.rmtree(run.output_dir)
    echo(f"{head} … (log: {run.log})")
    settings = run.settings()  # as launched: a recipe edited while it runs makes the run stale next time
    finished, seconds = _launch(run, launcher, echo)
    if not finished:
        return "failed"
    _record(run, settings, seconds)
    echo(f"{head}: finished in {human_seconds(seconds)}, {_mean_auroc(run.output_dir)}")
    return "finished"
