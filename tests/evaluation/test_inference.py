"""A trained checkpoint used the ways a user would: its card, ``chexpert-hf evaluate`` on a prepared split (which
reproduces the training run's validation numbers), ``predict`` on image files, ``transformers.pipeline``, and the
loading rules (safetensors only, remote code only when asked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_model
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from chexpert_hf.cli.main import main as cli_main
from chexpert_hf.evaluation.evaluate import evaluate_model, score_predictions, write_evaluation, write_predictions_csv
from chexpert_hf.evaluation.inference import ModelLoadError, load_classifier, predict_files
from chexpert_hf.hub.model_card import card_metrics
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models.tiny import tiny_config
from chexpert_hf.training.train import main as train_main

# three input channels, as every pretrained family: the pipeline feeds RGB
TINY_VIT = tiny_config("vit", intermediate_size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root) -> dict:
    """A tiny ViT trained for a few steps on the shared synthetic tree; its output folder and cache."""
    base = tmp_path_factory.mktemp("trained")
    recipe = {
        "family": "vit",
        "from_scratch": True,
        "config_overrides": TINY_VIT,
        "image_size": 32,
        "data_dir": str(synthetic_root),
        "data_cache_dir": str(base / "cache"),
        "prepare_image_size": 64,
        "views": "frontal",
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "max_steps": 4,
        "eval_strategy": "no",
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "seed": 0,
        "disable_tqdm": True,
        "output_dir": str(base / "out"),
    }
    (base / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert train_main(["--config", str(base / "tiny.yaml")]) == 0
    return {"out": base / "out", "cache": str(base / "cache"), "root": synthetic_root}


def test_the_run_writes_a_card_whose_results_are_its_metrics(trained):
    out = trained["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert metrics["mean_auroc"] == pytest.approx(eval_results["eval_mean_auroc"], abs=1e-12)
    assert metrics["bootstrap"]["resamples"] == 1000
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    read_back = card_metrics(out / "README.md")
    for label, entry in metrics["per_label"].items():
        assert read_back[label] == entry["auroc"]
    assert read_back["mean_auroc"] == metrics["mean_auroc"]
    text = (out / "README.md").read_text()
    assert str(out) not in text and str(Path.home()) not in text and "patient0" not in text
    assert (out / "roc.png").is_file() and "roc.png" in text


def test_evaluate_reproduces_the_training_validation_and_its_predictions_file(trained, tmp_path):
    out = trained["out"]
    scored, predictions, summary = evaluate_model(
        str(out),
        trained["root"],
        views="frontal",
        prepare_image_size=64,
        data_cache_dir=trained["cache"],
        progress=False,
    )
    during_training = json.loads((out / "metrics.json").read_text())
    assert scored.scores["per_label"] == during_training["per_label"]  # bit for bit, intervals included
    assert scored.scores["mean_auroc"] == during_training["mean_auroc"]
    assert list(predictions.columns) == ["Path", *COMPETITION_LABELS]
    assert summary["model"] == "out" and summary["level"] == "study"
    # the predictions file scores the same against the raw valid.csv, as the leaderboard would
    write_predictions_csv(tmp_path / "pred.csv", predictions)
    rescored, _ = score_predictions(tmp_path / "pred.csv", trained["root"] / "valid.csv")
    assert rescored.scores["per_label"] == scored.scores["per_label"]


def test_the_evaluate_command_writes_its_reports(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CHEXPERT_HF_CACHE", trained["cache"])
    output = tmp_path / "eval"
    code = cli_main(
        [
            "evaluate",
            "--model",
            str(trained["out"]),
            "--data",
            str(trained["root"]),
            "--output",
            str(output),
            "--bootstrap",
            "200",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    reports = ["calibration.png", "metrics.json", "metrics.md", "predictions.csv", "roc.png"]
    subgroups = ["subgroups.json", "subgroups.md", "subgroups.png"]
    assert sorted(p.name for p in output.iterdir()) == reports + subgroups
    metrics = json.loads((output / "metrics.json").read_text())
    # the thresholds the training run chose on this same validation split: reported, and flagged as optimistic
    saved = json.loads((trained["out"] / "config.json").read_text())
    points = metrics["operating_points"]
    assert points["source"] == saved["decision_threshold_source"] and points["source"]["rule"] == "youden"
    assert points["optimistic"] and points["evaluated_split"] == "validation"
    for label, point in points["per_label"].items():
        assert point["threshold"] == saved["decision_thresholds"][label]
    assert "**Optimistic:**" in (output / "metrics.md").read_text()
    assert set(metrics["calibration"]["per_label"]) <= set(COMPETITION_LABELS)
    assert metrics["views"] == "frontal"  # taken from the model's recipe.yaml
    assert f"{metrics['mean_auroc']:.4f}" in printed
    rows = pd.read_csv(output / "predictions.csv")
    assert len(rows) == metrics["images"] and rows["Path"].str.contains("frontal").all()


def _captured_logits(monkeypatch) -> list[np.ndarray]:
    """Every batch of logits the models that ``chexpert_hf.evaluation.inference.load_classifier`` loads compute from
    now on."""
    import chexpert_hf.evaluation.inference as inference

    captured: list[np.ndarray] = []
    real = inference.load_classifier

    def load(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.model.register_forward_hook(
            lambda module, inputs, output: captured.append(output.logits.detach().float().cpu().numpy())
        )
        return loaded

    monkeypatch.setattr(inference, "load_classifier", load)
    return captured


def test_evaluate_scores_confident_logits_as_the_training_run_does(prepared_dir, synthetic_root, tmp_path, monkeypatch):
    """Logits above 20 (a float32 sigmoid is 1.0 from about 16.7): ``evaluate --model`` must score the numbers the
    Trainer's SplitScorer scores from the same logits, not float32 ties; and its predictions.csv rescores alike."""
    from transformers.trainer_utils import EvalPrediction

    from chexpert_hf.data.builder import label_names
    from chexpert_hf.data.prepare import load_prepared
    from chexpert_hf.evaluation.metrics import SplitScorer
    from chexpert_hf.labels import reorder_labels

    captured = _captured_logits(monkeypatch)
    built = tiny_model("vit")
    built.model.save_pretrained(tmp_path / "plain")
    built.processor.save_pretrained(tmp_path / "plain")
    evaluate_model(str(tmp_path / "plain"), str(prepared_dir), views="all", n_bootstrap=0, device="cpu", progress=False)
    plain = np.concatenate(captured)
    # a confident model: each label's logits moved to about 26 +- 3, their order kept (the classifier is affine)
    scale = 3.0 / plain.std(axis=0)
    classifier = built.model.classifier
    with torch.no_grad():
        classifier.weight.mul_(torch.tensor(scale, dtype=torch.float32)[:, None])
        classifier.bias.copy_(torch.tensor((classifier.bias.numpy() - plain.mean(axis=0)) * scale + 26.0))
    built.model.save_pretrained(tmp_path / "confident")
    built.processor.save_pretrained(tmp_path / "confident")

    captured.clear()
    scored, predictions, _ = evaluate_model(
        str(tmp_path / "confident"), str(prepared_dir), views="all", n_bootstrap=200, device="cpu", progress=False
    )
    logits = np.concatenate(captured)
    assert logits.min() > 17.0 and logits.max() > 20.0 and len(np.unique(logits[:, 0])) > 5
    assert (torch.sigmoid(torch.from_numpy(logits)) == 1.0).all()  # float32 would tie every study

    # the training run's score: the Trainer hands SplitScorer these logits and each one's dataset row
    dataset = load_prepared(prepared_dir)
    rows = dataset["validation"]
    raw = reorder_labels(np.asarray(rows["labels"], dtype=np.float32), label_names(dataset), COMPETITION_LABELS)
    scorer = SplitScorer(raw, rows["study_id"], COMPETITION_LABELS, "study", n_bootstrap=200)
    order = np.arange(len(rows))
    flat = scorer(EvalPrediction(predictions=logits, label_ids=(raw, order)))
    assert scored.scores == scorer.last_scores  # bit for bit, intervals included
    assert scored.scores["per_label"] and flat["mean_auroc"] == scored.scores["mean_auroc"]
    np.testing.assert_array_equal(scored.probabilities, scorer.last_scored[0])
    assert any(entry["auroc"] != 0.5 for entry in scored.scores["per_label"].values())

    # predictions.csv keeps the digits that tell these studies apart: rescoring it gives the same numbers
    paths = write_evaluation(tmp_path / "eval", scored, {}, title="t", predictions=predictions)
    rescored, _ = score_predictions(paths["predictions.csv"], synthetic_root / "valid.csv", n_bootstrap=200)
    assert rescored.scores["per_label"] == scored.scores["per_label"]


