"""Scoring predictions files against CheXpert ground truth, the bootstrap intervals, and the report files:
against direct scikit-learn computations on hand-made predictions, and every bad input the evaluator refuses."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from conftest import write_csv
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from chexpert_hf.cli.main import main as cli_main
from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.data.synthetic import TRAIN_HEADER
from chexpert_hf.evaluation.evaluate import read_predictions, score_predictions, write_evaluation
from chexpert_hf.evaluation.metrics import bootstrap_auroc, score
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS

RNG_LABELS = list(CHEXPERT_LABELS)


def groundtruth_images(tmp_path, studies: int = 40, seed: int = 0):
    """A valid.csv: ``studies`` studies of one or two images, random 0/1 labels shared by a study's images,
    Fracture all negative (one class), plus the image paths and each image's study."""
    rng = np.random.default_rng(seed)
    rows, paths, study_of = [], [], []
    for index in range(studies):
        labels = (rng.random(14) < 0.35).astype(int)
        labels[CHEXPERT_LABELS.index("Fracture")] = 0
        labels[CHEXPERT_LABELS.index("Edema")] = index % 2  # both classes, surely
        views = ["view1_frontal.jpg"] + (["view2_lateral.jpg"] if index % 3 == 0 else [])
        for view in views:
            path = f"CheXpert-v1.0-small/valid/patient{64541 + index:05d}/study1/{view}"
            rows.append(
                [
                    path,
                    "Female",
                    50,
                    "Frontal" if "frontal" in view else "Lateral",
                    "AP" if "frontal" in view else "",
                    *(f"{v:.1f}" for v in labels),
                ]
            )
            paths.append(path)
            study_of.append(f"patient{64541 + index:05d}/study1")
    return write_csv(tmp_path / "valid.csv", TRAIN_HEADER, rows), paths, study_of


def predictions_for(paths, labels, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.random((len(paths), len(labels))).round(4), columns=labels)
    frame.insert(0, "Path", paths)
    return frame


def expected_study_scores(gt_csv, pred: pd.DataFrame, labels):
    """Study-level AUROC/AUPRC computed directly: pandas max per study, then scikit-learn."""
    truth = pd.read_csv(gt_csv)
    truth["study"] = truth["Path"].str.extract(r"(patient\d+/study\d+)")[0]
    pred = pred.assign(study=pred["Path"].str.extract(r"(patient\d+/study\d+)")[0])
    truth_by_study = truth.groupby("study")[labels].max()
    pred_by_study = pred.groupby("study")[labels].max().loc[truth_by_study.index]
    out = {}
    for label in labels:
        y, p = truth_by_study[label].to_numpy(), pred_by_study[label].to_numpy()
        if len(set(y)) == 2:
            out[label] = (roc_auc_score(y, p), average_precision_score(y, p), int(y.sum()), int((1 - y).sum()))
    return out, len(truth_by_study)


def test_study_scores_equal_sklearn_with_a_one_class_label_skipped(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path)
    pred = predictions_for(paths, RNG_LABELS)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    scored, summary = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=200)
    expected, studies = expected_study_scores(gt, pred, RNG_LABELS)
    scores = scored.scores
    assert scores["n_studies"] == studies == 40
    assert "Fracture" in scores["skipped_labels"] and "Fracture" not in scores["per_label"]
    assert set(scores["per_label"]) == set(expected)
    for label, (auroc, auprc, positives, negatives) in expected.items():
        entry = scores["per_label"][label]
        assert entry["auroc"] == pytest.approx(auroc, abs=1e-12)
        assert entry["auprc"] == pytest.approx(auprc, abs=1e-12)
        assert (entry["positives"], entry["negatives"]) == (positives, negatives)
    assert scores["mean_auroc"] == pytest.approx(np.mean([expected[label][0] for label in COMPETITION_LABELS]))
    assert scores["mean_auroc_all"] == pytest.approx(np.mean([value[0] for value in expected.values()]))
    assert summary["unscored_predictions"] == 0 and summary["level"] == "study"


