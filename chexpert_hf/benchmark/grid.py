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

The pieces: :func:`plan` resolves and checks everything before anything runs; :func:`execute` launches what is
not finished (through a launcher, by default :func:`launch_run`; the tests pass a fake); :func:`collect` reads the
run folders; :func:`write_results` writes the three files. :func:`benchmark` does all four.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from chexpert_hf.hub.model_card import format_duration
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models.freeze import POLICIES
from chexpert_hf.outputs import RUN_INFO
from chexpert_hf.training.arguments import DATACLASSES, available_recipes, parse_recipe, read_recipe_file, recipes_dir
from chexpert_hf.utils import atomic_write, write_text

METRICS = "metrics.json"  # written by the training job's final evaluation
BENCHMARK_RUN = "benchmark_run.json"  # written here once a run succeeded
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
FIGURE = "auroc_by_strategy.png"
TAIL_LINES = 20
# The fields the benchmark sets itself on every run (or, for --recipe/--config, chooses per run).
RESERVED = ("seed", "output_dir", "recipe", "config", "overwrite_output_dir")
# The settings that make two runs the same run: a change in any of them reruns the run.
SETTINGS = ("recipe", "recipe_sha256", "seed", "overrides", "accelerate_config", "accelerate_config_sha256",
            "starts_from_sha256")
SINGLE_PROCESS = ("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")

Launcher = Callable[["Run"], int]
Echo = Callable[[str], None]


# --- input ----------------------------------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``: non-negative integers separated by commas, each once."""
    seeds = []
    for item in text.split(","):
        item = item.strip()
        if not re.fullmatch(r"\d+", item):
            raise ValueError(f"--seeds takes non-negative integers separated by commas (e.g. 0,1,2), got {text!r}")
        seeds.append(int(item))
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"--seeds names seed(s) {', '.join(map(str, repeated))} more than once: {text!r}")
    return seeds


def parse_recipe_list(text: str) -> list[str]:
    """``"demo_head,demo_full"`` → the names (or .yaml paths), each once."""
    recipes = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in recipes):
        raise ValueError(f"--recipes takes recipe names or .yaml paths separated by commas, got {text!r}")
    repeated = sorted({item for item in recipes if recipes.count(item) > 1})
    if repeated:
        raise ValueError(f"--recipes names {', '.join(repeated)} more than once")
    return recipes


def _reserved_override(token: str) -> str | None:
    if not token.startswith("--"):
        return None
    name = token[2:].split("=", 1)[0].replace("-", "_")
    return name if name in RESERVED else None


def check_overrides(overrides: Sequence[str]) -> None:
    """The overrides must be ``--field value`` pairs and leave the fields the benchmark sets alone."""
    if overrides and not overrides[0].startswith("-"):
        raise ValueError(f"unexpected argument {overrides[0]!r}: recipe-field overrides are --field value pairs")
    for token in overrides:
        name = _reserved_override(token)
        if name in ("seed", "output_dir", "overwrite_output_dir"):
            raise ValueError(f"{token.split('=', 1)[0]} cannot be overridden: the benchmark sets it for every run "
                             f"(--seeds, --output for the run folders; a run it trains again replaces its folder)")
        if name is not None:
            raise ValueError(f"{token.split('=', 1)[0]} cannot be given to the benchmark: use --recipes")