def write_images(folder: Path, source: Path) -> dict[str, Path]:
    """One radiograph saved the ways users have them: 8-bit grey JPEG, 16-bit PNG, RGB and RGBA PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        grey = np.asarray(image.convert("L"))
    files = {
        "jpeg": folder / "grey.jpg",
        "png16": folder / "deep.png",
        "rgb": folder / "rgb.png",
        "rgba": folder / "rgba.png",
        "png8": folder / "grey.png",
    }
    shutil.copy(source, files["jpeg"])
    Image.fromarray(grey).save(files["png8"])
    # 16-bit data spanning a narrow window: read as 8-bit it would be near-black without windowing
    Image.fromarray((grey.astype(np.uint16) * 4 + 1000).astype(np.uint16)).save(files["png16"])
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(files["rgb"])
    Image.fromarray(np.dstack([np.stack([grey] * 3, axis=-1), np.full_like(grey, 255)])).save(files["rgba"])
    return files


def test_predict_and_pipeline_agree_on_common_image_files(trained, tmp_path):
    source = next((trained["root"] / "valid").rglob("*frontal.jpg"))
    files = write_images(tmp_path / "images", source)
    loaded = load_classifier(trained["out"], device="cpu")
    names = ["jpeg", "png8", "rgb", "rgba", "png16"]
    probabilities = predict_files(loaded, [files[name] for name in names], progress=False)
    assert probabilities.shape == (5, 5) and ((probabilities > 0) & (probabilities < 1)).all()
    same = {name: probabilities[index] for index, name in enumerate(names)}
    for name in ("rgb", "rgba", "png8"):  # the same pixels however they are stored
        np.testing.assert_allclose(same[name], same["png8"], atol=1e-6)
    np.testing.assert_allclose(same["png8"], same["jpeg"], atol=1e-6)
    # the 16-bit file is windowed to its range, not clipped: close to the 8-bit image it was made from
    np.testing.assert_allclose(same["png16"], same["png8"], atol=0.02)

    # the saved decision thresholds change nothing in what pipeline returns: independent probabilities
    assert set(loaded.model.config.decision_thresholds) == set(COMPETITION_LABELS)
    classify = pipeline("image-classification", model=str(trained["out"]), top_k=None, device="cpu")
    result = classify(str(files["jpeg"]))
    scores = {entry["label"]: entry["score"] for entry in result}
    assert set(scores) == set(COMPETITION_LABELS)  # every label, independent scores (sigmoid)
    np.testing.assert_allclose([scores[label] for label in loaded.labels], same["jpeg"], atol=1e-5)
    assert abs(sum(scores.values()) - 1.0) > 1e-3 or len(scores) == 1  # not a softmax


def test_the_predict_command(trained, tmp_path, capsys):
    source = next((trained["root"] / "valid").rglob("*frontal.jpg"))
    files = write_images(tmp_path / "images", source)
    output = tmp_path / "preds.csv"
    assert (
        cli_main(
            [
                "predict",
                "--model",
                str(trained["out"]),
                str(files["jpeg"]),
                str(files["png16"]),
                "--output",
                str(output),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = pd.read_csv(output)
    assert list(rows.columns) == ["Path", *COMPETITION_LABELS] and len(rows) == 2
    assert f"{rows.loc[0, 'Edema']:.3f}" in printed and "grey.jpg" in printed
    # the decision at the threshold the training run saved, next to each probability
    threshold = json.loads((trained["out"] / "config.json").read_text())["decision_thresholds"]["Edema"]
    mark = "+" if rows.loc[0, "Edema"] >= threshold else "-"
    assert f"{rows.loc[0, 'Edema']:.3f} {mark}" in printed and "rule youden, chosen on validation" in printed

    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    other = tmp_path / "other.csv"
    assert (
        cli_main(["predict", "--model", str(trained["out"]), str(files["jpeg"]), str(broken), "--output", str(other)])
        == 2
    )
    assert "broken.jpg" in capsys.readouterr().err and not other.exists()


def test_only_safetensors_weights_load(trained, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(trained["out"], folder, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        load_classifier(folder, device="cpu")


def test_a_model_that_is_not_a_chexpert_classifier_is_refused(tmp_path):
    built = tiny_model("vit")
    built.model.config.id2label = {0: "cat", 1: "dog", 2: "a", 3: "b", 4: "c"}
    built.model.save_pretrained(tmp_path / "m")
    built.processor.save_pretrained(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="not a CheXpert classifier.*cat"):
        load_classifier(tmp_path / "m", device="cpu")


def test_the_hybrid_loads_only_with_trust_remote_code(tmp_path, capsys):
    built = tiny_model("resnet_vit")
    built.model.save_pretrained(tmp_path / "hybrid")
    built.processor.save_pretrained(tmp_path / "hybrid")
    with pytest.raises(ModelLoadError, match="--trust_remote_code") as raised:
        load_classifier(tmp_path / "hybrid", device="cpu")
    assert "modeling_resnet_vit.py" in str(raised.value)
    loaded = load_classifier(tmp_path / "hybrid", trust_remote_code=True, device="cpu")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded.model(pixel_values=pixels).logits.numpy(),
            built.model.eval()(pixel_values=pixels).logits.numpy(),
            atol=1e-5,
        )
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), dtype=np.uint8)).save(image)
    assert cli_main(["predict", "--model", str(tmp_path / "hybrid"), str(image), "--device", "cpu"]) == 2
    assert "--trust_remote_code" in capsys.readouterr().err
    assert (
        cli_main(["predict", "--model", str(tmp_path / "hybrid"), str(image), "--device", "cpu", "--trust-remote-code"])
        == 0
    )