def test_shuffled_columns_and_rows_give_the_same_scores_and_intervals(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path)
    pred = predictions_for(paths, RNG_LABELS)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    rng = np.random.default_rng(5)
    shuffled = pred[["Path", *rng.permutation(RNG_LABELS)]].sample(frac=1.0, random_state=3)
    shuffled.columns = ["Path", *(name.replace(" ", "_") for name in shuffled.columns[1:])]  # CSV-style names
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    first, _ = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=300, seed=4)
    second, _ = score_predictions(tmp_path / "shuffled.csv", gt, n_bootstrap=300, seed=4)
    for label, entry in first.scores["per_label"].items():
        assert second.scores["per_label"][label] == entry  # the same resamples for every label, in any order
    assert second.scores["mean_auroc_ci95"] == first.scores["mean_auroc_ci95"]


def test_only_the_competition_labels(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path)
    pred = predictions_for(paths, list(COMPETITION_LABELS))
    pred.to_csv(tmp_path / "pred.csv", index=False)
    scored, _ = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=0)
    expected, _ = expected_study_scores(gt, pred, list(COMPETITION_LABELS))
    assert list(scored.scores["per_label"]) == [label for label in COMPETITION_LABELS if label in expected]
    assert scored.scores["mean_auroc"] == pytest.approx(np.mean([value[0] for value in expected.values()]))
    assert scored.scores["mean_auroc"] == scored.scores["mean_auroc_all"]
    assert "bootstrap" not in scored.scores


def test_study_rows_against_a_study_level_groundtruth(tmp_path):
    rng = np.random.default_rng(2)
    studies = [f"test/patient{64741 + i:05d}/study1" for i in range(30)]
    labels = (rng.random((30, 14)) < 0.4).astype(int)
    labels[:, CHEXPERT_LABELS.index("Edema")] = np.arange(30) % 2
    write_csv(
        tmp_path / "groundtruth.csv",
        ["Study", *CHEXPERT_LABELS],
        [[study, *row] for study, row in zip(studies, labels.tolist(), strict=True)],
    )
    probabilities = rng.random((30, 5))
    pred = pd.DataFrame(probabilities, columns=list(COMPETITION_LABELS))
    pred.insert(0, "Study", [f"CheXpert-v1.0/{study}" for study in studies])  # another prefix: same studies
    pred.iloc[::-1].to_csv(tmp_path / "pred.csv", index=False)
    scored, _ = score_predictions(tmp_path / "pred.csv", tmp_path / "groundtruth.csv", n_bootstrap=0)
    for column, label in enumerate(COMPETITION_LABELS):
        truth = labels[:, CHEXPERT_LABELS.index(label)]
        expected = roc_auc_score(truth, probabilities[:, column])
        assert scored.scores["per_label"][label]["auroc"] == pytest.approx(expected)


def test_image_predictions_are_aggregated_for_a_study_groundtruth(tmp_path):
    gt, paths, study_of = groundtruth_images(tmp_path)
    pred = predictions_for(paths, ["Edema"])
    pred.to_csv(tmp_path / "pred.csv", index=False)
    study_level = pd.read_csv(gt).assign(Study=lambda f: f["Path"].str.replace(r"/view.*$", "", regex=True))
    study_level = study_level.groupby("Study", sort=False)[list(CHEXPERT_LABELS)].max().reset_index()
    study_level.to_csv(tmp_path / "groundtruth.csv", index=False)
    from_images, _ = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=100)
    from_studies, _ = score_predictions(tmp_path / "pred.csv", tmp_path / "groundtruth.csv", n_bootstrap=100)
    assert from_studies.scores["per_label"]["Edema"] == from_images.scores["per_label"]["Edema"]