def _validated_recipe(selector: Sequence[str], overrides: Sequence[str], label: str):
    """``parse_recipe`` of the run's arguments, with its argparse errors (which exit) turned into ValueError."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parse_recipe([*selector, *overrides])
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if "error:" in line]
        reason = lines[-1].split("error:", 1)[1].strip() if lines else "invalid arguments"
        reason += _hints(reason)
        raise ValueError(f"recipe {label} with the overrides {shlex.join(overrides) or '(none)'}: {reason}") from None
    except ValueError as error:
        raise ValueError(f"recipe {label}: {error}") from None


def _hints(reason: str) -> str:
    """`` (did you mean --num_train_epochs?)`` for the misspelt flags an argparse message names."""
    if "unrecognized arguments" not in reason:
        return ""
    fields = [item.name for dataclass in DATACLASSES for item in dataclasses.fields(dataclass)]
    hints = []
    for token in reason.split():
        if token.startswith("--"):
            close = difflib.get_close_matches(token[2:].split("=", 1)[0].replace("-", "_"), fields, n=1)
            hints += [f"--{close[0]}"] if close else []
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_sha256(folder: Path | None) -> str | None:
    """The hash of the weights a run starts from (``model.safetensors`` of a local folder); None when there are none
    to compare (a Hub id, random weights, or a folder that is gone)."""
    if folder is None:
        return None
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{_file_sha256(path, stat.st_size, stat.st_mtime_ns)}|".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """``sha256_file`` once per version of a file (the starting weights are compared for every run, several times)."""
    return sha256_file(path)


# --- plan -------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One training job: a grid cell (recipe × seed) or a prerequisite (the recipe's own seed and output_dir)."""

    recipe: str
    recipe_file: Path
    seed: int | None  # None: a prerequisite, run with the recipe's seed
    output_dir: Path  # absolute
    log: Path
    overrides: list[str]
    accelerate_config: Path | None = None
    family: str = ""
    variant: str = ""
    freeze_policy: str = ""
    prerequisite: bool = False
    starts_from: Path | None = None  # the local model folder the recipe starts from (model_name_or_path)

    @property
    def selector(self) -> list[str]:
        return _selector(self.recipe_file)

    @property
    def command(self) -> list[str]:
        launch = ["--config_file", str(self.accelerate_config)] if self.accelerate_config else list(SINGLE_PROCESS)
        placed = [] if self.prerequisite else ["--seed", str(self.seed), "--output_dir", str(self.output_dir)]
        # the benchmark decided to (re)train this run from scratch: a folder left by an unfinished or stale attempt
        # is replaced, not refused
        return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "chexpert_hf.training.train",
                *self.selector, *placed, "--overwrite_output_dir", "true", *self.overrides]

    def settings(self) -> dict[str, Any]:
        """What makes this run this run (``benchmark_run.json`` records it; a change reruns it)."""
        config = self.accelerate_config
        return {
            "recipe": self.recipe,
            "recipe_sha256": sha256_file(self.recipe_file),
            "seed": self.seed,
            "overrides": list(self.overrides),
            "accelerate_config": str(config) if config else None,
            "accelerate_config_sha256": sha256_file(config) if config else None,
            "starts_from_sha256": _weights_sha256(self.starts_from),
        }

    @property
    def title(self) -> str:
        return f"{self.recipe} seed {self.seed}" if not self.prerequisite else f"{self.recipe} (prerequisite)"


@dataclass
class Prerequisite:
    run: Run
    path: str  # model_name_or_path as the recipes write it
    needed_by: list[str]  # recipe names


@dataclass
class Plan:
    output: Path  # absolute
    recipes: list[str]  # names, in the order given
    seeds: list[int]
    runs: list[Run]  # the grid, in launch order (seed by seed)
    prerequisites: list[Prerequisite] = field(default_factory=list)  # in launch order (dependencies first)
    overrides: list[str] = field(default_factory=list)
    accelerate_config: Path | None = None
    depends_on: dict[str, list[Path]] = field(default_factory=dict)  # recipe -> prerequisite output folders

    def grid(self) -> list[Run]:
        """The runs in results order: recipe by recipe, each with its seeds in the order given."""
        order = {name: index for index, name in enumerate(self.recipes)}
        seeds = {seed: index for index, seed in enumerate(self.seeds)}
        return sorted(self.runs, key=lambda run: (order[run.recipe], seeds[run.seed]))


def _recipe_file(item: str) -> Path:
    if item.endswith((".yaml", ".yml")):
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {item} does not exist")
        return path
    known = available_recipes()
    if item not in known:
        raise ValueError(f"unknown recipe {item!r}; available in {recipes_dir()}: {', '.join(known) or '(none)'}")
    return recipes_dir() / f"{item}.yaml"


def _selector(path: Path) -> list[str]:
    if path.parent == recipes_dir() and path.stem in available_recipes():
        return ["--recipe", path.stem]
    return ["--config", str(path)]


def _resolve(path: str | os.PathLike) -> Path:
    return (Path.cwd() / Path(path).expanduser()).resolve()


