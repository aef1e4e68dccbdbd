"""``chexpert-hf benchmark --executor slurm|debug``: every grid run one SLURM job, through submitit.

Each job runs, inside its allocation, the same ``accelerate launch`` command the local executor runs
(:attr:`~chexpert_hf.benchmark.plan.Run.command`), its output appended to the run's log. A prerequisite recipe is
its own job, and the runs that start from it are submitted with ``--dependency=afterok:<its job>`` (a failed
prerequisite cancels them: ``--kill-on-invalid-dep=yes``); runs with the same dependencies go in one job array.

Preemption and time limits: submitit asks SLURM for ``--signal=USR2@90``; on that signal the job (a
:class:`TrainingJob`, checkpointable) stops its training processes and is requeued. A job that starts again (SLURM's
``SLURM_RESTART_COUNT`` > 0; ``scontrol requeue`` does the same) continues from the newest ``checkpoint-*`` of its
run folder with ``--resume_from_checkpoint last``, and gives up, reported failed, after ``max_retries`` restarts.

State lives in the output folder (a shared file system on a cluster): ``DIR/benchmark.json`` (how the grid was
planned, so ``--status``, ``--collect`` and ``--cancel`` need only ``--output``), ``DIR/slurm/jobs.json`` (each run's
job id) and ``DIR/slurm/state/<recipe>-seed<S>.json`` (written by the job itself: running, requeued, done or failed,
with its attempt and host). ``squeue`` says whether a job is still pending or running; no accounting database
(``sacct``) is needed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chexpert_hf.benchmark.plan import BENCHMARK_RUN, Plan, Run, prerequisite_state, read_json, run_state
from chexpert_hf.outputs import METRICS_JSON, RUN_INFO
from chexpert_hf.utils import write_text

SLURM_FOLDER = "slurm"
JOBS_JSON = "jobs.json"
STATE_FOLDER = "state"
GRID_JSON = "benchmark.json"
EXECUTORS = ("local", "slurm", "debug")
Echo = Callable[[str], None]

#: sbatch options the flags set; ``--slurm_extra`` may not set them again.
OWN_OPTIONS = {
    "partition", "time", "gpus-per-node", "gres", "cpus-per-task", "cpus-per-gpu", "mem", "account", "qos",
    "constraint", "array", "dependency", "output", "error", "signal", "job-name", "nodes", "ntasks-per-node",
    "open-mode", "requeue", "kill-on-invalid-dep",
}  # fmt: skip


def parse_time(text: str) -> int:
    """A SLURM time limit in whole minutes (rounded up): ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or
    ``D-HH:MM:SS``. Raises ValueError for anything else, and for a limit that is not positive."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"--slurm_time {text!r} is not a SLURM time (MM, HH:MM:SS, D-HH:MM ...)")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = int(first) * 60 + int(second)
    else:  # MM
        seconds = int(first) * 60
    if seconds <= 0:
        raise ValueError(f"--slurm_time {text!r} must be positive")
    return -(-seconds // 60)


@dataclass
class SlurmSettings:
    """The ``--slurm_*`` flags."""

    partition: str | None = None
    gpus_per_job: int | None = None  # None: the accelerate config's num_processes (0 without a config)
    cpus_per_gpu: int | None = None  # CPUs per GPU; per job when it has no GPU
    mem: str | None = None
    time: str = "4:00:00"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int | None = None
    setup: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    max_retries: int = 2
    poll_seconds: float = 10.0

    def check(self, processes: int, has_config: bool) -> int:
        """Refuse bad values before anything is submitted; returns the GPUs per job."""
        minutes = parse_time(self.time)
        del minutes
        if self.gpus_per_job is not None and self.gpus_per_job < 0:
            raise ValueError(f"--slurm_gpus_per_job must be 0 or more, got {self.gpus_per_job}")
        gpus = self.gpus_per_job if self.gpus_per_job is not None else (processes if has_config else 0)
        if has_config and gpus not in (0, processes):
            raise ValueError(
                f"--slurm_gpus_per_job {gpus} disagrees with the accelerate config's num_processes {processes}: "
                "each process drives one GPU; change one of them"
            )
        if not has_config and gpus > 1:
            raise ValueError(
                f"--slurm_gpus_per_job {gpus} needs an --accelerate_config with num_processes: {gpus} (without one, "
                "each run is a single process)"
            )
        for name, value in (("--slurm_cpus_per_gpu", self.cpus_per_gpu), ("--slurm_array_parallelism",
                            self.array_parallelism)):  # fmt: skip
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.max_retries < 0:
            raise ValueError(f"--slurm_max_retries must be 0 or more, got {self.max_retries}")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ValueError(f"--slurm_mem {self.mem!r} is not a SLURM memory size (e.g. 64G, 16000M, 0 for all)")
        for key in self.extra:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                raise ValueError(f"--slurm_extra {key!r}: a key is an sbatch long option without its dashes")
            if key in OWN_OPTIONS:
                raise ValueError(f"--slurm_extra {key}: set by the benchmark or by its own --slurm_* flag")
        return gpus

    def parameters(self, gpus: int) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` for one job of ``gpus`` GPUs."""
        values: dict[str, Any] = {
            "job_name": "chexpert-hf",
            "time": parse_time(self.time),
            "nodes": 1,
            "ntasks_per_node": 1,  # one task: accelerate starts the per-GPU processes itself
            "cpus_per_task": (self.cpus_per_gpu or 1) * max(gpus, 1),
            "setup": list(self.setup),
            "additional_parameters": {"requeue": True, "kill-on-invalid-dep": "yes", **self.extra},
            "stderr_to_stdout": True,
        }
        if gpus:
            values["gpus_per_node"] = gpus
        for key in ("partition", "mem", "account", "qos", "constraint", "array_parallelism"):
            value = getattr(self, key)
            if value is not None:
                values[key] = value
        return values


def check_cluster(settings: SlurmSettings) -> None:
    """The SLURM commands are here and the partition exists (``sinfo``)."""
    missing = [name for name in ("sbatch", "squeue", "sinfo", "scancel") if shutil.which(name) is None]
    if missing:
        raise FileNotFoundError(f"--executor slurm needs SLURM's commands; not found: {', '.join(missing)}")
    if settings.partition is not None:
        listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
        partitions = sorted({line.strip().rstrip("*") for line in listed.stdout.splitlines() if line.strip()})
        if listed.returncode != 0:
            raise RuntimeError(f"sinfo failed: {listed.stderr.strip()}")
        if settings.partition not in partitions:
            raise ValueError(
                f"--slurm_partition {settings.partition!r} is not a partition here: {', '.join(partitions)}"
            )


# --- the job ------------------------------------------------------------------------------------------------


def run_key(run: Run) -> str:
    return f"{run.recipe}-prerequisite" if run.prerequisite else f"{run.recipe}-seed{run.seed}"


def state_path(output: Path, run: Run) -> Path:
    return output / SLURM_FOLDER / STATE_FOLDER / f"{run_key(run)}.json"


def _write_state(path: Path, state: str, fresh: bool = False, **details: Any) -> None:
    """Update (or, ``fresh``, replace) a run's state file."""
    record = {} if fresh else read_json(path) or {}
    record.update(details, state=state, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_text(path, json.dumps(record, indent=2) + "\n")


def _checkpoints(folder: Path) -> list[Path]:
    return [path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name.split("-")[-1].isdigit()]


class TrainingJob:
    """One run inside its SLURM allocation (or in-process, for ``--executor debug``): the training command under
    ``accelerate launch``, its output appended to the run's log; ``benchmark_run.json`` once it succeeded.

    submitit calls :meth:`checkpoint` on preemption or timeout: the training processes are stopped and the job is
    requeued; the next attempt resumes from the newest checkpoint."""

    def __init__(self, output: Path, max_retries: int):
        self.output = Path(output)
        self.max_retries = max_retries

    def __call__(self, run: Run, command: list[str]) -> str:
        from chexpert_hf.benchmark.launch import _record, launch_run

        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        path = state_path(self.output, run)
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID")
        where = {"attempt": attempt, "host": socket.gethostname(), "job_id": job_id}
        if attempt > self.max_retries:
            _write_state(path, "failed", reason=f"stopped after {self.max_retries} restarts", **where)
            raise RuntimeError(f"{run.title}: stopped after {self.max_retries} restarts (--slurm_max_retries)")
        resume = attempt > 0 and bool(_checkpoints(run.output_dir))
        placed = [*command, "--resume_from_checkpoint", "last"] if resume else list(command)
        settings = run.settings()  # here, after any prerequisite finished: the weights it starts from
        _write_state(path, "running", resumed=resume, **where)
        start = time.monotonic()
        code = launch_run(run, placed, append=attempt > 0, header=f"attempt {attempt + 1} on {where['host']}")
        seconds = time.monotonic() - start
        outputs = (run.output_dir / RUN_INFO).is_file() and (
            run.prerequisite or (run.output_dir / METRICS_JSON).is_file()
        )
        if code == 0 and outputs:
            _record(run, settings, seconds, command=placed)
            _write_state(path, "done", seconds=seconds, **where)
            return "finished"
        if code is not None and code < 0:  # killed by a signal: preempted or cancelled; SLURM may requeue it
            _write_state(path, "stopped", reason=f"stopped by signal {-code}", **where)
        else:
            _write_state(path, "failed", reason=f"exit status {code}" if code else "no results written", **where)
        raise RuntimeError(f"{run.title} failed (exit status {code}); log: {run.log}")

    def checkpoint(self, run: Run, command: list[str]):
        import submitit

        from chexpert_hf.benchmark.launch import stop_running

        stop_running()
        _write_state(state_path(self.output, run), "requeued")
        return submitit.helpers.DelayedSubmission(self, run, command)


# --- submitting, following, cancelling ----------------------------------------------------------------------


def grid_record(the_plan: Plan, recipes: Sequence[str], seeds: Sequence[int], executor: str, extra: dict) -> dict:
    return {
        "recipes": list(recipes),
        "seeds": list(seeds),
        "overrides": list(the_plan.overrides),
        "accelerate_config": str(the_plan.accelerate_config) if the_plan.accelerate_config else None,
        "executor": executor,
        **extra,
    }


def read_jobs(output: Path) -> dict[str, dict]:
    return read_json(output / SLURM_FOLDER / JOBS_JSON) or {}


def _write_jobs(output: Path, jobs: dict[str, dict]) -> None:
    write_text(output / SLURM_FOLDER / JOBS_JSON, json.dumps(jobs, indent=2) + "\n")


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """``squeue``'s state (PENDING, RUNNING, REQUEUED ...) of each job still known to it; an ended job is absent."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    listed = subprocess.run(
        ["squeue", "-h", "--me", "--array", "-o", "%i|%T"], capture_output=True, text=True, timeout=60
    )
    if listed.returncode != 0:
        raise RuntimeError(f"squeue failed: {listed.stderr.strip()}")
    states = dict(line.split("|", 1) for line in listed.stdout.split() if "|" in line)
    return {job_id: states[job_id] for job_id in job_ids if job_id in states}


def _executor(kind: str, folder: Path, settings: SlurmSettings, gpus: int):
    import submitit

    if kind == "debug":
        return submitit.DebugExecutor(folder)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_retries)
    executor.update_parameters(**settings.parameters(gpus))
    return executor


@dataclass
class Submission:
    jobs: dict[str, dict]  # run key -> {"job_id", "title", "log", "submitted"}
    handles: dict[str, Any]  # run key -> submitit job (this invocation's submissions, and debug's)


def submit(the_plan: Plan, kind: str, settings: SlurmSettings, gpus: int, echo: Echo = print) -> Submission:
    """Submit what is missing or failed: the prerequisites still needed first, then the grid runs (a job array per
    set of dependencies). Runs finished with the same settings, and jobs still pending or running, are left alone."""
    output = the_plan.output
    folder = output / SLURM_FOLDER / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = read_jobs(output)
    active = queue_states([entry["job_id"] for entry in jobs.values()]) if kind == "slurm" else {}
    executor = _executor(kind, folder, settings, gpus)
    handles: dict[str, Any] = {}
    job = TrainingJob(output, settings.max_retries)

    def record(run: Run, handle) -> None:
        key = run_key(run)
        jobs[key] = {"job_id": str(handle.job_id), "title": run.title, "log": str(run.log),
                     "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        handles[key] = handle
        _write_state(state_path(output, run), "pending", fresh=True, job_id=str(handle.job_id), attempt=0)
        _write_jobs(output, jobs)  # at once: a later submission that fails must not lose track of this job

    def running(run: Run) -> str | None:
        entry = jobs.get(run_key(run))
        return entry["job_id"] if entry and entry["job_id"] in active else None

    # prerequisites: one job each, in dependency order
    needed = {run.recipe for run in the_plan.runs if run_state(run)[0] != "finished"}
    for prerequisite in reversed(the_plan.prerequisites):
        if needed.intersection(prerequisite.needed_by):
            needed.add(prerequisite.run.recipe)
    made_by: dict[Path, str] = {}  # prerequisite output folder -> the job that makes it
    for prerequisite in the_plan.prerequisites:
        run = prerequisite.run
        state, why = prerequisite_state(run)
        if state == "ready" or run.recipe not in needed:
            continue
        after = [made_by[path] for path in the_plan.depends_on.get(run.recipe, []) if path in made_by]
        existing = running(run)
        if existing:
            echo(f"{run.title}: job {existing} is still {active[existing].lower()}")
            made_by[run.output_dir] = existing
            continue
        for stale in (RUN_INFO, BENCHMARK_RUN):
            (run.output_dir / stale).unlink(missing_ok=True)
        if kind == "slurm":
            executor.update_parameters(dependency=f"afterok:{':'.join(after)}" if after else None)
        handle = executor.submit(job, run, run.command)
        record(run, handle)
        made_by[run.output_dir] = str(handle.job_id)
        echo(f"{run.title}: {why}; submitted as job {handle.job_id} (log: {run.log})")

    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in the_plan.runs:
        state, why = run_state(run)
        if state == "finished":
            continue
        existing = running(run)
        if existing:
            echo(f"{run.title}: job {existing} is still {active[existing].lower()}")
            continue
        if state == "stale" and run.output_dir.exists():
            shutil.rmtree(run.output_dir)
        after = tuple(sorted({made_by[path] for path in the_plan.depends_on.get(run.recipe, []) if path in made_by}))
        groups.setdefault(after, []).append(run)
    for after, runs in groups.items():
        if kind == "slurm":
            executor.update_parameters(dependency=f"afterok:{':'.join(after)}" if after else None)
            with executor.batch():
                pending = [(run, executor.submit(job, run, run.command)) for run in runs]
        else:
            pending = [(run, executor.submit(job, run, run.command)) for run in runs]
        for run, handle in pending:
            record(run, handle)
        ids = ", ".join(str(handle.job_id) for _, handle in pending)
        waits = f" after job {', '.join(after)}" if after else ""
        echo(f"submitted {len(runs)} run(s){waits}: job(s) {ids}")
    _write_jobs(output, jobs)
    return Submission(jobs, handles)


def follow(output: Path, submission: Submission, kind: str, poll_seconds: float, echo: Echo = print) -> None:
    """Wait until every job of the grid has ended, echoing each change of state; for ``debug``, run them here."""
    if kind == "debug":
        for key, handle in submission.handles.items():
            try:
                handle.result()
            except Exception as error:  # noqa: BLE001 - a failed run is reported and the others go on
                echo(f"{submission.jobs[key]['title']}: failed: {error}")
        return
    seen: dict[str, str] = {}
    failures = 0
    while True:
        try:
            rows = status_rows(output, submission.jobs)
        except RuntimeError as error:  # the controller restarting, a network blip: the jobs are not lost
            failures += 1
            if failures == 1:
                echo(f"benchmark: {error}; asking again every {poll_seconds:g} s")
            if failures * poll_seconds > 600:
                raise RuntimeError(f"{error} for 10 minutes; {follow_hint(output)}") from None
            time.sleep(poll_seconds)
            continue
        failures = 0
        for row in rows:
            if seen.get(row["key"]) != row["state"]:
                seen[row["key"]] = row["state"]
                detail = f", {row['detail']}" if row["detail"] else ""
                echo(f"{row['title']}: {row['state']} (job {row['job_id']}{detail})")
        if not any(row["state"] in ("pending", "running", "requeued") for row in rows):
            return
        time.sleep(poll_seconds)


def status_rows(output: Path, jobs: dict[str, dict]) -> list[dict[str, Any]]:
    """Each submitted run's state: pending, running, requeued (squeue while the job lives; a restarted job is
    requeued), done or failed (from the state file the job writes once it has ended)."""
    active = queue_states([entry["job_id"] for entry in jobs.values()])
    rows = []
    for key, entry in jobs.items():
        record = read_json(output / SLURM_FOLDER / STATE_FOLDER / f"{key}.json") or {}
        queued = active.get(entry["job_id"])
        written = record.get("state", "pending")
        detail = ""
        if queued is not None:
            attempt = int(record.get("attempt", 0) or 0)
            if queued in ("RUNNING", "COMPLETING"):
                state = "requeued" if written == "requeued" else "running"
                detail = f"attempt {attempt + 1}" if attempt else ""
            else:  # waiting: for the first time, or again after it started (requeued)
                state = "pending" if written == "pending" else "requeued"
        elif written == "done":
            state = "done"
        else:
            state = "failed"
            detail = record.get("reason") or (
                "it ended without starting (a failed prerequisite, or cancelled)" if written == "pending"
                else "it ended while running (cancelled, or killed)"
            )  # fmt: skip
        rows.append({"key": key, "title": entry["title"], "job_id": entry["job_id"], "state": state,
                     "detail": detail, "log": entry["log"], "host": record.get("host")})  # fmt: skip
    return rows


def cancel(output: Path, echo: Echo = print) -> int:
    """``scancel`` the grid's pending and running jobs; how many were cancelled."""
    jobs = read_jobs(output)
    active = queue_states([entry["job_id"] for entry in jobs.values()])
    if not active:
        echo(f"benchmark: no pending or running job of {output}")
        return 0
    subprocess.run(["scancel", *active], check=True, timeout=60)
    echo(f"benchmark: cancelled {len(active)} job(s): {', '.join(active)}")
    return len(active)


def follow_hint(output: Path) -> str:
    follow = shlex.join(["chexpert-hf", "benchmark", "--output", str(output)])
    return (
        f"the jobs keep running. Follow them with `{follow} --status` (or `squeue --me`), logs under "
        f"{output / 'logs'}; `{follow} --collect` writes the tables of what has finished; running the same "
        "command again waits for them (and submits only what is missing or failed)"
    )


__all__ = [
    "EXECUTORS",
    "SlurmSettings",
    "TrainingJob",
    "cancel",
    "check_cluster",
    "follow",
    "grid_record",
    "parse_time",
    "status_rows",
    "submit",
]