def test_per_image_scoring(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path)
    pred = predictions_for(paths, ["Edema"])
    pred.to_csv(tmp_path / "pred.csv", index=False)
    scored, summary = score_predictions(tmp_path / "pred.csv", gt, per_image=True, n_bootstrap=50)
    truth = pd.read_csv(gt)["Edema"].to_numpy()
    assert scored.scores["n_images"] == len(paths) and "n_studies" not in scored.scores
    assert scored.scores["per_label"]["Edema"]["auroc"] == pytest.approx(roc_auc_score(truth, pred["Edema"]))
    assert scored.scores["bootstrap"]["unit"] == "image" and summary["level"] == "image"


def test_unscored_predictions_are_counted(tmp_path):
    gt, paths, _ = groundtruth_images(tmp_path, studies=10)
    extra = ["CheXpert-v1.0-small/valid/patient70000/study1/view1_frontal.jpg"]
    predictions_for(paths + extra, ["Edema"]).to_csv(tmp_path / "pred.csv", index=False)
    _, summary = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=0)
    assert summary["unscored_predictions"] == 1


# --- bad input ------------------------------------------------------------------------------------------------


def bad_case(tmp_path, change):
    gt, paths, _ = groundtruth_images(tmp_path, studies=10)
    pred = predictions_for(paths, ["Edema", "Cardiomegaly"]).astype({"Edema": object})
    pred = change(pred)
    pred.to_csv(tmp_path / "pred.csv", index=False)
    with pytest.raises(CheXpertFormatError) as raised:
        score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=0)
    return str(raised.value)


def test_a_study_without_a_prediction_is_named(tmp_path):
    message = bad_case(tmp_path, lambda p: p[~p["Path"].str.contains("patient64543")])
    assert "1 study(ies)" in message and "patient64543/study1" in message and "line" in message


def test_a_repeated_row_is_named_by_its_lines(tmp_path):
    message = bad_case(tmp_path, lambda p: pd.concat([p, p.iloc[[2]]]))
    # 10 studies, 4 with a lateral view: 14 image rows (lines 2-15), the repeat of row 2 on line 16
    assert re.search(r"lines \[4, 16\]", message) and "patient64542/study1/view1_frontal.jpg" in message


@pytest.mark.parametrize("value", ["abc", "", "inf", "-inf", "nan"])
def test_a_value_that_is_not_a_finite_number_is_named(tmp_path, value):
    def change(pred):
        pred.loc[3, "Edema"] = value
        return pred

    message = bad_case(tmp_path, change)
    assert "column 'Edema'" in message and "line 5" in message and "not finite numbers" in message


def test_scores_outside_0_1_score_as_roc_auc_score_and_are_marked(tmp_path):
    """Leaderboard files hold sums of several models' outputs and logits: AUROC needs only their order."""
    gt, paths, _ = groundtruth_images(tmp_path)
    rng = np.random.default_rng(11)
    pred = predictions_for(paths, list(COMPETITION_LABELS))
    pred[list(COMPETITION_LABELS)] = rng.uniform(-3.0, 5.0, size=(len(pred), len(COMPETITION_LABELS)))
    pred.to_csv(tmp_path / "pred.csv", index=False)
    scored, summary = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=0)
    expected, _ = expected_study_scores(gt, pred, list(COMPETITION_LABELS))
    assert expected  # the case has scorable labels
    for label, values in expected.items():
        assert scored.scores["per_label"][label]["auroc"] == pytest.approx(values[0], abs=1e-12)
    assert scored.scores["scores_are_probabilities"] is False
    probabilities = predictions_for(paths, list(COMPETITION_LABELS))
    probabilities.to_csv(tmp_path / "probabilities.csv", index=False)
    assert score_predictions(tmp_path / "probabilities.csv", gt, n_bootstrap=0)[0].scores["scores_are_probabilities"]


def test_an_unknown_column_is_named(tmp_path):
    message = bad_case(tmp_path, lambda p: p.assign(Pneumonitis=0.5))
    assert "unknown column(s) ['Pneumonitis']" in message and "Pleural Effusion" in message


def test_a_file_without_key_column_or_with_both(tmp_path):
    assert "no 'Study' or 'Path' column" in bad_case(tmp_path, lambda p: p.drop(columns="Path"))
    assert "both a 'Path' and a 'Study' column" in bad_case(tmp_path, lambda p: p.assign(Study="x"))