def _looks_local(value: str) -> bool:
    """Whether ``model_name_or_path`` names a local folder rather than a Hub id (``org/name``)."""
    if value.startswith(("/", "./", "../", "~", ".\\")) or Path(value).expanduser().exists():
        return True
    if value.count("/") >= 2:  # outputs/a/b: no Hub id has two slashes
        return True
    first = value.split("/", 1)[0]
    return "/" in value and Path(first).is_dir()  # outputs/x with an outputs/ folder here


def _starting_folder(source: str | None) -> Path | None:
    return _resolve(source) if source and _looks_local(source) else None


def _recipe_outputs(folders: Sequence[Path]) -> dict[Path, Path]:
    """Resolved output_dir → recipe file, for the recipes in ``folders`` (output_dir cannot be overridden)."""
    made: dict[Path, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            try:
                values = read_recipe_file(path)
            except Exception:  # a broken file that no run uses is not this benchmark's concern
                continue
            output = values.get("output_dir") or str(Path("outputs") / path.stem)
            made.setdefault(_resolve(output), path)
    return made


def plan(recipes: Sequence[str], seeds: Sequence[int], output: str | os.PathLike, overrides: Sequence[str] = (),
         accelerate_config: str | os.PathLike | None = None) -> Plan:
    """Resolve the recipes, check every run's arguments and find the prerequisite runs; nothing runs or is
    written. Raises ValueError/FileNotFoundError on anything that would make a run fail at its start."""
    overrides = list(overrides)
    if not recipes:
        raise ValueError("--recipes is empty")
    if not seeds:
        raise ValueError("--seeds is empty")
    check_overrides(overrides)
    config = None
    if accelerate_config is not None:
        config = Path(accelerate_config).expanduser().resolve()
        if not config.is_file():
            raise FileNotFoundError(f"accelerate config {accelerate_config} does not exist")
    output = Path(output).expanduser().resolve()

    files = [_recipe_file(item) for item in recipes]
    names = [path.stem for path in files]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"two recipes are named {', '.join(clashes)} (a .yaml file is named by its stem): "
                         f"their run folders would be the same")
    parsed = {name: _validated_recipe(_selector(path), overrides, name)
              for name, path in zip(names, files, strict=True)}

    result = Plan(output=output, recipes=names, seeds=list(seeds), runs=[], overrides=overrides,
                  accelerate_config=config)
    prerequisites: dict[Path, Prerequisite] = {}

    def require(name: str, path: Path, recipe, chain: tuple[str, ...]) -> list[Path]:
        """The prerequisite output folders ``recipe`` needs (planning the runs that make them)."""
        source = recipe.model.model_name_or_path
        if source is None:
            return []
        target = _resolve(source)
        folders = [path.parent] + ([recipes_dir()] if path.parent != recipes_dir() else [])
        made = _recipe_outputs(folders)
        maker = made.get(target)
        if maker is None or maker == path:
            if (target / RUN_INFO).is_file() or target.exists() or not _looks_local(source):
                return []  # a model folder made elsewhere, or a Hub id
            raise FileNotFoundError(f"recipe {name} starts from {source} (model_name_or_path), which does not exist "
                                    f"and which no recipe in {', '.join(map(str, folders))} writes (output_dir)")
        if maker.stem in chain:
            raise ValueError(f"recipes start from each other's output in a circle: {' -> '.join(chain)} -> "
                             f"{maker.stem}")
        if target in prerequisites:
            prerequisites[target].needed_by.append(name)
            return [target]
        made_by = _validated_recipe(_selector(maker), overrides, maker.stem)
        deeper = require(maker.stem, maker, made_by, (*chain, maker.stem))
        run = Run(maker.stem, maker, None, _resolve(made_by.training.output_dir),
                  output / "logs" / f"prerequisite-{maker.stem}.log", overrides, config, made_by.model.family,
                  made_by.model.variant or "", made_by.policy.freeze_policy, prerequisite=True,
                  starts_from=_starting_folder(made_by.model.model_name_or_path))
        prerequisites[target] = Prerequisite(run, source, [name])
        result.depends_on[maker.stem] = deeper
        return [target]

    for name, path in zip(names, files, strict=True):
        result.depends_on[name] = require(name, path, parsed[name], (name,))
    result.prerequisites = list(prerequisites.values())

    for seed in seeds:
        for name, path in zip(names, files, strict=True):
            recipe = parsed[name]
            starts_from = _starting_folder(recipe.model.model_name_or_path)
            result.runs.append(Run(
                name, path, seed, output / "runs" / name / f"seed{seed}", output / "logs" / f"{name}-seed{seed}.log",
                overrides, config, recipe.model.family, recipe.model.variant or "", recipe.policy.freeze_policy,
                starts_from=starts_from,
            ))
    return result


