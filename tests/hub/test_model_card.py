"""The model card: it parses with huggingface_hub, its metadata and model-index are right, its AUROCs read back exactly,
it shows what a reader needs, and it refuses to publish paths, patient ids or tokens."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import PER_LABEL, make_info, make_metrics
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from chexpert_hf.hub.model_card import CardInfo, build_model_card, card_metrics, format_duration, write_model_card
from chexpert_hf.labels import COMPETITION_LABELS


def synthetic_info(**changes) -> CardInfo:
    defaults = dict(
        model_name="demo", base_model=None, synthetic_data=True, dataset_id="chexpert-synthetic",
        dataset_description="synthetic CheXpert (project generator), 64 px",
        split_sizes={"train": 4207, "validation": 300},
    )  # fmt: skip
    return make_info(**{**defaults, **changes})


def test_written_card_parses_with_huggingface_hub(tmp_path):
    path = write_model_card(tmp_path / "run", make_info())
    assert path == tmp_path / "run" / "README.md"
    card = ModelCard.load(path)
    assert card.text.lstrip().startswith("# vit_base_full")
    assert card.data.model_name == "vit_base_full"
    assert str(card) == path.read_text(encoding="utf-8")


def test_real_data_metadata(tmp_path):
    data = ModelCard.load(write_model_card(tmp_path, make_info())).data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert data.base_model == "google/vit-base-patch16-224-in21k"
    assert data.datasets == ["chexpert"]
    assert data.license == "other"
    assert data.license_name == "chexpert-research-use-agreement"
    assert data.license_link == "https://stanfordmlgroup.github.io/competitions/chexpert/"
    assert {"chexpert", "chest-x-ray", "medical-imaging", "multi-label-image-classification", "vit"} <= set(data.tags)
    assert "synthetic-data" not in data.tags


def test_synthetic_metadata_and_warning(tmp_path):
    card = ModelCard.load(write_model_card(tmp_path, synthetic_info()))
    data = card.data
    assert data.license == "apache-2.0"
    assert data.get("license_name") is None and data.get("license_link") is None
    assert "base_model" not in data.to_dict()  # random initialisation: no base model at all, not a null
    assert data.datasets == ["chexpert-synthetic"]
    assert "synthetic-data" in data.tags
    assert "**Synthetic data.**" in card.text
    assert "say nothing about performance on real chest X-rays" in card.text


def test_explicit_license_wins(tmp_path):
    data = ModelCard.load(write_model_card(tmp_path, make_info(license="cc-by-nc-4.0"))).data
    assert data.license == "cc-by-nc-4.0"
    assert data.get("license_name") is None


def test_model_index_holds_every_auroc_with_its_dataset(tmp_path):
    metadata = ModelCard.load(write_model_card(tmp_path, make_info())).data.to_dict()
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "vit_base_full"
    assert {result.metric_name for result in results} == {
        *(f"AUROC {label}" for label in PER_LABEL),
        "Mean AUROC (5 competition labels)",
        "Mean AUROC (all scored labels)",
    }
    for result in results:
        assert result.task_type == "image-classification"
        assert result.metric_type == "roc_auc"
        assert result.dataset_type == "chexpert"
        assert result.dataset_split == "validation"


def test_card_metrics_round_trip_is_exact(tmp_path):
    info = make_info()
    expected = {label: result["auroc"] for label, result in info.metrics["per_label"].items()}
    expected.update(mean_auroc=info.metrics["mean_auroc"], mean_auroc_all=info.metrics["mean_auroc_all"])
    path = write_model_card(tmp_path, info)
    for source in (path, str(path), tmp_path, ModelCard.load(path), build_model_card(info)):
        assert card_metrics(source) == expected  # exact float equality: no rounding anywhere


def test_card_metrics_never_goes_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError):
        card_metrics(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        card_metrics("google/vit-base-patch16-224-in21k")  # a Hub id is not read


def test_skipped_label_and_undefined_mean(tmp_path):
    metrics = {
        "mean_auroc": float("nan"),
        "mean_auroc_all": 0.8123456789012345,
        "n_images": 120,
        "per_label": {"Support Devices": {"auroc": 0.8123456789012345, "auprc": 0.7, "positives": 60, "negatives": 60}},
        "skipped_labels": ["Fracture"],
    }
    info = synthetic_info(labels=["Fracture", "Support Devices"], metrics=metrics, eval_level="image", roc_figure=None)
    card = ModelCard.load(write_model_card(tmp_path, info))
    assert card_metrics(card) == {"Support Devices": 0.8123456789012345, "mean_auroc_all": 0.8123456789012345}
    assert "nan" not in json.dumps(card.data.to_dict()).lower()
    assert re.search(r"\*\*Skipped labels\*\*: Fracture\. .*only one class", card.text)
    assert "undefined" in card.text and "left out of the model-index" in card.text
    assert "Scored per **image** (120 images)" in card.text
    assert "No confidence intervals" in card.text
    assert "![ROC curves]" not in card.text
    assert "| Fracture |" not in card.text  # listed as skipped, not as a table row


def test_no_scored_label_gives_a_card_without_model_index(tmp_path):
    metrics = {
        "mean_auroc": float("nan"),
        "mean_auroc_all": float("nan"),
        "n_studies": 5,
        "per_label": {},
        "skipped_labels": ["Fracture"],
    }
    card = ModelCard.load(write_model_card(tmp_path, synthetic_info(labels=["Fracture"], metrics=metrics)))
    assert "model-index" not in card.data.to_dict()
    assert card_metrics(card) == {}
    assert "No label could be scored" in card.text


def test_results_table_shows_auroc_ci_auprc_and_counts():
    text = build_model_card(make_info()).text
    for label, (auroc, (low, high), auprc, pos, neg) in PER_LABEL.items():
        row = f"| {label} | {auroc:.4f} | {low:.4f}–{high:.4f} | {auprc:.4f} | {pos} | {neg} |"
        assert row in text
    mean = make_metrics()["mean_auroc"]
    assert f"**{mean:.4f}** (95% CI 0.8712–0.9099)" in text  # the competition mean and its interval
    assert "1000 resamples, seed 0" in text and "bootstrap over studies" in text
    assert "Scored per **study** (300 studies)" in text and "maximum over its images" in text
    assert "![ROC curves](roc.png)" in text


def test_recipe_section(tmp_path):
    info = make_info(freeze_policy="head", trainable_parameters=10_766, total_parameters=85_809_422)
    text = build_model_card(info).text
    assert "10,766 of 85,809,422 parameters trainable (0.0125 %)" in text
    assert "`head`" in text and "`u_mixed`" in text and "`inverse_frequency`" in text and "balanced" in text
    assert "3 min 27 s" in text and "1 × NVIDIA H100 80GB HBM3" in text
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", text, re.M)
    assert rows == [(key, str(value)) for key, value in info.hyperparameters.items()]  # every one, in order


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(207.4, "3 min 27 s"), (42.2, "42 s"), (3.25, "3.2 s"), (5400, "1 h 30 min"), (None, "not recorded")],
)
def test_format_duration(seconds, expected):
    assert format_duration(seconds) == expected


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_hybrid_snippets_trust_remote_code():
    info = make_info(
        family="resnet_vit",
        base_model="timm/vit_base_r50_s16_224.orig_in21k",
        trust_remote_code=True,
        repo_id="someone/chexpert-resnet-vit",
    )
    blocks = python_blocks(build_model_card(info).text)
    assert len(blocks) == 2
    loading, pipe = blocks
    assert 'model_id = "someone/chexpert-resnet-vit"' in loading
    assert "AutoModelForImageClassification.from_pretrained(model_id, trust_remote_code=True)" in loading
    assert "torch.sigmoid" in loading and "softmax(" not in loading
    assert 'model="someone/chexpert-resnet-vit", top_k=None, trust_remote_code=True)' in pipe
    assert 'pipeline("image-classification", ' in pipe
    for block in blocks:
        compile(block, "snippet", "exec")  # the snippets are valid Python


@pytest.mark.parametrize("family", ["vit", "swin", "deit", "densenet121"])
def test_other_snippets_do_not_trust_remote_code(family):
    text = build_model_card(make_info(family=family)).text
    blocks = python_blocks(text)
    assert len(blocks) == 2
    assert "trust_remote_code" not in text
    assert 'model_id = "path/to/model"' in blocks[0]  # no repo_id: a placeholder, never a local path
    assert 'pipeline("image-classification", model="path/to/model", top_k=None)' in blocks[1]
    for block in blocks:
        compile(block, "snippet", "exec")


@pytest.mark.parametrize("family", ["vit", "resnet_vit"])
def test_snippets_run_on_a_saved_model(family, tmp_path, monkeypatch, capsys):
    """Both snippets, run as written on a tiny saved model, print the same sigmoid probability for every label."""
    import numpy as np
    from conftest import tiny_model
    from PIL import Image

    built = tiny_model(family)
    folder = tmp_path / "model"
    built.model.save_pretrained(folder)
    built.processor.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save("chest_xray.png")
    info = make_info(family=family, trust_remote_code=family == "resnet_vit", repo_id=None)
    loading, pipe = python_blocks(build_model_card(info).text)
    printed = []
    for block in (loading, pipe):
        capsys.readouterr()
        exec(block.replace("path/to/model", str(folder)), {})
        lines = capsys.readouterr().out.strip().splitlines()
        printed.append({label.rstrip(":"): float(value) for label, value in (line.rsplit(" ", 1) for line in lines)})
    assert set(printed[0]) == set(COMPETITION_LABELS)
    assert printed[0] == pytest.approx(printed[1], abs=1e-3)  # the pipeline applies the same sigmoid
    assert all(0.0 < value < 1.0 for value in printed[0].values())


def test_body_has_limitations_and_citation():
    text = build_model_card(make_info()).text
    for phrase in (
        "not a medical device",
        "diagnosis",
        "CheXpert labeler",
        "Stanford",
        "distribution shift",
        "No fairness evaluation",
        "@inproceedings{irvin2019chexpert",
        "AAAI",
        "year      = {2019}",
    ):
        assert phrase in text, phrase


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_name", "/home/someone/outputs/vit_full"),
        ("model_name", "C:\\runs\\vit_full"),
        ("model_name", "vit_patient00001"),
        ("base_model", "/data/checkpoints/vit"),
        ("base_model", "~/checkpoints/vit"),
        ("repo_id", "someone/Patient12345-model"),
        ("repo_id", "/srv/models/vit"),
        ("dataset_description", "/data/CheXpert-v1.0-small"),
        ("dataset_description", "CheXpert prepared from /data/CheXpert-v1.0-small at 320 px"),
        ("dataset_description", "CheXpert without patient64541"),
    ],
)
def test_refuses_paths_and_patient_ids(field, value):
    with pytest.raises(ValueError, match=field):
        build_model_card(make_info(**{field: value}))


def test_refuses_leaks_in_other_fields():
    with pytest.raises(ValueError, match="hyperparameters"):
        build_model_card(make_info(hyperparameters={"output_dir": "/home/someone/outputs/vit"}))
    with pytest.raises(ValueError, match="token"):
        build_model_card(make_info(hyperparameters={"hub_token": "hf_" + "a1B2c3D4e5" * 4}))
    with pytest.raises(ValueError, match="roc_figure"):
        build_model_card(make_info(roc_figure="/tmp/roc.png"))


def test_accepts_ordinary_names():
    text = str(build_model_card(make_info(model_name="vit-base_full.v2", repo_id="someone/vit-base-chexpert")))
    assert "someone/vit-base-chexpert" in text
    assert not re.search(r"patient\d", text, re.I)


def test_write_is_atomic(tmp_path, monkeypatch):
    refused = make_info(model_name="/home/someone/vit")
    with pytest.raises(ValueError):
        write_model_card(tmp_path / "new", refused)
    assert not (tmp_path / "new" / "README.md").exists()

    previous = write_model_card(tmp_path, make_info(model_name="first"))
    before = previous.read_bytes()
    with pytest.raises(ValueError):
        write_model_card(tmp_path, refused)
    assert previous.read_bytes() == before  # a refused card leaves the old one whole

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_model_card(tmp_path, make_info(model_name="second"))
    assert previous.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md"]  # no temporary file left behind


def test_numpy_floats_are_written_as_plain_numbers(tmp_path):
    np = pytest.importorskip("numpy")
    info = make_info()
    info.metrics["mean_auroc"] = np.float64(info.metrics["mean_auroc"])
    info.metrics["per_label"]["Edema"]["auroc"] = np.float32(0.75)
    path = write_model_card(tmp_path, info)
    assert "!!python" not in path.read_text(encoding="utf-8")
    values = card_metrics(path)
    assert values["Edema"] == 0.75 and values["mean_auroc"] == float(info.metrics["mean_auroc"])


def test_thresholds_calibration_and_subgroups_join_the_card_but_not_the_model_index():
    import numpy as np

    from chexpert_hf.evaluation.clinical import add_clinical_scores
    from chexpert_hf.evaluation.subgroups import subgroup_scores
    from chexpert_hf.evaluation.thresholds import choose_thresholds

    rng = np.random.default_rng(0)
    targets = (rng.random((300, 5)) < 0.4).astype(float)
    probabilities = np.clip(0.4 * targets + 0.6 * rng.random((300, 5)), 0, 1)
    labels = list(COMPETITION_LABELS)
    thresholds = choose_thresholds(probabilities, targets, labels, "youden")
    source = {"rule": "youden", "split": "validation", "level": "study", "count": 300}
    metrics = add_clinical_scores(
        make_metrics(), probabilities, targets, labels, evaluated_split="validation", thresholds=thresholds,
        threshold_source=source,
    )  # fmt: skip
    groups = {"sex": np.where(rng.random(300) < 0.5, "Female", "Male")}
    subgroups = subgroup_scores(probabilities, targets, labels, groups, thresholds, n_bootstrap=50)
    plain, full = make_info(), make_info(metrics=metrics, subgroups=subgroups)
    text = build_model_card(full).text
    edema = metrics["operating_points"]["per_label"]["Edema"]
    low, high = edema["sensitivity_ci95"]
    assert f"| Edema | {edema['threshold']:.4g} | {edema['sensitivity']:.3f} ({low:.3f}–{high:.3f}) |" in text
    assert "chosen by the rule `youden` on the validation split" in text and "optimistic" in text
    assert f"| Edema | {metrics['calibration']['per_label']['Edema']['ece']:.4f} |" in text
    female = subgroups["attributes"]["sex"]["groups"]["Female"]
    assert f"| sex: Female | {female['n']} | {female['per_label']['Atelectasis']['auroc']:.3f} |" in text
    # what the Hub reads stays the AUROCs alone
    assert card_metrics(build_model_card(full)) == card_metrics(build_model_card(plain))
    assert "Decision thresholds" not in build_model_card(plain).text
