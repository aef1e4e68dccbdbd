"""``chexpert-hf benchmark``: aggregation, ties, resuming, prerequisite runs, bad input (with a fake launcher), and
one real grid under ``accelerate launch``."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from chexpert_hf.benchmark import launch, plan, results
from chexpert_hf.benchmark.grid import benchmark
from chexpert_hf.cli.main import main
from chexpert_hf.evaluation.evaluate import score_predictions
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models.tiny import tiny_config

OFFSETS = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])  # per label, around a run's mean: the mean stays exact
# (recipe → mean AUROC per seed 0, 1, 2): full and last_block tie (0.83 vs 0.82, stds 0.03 and 0.005), head does not
MEANS = {"tiny_full": [0.80, 0.83, 0.86], "tiny_last_block": [0.815, 0.82, 0.825], "tiny_head": [0.70, 0.71, 0.72]}
PARAMETERS = {"head": 165, "last_block": 5000, "full": 15525}


def write_recipe(folder: Path, name: str, **fields) -> Path:
    values = {"family": "vit", "from_scratch": True, "freeze_policy": "full", "use_cpu": True, "report_to": "none"}
    values.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def recipes(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "recipes"
    return {name: write_recipe(folder, name, freeze_policy=name.removeprefix("tiny_")) for name in MEANS}


def label_aurocs(run: plan.Run) -> np.ndarray:
    """A run's per-label AUROC: its seed's mean plus a seed-dependent spread per label."""
    mean = MEANS.get(run.recipe, [0.75] * 3)[run.seed]
    return mean + OFFSETS * (1 + run.seed)


class FakeLauncher:
    """Writes what the training job would (metrics.json, run_info.json) with known numbers; ``fail`` runs exit 1
    after leaving a partial folder."""

    def __init__(self, fail=()):
        self.calls: list[plan.Run] = []
        self.fail = set(fail)

    def __call__(self, run: plan.Run) -> int:
        self.calls.append(run)
        folder = run.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        run.log.parent.mkdir(parents=True, exist_ok=True)
        if (run.recipe, run.seed) in self.fail:
            (folder / "checkpoint-1").mkdir(exist_ok=True)
            run.log.write_text("".join(f"step {step}\n" for step in range(40)) + "RuntimeError: out of memory\n")
            return 1
        run.log.write_text("fake run\n")
        policy = run.freeze_policy
        info = {
            "recipe": run.recipe,
            "family": "vit",
            "variant": "base",
            "freeze_policy": policy,
            "seed": run.seed,
            "trainable_parameters": PARAMETERS[policy],
            "total_parameters": 15525,
            "trainable_share": PARAMETERS[policy] / 15525,
            "train_seconds": 12.5,
            "train_images_per_second": 400.0,
            "feature_extraction_seconds": None,
            "peak_memory_mib": 900.0,
            "peak_memory_kind": "cpu_peak_rss",
            "precision": "fp32",
            "world_size": 1,
            "hardware": "CPU (fake), 1 process(es) × 2 thread(s)",
        }
        (folder / "run_info.json").write_text(json.dumps(info))
        if run.prerequisite:
            (folder / "model.safetensors").write_bytes(b"weights of " + run.recipe.encode())
            return 0
        aurocs = label_aurocs(run)
        metrics = {
            "mean_auroc": float(aurocs.mean()),
            "mean_auroc_ci95": [float(aurocs.mean()) - 0.05, 0.99],
            "mean_auroc_all": float(aurocs.mean()),
            "skipped_labels": [],
            "n_studies": 200,
            "per_label": {
                label: {
                    "auroc": float(value),
                    "auroc_ci95": [0.5, 1.0],
                    "auprc": 0.5,
                    "positives": 10,
                    "negatives": 190,
                }
                for label, value in zip(COMPETITION_LABELS, aurocs, strict=True)
            },
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
        write_validation(folder, run)
        return 0


STUDIES = 120
STRENGTH = {"tiny_full": 2.0, "tiny_last_block": 1.8, "tiny_head": 0.6}  # how well a recipe's scores separate
CURVES = {"tiny_full": [0.80, 0.86, 0.83], "tiny_last_block": [0.78, 0.81, 0.82], "tiny_head": [0.70, 0.71, 0.72]}


def validation_truth() -> np.ndarray:
    """The labels of the validation studies every fake run shares: (STUDIES, 5), both classes in every label."""
    truth = (np.random.default_rng(100).random((STUDIES, len(COMPETITION_LABELS))) < 0.4).astype(int)
    truth[:2] = [[0] * len(COMPETITION_LABELS), [1] * len(COMPETITION_LABELS)]
    return truth


def fake_scores(run: plan.Run) -> np.ndarray:
    rng = np.random.default_rng([run.seed, *run.recipe.encode()])
    return STRENGTH.get(run.recipe, 1.0) * validation_truth() + rng.normal(size=(STUDIES, len(COMPETITION_LABELS)))


def write_validation(folder: Path, run: plan.Run) -> None:
    """predictions.csv, validation_labels.csv and trainer_state.json as a training run leaves them."""
    paths = [f"CheXpert-v1.0-small/valid/patient{64541 + i:05d}/study1/view1_frontal.jpg" for i in range(STUDIES)]
    labels = pd.DataFrame(validation_truth(), columns=list(COMPETITION_LABELS))
    labels.insert(0, "Path", paths)
    labels.to_csv(folder / "validation_labels.csv", index=False)
    predictions = pd.DataFrame(fake_scores(run), columns=list(COMPETITION_LABELS))
    predictions.insert(0, "Path", paths)
    predictions.to_csv(folder / "predictions.csv", index=False)
    history = []
    for epoch, auroc in enumerate(CURVES.get(run.recipe, [0.75, 0.76]), start=1):
        history.append({"epoch": epoch - 0.5, "step": 10 * epoch - 5, "loss": 0.5 / epoch})
        history.append(
            {
                "epoch": float(epoch),
                "step": 10 * epoch,
                "eval_loss": 0.4 + 0.01 * epoch,
                "eval_mean_auroc": auroc + 0.001 * run.seed,
            }
        )
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))


def table_rows(markdown: str) -> dict[str, list[str]]:
    """results.md's table: recipe → its cells."""
    rows = {}
    for line in markdown.splitlines():
        match = re.match(r"\| [^|]* \| `([^`]+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip("|").split("|")]
    return rows


def test_results_aggregate_nine_runs_with_ties(tmp_path, recipes):
    fake = FakeLauncher()
    output = tmp_path / "bench"
    code = benchmark(
        [str(path) for path in recipes.values()],
        [0, 1, 2],
        output,
        ["--learning_rate", "0.01"],
        command="chexpert-hf benchmark --recipes ...",
        launcher=fake,
        echo=lambda line: None,
    )
    assert code == 0 and len(fake.calls) == 9
    # each run got its own seed and folder, through --config and the overrides
    first = fake.calls[0]
    assert first.command[first.command.index("--seed") + 1] == "0"
    assert first.command[-2:] == ["--learning_rate", "0.01"] and "--config" in first.command
    assert first.command[first.command.index("-m", 3) + 1] == "chexpert_hf.training.train"

    table = pd.read_csv(output / "results.csv")
    assert len(table) == 9 and set(table["status"]) == {"finished"}
    assert list(table["recipe"]) == [name for name in MEANS for _ in range(3)]  # recipe by recipe, seeds in order
    for row in table.itertuples(index=False):
        run = next(call for call in fake.calls if (call.recipe, call.seed) == (row.recipe, row.seed))
        aurocs = label_aurocs(run)
        assert row.mean_auroc == pytest.approx(aurocs.mean(), abs=1e-12)
        assert row.mean_auroc_ci_low == pytest.approx(aurocs.mean() - 0.05, abs=1e-12)
        assert row.mean_auroc_ci_high == 0.99
        assert row.freeze_policy == row.recipe.removeprefix("tiny_")
        assert row.trainable_parameters == PARAMETERS[row.freeze_policy]
        assert row.run_dir == f"runs/{row.recipe}/seed{row.seed}" and row.log == f"logs/{row.recipe}-seed{row.seed}.log"
        assert row.wall_seconds >= 0 and row.hardware.startswith("CPU (fake)")
    edema = table[table["recipe"] == "tiny_full"]["auroc_Edema"].to_numpy()
    assert np.allclose(edema, [MEANS["tiny_full"][seed] + 0.01 * (1 + seed) for seed in range(3)])

    markdown = (output / "results.md").read_text()
    rows = table_rows(markdown)
    assert list(rows) == ["tiny_full", "tiny_last_block", "tiny_head"]  # best first
    assert [rows[name][0] for name in rows] == ["=1", "=1", "3"]
    for name in ("tiny_full", "tiny_head"):
        means = np.array([label_aurocs(run).mean() for run in fake.calls if run.recipe == name])
        assert f"{means.mean():.4f} ± {means.std(ddof=1):.4f}" == rows[name][4]
        pleural = np.array([label_aurocs(run)[-1] for run in fake.calls if run.recipe == name])
        assert f"{pleural.mean():.4f} ± {pleural.std(ddof=1):.4f}" == rows[name][5 + len(COMPETITION_LABELS)]
    assert rows["tiny_head"][-1] == "3/3" and rows["tiny_head"][-2] == f"{165 / 15525 * 100:.3g} %"
    assert "chexpert-hf benchmark --recipes ..." in markdown and "CPU (fake)" in markdown
    assert "tie" in markdown and "ddof = 1" in markdown and "Failed runs" not in markdown

    # stability: from each run's trainer_state.json
    full = table[table["recipe"] == "tiny_full"]
    assert list(full["best_epoch"]) == [2.0] * 3 and list(full["epochs_evaluated"]) == [3] * 3
    assert np.allclose(full["peak_minus_last"], 0.03) and np.allclose(full["largest_drop"], 0.03)
    assert np.allclose(full["val_loss_last"], 0.43) and np.allclose(full["train_loss_best"], 0.25)
    head = table[table["recipe"] == "tiny_head"]
    assert np.allclose(head["peak_minus_last"], 0.0) and np.allclose(head["largest_drop"], 0.0)
    stability_rows = {
        match.group(1): line
        for line in markdown.split("## Stability")[1].splitlines()
        if (match := re.match(r"\| `([^`]+)` \|", line))
    }
    assert stability_rows["tiny_full"].startswith("| `tiny_full` | 2, 2, 2 | 0.8610 (0.8600–0.8620) |")

    # paired tests: every recipe's seed-averaged predictions against the best recipe's (tiny_full)
    assert rows["tiny_full"][5] == "reference"
    saved = json.loads((output / "compare.json").read_text())
    assert saved["reference"] == "tiny_full" and saved["n_studies"] == STUDIES
    mean_rows = {row["a"]: row for row in saved["comparisons"] if row["label"] == "mean"}
    truth = validation_truth()
    for name in ("tiny_last_block", "tiny_head"):
        averaged = {
            recipe: np.mean([fake_scores(run) for run in fake.calls if run.recipe == recipe], axis=0)
            for recipe in (name, "tiny_full")
        }
        direct = np.mean(
            [
                roc_auc_score(truth[:, column], averaged[name][:, column])
                - roc_auc_score(truth[:, column], averaged["tiny_full"][:, column])
                for column in range(len(COMPETITION_LABELS))
            ]
        )
        assert mean_rows[name]["difference"] == pytest.approx(direct, abs=1e-9)
        assert rows[name][5].startswith(f"{direct:+.4f} (p")
    assert mean_rows["tiny_head"]["verdict"] == "worse" and rows["tiny_head"][5].endswith("worse")
    assert "## Paired tests against the best recipe" in markdown and "Not computed" not in markdown
    assert (output / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"

    with Image.open(output / "auroc_by_strategy.png") as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        assert len(image.getcolors(1 << 16) or range(300)) > 20  # drawn, not blank


def test_ranks_follow_competition_ranking_and_need_two_seeds():
    ranked = results.rank_recipes(
        [("a", 0.90, 0.01), ("b", 0.85, 0.02), ("c", 0.84, 0.005), ("d", 0.70, 0.01), ("e", None, None)]
    )
    assert ranked == [("a", "1"), ("b", "=2"), ("c", "=2"), ("d", "4"), ("e", "—")]
    # 0.001 apart, but one seed each: no spread known, so no tie
    assert results.rank_recipes([("a", 0.801, None), ("b", 0.800, None)]) == [("a", "1"), ("b", "2")]
    # ties do not chain: the first and the last differ by more than the spread
    assert results.rank_recipes([("a", 0.90, 0.015), ("b", 0.89, 0.015), ("c", 0.88, 0.015)]) == [
        ("a", "=1"),
        ("b", "=1"),
        ("c", "2"),
    ]
    # a recipe with a wide spread ties with both neighbours, which do not tie with each other
    assert results.rank_recipes([("a", 0.900, 0.001), ("b", 0.895, 0.05), ("c", 0.880, 0.001)]) == [
        ("a", "=1"),
        ("b", "=1"),
        ("c", "2"),
    ]
    assert results.mean_std_text([0.8]) == "0.8000" and results.mean_std_text([]) == "—"
    assert launch.human_seconds(125) == "2 min 5 s" and launch.human_seconds(3725) == "1 h 2 min"


def test_one_seed_has_no_spread_and_says_so(tmp_path, recipes):
    output = tmp_path / "bench"
    assert (
        benchmark(
            [str(recipes["tiny_full"]), str(recipes["tiny_head"])],
            [1],
            output,
            launcher=FakeLauncher(),
            echo=lambda line: None,
        )
        == 0
    )
    markdown = (output / "results.md").read_text()
    rows = table_rows(markdown)
    assert "±" not in rows["tiny_full"][4] and rows["tiny_full"][4] == f"{MEANS['tiny_full'][1]:.4f}"
    assert "no tie is judged" in markdown


def test_resume_skips_finished_runs_and_reruns_failed_or_changed_ones(tmp_path, recipes, capsys):
    grid = [str(recipes["tiny_full"]), str(recipes["tiny_head"])]
    output = tmp_path / "bench"
    failing = FakeLauncher(fail={("tiny_head", 1)})
    assert benchmark(grid, [0, 1], output, launcher=failing) == 1  # a failed run: status 1 ...
    assert len(failing.calls) == 4  # ... after the other runs
    out = capsys.readouterr().out
    assert "[4/4] tiny_head seed 1" in out and "exit status 1" in out and "RuntimeError: out of memory" in out
    assert "step 19" not in out  # only the log's last lines
    table = pd.read_csv(output / "results.csv")
    assert table.set_index(["recipe", "seed"]).loc[("tiny_head", 1), "status"] == "failed"
    assert (table["status"] == "finished").sum() == 3
    assert "`tiny_head` seed 1: log `logs/tiny_head-seed1.log`" in (output / "results.md").read_text()
    assert (output / "runs" / "tiny_head" / "seed1" / "checkpoint-1").is_dir()

    again = FakeLauncher()
    assert benchmark(grid, [0, 1], output, launcher=again) == 0
    assert [(run.recipe, run.seed) for run in again.calls] == [("tiny_head", 1)]
    assert not (output / "runs" / "tiny_head" / "seed1" / "checkpoint-1").exists()  # rerun from scratch
    out = capsys.readouterr().out
    assert "finished before, skipped" in out and "did not finish" in out
    assert set(pd.read_csv(output / "results.csv")["status"]) == {"finished"}

    (output / "runs" / "tiny_full" / "seed0" / "run_info.json").unlink()  # an interrupted run
    with open(recipes["tiny_head"], "a") as handle:  # an edited recipe
        handle.write("learning_rate: 0.5\n")
    edited = FakeLauncher()
    assert benchmark(grid, [0, 1], output, launcher=edited) == 0
    assert sorted((run.recipe, run.seed) for run in edited.calls) == [
        ("tiny_full", 0),
        ("tiny_head", 0),
        ("tiny_head", 1),
    ]
    assert "the recipe file changed" in capsys.readouterr().out

    changed = FakeLauncher()  # other overrides: every run is another run
    assert benchmark(grid, [0, 1], output, ["--weight_decay", "0.1"], launcher=changed) == 0
    assert len(changed.calls) == 4
    assert "overrides [] → ['--weight_decay', '0.1']" in capsys.readouterr().out
    record = json.loads((output / "runs" / "tiny_full" / "seed1" / "benchmark_run.json").read_text())
    assert record["overrides"] == ["--weight_decay", "0.1"] and record["seed"] == 1
    assert record["recipe_sha256"] == plan.sha256_file(recipes["tiny_full"]) and record["accelerate_config"] is None
    assert record["wall_seconds"] >= 0


def test_a_run_recorded_under_the_old_module_path_is_still_finished(tmp_path, recipes):
    """Runs launched as ``-m chexpert_hf.train`` (before the stage subpackages) are the same runs: the command is
    recorded but is not one of the settings compared."""
    output = tmp_path / "bench"
    assert benchmark([str(recipes["tiny_head"])], [0], output, launcher=FakeLauncher(), echo=lambda line: None) == 0
    path = output / "runs" / "tiny_head" / "seed0" / "benchmark_run.json"
    record = json.loads(path.read_text())
    assert " -m chexpert_hf.training.train " in record["command"]
    record["command"] = record["command"].replace(" -m chexpert_hf.training.train ", " -m chexpert_hf.train ")
    path.write_text(json.dumps(record, indent=2) + "\n")

    the_plan = plan.plan([str(recipes["tiny_head"])], [0], output)
    assert [plan.run_state(run) for run in the_plan.runs] == [("finished", "")]
    again = FakeLauncher()
    assert benchmark([str(recipes["tiny_head"])], [0], output, launcher=again, echo=lambda line: None) == 0
    assert again.calls == [] and "command" not in plan.SETTINGS


def test_a_prerequisite_recipe_is_trained_once_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mine"
    write_recipe(folder, "pretrain", output_dir="./made/../made/pretrain")  # another spelling of made/pretrain
    finetune = write_recipe(
        folder, "finetune", from_scratch=False, model_name_or_path="made/pretrain", freeze_policy="head"
    )
    fake = FakeLauncher()
    output = tmp_path / "bench"
    assert benchmark([str(finetune)], [0, 1], output, launcher=fake) == 0
    assert [(run.recipe, run.prerequisite) for run in fake.calls] == [
        ("pretrain", True),
        ("finetune", False),
        ("finetune", False),
    ]
    first = fake.calls[0]
    assert "--seed" not in first.command and "--output_dir" not in first.command
    assert first.output_dir == tmp_path / "made" / "pretrain" and (first.output_dir / "run_info.json").is_file()
    assert (
        "finetune starts from made/pretrain, made by recipe pretrain; it holds no finished model: training it first"
    ) in capsys.readouterr().out
    assert list(pd.read_csv(output / "results.csv")["recipe"]) == ["finetune", "finetune"]

    # made/ did not exist when the grid was planned: the runs still recorded the weights they started from
    recorded = json.loads((output / "runs" / "finetune" / "seed0" / "benchmark_run.json").read_text())
    assert recorded["starts_from_sha256"] == plan._weights_sha256(first.output_dir) is not None

    again = FakeLauncher()  # the model exists now: neither it nor the finished runs run again
    assert benchmark([str(finetune)], [0, 1], output, launcher=again) == 0
    assert again.calls == []

    # a record from before that fix holds no hash: nothing to compare, the run is still finished
    record_path = output / "runs" / "finetune" / "seed0" / "benchmark_run.json"
    record_path.write_text(json.dumps({**recorded, "starts_from_sha256": None}))
    assert [plan.run_state(run)[0] for run in plan.plan([str(finetune)], [0, 1], output).runs] == ["finished"] * 2
    record_path.write_text(json.dumps(recorded))

    # new weights in the folder the runs started from: the runs are stale, the prerequisite (same settings) is not
    (first.output_dir / "model.safetensors").write_bytes(b"other weights")
    retrained = FakeLauncher()
    assert benchmark([str(finetune)], [0, 1], output, launcher=retrained) == 0
    assert [(run.recipe, run.seed) for run in retrained.calls] == [("finetune", 0), ("finetune", 1)]
    assert "the weights it starts from" in capsys.readouterr().out

    # other overrides: the prerequisite trained with the old ones is trained again before the runs
    other = FakeLauncher()
    assert benchmark([str(finetune)], [0], output, ["--num_train_epochs", "2"], launcher=other) == 0
    assert [(run.recipe, run.prerequisite) for run in other.calls] == [("pretrain", True), ("finetune", False)]
    assert "it was trained with other settings: overrides [] → ['--num_train_epochs', '2']" in capsys.readouterr().out

    # the prerequisite's folder removed after every run finished: nothing needs it, it is not trained again
    shutil.rmtree(first.output_dir)
    idle = FakeLauncher()
    assert benchmark([str(finetune)], [0], output, ["--num_train_epochs", "2"], launcher=idle) == 0
    assert idle.calls == [] and "every run that starts from it has finished: not trained" in capsys.readouterr().out


def test_a_missing_start_folder_that_no_recipe_makes_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    orphan = write_recipe(tmp_path / "mine", "orphan", from_scratch=False, model_name_or_path="./nowhere/model")
    fake = FakeLauncher()
    with pytest.raises(FileNotFoundError, match="nowhere/model"):
        benchmark([str(orphan)], [0], tmp_path / "bench", launcher=fake)
    assert fake.calls == [] and not (tmp_path / "bench").exists()
    assert main(["benchmark", "--recipes", str(orphan), "--output", str(tmp_path / "bench")]) == 2
    assert "no recipe in" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--recipes", "demo,no_such_recipe"], "unknown recipe 'no_such_recipe'; available in .*demo"),
        (["--recipes", "demo,demo"], "names demo more than once"),
        (["--recipes", "demo", "--seeds", "0,x"], "non-negative integers"),
        (["--recipes", "demo", "--seeds", "1,2,1"], "seed\\(s\\) 1 more than once"),
        (["--recipes", "demo", "--seeds", ""], "non-negative integers"),
        (
            ["--recipes", "demo", "--learning_rat", "0.1"],
            "recipe demo with the overrides --learning_rat 0.1: unknown field 'learning_rat'; "
            "did you mean 'learning_rate'",
        ),
        (["--recipes", "demo", "--num_train_epochs", "many"], "num_train_epochs.*invalid float value"),
        (["--recipes", "demo", "--freeze_policy", "most"], "unknown freeze policy 'most'"),
        (["--recipes", "demo", "--output_dir", "elsewhere"], "--output_dir cannot be overridden"),
        (["--recipes", "demo", "--seed=3"], "--seed cannot be overridden"),
        (["--recipes", "demo", "--accelerate-config", "missing.yaml"], "accelerate config missing.yaml does not exist"),
        (["--recipes", "missing.yaml"], "recipe file missing.yaml does not exist"),
    ],
)
def test_bad_input_is_a_one_line_error_before_anything_runs(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launch, "launch_run", lambda run: pytest.fail("nothing may run"))
    assert main(["benchmark", *arguments, "--output", str(tmp_path / "bench")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("chexpert-hf benchmark: error: ") and "\n" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "bench").exists()


TINY = [
    "--config_overrides",
    json.dumps(tiny_config("vit", num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)),
    "--image_size",
    "32",
    "--prepare_image_size",
    "32",
    "--synthetic_patients",
    "40",
    "--synthetic_valid_patients",
    "20",
    "--num_train_epochs",
    "1",
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--load_best_model_at_end",
    "false",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
]


def test_a_real_grid_under_accelerate_launch_then_a_rerun_that_launches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "bench"
    arguments = [
        "benchmark",
        "--recipes",
        "demo",
        "--seeds",
        "0,1",
        "--output",
        str(output),
        *TINY,
        "--data_cache_dir",
        str(tmp_path / "cache"),
    ]
    assert main(arguments) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "[1/2] demo seed 0" in out and "[2/2] demo seed 1: finished in" in out
    table = pd.read_csv(output / "results.csv")
    assert list(table["status"]) == ["finished", "finished"] and list(table["seed"]) == [0, 1]
    for seed in (0, 1):
        run = output / "runs" / "demo" / f"seed{seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        info = json.loads((run / "run_info.json").read_text())
        row = table[table["seed"] == seed].iloc[0]
        assert row["mean_auroc"] == pytest.approx(metrics["mean_auroc"], abs=1e-12)
        assert 0.0 <= row["mean_auroc"] <= 1.0
        assert row["auroc_Edema"] == pytest.approx(metrics["per_label"]["Edema"]["auroc"], abs=1e-12)
        assert info["seed"] == seed and row["trainable_parameters"] == info["trainable_parameters"]
        assert row["wall_seconds"] > 1 and row["peak_memory_kind"] == "cpu_peak_rss"
        log = (output / "logs" / f"demo-seed{seed}.log").read_text()
        assert shlex.join(["--seed", str(seed)]) in log.splitlines()[0]  # the command heads its log
        assert "were not passed" not in log  # accelerate got explicit single-process settings
        # the final validation's predictions and labels score again as the run scored itself
        scored, _ = score_predictions(run / "predictions.csv", run / "validation_labels.csv", n_bootstrap=0)
        assert scored.scores["mean_auroc"] == metrics["mean_auroc"]
        assert scored.scores["per_label"]["Edema"] == {
            key: value for key, value in metrics["per_label"]["Edema"].items() if key != "auroc_ci95"
        }
    assert "demo" in (output / "results.md").read_text()

    monkeypatch.setattr(launch, "launch_run", lambda run: pytest.fail(f"{run.title} ran again"))
    assert main(arguments) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 2

    # --explain on the finished grid: both seeds on the same images, scored against the synthetic lesion boxes
    assert main([*arguments, "--explain", "--explain_images", "12", "--explain_overlays", "none"]) == 0
    out = capsys.readouterr().out
    assert "benchmark: explain demo (attention_relevance, 2 seed(s)):" in out
    folder = output / "explain" / "demo"
    summary = json.loads((folder / "localization.json").read_text())
    assert summary["models"] == ["seed0", "seed1"]
    relevance = summary["methods"]["attention_relevance"]
    for index, seed in enumerate(("seed0", "seed1")):  # the summary holds each seed's own scores
        own = json.loads((folder / seed / "localization.json").read_text())["methods"]["attention_relevance"]
        assert own["hit_rate"] == relevance["overall"]["hit_rate"]["values"][index]
        assert own["randomization"]["spearman_mean"] == relevance["overall"]["spearman_vs_randomized"]["values"][index]
        assert not list((folder / seed).glob("*.png"))  # --explain_overlays none
    markdown = (output / "results.md").read_text()
    section = markdown[markdown.index("## Where the models look") :]
    hit = relevance["overall"]["hit_rate"]
    assert f"| `demo` | `attention_relevance` | 2 | {hit['mean']:.3f} ± {hit['std']:.3f} |" in section
    assert "--explain" in markdown.splitlines()[2]  # the command as run
    # unchanged runs and settings: the maps are not made again
    import chexpert_hf.explain.run as explain_run

    original = explain_run.explain_models
    monkeypatch.setattr(explain_run, "explain_models", lambda *a, **k: pytest.fail("explained again"))
    assert main([*arguments, "--explain", "--explain_images", "12", "--explain_overlays", "none"]) == 0
    assert section in (output / "results.md").read_text()
    monkeypatch.setattr(explain_run, "explain_models", original)  # other settings: explained again, replaced
    assert main([*arguments, "--explain", "--explain_images", "6", "--explain_overlays", "sheets"]) == 0
    assert "the first 6 frontal validation images" in (output / "results.md").read_text()
    assert len(list((folder / "seed0").glob("*__sheet.png"))) == 6
    assert main([*arguments, "--explain_images", "5"]) == 2  # an explain flag without --explain
    assert "--explain_images applies only with --explain" in capsys.readouterr().err


def test_a_recipe_that_cannot_be_explained_is_reported_and_the_tables_still_written(tmp_path, recipes, capsys):
    from chexpert_hf.benchmark.explain import ExplainSettings

    output = tmp_path / "bench"
    # the fake runs leave no weights: explaining them fails, one line per recipe, and results.md says why
    selected = [str(recipes["tiny_full"]), str(recipes["tiny_head"])]
    status = benchmark(selected, [0, 1], output, launcher=FakeLauncher(), explain=ExplainSettings(images=4))
    assert status == 0
    out = capsys.readouterr().out
    assert out.count("benchmark: could not explain") == 2
    markdown = (output / "results.md").read_text()
    assert "- `tiny_full`: not explained:" in markdown and "- `tiny_head`: not explained:" in markdown
    assert (output / "results.csv").is_file()
    with pytest.raises(ValueError, match="unknown --explain_method nope"):
        benchmark(selected, [0], output, launcher=FakeLauncher(), explain=ExplainSettings(methods=("nope",)))


def test_an_interrupted_benchmark_writes_what_finished_and_says_how_to_resume(recipes, tmp_path, capsys):
    class Interrupting(FakeLauncher):
        def __call__(self, run):
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return super().__call__(run)

    output = tmp_path / "bench"
    assert benchmark([str(recipes["tiny_full"])], [0, 1], output, launcher=Interrupting()) == 130
    table = pd.read_csv(output / "results.csv")
    assert list(table["status"]) == ["finished", "failed"]
    assert "Run the same command again to resume" in capsys.readouterr().out
    resumed = FakeLauncher()
    assert benchmark([str(recipes["tiny_full"])], [0, 1], output, launcher=resumed) == 0
    assert [run.seed for run in resumed.calls] == [1]


def test_stopping_a_run_stops_its_whole_process_group(tmp_path):
    import subprocess
    import sys
    import time

    # a leader that starts a child (in its group) and waits: what accelerate does with the training processes
    child_pid = tmp_path / "child.pid"
    script = (
        "import pathlib, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)']); "  # a worker that ignores Ctrl-C
        f"pathlib.Path({str(child_pid)!r}).write_text(str(child.pid)); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    for _ in range(100):
        if child_pid.is_file() and child_pid.read_text():
            break
        time.sleep(0.1)
    launch.stop_process_group(process, grace=1.0)
    assert process.poll() is not None
    time.sleep(0.3)
    status = Path(f"/proc/{child_pid.read_text()}/status")
    # gone, or a zombie waiting for init to reap it: either way no longer running
    assert not status.exists() or "State:\tZ" in status.read_text()


@pytest.mark.slow
def test_the_offline_demo_grid_end_to_end(tmp_path, monkeypatch, capsys):
    """The README's grid command on a small synthetic set, one epoch: demo_pretrain first, then the three strategies
    fine-tuning its checkpoint (about a minute on 2 CPUs)."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "bench"
    small = [
        "--synthetic_patients",
        "40",
        "--synthetic_valid_patients",
        "20",
        "--num_train_epochs",
        "2",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "epoch",
        "--load_best_model_at_end",
        "false",
        "--disable_tqdm",
        "true",
        "--data_cache_dir",
        str(tmp_path / "cache"),
    ]
    arguments = ["benchmark", "--recipes", "demo_head,demo_last_block,demo_full", "--output", str(output), *small]
    assert main(arguments) == 0, capsys.readouterr()
    assert "made by recipe demo_pretrain" in capsys.readouterr().out
    assert (tmp_path / "outputs" / "demo_pretrain" / "run_info.json").is_file()
    table = pd.read_csv(output / "results.csv").set_index("recipe")
    assert list(table["status"]) == ["finished"] * 3
    assert table.loc["demo_head", "feature_extraction_seconds"] > 0
    assert table.loc["demo_head", "trainable_share"] < table.loc["demo_last_block", "trainable_share"] < 1.0
    assert set(table["variant"]) == {"demo_pretrain"}
    markdown = (output / "results.md").read_text()
    assert all(f"`{name}`" in markdown for name in ("demo_head", "demo_last_block", "demo_full"))
    assert (output / "auroc_by_strategy.png").stat().st_size > 10_000
    # stability from the two evaluations of every run, and the paired tests against the best recipe
    assert list(table["epochs_evaluated"]) == [2] * 3 and set(table["best_epoch"]) <= {1.0, 2.0}
    assert (table["peak_minus_last"] >= 0).all() and (table["largest_drop"] >= 0).all()
    assert "## Stability over epochs" in markdown and "reference" in markdown and "Not computed" not in markdown
    assert (output / "learning_curves.png").stat().st_size > 10_000
    assert json.loads((output / "compare.json").read_text())["reference"] in table.index
    # two runs of the grid compared by the command
    head, full = output / "runs" / "demo_head" / "seed0", output / "runs" / "demo_full" / "seed0"
    assert main(["compare", str(head), str(full), "--groundtruth", str(head), "--output", str(tmp_path / "c")]) == 0
    assert "demo_head/seed0" in capsys.readouterr().out
    assert "| demo_head/seed0 | demo_full/seed0 | **mean of" in (tmp_path / "c" / "compare.md").read_text()