# --- run ----------------------------------------------------------------------------------------------------------

def launch_run(run: Run) -> int:
    """Run one training job under ``accelerate launch``, its stdout and stderr into ``run.log``; its exit status.

    The job gets its own process group: an interrupted benchmark (Ctrl-C) stops the whole job — accelerate and the
    training processes it started — instead of leaving workers running on the GPUs."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(run.command)}\n\n")
        log.flush()
        process = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            return process.wait()
        except BaseException:
            stop_process_group(process)
            raise


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


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_state(run: Run) -> tuple[str, str]:
    """``("finished", "")``, ``("new", "")`` or ``("stale", why)`` for a run folder that must be run again."""
    folder = run.output_dir
    if not folder.exists():
        return "new", ""
    recorded = _read_json(folder / BENCHMARK_RUN)
    if not (folder / RUN_INFO).is_file() or recorded is None:
        return "stale", "its folder exists but the run did not finish"
    changes = _changes(run, recorded)
    if changes:
        return "stale", "its settings changed: " + "; ".join(changes)
    return "finished", ""


def _changes(run: Run, recorded: dict[str, Any]) -> list[str]:
    """How ``run``'s settings now differ from the ``recorded`` ones (a starting folder that is gone is no change:
    there is nothing to compare)."""
    current = run.settings()
    changed = [key for key in SETTINGS if recorded.get(key) != current[key]
               and not (key == "starts_from_sha256" and current[key] is None)]
    described = {"recipe_sha256": "the recipe file changed", "accelerate_config_sha256": "the accelerate config "
                 "changed", "starts_from_sha256": f"the weights it starts from ({run.starts_from}) changed"}
    return [described.get(key, f"{key} {recorded.get(key)!r} → {current[key]!r}") for key in changed]


def prerequisite_state(run: Run) -> tuple[str, str]:
    """``("ready", "")`` for a prerequisite folder with a finished model that the benchmark made with the current
    settings, or that was made outside the benchmark (taken as it is); else ``("missing" | "stale", why)``."""
    if not (run.output_dir / RUN_INFO).is_file():
        return "missing", "it holds no finished model"
    recorded = _read_json(run.output_dir / BENCHMARK_RUN)
    if recorded is None:
        return "ready", ""
    changes = _changes(run, recorded)
    return ("stale", "it was trained with other settings: " + "; ".join(changes)) if changes else ("ready", "")


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
    if starts and any("accelerate" in line and "launch" in line for line in kept[starts[-1]:]) \
            and "CalledProcessError" in kept[-1] and starts[-1] > 0:
        kept = kept[:starts[-1]]
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
    elif code == 0 and not run.prerequisite and not (run.output_dir / METRICS).is_file():
        reason = f"it exited 0 but wrote no {METRICS} in {run.output_dir}"
    elif code == 0:
        return True, seconds
    elif code is not None:
        reason = f"exit status {code}"
    echo(f"    failed after {human_seconds(seconds)} ({reason}); last lines of {run.log}:")
    for line in _log_tail(run.log):
        echo(f"    | {line}")
    return False, seconds


def _mean_auroc(folder: Path) -> str:
    metrics = _read_json(folder / METRICS) or {}
    value = metrics.get("mean_auroc")
    return f"mean AUROC {value:.4f}" if isinstance(value, int | float) else "mean AUROC n/a"


def _record(run: Run, settings: dict[str, Any], seconds: float) -> None:
    """``benchmark_run.json`` in the run's folder: the settings it ran with, its wall time and command."""
    record = {**settings, "wall_seconds": seconds, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(run.command)}
    write_text(run.output_dir / BENCHMARK_RUN, json.dumps(record, indent=2) + "\n")


