"""The training job end to end: outputs, the data cache, resuming, and 2 processes under ``accelerate launch``."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_from_root, two_process_command
from safetensors.torch import load_file

from chexpert_hf.data import synthesize
from chexpert_hf.evaluation.metrics import snake_case
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models.tiny import tiny_config
from chexpert_hf.training.nonfinite import NonFiniteLossGuard
from chexpert_hf.training.train import main as train_main

TINY_VIT = tiny_config("vit", intermediate_size=64, num_channels=1)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    """A raw synthetic CheXpert tree (train.csv, valid.csv, JPEGs): 40 training and 30 validation patients."""
    return synthesize(tmp_path_factory.mktemp("raw"), 40, valid_patients=30, seed=11, progress=False).root


def tiny_recipe(tmp_path: Path, data_dir: Path, **fields) -> Path:
    values = {
        "family": "vit",
        "from_scratch": True,
        "config_overrides": TINY_VIT,
        "image_size": 32,
        "data_dir": str(data_dir),
        "data_cache_dir": str(tmp_path / "cache"),
        "prepare_image_size": 64,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "max_steps": 6,
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 3,
        "logging_steps": 1,
        "use_cpu": True,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "seed": 0,
        "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
    }
    values.update(fields)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_run_writes_every_output_and_reuses_the_prepared_cache(tmp_path, raw_root, caplog):
    recipe = tiny_recipe(tmp_path, raw_root, eval_strategy="steps", eval_steps=3)
    with caplog.at_level("INFO", logger="chexpert_hf"):
        assert train_main(["--config", str(recipe)]) == 0
    out = tmp_path / "out"
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "recipe.yaml",
        "eval_results.json",
        "all_results.json",
        "train_results.json",
        "trainer_state.json",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert list(config["id2label"].values()) == list(COMPETITION_LABELS)
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= results["eval_mean_auroc"] <= 1.0
    assert {f"eval_auroc_{snake_case(label)}" for label in COMPETITION_LABELS} <= results.keys()
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["max_steps"] == 6 and resolved["freeze_policy"] == "full"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and any("eval_mean_auroc" in entry for entry in state["log_history"])
    info = json.loads((out / "run_info.json").read_text())  # what the run cost, for chexpert-hf benchmark
    assert info["train_images"] == 6 * 16 and info["trainable_share"] == 1.0 and info["freeze_policy"] == "full"
    assert info["variant"] == "custom"  # a configuration with overrides is no ViT-B, whatever the default variant
    in_training = [entry["eval_runtime"] for entry in state["log_history"] if "eval_runtime" in entry][:2]
    assert len(in_training) == 2  # steps 3 and 6; the final evaluation after training is not counted
    assert info["eval_seconds_in_training"] == pytest.approx(sum(in_training))
    assert info["train_images_per_second"] == pytest.approx(96 / (info["train_seconds"] - sum(in_training)), rel=0.02)
    assert info["peak_memory_mib"] > 0 and info["peak_memory_kind"] == "cpu_peak_rss"
    assert "preparing" in caplog.text  # the raw tree was prepared into the cache ...
    prepared = [path for path in (tmp_path / "cache" / "prepared").iterdir() if path.is_dir()]
    assert len(prepared) == 1

    caplog.clear()
    with caplog.at_level("INFO", logger="chexpert_hf"):
        assert train_main(["--config", str(recipe), "--max_steps", "1", "--output_dir", str(tmp_path / "again")]) == 0
    assert "preparing" not in caplog.text  # ... once
    assert [path for path in (tmp_path / "cache" / "prepared").iterdir() if path.is_dir()] == prepared


def test_a_patient_split_and_weighted_sampling_run(tmp_path, raw_root):
    recipe = tiny_recipe(
        tmp_path,
        raw_root,
        validation_split="patients:0.25",
        sampling="inverse_frequency",
        pos_weight="balanced",
        eval_level="image",
        max_steps=2,
        save_strategy="no",
    )
    assert train_main(["--config", str(recipe)]) == 0
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert "eval_mean_auroc" in results


def test_a_missing_data_dir_says_where_chexpert_comes_from(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path / "nowhere")
    assert train_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "stanfordmlgroup" in err and "--recipe demo" in err
    assert not (tmp_path / "out").exists()


class Interrupted(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, raw_root, monkeypatch):
    # sampling, augmentation and dropout all draw random numbers: the checkpoint must restore every stream
    fields = dict(
        sampling="inverse_frequency",
        augmentation="light",
        max_steps=6,
        save_steps=3,
        config_overrides=dict(TINY_VIT, hidden_dropout_prob=0.1),
    )
    straight = tiny_recipe(tmp_path / "a", raw_root, **fields)
    assert train_main(["--config", str(straight)]) == 0
    expected = load_file(tmp_path / "a" / "out" / "model.safetensors")

    original = NonFiniteLossGuard.on_save

    def killed_after_first_save(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        raise Interrupted(state.global_step)

    interrupted = tiny_recipe(tmp_path / "b", raw_root, **fields)
    monkeypatch.setattr(NonFiniteLossGuard, "on_save", killed_after_first_save)
    with pytest.raises(Interrupted):
        train_main(["--config", str(interrupted)])
    monkeypatch.setattr(NonFiniteLossGuard, "on_save", original)
    assert [p.name for p in (tmp_path / "b" / "out").glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (tmp_path / "b" / "out" / "model.safetensors").exists()

    assert train_main(["--config", str(interrupted), "--resume_from_checkpoint", "last"]) == 0
    resumed = load_file(tmp_path / "b" / "out" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    # and the interruption mattered: the weights at the checkpoint are not the final ones
    at_checkpoint = load_file(tmp_path / "b" / "out" / "checkpoint-3" / "model.safetensors")
    assert any(not torch.equal(at_checkpoint[name], tensor) for name, tensor in expected.items())


def test_the_best_checkpoint_becomes_the_final_model(tmp_path, raw_root):
    # eval_loss falls while the tiny model learns, but the best of the two evaluations is not known in advance
    recipe = tiny_recipe(
        tmp_path,
        raw_root,
        eval_strategy="steps",
        eval_steps=3,
        load_best_model_at_end=True,
        metric_for_best_model="mean_auroc",
        save_total_limit=1,
        learning_rate=3e-3,
    )
    assert train_main(["--config", str(recipe)]) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert best.name == "checkpoint-3"  # not the last one, or the test would show nothing
    final = load_file(tmp_path / "out" / "model.safetensors")
    at_best = load_file(best / "model.safetensors")
    assert final.keys() == at_best.keys()
    for name, tensor in final.items():
        assert torch.equal(tensor, at_best[name]), name
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["eval_mean_auroc"] == pytest.approx(state["best_metric"])


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, raw_root, capsys):
    recipe = tiny_recipe(tmp_path, raw_root)
    assert train_main(["--config", str(recipe), "--resume_from_checkpoint", "last"]) == 2
    assert "no checkpoint-* folder" in capsys.readouterr().err


def test_demo_under_two_processes_then_one_process_evaluation_agrees(tmp_path):
    """``accelerate launch --config_file accelerate_configs/cpu.yaml --num_processes 2 recipes/train.py --recipe
    demo`` with a few steps on a small synthetic set; the saved model evaluated by one process scores the same."""
    small = [
        "--synthetic_patients",
        "40",
        "--synthetic_valid_patients",
        "30",
        "--synthetic_seed",
        "5",
        "--data_cache_dir",
        str(tmp_path / "cache"),
        "--per_device_eval_batch_size",
        "16",
    ]
    command = two_process_command(
        str(ROOT / "recipes" / "train.py"),
        "--recipe",
        "demo",
        *small,
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "16",
        "--output_dir",
        str(tmp_path / "two"),
        "--disable_tqdm",
        "true",
    )
    result = run_from_root(command, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert (tmp_path / "two" / "model.safetensors").is_file() and (tmp_path / "two" / "recipe.yaml").is_file()

    assert (
        train_main(
            [
                "--recipe",
                "demo",
                *small,
                "--model_name_or_path",
                str(tmp_path / "two"),
                "--from_scratch",
                "false",
                "--config_overrides",
                "null",
                "--do_train",
                "false",
                "--output_dir",
                str(tmp_path / "one"),
                "--disable_tqdm",
                "true",
            ]
        )
        == 0
    )
    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    scores = [key for key in two if key.startswith(("eval_auroc", "eval_auprc", "eval_mean_auroc"))]
    assert "eval_mean_auroc" in scores and len(scores) >= 3
    for key in scores:
        assert one[key] == pytest.approx(two[key], abs=1e-6), key
    assert one["eval_n_studies"] == two["eval_n_studies"] == 30


@pytest.mark.slow
def test_demo_reaches_its_target(tmp_path):
    """The README's first command: the demo recipe, as shipped, reaches mean AUROC >= 0.85 (about 4 minutes)."""
    assert (
        train_main(
            ["--recipe", "demo", "--data_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "demo")]
        )
        == 0
    )
    results = json.loads((tmp_path / "demo" / "eval_results.json").read_text())
    assert results["eval_mean_auroc"] >= 0.85


def _checkpoints(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("checkpoint-*"))


def test_training_over_an_earlier_run_is_refused_unless_asked_and_then_replaces_it(tmp_path, raw_root, capsys):
    recipe = tiny_recipe(tmp_path, raw_root)
    out = tmp_path / "out"
    assert train_main(["--config", str(recipe)]) == 0
    before = {path.name: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert _checkpoints(out) == ["checkpoint-3", "checkpoint-6"]
    capsys.readouterr()

    assert train_main(["--config", str(recipe), "--max_steps", "4", "--save_steps", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(out) in error and "checkpoint-3" in error
    assert "--resume_from_checkpoint last" in error and "--overwrite_output_dir true" in error
    assert {path.name: path.stat().st_mtime_ns for path in out.rglob("*")} == before  # nothing touched

    assert (
        train_main(["--config", str(recipe), "--max_steps", "4", "--save_steps", "2", "--overwrite_output_dir", "true"])
        == 0
    )
    assert _checkpoints(out) == ["checkpoint-2", "checkpoint-4"]  # none of the earlier run's is left
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((out / "run_info.json").read_text())["train_images"] == 4 * 16


def test_ctrl_c_ends_with_one_line_that_says_how_to_resume(tmp_path, raw_root, monkeypatch, capsys):
    original = NonFiniteLossGuard.on_save

    def interrupted_after_first_save(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(NonFiniteLossGuard, "on_save", interrupted_after_first_save)
    recipe = tiny_recipe(tmp_path, raw_root)
    assert train_main(["--config", str(recipe)]) == 130
    error = capsys.readouterr().err  # (besides Transformers' progress bars of the checkpoint it saved)
    lines = [line for line in error.splitlines() if line.startswith("chexpert-hf")]
    assert len(lines) == 1 and lines[0].startswith("chexpert-hf train: interrupted") and "Traceback" not in error
    assert str(tmp_path / "out" / "checkpoint-3") in error and "--resume_from_checkpoint last" in error
    monkeypatch.setattr(NonFiniteLossGuard, "on_save", original)
    assert train_main(["--config", str(recipe), "--resume_from_checkpoint", "last"]) == 0  # as the line says


def test_decode_cache_is_refused_when_the_processes_would_not_fit_in_memory(tmp_path, raw_root, capsys, monkeypatch):
    import psutil

    from chexpert_hf.training.train import check_decode_cache_memory

    assert check_decode_cache_memory([191_027], 224, 1, available=10**11) == 191_027 * 224 * 224  # 9.6 GB
    with pytest.raises(ValueError, match="9.6 GB in each of this machine.s 8 process.es., 76.7 GB in all"):
        check_decode_cache_memory([191_027], 224, 8, available=64 * 10**9)

    class Memory:
        available = 50_000  # bytes: less than the tiny split decoded at 32 px

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    recipe = tiny_recipe(tmp_path, raw_root, decode_cache=True)
    assert train_main(["--config", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert "decode_cache would hold" in error and "at 32 px" in error and "available" in error
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_first_use_preparation_uses_the_cpus_this_process_may_use(tmp_path, raw_root, monkeypatch):
    import chexpert_hf.data.loading as training

    asked = []
    original = training.prepare

    def recording_prepare(*args, **kwargs):
        asked.append(kwargs["num_proc"])
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "prepare", recording_prepare)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert training.default_num_proc() == 3
    recipe = tiny_recipe(tmp_path, raw_root, max_steps=1, save_strategy="no")
    assert train_main(["--config", str(recipe)]) == 0
    assert (
        train_main(
            [
                "--config",
                str(recipe),
                "--data_cache_dir",
                str(tmp_path / "other"),
                "--prepare_num_proc",
                "2",
                "--output_dir",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    assert asked == [3, 2]