def test_a_path_that_is_not_a_chexpert_path(tmp_path):
    def change(pred):
        pred.loc[0, "Path"] = "images/xray.png"
        return pred

    assert "line 2" in (message := bad_case(tmp_path, change)) and "not a CheXpert image path" in message


def test_per_image_needs_image_rows(tmp_path):
    rng = np.random.default_rng(0)
    write_csv(
        tmp_path / "pred.csv",
        ["Study", "Edema"],
        [[f"valid/patient{64541 + i}/study1", rng.random()] for i in range(10)],
    )
    gt, _, _ = groundtruth_images(tmp_path, studies=10)
    with pytest.raises(CheXpertFormatError, match="--per-image needs one row per image"):
        score_predictions(tmp_path / "pred.csv", gt, per_image=True)


def test_read_predictions_accepts_csv_label_spellings(tmp_path):
    write_csv(
        tmp_path / "pred.csv",
        ["Pleural_Effusion", "Path", "lung opacity"],
        [[0.2, "valid/patient64541/study1/view1_frontal.jpg", 0.7]],
    )
    rows = read_predictions(tmp_path / "pred.csv")
    assert rows.labels == ["Pleural Effusion", "Lung Opacity"] and rows.values.tolist() == [[0.2, 0.7]]


# --- bootstrap intervals --------------------------------------------------------------------------------------


def test_bootstrap_auroc_equals_sklearn_on_the_same_resamples():
    rng = np.random.default_rng(1)
    probabilities = np.round(rng.random((57, 3)), 1)  # many ties
    targets = (rng.random((57, 3)) < 0.3).astype(float)
    targets[rng.random((57, 3)) < 0.1] = np.nan
    draws = bootstrap_auroc(probabilities, targets, 30, seed=3, chunk=7)
    rows = np.random.default_rng(3).integers(0, 57, size=(30, 57))  # the draws, chunk by chunk, in order
    for resample in range(30):
        for column in range(3):
            truth, scores = targets[rows[resample], column], probabilities[rows[resample], column]
            kept = ~np.isnan(truth)
            if len(set(truth[kept])) < 2:
                assert math.isnan(draws[resample, column])
            else:
                assert draws[resample, column] == pytest.approx(roc_auc_score(truth[kept], scores[kept]), abs=1e-12)


def test_intervals_contain_the_estimate_and_are_reproducible_by_seed():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 5)) < 0.3).astype(float)
    probabilities = np.clip(0.25 * targets + 0.75 * rng.random((300, 5)), 0, 1)
    studies = np.repeat(np.arange(150), 2)
    first = score(probabilities, targets, COMPETITION_LABELS, study_ids=studies, n_bootstrap=1000, seed=7)
    again = score(probabilities, targets, COMPETITION_LABELS, study_ids=studies, n_bootstrap=1000, seed=7)
    other = score(probabilities, targets, COMPETITION_LABELS, study_ids=studies, n_bootstrap=1000, seed=8)
    for label, entry in first["per_label"].items():
        low, high = entry["auroc_ci95"]
        assert low < entry["auroc"] < high and high - low < 0.4
        assert again["per_label"][label]["auroc_ci95"] == entry["auroc_ci95"]
        assert other["per_label"][label]["auroc_ci95"] != entry["auroc_ci95"]
    low, high = first["mean_auroc_ci95"]
    assert low < first["mean_auroc"] < high
    # the mean over 5 labels varies less than a single label
    assert high - low < min(e["auroc_ci95"][1] - e["auroc_ci95"][0] for e in first["per_label"].values())
    assert first["bootstrap"] == {"resamples": 1000, "seed": 7, "confidence": 0.95, "unit": "study", "undefined": {}}


# --- reports and the command --------------------------------------------------------------------------------