def execute(the_plan: Plan, launcher: Launcher | None = None, echo: Echo = print) -> dict[tuple[str, int], str]:
    """Run the prerequisites that are missing, then every grid run that is not finished; returns
    ``(recipe, seed) → "finished" | "skipped" | "failed"``. A failed run does not stop the others."""
    launcher = launcher or launch_run
    # a prerequisite is needed while a run that starts from it (directly or through another one) is not finished
    needed = {run.recipe for run in the_plan.runs if run_state(run)[0] != "finished"}
    for prerequisite in reversed(the_plan.prerequisites):  # dependents before what they start from
        if needed.intersection(prerequisite.needed_by):
            needed.add(prerequisite.run.recipe)
    blocked: set[Path] = set()  # prerequisite outputs that could not be made
    for prerequisite in the_plan.prerequisites:
        run = prerequisite.run
        state, why = prerequisite_state(run)
        if state == "ready":
            continue
        users = ", ".join(prerequisite.needed_by)
        if run.recipe not in needed:
            echo(f"{run.recipe} ({prerequisite.path}): {why}, but every run that starts from it has finished: "
                 f"not trained")
            continue
        missing = [path for path in the_plan.depends_on.get(run.recipe, []) if path in blocked]
        if missing:
            echo(f"{run.recipe} is not trained: it starts from {missing[0]}, which failed")
            blocked.add(_resolve(prerequisite.path))
            continue
        verb = "starts" if len(prerequisite.needed_by) == 1 else "start"
        echo(f"{users} {verb} from {prerequisite.path}, made by recipe {run.recipe}; {why}: training it first "
             f"(log: {run.log})")
        for stale in (RUN_INFO, BENCHMARK_RUN):  # a failed retraining must not leave the folder looking finished
            (run.output_dir / stale).unlink(missing_ok=True)
        settings = run.settings()
        finished, seconds = _launch(run, launcher, echo)
        if finished:
            _record(run, settings, seconds)
            echo(f"    {run.recipe} finished in {human_seconds(seconds)}, {_mean_auroc(run.output_dir)}")
        else:
            blocked.add(_resolve(prerequisite.path))

    statuses: dict[tuple[str, int], str] = {}
    total = len(the_plan.runs)
    for index, run in enumerate(the_plan.runs, start=1):
        head = f"[{index}/{total}] {run.title}"
        state, why = run_state(run)
        if state == "finished":
            statuses[run.recipe, run.seed] = "skipped"
            echo(f"{head}: finished before, skipped ({_mean_auroc(run.output_dir)})")
            continue
        missing = [path for path in the_plan.depends_on.get(run.recipe, []) if path in blocked]
        if missing:
            statuses[run.recipe, run.seed] = "failed"
            echo(f"{head}: not run: it starts from {missing[0]}, whose prerequisite run failed")
            continue
        if state == "stale":
            echo(f"{head}: {why}: deleting {run.output_dir} and running it again")
            shutil.rmtree(run.output_dir)
        echo(f"{head} … (log: {run.log})")
        settings = run.settings()  # as launched: a recipe edited while it runs makes the run stale next time
        finished, seconds = _launch(run, launcher, echo)
        if finished:
            _record(run, settings, seconds)
            statuses[run.recipe, run.seed] = "finished"
            echo(f"{head}: finished in {human_seconds(seconds)}, {_mean_auroc(run.output_dir)}")
        else:
            statuses[run.recipe, run.seed] = "failed"
    return statuses


# --- collect and write ------------------------------------------------------------------------------------------

def auroc_column(label: str) -> str:
    return f"auroc_{label}"


