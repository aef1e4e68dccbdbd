"""Planning a benchmark: recipes × seeds → runs, each run's settings, and whether its folder is finished.

A run is finished when its folder holds ``run_info.json`` (the training job writes it last) and
``benchmark_run.json`` (written after the run succeeded: the settings it ran with) and those settings are the
current ones (:data:`SETTINGS`; the launched command is recorded but is not one of them, so a run launched under
an older module path still counts). Nothing here runs or writes anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chexpert_hf.outputs import BENCHMARK_RUN, RUN_INFO
from chexpert_hf.training.arguments import available_recipes, parse_recipe, read_recipe_file, recipes_dir

# The fields the benchmark sets itself on every run (or, for --recipe/--config, chooses per run).
RESERVED = ("seed", "output_dir", "recipe", "config", "overwrite_output_dir")
# The settings that make two runs the same run: a change in any of them reruns the run. The command is not one:
# a run recorded as ``-m chexpert_hf.train`` (the module's old place) is the same run.
SETTINGS = (
    "recipe",
    "recipe_sha256",
    "seed",
    "overrides",
    "accelerate_config",
    "accelerate_config_sha256",
    "starts_from_sha256",
)
SINGLE_PROCESS = ("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")


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
            raise ValueError(
                f"{token.split('=', 1)[0]} cannot be overridden: the benchmark sets it for every run "
                f"(--seeds, --output for the run folders; a run it trains again replaces its folder)"
            )
        if name is not None:
            raise ValueError(f"{token.split('=', 1)[0]} cannot be given to the benchmark: use --recipes")


def _validated_recipe(selector: Sequence[str], overrides: Sequence[str], label: str):
    """``parse_recipe`` of the run's arguments; its one-line ValueError names the recipe and the overrides."""
    try:
        return parse_recipe([*selector, *overrides])
    except ValueError as error:
        shown = f" with the overrides {shlex.join(overrides)}" if overrides else ""
        raise ValueError(f"recipe {label}{shown}: {error}") from None


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
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES for this launch (--parallel); None: inherited

    @property
    def selector(self) -> list[str]:
        return _selector(self.recipe_file)

    @property
    def command(self) -> list[str]:
        launch = ["--config_file", str(self.accelerate_config)] if self.accelerate_config else list(SINGLE_PROCESS)
        placed = [] if self.prerequisite else ["--seed", str(self.seed), "--output_dir", str(self.output_dir)]
        # the benchmark decided to (re)train this run from scratch: a folder left by an unfinished or stale attempt
        # is replaced, not refused
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *launch,
            "-m",
            "chexpert_hf.training.train",
            *self.selector,
            *placed,
            "--overwrite_output_dir",
            "true",
            *self.overrides,
        ]

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


def resolve_path(path: str | os.PathLike) -> Path:
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
    return resolve_path(source) if source and _looks_local(source) else None


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
            made.setdefault(resolve_path(output), path)
    return made


def accelerate_processes(config: str | os.PathLike | None) -> int:
    """The processes one run starts: the accelerate config's ``num_processes`` (1 without a config; a config that
    gives none means one)."""
    if config is None:
        return 1
    import yaml

    try:
        values = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"accelerate config {config} cannot be read: {error}") from error
    values = values if isinstance(values, dict) else {}
    value = values.get("num_processes", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"accelerate config {config}: num_processes must be a positive integer, got {value!r}")
    if values.get("num_machines", 1) not in (1, None):
        raise ValueError(
            f"accelerate config {config} spans {values['num_machines']} machines: a benchmark run is one machine "
            "(for one multi-node training run under SLURM, see docs/cluster.md)"
        )
    return value


def plan(
    recipes: Sequence[str],
    seeds: Sequence[int],
    output: str | os.PathLike,
    overrides: Sequence[str] = (),
    accelerate_config: str | os.PathLike | None = None,
) -> Plan:
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
        raise ValueError(
            f"two recipes are named {', '.join(clashes)} (a .yaml file is named by its stem): "
            f"their run folders would be the same"
        )
    parsed = {
        name: _validated_recipe(_selector(path), overrides, name) for name, path in zip(names, files, strict=True)
    }

    finder = _PrerequisiteFinder(output, overrides, config)
    for name, path in zip(names, files, strict=True):
        finder.depends_on[name] = finder.require(name, path, parsed[name], (name,))
    result = Plan(
        output=output,
        recipes=names,
        seeds=list(seeds),
        runs=[],
        prerequisites=list(finder.found.values()),
        overrides=overrides,
        accelerate_config=config,
        depends_on=finder.depends_on,
    )
    for seed in seeds:
        for name, path in zip(names, files, strict=True):
            recipe = parsed[name]
            # a prerequisite's folder is local even before the first run makes it (and ``outputs/`` with it)
            made = finder.depends_on.get(name)
            starts_from = made[0] if made else _starting_folder(recipe.model.model_name_or_path)
            result.runs.append(
                Run(
                    name,
                    path,
                    seed,
                    output / "runs" / name / f"seed{seed}",
                    output / "logs" / f"{name}-seed{seed}.log",
                    overrides,
                    config,
                    recipe.model.family,
                    recipe.model.variant or "",
                    recipe.policy.freeze_policy,
                    starts_from=starts_from,
                )
            )
    return result