def test_reports_and_the_command_line(tmp_path, capsys):
    gt, paths, _ = groundtruth_images(tmp_path)
    predictions_for(paths, RNG_LABELS).to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "report"
    code = cli_main(
        [
            "evaluate",
            "--predictions",
            str(tmp_path / "pred.csv"),
            "--groundtruth",
            str(gt),
            "--output",
            str(out),
            "--bootstrap",
            "1000",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mean_auroc", "mean_auroc_all", "n_studies", "per_label", "skipped_labels"} <= set(metrics)
    assert metrics["skipped_labels"] == ["Fracture"] and metrics["bootstrap"]["resamples"] == 1000
    edema = metrics["per_label"]["Edema"]
    assert set(edema) == {"auroc", "auroc_ci95", "auprc", "positives", "negatives"}
    assert f"{edema['auroc']:.4f}" in printed and f"{metrics['mean_auroc']:.4f}" in printed
    table = (out / "metrics.md").read_text()
    assert f"| Edema ★ | {edema['auroc']:.4f} | {edema['auroc_ci95'][0]:.3f}–{edema['auroc_ci95'][1]:.3f} |" in table
    assert "Fracture" in table and "![ROC curves](roc.png)" in table
    with Image.open(out / "roc.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > 500
    written = ["calibration.png", "metrics.json", "metrics.md", "roc.png", "subgroups.json", "subgroups.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, "subgroups.png"])  # no temporary files


def test_the_command_names_bad_input_and_writes_nothing(tmp_path, capsys):
    gt, paths, _ = groundtruth_images(tmp_path, studies=10)
    pred = predictions_for(paths, ["Edema"]).astype({"Edema": object})
    pred.loc[4, "Edema"] = "n/a"
    pred.to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "report"
    code = cli_main(
        ["evaluate", "--predictions", str(tmp_path / "pred.csv"), "--groundtruth", str(gt), "--output", str(out)]
    )
    assert code == 2 and "line 6" in capsys.readouterr().err and not out.exists()
    assert cli_main(["evaluate", "--predictions", str(tmp_path / "pred.csv")]) == 2
    assert "--groundtruth" in capsys.readouterr().err


def test_write_evaluation_keeps_the_previous_report_when_writing_fails(tmp_path, monkeypatch):
    gt, paths, _ = groundtruth_images(tmp_path, studies=10)
    predictions_for(paths, ["Edema"]).to_csv(tmp_path / "pred.csv", index=False)
    scored, summary = score_predictions(tmp_path / "pred.csv", gt, n_bootstrap=0)
    write_evaluation(tmp_path / "out", scored, summary, title="first")
    before = (tmp_path / "out" / "metrics.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dumps", broken)
    with pytest.raises(OSError, match="disk full"):
        write_evaluation(tmp_path / "out", scored, summary, title="second")
    assert (tmp_path / "out" / "metrics.json").read_text() == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("scorable", [5, 1])
def test_the_headline_mean_says_how_many_competition_labels_it_covers(scorable):
    """A split where only one competition label has both classes has a "mean" of that one label: the table, the
    Markdown and the ROC title say so, and say nothing extra when all five count."""
    from chexpert_hf.evaluation.reports import metrics_markdown, roc_figure, scores_table

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (60, len(COMPETITION_LABELS))).astype(float)
    targets[:, scorable:] = 0.0  # one class only: AUROC undefined, the label is skipped
    probabilities = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.5, 0, 1)
    scores = score(probabilities, targets, COMPETITION_LABELS)
    assert len(scores["skipped_labels"]) == 5 - scorable
    table, markdown = scores_table(scores), metrics_markdown(scores, title="t")
    figure = roc_figure(probabilities, targets, COMPETITION_LABELS, scores)
    title = figure.axes[0].get_title()
    if scorable == 5:
        assert "mean AUROC, competition labels: " in table and "**mean, competition labels ★**" in markdown
        assert "mean AUROC (competition) " in title and " of 5 " not in table + markdown + title
    else:
        assert "mean AUROC over 1 of 5 competition labels: " in table
        assert "**mean, 1 of 5 competition labels ★**" in markdown and "mean AUROC (1 of 5 competition labels)" in title