COLUMNS = (
    "recipe", "seed", "status", "family", "variant", "freeze_policy", "mean_auroc", "mean_auroc_ci_low",
    "mean_auroc_ci_high", *(auroc_column(label) for label in COMPETITION_LABELS), "trainable_parameters",
    "total_parameters", "trainable_share", "wall_seconds", "train_seconds", "train_images_per_second",
    "feature_extraction_seconds", "peak_memory_mib", "peak_memory_kind", "precision", "world_size", "hardware",
    "run_dir", "log",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def collect(the_plan: Plan) -> list[dict[str, Any]]:
    """One row per grid run (recipe by recipe), read from its folder: ``status`` is ``finished`` when the run
    folder is finished (``run_info.json`` and ``benchmark_run.json`` with the current settings), else ``failed``."""
    rows = []
    for run in the_plan.grid():
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(recipe=run.recipe, seed=run.seed, status="failed", family=run.family, variant=run.variant or None,
                   freeze_policy=run.freeze_policy, run_dir=os.path.relpath(run.output_dir, the_plan.output),
                   log=os.path.relpath(run.log, the_plan.output))
        info = _read_json(run.output_dir / RUN_INFO)
        metrics = _read_json(run.output_dir / METRICS)
        record = _read_json(run.output_dir / BENCHMARK_RUN)
        if run_state(run)[0] == "finished" and info is not None and metrics is not None:
            row["status"] = "finished"
            for key in ("family", "variant", "freeze_policy", "trainable_parameters", "total_parameters",
                        "trainable_share", "train_seconds", "train_images_per_second", "feature_extraction_seconds",
                        "peak_memory_mib", "peak_memory_kind", "precision", "world_size", "hardware"):
                if key in info:
                    row[key] = info[key]
            row["mean_auroc"] = _number(metrics.get("mean_auroc"))
            interval = metrics.get("mean_auroc_ci95") or [None, None]
            row["mean_auroc_ci_low"], row["mean_auroc_ci_high"] = (_number(value) for value in interval[:2])
            per_label = metrics.get("per_label") or {}
            for label in COMPETITION_LABELS:
                row[auroc_column(label)] = _number((per_label.get(label) or {}).get("auroc"))
            row["wall_seconds"] = _number((record or {}).get("wall_seconds"))
        rows.append(row)
    return rows


def _spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None with fewer than 2 values)."""
    if not values:
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def mean_std_text(values: Sequence[float]) -> str:
    """``0.8123 ± 0.0101`` (mean ± sample std); one value: ``0.8123``; none: ``—``."""
    mean, std = _spread([value for value in values if value is not None])
    if mean is None:
        return "—"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _clearly_better(first: tuple[str, float, float | None], second: tuple[str, float, float | None]) -> bool:
    """``first``'s mean beats ``second``'s by at least the larger of their seed standard deviations (by anything
    when either spread is unknown)."""
    gap = first[1] - second[1]
    if first[2] is None or second[2] is None:
        return gap > 0
    return gap > 0 and gap >= max(first[2], second[2])


def rank_recipes(stats: Sequence[tuple[str, float | None, float | None]]) -> list[tuple[str, str]]:
    """``(recipe, mean, std)`` → ``(recipe, rank)``, best mean first. A recipe's rank is 1 + the number of recipes
    clearly better than it — ahead by at least the larger of the two seed standard deviations — so recipes whose
    means differ by less than their seed spread tie, without chaining (0.90, 0.89, 0.88 with spread 0.015 rank
    =1, =1, 2: the first and last differ by more than the spread). A shared rank shows ``=`` (``=1``); without a
    known spread (one seed) any difference counts. No mean: rank ``—``."""
    ranked = sorted((item for item in stats if item[1] is not None), key=lambda item: -item[1])
    ranks = [1 + sum(_clearly_better(other, item) for other in ranked) for item in ranked]
    result = [(item[0], f"={rank}" if ranks.count(rank) > 1 else str(rank)) for item, rank in zip(ranked, ranks,
                                                                                                 strict=True)]
    return result + [(item[0], "—") for item in stats if item[1] is None]


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [value for value in values if _number(value) is not None]
    return float(np.mean(numbers)) if numbers else None


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.3g} %"


def summary_rows(rows: Sequence[dict[str, Any]], recipes: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per recipe (best first): the numbers of ``results.md``."""
    entries = []
    for name in recipes:
        mine = [row for row in rows if row["recipe"] == name]
        done = [row for row in mine if row["status"] == "finished"]
        means = [row["mean_auroc"] for row in done if row["mean_auroc"] is not None]
        mean, std = _spread(means)
        first = (done or mine or [{}])[0]
        entries.append({
            "recipe": name, "family": first.get("family") or "", "variant": first.get("variant") or "",
            "freeze_policy": first.get("freeze_policy") or "", "mean": mean, "std": std, "means": means,
            "labels": {label: [row[auroc_column(label)] for row in done] for label in COMPETITION_LABELS},
            "wall_seconds": _mean([row["wall_seconds"] for row in done]),
            "images_per_second": _mean([row["train_images_per_second"] for row in done]),
            "trainable_share": _mean([row["trainable_share"] for row in done]),
            "finished": len(done), "runs": len(mine),
        })
    ranked = rank_recipes([(entry["recipe"], entry["mean"], entry["std"]) for entry in entries])
    order = {name: index for index, (name, _) in enumerate(ranked)}
    for entry in entries:
        entry["rank"] = ranked[order[entry["recipe"]]][1]
    return sorted(entries, key=lambda entry: order[entry["recipe"]])