@dataclass
class _PrerequisiteFinder:
    """The prerequisite runs found so far while planning, and the prerequisite folders each recipe needs."""

    output: Path
    overrides: list[str]
    config: Path | None
    found: dict[Path, Prerequisite] = field(default_factory=dict)  # output folder -> the run that makes it
    depends_on: dict[str, list[Path]] = field(default_factory=dict)

    def require(self, name: str, path: Path, recipe, chain: tuple[str, ...]) -> list[Path]:
        """The prerequisite output folders ``recipe`` needs (planning the runs that make them)."""
        source = recipe.model.model_name_or_path
        if source is None:
            return []
        target = resolve_path(source)
        folders = [path.parent] + ([recipes_dir()] if path.parent != recipes_dir() else [])
        made = _recipe_outputs(folders)
        maker = made.get(target)
        if maker is None or maker == path:
            if (target / RUN_INFO).is_file() or target.exists() or not _looks_local(source):
                return []  # a model folder made elsewhere, or a Hub id
            raise FileNotFoundError(
                f"recipe {name} starts from {source} (model_name_or_path), which does not exist "
                f"and which no recipe in {', '.join(map(str, folders))} writes (output_dir)"
            )
        if maker.stem in chain:
            raise ValueError(
                f"recipes start from each other's output in a circle: {' -> '.join(chain)} -> {maker.stem}"
            )
        if target in self.found:
            self.found[target].needed_by.append(name)
            return [target]
        made_by = _validated_recipe(_selector(maker), self.overrides, maker.stem)
        deeper = self.require(maker.stem, maker, made_by, (*chain, maker.stem))
        run = Run(
            maker.stem,
            maker,
            None,
            resolve_path(made_by.training.output_dir),
            self.output / "logs" / f"prerequisite-{maker.stem}.log",
            self.overrides,
            self.config,
            made_by.model.family,
            made_by.model.variant or "",
            made_by.policy.freeze_policy,
            prerequisite=True,
            starts_from=deeper[0] if deeper else _starting_folder(made_by.model.model_name_or_path),
        )
        self.found[target] = Prerequisite(run, source, [name])
        self.depends_on[maker.stem] = deeper
        return [target]


# --- state ------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict | None:
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
    recorded = read_json(folder / BENCHMARK_RUN)
    if not (folder / RUN_INFO).is_file() or recorded is None:
        return "stale", "its folder exists but the run did not finish"
    changes = _changes(run, recorded)
    if changes:
        return "stale", "its settings changed: " + "; ".join(changes)
    return "finished", ""


def _changes(run: Run, recorded: dict[str, Any]) -> list[str]:
    """How ``run``'s settings now differ from the ``recorded`` ones. Starting weights without a hash on either side
    are no change, there is nothing to compare: a folder that is gone, or a record without the hash (earlier versions
    recorded none for a run whose prerequisite the same benchmark call had just trained)."""
    current = run.settings()
    changed = [
        key
        for key in SETTINGS
        if recorded.get(key) != current[key]
        and not (key == "starts_from_sha256" and None in (current[key], recorded.get(key)))
    ]
    described = {
        "recipe_sha256": "the recipe file changed",
        "accelerate_config_sha256": "the accelerate config changed",
        "starts_from_sha256": f"the weights it starts from ({run.starts_from}) changed",
    }
    return [described.get(key, f"{key} {recorded.get(key)!r} → {current[key]!r}") for key in changed]


def prerequisite_state(run: Run) -> tuple[str, str]:
    """``("ready", "")`` for a prerequisite folder with a finished model that the benchmark made with the current
    settings, or that was made outside the benchmark (taken as it is); else ``("missing" | "stale", why)``."""
    if not (run.output_dir / RUN_INFO).is_file():
        return "missing", "it holds no finished model"
    recorded = read_json(run.output_dir / BENCHMARK_RUN)
    if recorded is None:
        return "ready", ""
    changes = _changes(run, recorded)
    return ("stale", "it was trained with other settings: " + "; ".join(changes)) if changes else ("ready", "")
