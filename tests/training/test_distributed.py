"""The training job under 2 CPU processes (``accelerate launch``, gloo): per-process augmentation, a mid-epoch resume,
and output folders that differ between processes (node-local disks)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SCRIPTS, run_from_root, two_process_command
from safetensors.torch import load_file

from chexpert_hf.data import synthesize
from chexpert_hf.models.tiny import tiny_config

TINY_VIT = tiny_config("vit", intermediate_size=64, num_channels=1, hidden_dropout_prob=0.1)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """One ``accelerate launch --num_processes 2`` running every part of tests/scripts/distributed_training.py."""
    folder = tmp_path_factory.mktemp("distributed")
    raw = synthesize(folder / "raw", 40, valid_patients=20, seed=11, progress=False).root
    recipe = {
        "family": "vit",
        "from_scratch": True,
        "config_overrides": TINY_VIT,
        "image_size": 32,
        "data_dir": str(raw),
        "data_cache_dir": str(folder / "cache"),
        "prepare_image_size": 48,
        "augmentation": "light",
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "max_steps": 8,
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 6,
        "logging_steps": 1,
        "use_cpu": True,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "seed": 0,
        "disable_tqdm": True,
        # rank_dirs: the best evaluation is the first (the loss falls), so the best and the last weights differ
        "metric_for_best_model": "loss",
        "greater_is_better": True,
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    command = two_process_command(
        SCRIPTS / "distributed_training.py",
        str(folder),
        str(folder / "recipe.yaml"),
        "augment",
        "resume",
        "rank_dirs",
    )
    result = run_from_root(command, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder


def _part(folder: Path, part: str) -> list[dict]:
    return [json.loads((folder / f"{part}-rank{rank}.json").read_text()) for rank in (0, 1)]


def test_the_training_entry_closes_the_process_group_before_the_process_exits(launched):
    """An open Gloo group at interpreter shutdown can abort a finished run with SIGABRT (pytorch/pytorch#179291)."""
    assert _part(launched, "exit") == [{"group_open": False}] * 2


def test_each_process_draws_its_own_augmentation_and_a_rerun_draws_the_same(launched):
    ranks = _part(launched, "augment")
    for rank in ranks:
        first, rerun = rank["draws"]
        assert first == rerun  # seeded by (seed, process, step, batch): reproducible
        assert first["0.0"] != first["0.1"] != first["1.0"]  # every batch gets new transforms
    assert all(ranks[0]["draws"][0][key] != ranks[1]["draws"][0][key] for key in ranks[0]["draws"][0])


@pytest.mark.parametrize("sampling", ["inverse_frequency", "none"])
def test_a_mid_epoch_resume_under_two_processes_ends_with_the_uninterrupted_weights(launched, sampling):
    for rank in _part(launched, "resume"):
        assert rank[f"{sampling}/straight"] == 0 and rank[f"{sampling}/resumed"] == 0
        assert rank[f"{sampling}/interrupted"] == 6
    runs = launched / sampling
    state = json.loads((runs / "resumed" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["epoch"] > 1 and state["epoch"] % 1 > 0  # the checkpoint is inside a later epoch
    expected = load_file(runs / "straight" / "model.safetensors")
    resumed = load_file(runs / "resumed" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.allclose(tensor, resumed[name], rtol=0, atol=1e-6), name
    at_checkpoint = load_file(runs / "resumed" / "checkpoint-6" / "model.safetensors")
    assert any(not torch.equal(at_checkpoint[name], tensor) for name, tensor in expected.items())


def test_processes_that_end_with_different_weights_stop_the_run(launched):
    """Output folders that differ per process stand for node-local disks: only rank 0 holds the checkpoints, so only
    it can load the best one; the run must stop rather than score a mix of two models."""
    ranks = _part(launched, "rank_dirs")
    for rank in ranks:
        assert rank["code"] == 2
    message = ranks[0]["stderr"].strip().splitlines()[-1]
    assert "save_on_each_node" in message and "storage all nodes share" in message and "process(es) 1" in message
    last = max((launched / "rank_dirs" / "rank0").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    best = json.loads((last / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert Path(best).name != last.name  # the first node loaded weights the second never saw
    for rank in (0, 1):
        assert not (launched / "rank_dirs" / f"rank{rank}" / "eval_results.json").exists()
        assert not (launched / "rank_dirs" / f"rank{rank}" / "model.safetensors").exists()


def test_processes_wait_for_the_first_preparation_on_its_lock_not_a_timed_barrier(tmp_path):
    """While one process prepares a raw tree (here: while the cache entry's lock is held for more than twice the
    process group's timeout), the other processes wait on the lock; a collective barrier would give up after
    ddp_timeout."""
    import threading
    import time

    from filelock import FileLock

    from chexpert_hf.data.loading import _source_key

    raw = synthesize(tmp_path / "raw", 12, valid_patients=8, seed=3, progress=False).root
    ready = tmp_path / "ready"
    cache = tmp_path / "cache"
    entry = cache / "prepared" / _source_key(raw, 48)
    entry.parent.mkdir(parents=True)
    lock = FileLock(str(entry) + ".lock", thread_local=False)  # released by another thread
    lock.acquire()
    command = two_process_command(
        SCRIPTS / "train_with_timeout.py",
        "5",
        str(ready),
        "--recipe",
        "demo",
        "--data_dir",
        str(raw),
        "--data_cache_dir",
        str(cache),
        "--prepare_image_size",
        "48",
        "--image_size",
        "32",
        "--decode_cache",
        "false",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--output_dir",
        str(tmp_path / "out"),
        "--disable_tqdm",
        "true",
    )
    held = {}

    def release_later():  # "the first process" prepares for 12 s, more than twice the timeout
        deadline = time.monotonic() + 240
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(12)
        held["until"] = time.monotonic()
        lock.release()

    holder = threading.Thread(target=release_later, daemon=True)
    holder.start()
    try:
        result = run_from_root(command, timeout=300)
    finally:
        holder.join(timeout=300)
        if lock.is_locked:
            lock.release()
    assert "until" in held  # the processes reached the data stage while the lock was held
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "waiting for another process preparing" in result.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()