def results_markdown(rows: Sequence[dict[str, Any]], recipes: Sequence[str], seeds: Sequence[int],
                     command: str) -> str:
    entries = summary_rows(rows, recipes)
    hardware = sorted({row["hardware"] for row in rows if row["status"] == "finished" and row["hardware"]})
    finished = sum(row["status"] == "finished" for row in rows)
    lines = [
        "# CheXpert benchmark", "",
        f"- command: `{command}`",
        f"- machine: {'; '.join(hardware) or 'unknown (no run finished)'}",
        f"- seeds: {', '.join(map(str, seeds))}; {finished} of {len(rows)} runs finished",
        "- mean AUROC: over the 5 competition labels, on the validation split, per run; then over the seeds",
        "",
    ]
    header = ["rank", "recipe", "family (variant)", "strategy", "mean AUROC", *COMPETITION_LABELS, "wall time / run",
              "train images/s", "trainable", "seeds"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---:", "---", "---", "---", "---:"] + ["---:"] * (len(COMPETITION_LABELS) + 4))
                 + "|")
    for entry in entries:
        model = f"{entry['family']} ({entry['variant']})" if entry["variant"] else entry["family"]
        speed = entry["images_per_second"]
        cells = [entry["rank"], f"`{entry['recipe']}`", model, entry["freeze_policy"], mean_std_text(entry["means"]),
                 *(mean_std_text(entry["labels"][label]) for label in COMPETITION_LABELS),
                 human_seconds(entry["wall_seconds"]), "—" if speed is None else f"{speed:,.0f}",
                 _percent(entry["trainable_share"]), f"{entry['finished']}/{entry['runs']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "± is the sample standard deviation (ddof = 1) over the finished seeds; without ± only one seed finished. "
        "Rows are in order of mean AUROC over seeds; a recipe's rank is 1 + the number of recipes clearly better "
        "than it, ahead by at least the larger of the two seed standard deviations, so recipes closer than their "
        "seed spread tie: they share a rank, marked `=` (=1, =1, 3). Wall time is per run (launch to exit, data "
        "preparation and evaluation included); images/s counts training steps only.",
    ]
    unjudged = [entry["recipe"] for entry in entries if entry["mean"] is not None and entry["std"] is None]
    if unjudged:
        lines += ["", f"Note: {', '.join(f'`{name}`' for name in unjudged)} finished fewer than 2 seeds, so no spread "
                  "is known and no tie is judged for them."]
    failed = [row for row in rows if row["status"] != "finished"]
    if failed:
        lines += ["", "Failed runs (not in the means):", ""]
        lines += [f"- `{row['recipe']}` seed {row['seed']}: log `{row['log']}`" for row in failed]
    lines += ["", f"![mean AUROC by model and strategy]({FIGURE})", ""]
    return "\n".join(lines)


