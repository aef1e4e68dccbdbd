"""Feature caching for head-only training: what is cached, under which key, and that training on the cache is the
same training as on the fly and leaves a normal checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_CONFIGS, tiny_model
from safetensors.torch import load_file

from chexpert_hf.data.loading import load_training_splits
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models import FAMILIES, classifier
from chexpert_hf.models.freeze import apply_freeze_policy, param_groups
from chexpert_hf.training import feature_cache as features_module
from chexpert_hf.training.feature_cache import (
    FeatureHeadModel,
    attach_cached_features,
    backbone_fingerprint,
    extract_features,
    feature_cache,
    rows_fingerprint,
)
from chexpert_hf.training.train import main as train_main

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

SIZE = 32


@pytest.fixture(scope="module")
def splits(prepared_dir):
    return load_training_splits(prepared_dir, list(COMPETITION_LABELS), views="all")


def _pixels(split, built):
    from chexpert_hf.data.loading import DecodeCollator
    from chexpert_hf.data.transforms import to_float
    from chexpert_hf.models import input_channels

    batch = DecodeCollator(SIZE)(split.__getitems__(list(range(len(split)))))
    return to_float(
        batch["pixel_values"].float(),
        built.processor.image_mean,
        built.processor.image_std,
        input_channels(built.model),
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_head_on_extracted_features_gives_the_models_logits(family, splits):
    built = tiny_model(family, image_size=SIZE)
    model = built.model.eval()
    features = extract_features(
        model,
        splits.validation,
        image_size=SIZE,
        mean=built.processor.image_mean,
        std=built.processor.image_std,
        batch_size=3,
    )
    assert features.shape[0] == len(splits.validation) and features.dtype == np.float32
    head = FeatureHeadModel(model)
    with torch.no_grad():
        expected = model(pixel_values=_pixels(splits.validation, built)).logits
        got = head(pixel_values=torch.from_numpy(features)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the head is the full model's own module, under the same names: freeze policies and parameter groups apply
    full_head = dict(model.named_parameters())
    for name, parameter in head.named_parameters():
        assert full_head[name] is parameter
    assert [p for p in head.parameters()] == list(classifier(model).parameters())
    apply_freeze_policy(model, family, "head")
    groups = param_groups(head, family, lr=1e-3)
    assert {name for group in groups for name in group["names"]} == set(dict(head.named_parameters()))
    assert all(group["lr"] == 1e-3 for group in groups)


def test_the_key_follows_the_backbone_size_and_precision_not_the_head(splits, prepared_dir, tmp_path):
    built = tiny_model("vit", image_size=SIZE)
    model = built.model

    def key(**changes):
        arguments = dict(
            model=model,
            family="vit",
            source="config",
            image_size=SIZE,
            mean=[0.5] * 3,
            std=[0.5] * 3,
            precision="fp32",
            root=tmp_path,
        )
        arguments.update(changes)
        return feature_cache(**arguments).folder

    first = key()
    assert first.parent == tmp_path and first.name.startswith("vit-scratch-32px-")
    with torch.no_grad():
        classifier(model).weight.add_(1.0)
    assert key() == first  # the head is what trains: not part of the key
    assert key(image_size=64) != first and key(precision="bf16") != first and key(mean=[0.4] * 3) != first
    fingerprint = backbone_fingerprint(model)
    with torch.no_grad():
        model.vit.layers[0].attention.q_proj.weight[0, 0] += 1e-3
    assert backbone_fingerprint(model) != fingerprint and key() != first
    assert key(source="/somewhere/demo_pretrain").name.startswith("vit-demo_pretrain-32px-")
    changed = key()
    assert key(prepared=prepared_dir) != changed  # the same paths prepared elsewhere (another size): other pixels
    model.config.layer_norm_eps = 1e-5  # a configuration field the weights do not show
    assert key() != changed
    model.config.id2label = {index: f"label {index}" for index in range(len(COMPETITION_LABELS))}
    model.config.layer_norm_eps = 1e-12
    assert key() == changed  # label names are the head's business

    fewer = load_training_splits(prepared_dir, list(COMPETITION_LABELS), views="all", max_train_samples=4)
    assert rows_fingerprint(fewer.train) != rows_fingerprint(splits.train)
    assert rows_fingerprint(fewer.validation) == rows_fingerprint(splits.validation)


def test_cached_features_are_reused_and_a_wrong_file_is_an_error(prepared_dir, tmp_path, monkeypatch):
    built = tiny_model("densenet121", image_size=SIZE)
    arguments = dict(image_size=SIZE, mean=built.processor.image_mean, std=built.processor.image_std)
    cache = feature_cache(
        built.model,
        "densenet121",
        "config",
        SIZE,
        built.processor.image_mean,
        built.processor.image_std,
        "fp32",
        tmp_path,
    )
    first = load_training_splits(prepared_dir, list(COMPETITION_LABELS), views="all")
    result = attach_cached_features(
        built.model, {"train": first.train, "validation": first.validation}, cache, **arguments
    )
    assert result.extracted == ["train", "validation"] and result.reused == [] and result.seconds > 0
    written = sorted(path.name for path in cache.folder.iterdir() if not path.name.endswith(".lock"))
    assert len(written) == 4  # an array and its description per split, no temporary file left
    description = json.loads(cache.path("train", first.train).with_suffix(".json").read_text())
    assert description["rows"] == len(first.train) and description["backbone_sha256"] == backbone_fingerprint(
        built.model
    )

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    again = load_training_splits(prepared_dir, list(COMPETITION_LABELS), views="all")
    result = attach_cached_features(
        built.model, {"train": again.train, "validation": again.validation}, cache, **arguments
    )
    assert result.reused == ["train", "validation"] and result.seconds == 0
    np.testing.assert_array_equal(again.train.features, first.train.features)
    batch = again.train.__getitems__([2, 0])
    np.testing.assert_array_equal(batch["features"].numpy(), first.train.features[[2, 0]])

    path = cache.path("validation", again.validation)
    np.save(path, np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"{path.name} holds \(1, 3\) features for a split of"):
        attach_cached_features(built.model, {"validation": again.validation}, cache, **arguments)


def _recipe(tmp_path: Path, prepared_dir: Path, name: str, **fields) -> Path:
    values = {
        "family": "vit",
        "from_scratch": True,
        "config_overrides": TINY_CONFIGS["vit"],
        "image_size": SIZE,
        "data_dir": str(prepared_dir),
        "views": "all",
        "freeze_policy": "head",
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 3,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 1,
        "load_best_model_at_end": True,
        "logging_steps": 1,
        "use_cpu": True,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "seed": 3,
        "disable_tqdm": True,
        "output_dir": str(tmp_path / name),
        "feature_cache_dir": str(tmp_path / "features"),
    }
    values.update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_head_training_on_the_cache_equals_training_on_the_fly_and_saves_a_full_checkpoint(
    prepared_dir, tmp_path, caplog
):
    from transformers import ViTForImageClassification

    from chexpert_hf.evaluation.evaluate import evaluate_model

    assert train_main(["--config", str(_recipe(tmp_path, prepared_dir, "fly"))]) == 0
    with caplog.at_level("INFO", logger="chexpert_hf"):
        assert train_main(["--config", str(_recipe(tmp_path, prepared_dir, "cached", cache_features=True))]) == 0
    assert "extracted train, validation" in caplog.text

    fly, cached = tmp_path / "fly", tmp_path / "cached"
    fly_weights, cached_weights = load_file(fly / "model.safetensors"), load_file(cached / "model.safetensors")
    assert fly_weights.keys() == cached_weights.keys()
    for name in fly_weights:  # the same training: the backbone untouched, the head trained alike
        torch.testing.assert_close(cached_weights[name], fly_weights[name], atol=2e-5, rtol=1e-4)
    # every checkpoint of a cached run is a full model too (the best one was loaded back at the end)
    checkpoint = ViTForImageClassification.from_pretrained(next(cached.glob("checkpoint-*")))
    assert set(checkpoint.state_dict()) >= {"vit.embeddings.patch_embeddings.projection.weight", "classifier.weight"}
    fly_metrics = json.loads((fly / "metrics.json").read_text())
    cached_metrics = json.loads((cached / "metrics.json").read_text())
    assert cached_metrics["mean_auroc"] == pytest.approx(fly_metrics["mean_auroc"], abs=1e-3)

    # the saved folder is a normal model: scoring it from the images reproduces the score computed on features
    scored, _, _ = evaluate_model(str(cached), str(prepared_dir), split="validation", views="all", n_bootstrap=0)
    assert scored.scores["mean_auroc"] == pytest.approx(cached_metrics["mean_auroc"], abs=1e-6)
    info = json.loads((cached / "run_info.json").read_text())
    assert info["feature_extraction_seconds"] > 0 and info["freeze_policy"] == "head"
    assert info["trainable_parameters"] == SIZE * len(COMPETITION_LABELS) + len(COMPETITION_LABELS)
    assert json.loads((fly / "run_info.json").read_text())["feature_extraction_seconds"] is None

    caplog.clear()  # a later run with the same backbone (same seed: same random weights) reuses the features
    with caplog.at_level("INFO", logger="chexpert_hf"):
        assert train_main(["--config", str(_recipe(tmp_path, prepared_dir, "again", cache_features=True))]) == 0
    assert "reused train, validation" in caplog.text and "extracted" not in caplog.text
    assert json.loads((tmp_path / "again" / "run_info.json").read_text())["feature_extraction_seconds"] == 0


def test_cache_features_needs_the_head_strategy(prepared_dir, tmp_path, capsys):
    recipe = _recipe(tmp_path, prepared_dir, "full", cache_features=True, freeze_policy="full")
    assert train_main(["--config", str(recipe)]) == 2
    assert "cache_features needs freeze_policy: head" in capsys.readouterr().err
    assert not (tmp_path / "features").exists()


def test_two_processes_extract_once_and_train_the_head_under_ddp(prepared_dir, tmp_path):
    """``accelerate launch --num_processes 2``: one process extracts each split, the other reads its file; the head
    trains under DDP, and the saved full model scores from the images what the run scored on the features."""

    from conftest import ROOT, run_from_root, two_process_command

    from chexpert_hf.evaluation.evaluate import evaluate_model

    recipe = _recipe(
        tmp_path,
        prepared_dir,
        "two",
        cache_features=True,
        num_train_epochs=2,
        load_best_model_at_end=False,
        save_strategy="no",
    )
    command = two_process_command(
        ROOT / "recipes" / "train.py",
        "--config",
        str(recipe),
    )
    result = run_from_root(command, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # every process asks for the features; whichever locks a file first extracts it (the main process logs)
    assert "2 process(es)" in result.stdout and "cached features in" in result.stdout
    arrays = sorted(path.name.split("-")[0] for path in (tmp_path / "features").rglob("*.npy"))
    assert arrays == ["train", "validation"]  # one file per split: the other process did not write its own
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    scored, _, _ = evaluate_model(
        str(tmp_path / "two"), str(prepared_dir), split="validation", views="all", n_bootstrap=0
    )
    assert scored.scores["mean_auroc"] == pytest.approx(metrics["mean_auroc"], abs=1e-6)
