"""``chexpert-hf evaluate`` beyond AUROC, end to end: readers on the ROC, ensembles, subgroups, thresholds and the
errors for each bad input. The parts are tested against hand cases in their own test files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model
from test_evaluation import groundtruth_images, predictions_for

from chexpert_hf.cli.commands.predict import decision_note, predictions_text
from chexpert_hf.cli.main import main as cli_main
from chexpert_hf.evaluation.ensemble import combine
from chexpert_hf.evaluation.evaluate import evaluate_model, score_predictions
from chexpert_hf.evaluation.thresholds import CONFIG_THRESHOLD_SOURCE, CONFIG_THRESHOLDS
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS


def _reader(gt, tmp_path, name: str, flip: float, seed: int, order=None) -> str:
    """A reader's study-level reads: the ground truth with a share ``flip`` of the entries flipped, columns in
    ``order`` (the released reader files order some columns differently from groundtruth.csv)."""
    rng = np.random.default_rng(seed)
    truth = pd.read_csv(gt)
    truth["Study"] = truth["Path"].str.rsplit("/", n=1).str[0]
    studies = truth.groupby("Study", sort=False)[list(COMPETITION_LABELS)].max().astype(int)
    flipped = rng.random(studies.shape) < flip
    reads = studies.where(~flipped, 1 - studies)
    reads = reads[list(order or COMPETITION_LABELS)].reset_index()
    path = tmp_path / f"{name}.csv"
    reads.to_csv(path, index=False)
    return str(path)


def test_readers_on_the_roc_from_the_command_line(tmp_path, capsys):
    gt, paths, _ = groundtruth_images(tmp_path, studies=120)
    truth = pd.read_csv(gt)
    rng = np.random.default_rng(3)
    frame = predictions_for(paths, list(CHEXPERT_LABELS))  # all 14 labels; the readers read the 5 they compare
    for label in COMPETITION_LABELS:  # a good model: the truth plus noise
        frame[label] = np.clip(0.5 * truth[label].to_numpy() + 0.6 * rng.random(len(paths)), 0, 1)
    frame.to_csv(tmp_path / "pred.csv", index=False)
    careful = _reader(gt, tmp_path, "careful", 0.1, seed=1, order=list(reversed(COMPETITION_LABELS)))
    hasty = _reader(gt, tmp_path, "hasty", 0.3, seed=2)
    out = tmp_path / "report"
    argv = ["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--groundtruth", str(gt)]
    code = cli_main([*argv, "--readers", careful, hasty, "--output", str(out), "--bootstrap", "0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    readers = json.loads((out / "metrics.json").read_text())["readers"]
    assert readers["readers"] == ["careful", "hasty"] and set(readers["per_label"]) == set(COMPETITION_LABELS)
    for label in COMPETITION_LABELS:
        entry = readers["per_label"][label]
        careful_point, hasty_point = entry["readers"]["careful"], entry["readers"]["hasty"]
        # the reader who flips a tenth of the reads is more sensitive and specific than the one who flips 30%
        assert careful_point["sensitivity"] + careful_point["specificity"] > (
            hasty_point["sensitivity"] + hasty_point["specificity"]
        )
        assert entry["under_curve"] == careful_point["under_curve"] + hasty_point["under_curve"]
    counts = [readers["per_label"][label]["under_curve"] for label in COMPETITION_LABELS]
    assert readers["mean_under_curve"] == pytest.approx(np.mean(counts))
    assert "## Readers" in (out / "metrics.md").read_text() and (out / "roc.png").stat().st_size > 10_000
    assert "careful" in printed and "hasty" in printed


def test_a_reader_file_missing_a_study_names_it_and_writes_nothing(tmp_path, capsys):
    gt, paths, _ = groundtruth_images(tmp_path, studies=30)
    predictions_for(paths, list(COMPETITION_LABELS)).to_csv(tmp_path / "pred.csv", index=False)
    reader = _reader(gt, tmp_path, "reader", 0.1, seed=1)
    rows = pd.read_csv(reader)
    rows.iloc[1:].to_csv(reader, index=False)  # the first study is gone
    out = tmp_path / "report"
    argv = ["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--groundtruth", str(gt), "--output", str(out)]
    assert cli_main([*argv, "--readers", reader]) == 2
    err = capsys.readouterr().err
    assert "reader.csv" in err and rows["Study"].iloc[0].split("valid/")[-1] in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--subgroups", "race"], "choose a comma-separated subset of sex,age,view"),
        (["--set-thresholds", "youden"], "one local model folder"),
        (["--readers", "r.csv", "--per_image"], "leave out --per_image"),
    ],
)
def test_bad_clinical_options_are_one_line(tmp_path, capsys, extra, message):
    gt, paths, _ = groundtruth_images(tmp_path, studies=10)
    predictions_for(paths, ["Edema"]).to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "report"
    argv = ["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--groundtruth", str(gt), "--output", str(out)]
    assert cli_main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_subgroups_asked_of_a_groundtruth_without_them_is_an_error(tmp_path, capsys):
    gt, paths, study_of = groundtruth_images(tmp_path, studies=20)
    truth = pd.read_csv(gt)
    truth["Study"] = truth["Path"].str.rsplit("/", n=1).str[0]
    truth.groupby("Study", sort=False)[list(CHEXPERT_LABELS)].max().reset_index().to_csv(
        tmp_path / "groundtruth.csv", index=False
    )
    predictions_for(paths, ["Edema"]).to_csv(tmp_path / "pred.csv", index=False)
    argv = ["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--groundtruth", str(tmp_path / "groundtruth.csv")]
    assert cli_main([*argv, "--output", str(tmp_path / "a"), "--subgroups", "sex"]) == 2
    assert "has no sex" in capsys.readouterr().err
    assert cli_main([*argv, "--output", str(tmp_path / "b"), "--bootstrap", "0"]) == 0  # by default: none, quietly
    assert not (tmp_path / "b" / "subgroups.json").exists()


def test_an_ensemble_of_predictions_files_scores_the_mean_and_writes_it(tmp_path, capsys):
    gt, paths, _ = groundtruth_images(tmp_path, studies=40)
    first = predictions_for(paths, list(COMPETITION_LABELS), seed=1)
    second = predictions_for(paths, list(reversed(COMPETITION_LABELS)), seed=2)  # another column order
    first.to_csv(tmp_path / "a.csv", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    scored, summary = score_predictions([tmp_path / "a.csv", tmp_path / "b.csv"], gt, n_bootstrap=0)
    alone_a, _ = score_predictions(tmp_path / "a.csv", gt, n_bootstrap=0)
    alone_b, _ = score_predictions(tmp_path / "b.csv", gt, n_bootstrap=0)
    order = [alone_b.labels.index(label) for label in alone_a.labels]
    assert np.allclose(scored.probabilities, (alone_a.probabilities + alone_b.probabilities[:, order]) / 2)
    assert summary["ensemble"] == {"members": ["a.csv", "b.csv"], "combination": "mean"}
    # its predictions.csv is a predictions file like any other: scored again, the same AUROC
    out = tmp_path / "ensemble"
    argv = ["evaluate", "--predictions", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--groundtruth", str(gt)]
    assert cli_main([*argv, "--output", str(out), "--bootstrap", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ensemble"]["members"] == ["a.csv", "b.csv"]
    again, _ = score_predictions(out / "predictions.csv", gt, n_bootstrap=0)
    assert again.scores["per_label"] == scored.scores["per_label"]
    compared = tmp_path / "compared"
    argv = ["compare", str(tmp_path / "a.csv"), str(out), "--groundtruth", str(gt), "--output", str(compared)]
    assert cli_main(argv) == 0  # compare takes the ensemble's folder like any model's
    inputs = json.loads((compared / "compare.json").read_text())["inputs"]
    assert [entry["name"] for entry in inputs] == ["a", "ensemble"] and inputs[1]["source"].endswith("predictions.csv")


def test_a_rank_ensemble_is_not_calibrated_and_says_why(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path, studies=40)
    predictions_for(paths, list(COMPETITION_LABELS), seed=1).to_csv(tmp_path / "a.csv", index=False)
    logits = predictions_for(paths, list(COMPETITION_LABELS), seed=2)
    logits[list(COMPETITION_LABELS)] = 8 * logits[list(COMPETITION_LABELS)] - 4  # another scale
    logits.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "ranked"
    argv = ["evaluate", "--predictions", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--groundtruth", str(gt)]
    assert cli_main([*argv, "--ensemble", "rank", "--output", str(out), "--bootstrap", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores_are_probabilities"] is False  # mean ranks lie in (0, 1] but are not probabilities
    assert "mean ranks" in metrics["calibration"]["skipped"] and not (out / "calibration.png").exists()
    assert "rank of a.csv, b.csv" in (out / "metrics.md").read_text()


def test_an_age_that_is_not_a_number_costs_only_the_age_subgroups(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path, studies=40)
    truth = pd.read_csv(gt, dtype=str)
    truth.loc[0, "Age"] = "90+"
    truth.to_csv(gt, index=False)
    predictions_for(paths, list(COMPETITION_LABELS)).to_csv(tmp_path / "pred.csv", index=False)
    scored, _ = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=0)
    assert set(scored.scores["per_label"]) <= set(COMPETITION_LABELS) and scored.scores["per_label"]
    assert all(group is None for group in scored.groups["age"]) and scored.groups["sex"][0] == "Female"


def test_rank_averaging_uses_only_each_members_order():
    logits = np.array([[-3.0], [0.5], [9.0], [2.0]])
    probabilities = np.array([[0.1], [0.2], [0.4], [0.3]])  # the same order
    assert np.array_equal(combine([logits, probabilities], "rank"), np.array([[0.25], [0.5], [1.0], [0.75]]))
    assert np.array_equal(combine([logits, logits * 100], "rank"), combine([logits], "rank"))
    with pytest.raises(ValueError, match="same \\(rows, labels\\) shape"):
        combine([logits, probabilities[:3]])


def _saved(family: str, folder, seed: int):
    torch.manual_seed(seed)
    built = tiny_model(family, labels=list(COMPETITION_LABELS))
    built.model.save_pretrained(folder)
    built.processor.save_pretrained(folder)
    return str(folder)


def test_an_ensemble_of_two_models_scores_the_mean_of_their_predictions(prepared_dir, tmp_path):
    first, second = _saved("vit", tmp_path / "a", 0), _saved("deit", tmp_path / "b", 1)
    options = {"split": "validation", "views": "frontal", "n_bootstrap": 0, "progress": False}
    _, alone_a, _ = evaluate_model(first, prepared_dir, **options)
    _, alone_b, _ = evaluate_model(second, prepared_dir, **options)
    scored, together, summary = evaluate_model([first, second], prepared_dir, **options)
    labels = list(COMPETITION_LABELS)
    assert list(together["Path"]) == list(alone_a["Path"])
    assert np.allclose(together[labels].to_numpy(), (alone_a[labels].to_numpy() + alone_b[labels].to_numpy()) / 2)
    assert summary["ensemble"] == {"members": ["a", "b"], "combination": "mean"} and "thresholds" not in summary


def test_set_thresholds_saves_them_and_predict_prints_decisions(prepared_dir, tmp_path, capsys):
    folder = _saved("vit", tmp_path / "model", 0)
    config_before = json.loads((tmp_path / "model" / "config.json").read_text())
    argv = ["evaluate", "--model", folder, "--data", str(prepared_dir), "--views", "frontal", "--bootstrap", "0"]
    bad_reader = tmp_path / "reader.csv"
    bad_reader.write_text("Study,Edema\nvalid/patient00001/study1,2\n")
    failed = [*argv, "--set-thresholds", "youden", "--readers", str(bad_reader), "--output", str(tmp_path / "bad")]
    assert cli_main(failed) == 2  # a bad reader file: nothing is saved into the model either
    assert "reader.csv: line 2" in capsys.readouterr().err
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == config_before
    assert cli_main([*argv, "--set-thresholds", "sensitivity:0.9", "--output", str(tmp_path / "eval")]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert {key: value for key, value in config.items() if not key.startswith("decision_")} == config_before
    assert config[CONFIG_THRESHOLD_SOURCE]["rule"] == "sensitivity:0.9"
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    points = metrics["operating_points"]
    assert points["optimistic"]  # chosen on the split it reports
    for label, point in points["per_label"].items():
        assert point["threshold"] == config[CONFIG_THRESHOLDS][label] and point["sensitivity"] >= 0.9
    # predict: the decision next to each probability, at the saved thresholds
    thresholds = config[CONFIG_THRESHOLDS]
    frame = pd.DataFrame({"Path": ["a.png", "b.png"], **{label: [0.0, 1.0] for label in thresholds}})
    text = predictions_text(frame, thresholds)
    assert text.splitlines()[1].count(" -") == len(thresholds) and text.splitlines()[2].count(" +") == len(thresholds)
    assert "sensitivity:0.9" in decision_note(thresholds, config[CONFIG_THRESHOLD_SOURCE])
    assert "no saved decision thresholds" in decision_note({}, {})