def strategy_figure(rows: Sequence[dict[str, Any]], recipes: Sequence[str]):
    """Grouped bars: one group per family (variant), one bar per strategy (head, last_block, full), height the
    mean over seeds of mean AUROC, error bar the seeds' standard deviation. A Figure (no pyplot state)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    groups: dict[str, dict[str, tuple[float, float | None]]] = {}
    for entry in summary_rows(rows, recipes):
        if entry["mean"] is None:
            continue
        group = f"{entry['family']} ({entry['variant']})" if entry["variant"] else entry["family"]
        if entry["freeze_policy"] in groups.get(group, {}):
            group = f"{group}: {entry['recipe']}"  # two recipes with one model and strategy: keep both
        groups.setdefault(group, {})[entry["freeze_policy"]] = (entry["mean"], entry["std"])
    strategies = [policy for policy in POLICIES if any(policy in bars for bars in groups.values())]
    figure = Figure(figsize=(max(6.0, 1.5 + 0.8 * len(groups) * max(1, len(strategies))), 4.8), dpi=120)
    axes = figure.add_subplot()
    width = min(0.8 / max(1, len(strategies)), 0.3)
    lowest = 1.0
    for offset, policy in enumerate(strategies):
        xs, heights, errors = [], [], []
        for index, bars in enumerate(groups.values()):
            if policy in bars:
                mean, std = bars[policy]
                xs.append(index + width * (offset - (len(strategies) - 1) / 2))
                heights.append(mean)
                errors.append(std if std is not None else 0.0)
                lowest = min(lowest, mean - (std or 0.0))
        has_error = any(error > 0 for error in errors)
        bars = axes.bar(xs, heights, width * 0.92, yerr=errors if has_error else None, capsize=4, label=policy,
                        color=f"C{POLICIES.index(policy)}")
        axes.bar_label(bars, labels=[f"{height:.3f}" for height in heights], label_type="center", fontsize=8,
                       color="white")
    axes.set_xticks(range(len(groups)), list(groups), fontsize=9)
    axes.set_xlim(-0.6, max(1, len(groups)) - 0.4)
    bottom = 0.5 if lowest >= 0.55 else 0.0  # chance level, when every bar is above it
    axes.set_ylim(bottom, 1.0)
    axes.set_ylabel("mean AUROC (5 competition labels)")
    axes.set_title("Mean AUROC by model and fine-tuning strategy (error bars: std over seeds)", fontsize=9)
    if strategies:
        axes.legend(title="strategy", fontsize=8, title_fontsize=8, loc="lower right")
    else:
        axes.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes.transAxes)
    axes.grid(axis="y", linewidth=0.4, alpha=0.6)
    figure.tight_layout()
    return figure


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(COLUMNS)).to_csv(index=False)


def write_results(output: str | os.PathLike, rows: Sequence[dict[str, Any]], *, recipes: Sequence[str],
                  seeds: Sequence[int], command: str) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``auroc_by_strategy.png`` into ``output``; returns their paths."""
    output = Path(output)
    paths = {name: output / name for name in (RESULTS_CSV, RESULTS_MD, FIGURE)}
    write_text(paths[RESULTS_CSV], results_csv(rows))
    write_text(paths[RESULTS_MD], results_markdown(rows, recipes, seeds, command))
    figure = strategy_figure(rows, recipes)
    atomic_write(paths[FIGURE], lambda name: figure.savefig(name, format="png"))
    return paths


# --- the command ----------------------------------------------------------------------------------------------

def benchmark(recipes: Sequence[str], seeds: Sequence[int], output: str | os.PathLike, overrides: Sequence[str] = (),
              accelerate_config: str | os.PathLike | None = None, *, command: str = "",
              launcher: Launcher | None = None, echo: Echo = print) -> int:
    """Plan, run what is not finished, collect and write the results; 0 when every grid run finished, else 1."""
    the_plan = plan(recipes, seeds, output, overrides, accelerate_config)
    skipped = sum(run_state(run)[0] == "finished" for run in the_plan.runs)
    echo(f"benchmark: {len(the_plan.recipes)} recipe(s) × {len(the_plan.seeds)} seed(s) = {len(the_plan.runs)} "
         f"runs into {the_plan.output}" + (f" ({skipped} finished before)" if skipped else ""))
    interrupted = False
    try:
        execute(the_plan, launcher=launcher, echo=echo)
    except KeyboardInterrupt:
        interrupted = True
        echo("benchmark: interrupted; the run in progress was stopped. Run the same command again to resume: "
             "finished runs are skipped")
    rows = collect(the_plan)
    paths = write_results(the_plan.output, rows, recipes=the_plan.recipes, seeds=the_plan.seeds,
                          command=command or "chexpert-hf benchmark")
    failed = sum(row["status"] != "finished" for row in rows)
    echo(f"benchmark: {len(rows) - failed} of {len(rows)} runs finished"
         + (f", {failed} {'not finished' if interrupted else 'failed'}" if failed else "")
         + f"; wrote {', '.join(str(path) for path in paths.values())}")
    if interrupted:
        return 130
    return 1 if failed else 0
