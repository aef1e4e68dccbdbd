"""Paired comparison: DeLong against a hand-worked case and a second, explicit implementation; the paired
bootstrap; Holm; and ``chexpert-hf compare`` on files and folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from chexpert_hf.cli import main as cli_main
from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.evaluation.compare import (
    MEAN,
    compare,
    delong_covariance,
    delong_test,
    holm,
    input_names,
    load_inputs,
    paired_bootstrap,
)
from chexpert_hf.evaluation.evaluate import read_groundtruth
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS

# --- DeLong ------------------------------------------------------------------------------------------------------


def test_delong_on_a_hand_worked_case_with_a_tie():
    """Positives then negatives. A: 0.9, 0.6 | 0.7, 0.2, 0.1; B: 0.8, 0.3 | 0.3, 0.5, 0.1 (a tied pair).

    Structural components by hand: A's positives beat 3/3 and 2/3 negatives (AUROC 5/6), B's 3/3 and 1.5/3
    (0.75). S10 = [[1/18, 1/12], [1/12, 1/8]], S01 = [[1/12, 0], [0, 1/16]]; with m = 2, n = 3:
    var(A) = 1/18, var(B) = 1/12, cov = 1/24, so var(A - B) = 1/18 and z = (1/12) / sqrt(1/18)."""
    truth = np.array([1, 1, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.7, 0.2, 0.1])
    b = np.array([0.8, 0.3, 0.3, 0.5, 0.1])
    auroc, covariance = delong_covariance(np.vstack([a, b]), truth)
    np.testing.assert_allclose(auroc, [5 / 6, 3 / 4])
    np.testing.assert_allclose(covariance, [[1 / 18, 1 / 24], [1 / 24, 1 / 12]])
    result = delong_test(a, b, truth)
    z = (1 / 12) / math.sqrt(1 / 18)
    assert result["z"] == pytest.approx(z)
    assert result["p"] == pytest.approx(2 * norm.sf(z))
    assert result["ci95"] == pytest.approx(
        [1 / 12 - 1.959964 * math.sqrt(1 / 18), 1 / 12 + 1.959964 * math.sqrt(1 / 18)]
    )


def explicit_delong(a: np.ndarray, b: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """The same test from the Mann-Whitney kernel, O(m n): psi(x, y) = 1, 1/2, 0 for x >, =, < y; for each
    positive the mean kernel over negatives (V10), for each negative over positives (V01)."""

    def components(scores):
        positive, negative = scores[truth == 1], scores[truth == 0]
        psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    v10_a, v01_a, auc_a = components(a)
    v10_b, v01_b, auc_b = components(b)
    m, n = len(v10_a), len(v01_a)

    def cov(x, y):
        return float(np.sum((x - x.mean()) * (y - y.mean())) / (len(x) - 1))

    var = (cov(v10_a, v10_a) + cov(v10_b, v10_b) - 2 * cov(v10_a, v10_b)) / m
    var += (cov(v01_a, v01_a) + cov(v01_b, v01_b) - 2 * cov(v01_a, v01_b)) / n
    return auc_a, auc_b, (auc_a - auc_b) / math.sqrt(var)


@pytest.mark.parametrize("seed", range(5))
def test_delong_equals_an_explicit_implementation_with_ties(seed):
    rng = np.random.default_rng(seed)
    cases = int(rng.integers(30, 200))
    truth = (rng.random(cases) < rng.uniform(0.1, 0.6)).astype(int)
    truth[:2] = [0, 1]
    signal = truth * rng.uniform(0.2, 1.5)
    a = np.round(signal + rng.normal(size=cases), 1)  # rounded: many ties, within and across classes
    b = np.round(0.6 * a + 0.8 * signal + rng.normal(size=cases), 1)
    auc_a, auc_b, z = explicit_delong(a, b, truth)
    result = delong_test(a, b, truth)
    assert result["auroc_a"] == pytest.approx(roc_auc_score(truth, a), abs=1e-12)
    assert result["auroc_a"] == pytest.approx(auc_a, abs=1e-12) and result["auroc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert result["z"] == pytest.approx(z, rel=1e-9)


def test_delong_leaves_out_uncertain_cases_and_gives_p_1_for_the_same_ranking():
    rng = np.random.default_rng(3)
    truth = (rng.random(80) < 0.4).astype(float)
    a = truth + rng.normal(size=80)
    uncertain = truth.copy()
    uncertain[:10] = np.nan
    left_out = delong_test(a, -a, uncertain)
    direct = delong_test(a[10:], -a[10:], truth[10:])
    assert left_out == direct
    same = delong_test(a, 3 * a + 1, truth)  # another scale, the same order
    assert same["difference"] == 0 and same["p"] == 1.0


# --- paired bootstrap and Holm -------------------------------------------------------------------------------------


def two_models(studies: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((studies, 3)) < 0.35).astype(float)
    shared = rng.normal(size=(studies, 3))  # what makes a study hard for both
    a = targets * 1.2 + shared + 0.5 * rng.normal(size=targets.shape)
    b = targets * 0.8 + shared + 0.5 * rng.normal(size=targets.shape)
    return a, b, targets


def test_the_paired_bootstrap_is_reproducible_by_seed_and_its_ci_holds_the_observed_difference():
    a, b, targets = two_models()
    first = paired_bootstrap(a, b, targets, resamples=2000, seed=5)
    assert paired_bootstrap(a, b, targets, resamples=2000, seed=5) == first
    other = paired_bootstrap(a, b, targets, resamples=2000, seed=6)
    assert other["ci95"] != first["ci95"]
    observed = np.mean(
        [roc_auc_score(targets[:, c], a[:, c]) - roc_auc_score(targets[:, c], b[:, c]) for c in range(3)]
    )
    assert first["difference"] == pytest.approx(observed)
    assert first["ci95"][0] < observed < first["ci95"][1]
    assert 0 < first["p"] <= 1 and first["undefined"] == 0
    swapped = paired_bootstrap(b, a, targets, resamples=2000, seed=5)
    assert swapped["difference"] == pytest.approx(-observed)
    assert swapped["ci95"] == pytest.approx([-first["ci95"][1], -first["ci95"][0]])
    assert swapped["p"] == pytest.approx(first["p"])


def test_the_paired_bootstrap_uses_the_pairing():
    """Two models that share most of their noise differ consistently: the paired interval is much narrower than
    the one from resampling each model on its own draws."""
    a, b, targets = two_models(seed=1)
    paired = paired_bootstrap(a, b, targets, resamples=2000, seed=0)
    from chexpert_hf.evaluation.metrics import bootstrap_auroc

    alone_a = bootstrap_auroc(a, targets, 2000, seed=1).mean(axis=1)
    alone_b = bootstrap_auroc(b, targets, 2000, seed=2).mean(axis=1)
    unpaired = np.percentile(alone_a - alone_b, [2.5, 97.5])
    assert paired["ci95"][1] - paired["ci95"][0] < 0.8 * (unpaired[1] - unpaired[0])


def test_the_same_model_twice_ties_with_p_1():
    a, _, targets = two_models()
    result = paired_bootstrap(a, a.copy(), targets, resamples=2000, seed=0)
    assert result["difference"] == 0 and result["ci95"] == [0.0, 0.0] and result["p"] == 1.0


def test_holm_on_a_hand_case():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at least 0.06
    adjusted = holm([0.01, 0.04, math.nan, 0.03, 0.005])
    assert adjusted[:2] == pytest.approx([0.03, 0.06]) and math.isnan(adjusted[2])
    assert adjusted[3:] == pytest.approx([0.06, 0.02])


# --- compare on files --------------------------------------------------------------------------------------------


def write_groundtruth(path, studies: int = 60, seed: int = 0) -> list[str]:
    """A valid.csv of ``studies`` one-image studies (Fracture one class); returns the image paths."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((studies, 14)) < 0.35).astype(int)
    labels[:, CHEXPERT_LABELS.index("Fracture")] = 0
    labels[:2, :] = [[0] * 14, [1] * 14]
    labels[:, CHEXPERT_LABELS.index("Fracture")] = 0
    paths = [f"CheXpert-v1.0-small/valid/patient{64541 + i:05d}/study1/view1_frontal.jpg" for i in range(studies)]
    frame = pd.DataFrame(labels, columns=list(CHEXPERT_LABELS))
    frame.insert(0, "Path", paths)
    frame.to_csv(path, index=False)
    return paths


def write_predictions(path, paths, truth_csv, strength: float, seed: int, labels=COMPETITION_LABELS):
    truth = pd.read_csv(truth_csv)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"Path": paths})
    for label in labels:
        frame[label] = strength * truth[label].to_numpy()[: len(paths)] + rng.normal(size=len(paths))
    frame.to_csv(path, index=False)
    return frame


def test_compare_reads_folders_and_files_alike_and_tests_every_pair(tmp_path):
    gt = tmp_path / "valid.csv"
    paths = write_groundtruth(gt)
    for name, strength, seed in (("strong", 2.0, 1), ("weak", 0.3, 2), ("other", 1.0, 3)):
        (tmp_path / name).mkdir()
        write_predictions(tmp_path / name / "predictions.csv", paths, gt, strength, seed)
    truth = read_groundtruth(gt)
    folders = load_inputs([tmp_path / "strong", tmp_path / "weak", tmp_path / "other"], truth)
    files = load_inputs([tmp_path / n / "predictions.csv" for n in ("strong", "weak", "other")], truth)
    assert [item.name for item in folders] == [item.name for item in files] == ["strong", "weak", "other"]
    result = compare(folders, seed=2)
    assert json.dumps(result, default=str) == json.dumps(compare(files, seed=2), default=str)
    rows = result["comparisons"]
    assert [(row["a"], row["b"]) for row in rows[:: len(COMPETITION_LABELS) + 1]] == [
        ("strong", "weak"),
        ("strong", "other"),
        ("weak", "other"),
    ]
    tested = [row for row in rows if "p" in row]
    assert len(tested) == 3 * 6
    adjusted = holm([row["p"] for row in tested])
    assert [row["p_holm"] for row in tested] == pytest.approx(adjusted)
    strong_vs_weak = {row["label"]: row for row in rows if (row["a"], row["b"]) == ("strong", "weak")}
    assert strong_vs_weak[MEAN]["verdict"] == "better" and strong_vs_weak[MEAN]["test"] == "paired bootstrap"
    edema = strong_vs_weak["Edema"]
    truth_edema = pd.read_csv(gt)["Edema"]
    strong = pd.read_csv(tmp_path / "strong" / "predictions.csv")["Edema"]
    assert edema["auroc_a"] == pytest.approx(roc_auc_score(truth_edema, strong))
    against = compare(folders, reference="weak", seed=2)["comparisons"]
    assert {(row["a"], row["b"]) for row in against} == {("strong", "weak"), ("other", "weak")}


def test_scores_of_any_scale_compare_as_their_order(tmp_path):
    gt = tmp_path / "valid.csv"
    paths = write_groundtruth(gt)
    frame = write_predictions(tmp_path / "logits.csv", paths, gt, 1.5, 1)
    probabilities = frame.copy()
    probabilities[list(COMPETITION_LABELS)] = 1 / (1 + np.exp(-frame[list(COMPETITION_LABELS)]))
    probabilities.to_csv(tmp_path / "probabilities.csv", index=False)
    result = compare(load_inputs([tmp_path / "logits.csv", tmp_path / "probabilities.csv"], read_groundtruth(gt)))
    assert all(row["difference"] == pytest.approx(0, abs=1e-12) for row in result["comparisons"])
    assert all(row["verdict"] == "tie" for row in result["comparisons"])
    assert [item["scores_are_probabilities"] for item in result["inputs"]] == [False, True]


def test_compare_refuses_inputs_that_score_other_studies(tmp_path):
    gt = tmp_path / "valid.csv"
    paths = write_groundtruth(gt)
    write_predictions(tmp_path / "a.csv", paths, gt, 1.0, 1)
    write_predictions(tmp_path / "b.csv", paths[:-1], gt, 1.0, 2)
    with pytest.raises(
        CheXpertFormatError, match=r"b\.csv \(b\) lacks 1 study\(ies\) that a scores: patient64600/study1"
    ):
        load_inputs([tmp_path / "a.csv", tmp_path / "b.csv"], read_groundtruth(gt))


def test_a_label_missing_from_one_input_is_noted_and_left_out_of_the_mean(tmp_path):
    gt = tmp_path / "valid.csv"
    paths = write_groundtruth(gt)
    write_predictions(tmp_path / "a.csv", paths, gt, 1.0, 1)
    four = [label for label in COMPETITION_LABELS if label != "Edema"]
    write_predictions(tmp_path / "b.csv", paths, gt, 1.0, 2, labels=four)
    result = compare(load_inputs([tmp_path / "a.csv", tmp_path / "b.csv"], read_groundtruth(gt)))
    rows = {row["label"]: row for row in result["comparisons"]}
    assert rows["Edema"]["note"] == "not scored by b" and "p" not in rows["Edema"]
    assert rows[MEAN]["labels"] == four
    assert rows[MEAN]["auroc_a"] == pytest.approx(np.mean([rows[label]["auroc_a"] for label in four]))


def test_input_names_tell_runs_apart():
    assert input_names(["runs/demo_head/seed0", "runs/demo_full/seed0"]) == ["demo_head/seed0", "demo_full/seed0"]
    assert input_names(["a/pred.csv", "b/other.csv"]) == ["pred", "other"]


def test_the_command_writes_the_reports_and_prints_the_table(tmp_path, capsys):
    gt = tmp_path / "valid.csv"
    paths = write_groundtruth(gt)
    write_predictions(tmp_path / "a.csv", paths, gt, 2.0, 1)
    write_predictions(tmp_path / "b.csv", paths, gt, 0.5, 2)
    out = tmp_path / "report"
    args = ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--groundtruth", str(gt), "--output", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "p (Holm)" in printed and "Atelectasis" in printed and "mean of 5" in printed
    saved = json.loads((out / "compare.json").read_text())
    assert saved["n_studies"] == 60 and len(saved["comparisons"]) == 6
    markdown = (out / "compare.md").read_text()
    assert "| a | b | **mean of 5** |" in markdown and "DeLong" in markdown and "![" in markdown
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert cli_main([*args[:3], "--groundtruth", str(gt), "--reference", "c"]) == 2
    assert "--reference 'c' is not one of the inputs: a, b" in capsys.readouterr().err
    assert cli_main([*args, "--bootstrap", "100"]) == 2


def test_ground_truth_from_a_prepared_split_is_the_valid_csv(synthetic_root, prepared_dir, tmp_path, capsys):
    """--data PREPARED --split validation scores against the labels prepare stored: the same as valid.csv."""
    truth = pd.read_csv(synthetic_root / "valid.csv")
    for name, seed in (("a", 1), ("b", 2)):
        rng = np.random.default_rng(seed)
        frame = pd.DataFrame(rng.normal(size=(len(truth), 5)) + truth[list(COMPETITION_LABELS)].fillna(0).to_numpy())
        frame.columns = list(COMPETITION_LABELS)
        frame.insert(0, "Path", truth["Path"])
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    inputs = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert cli_main(["compare", *inputs, "--data", str(prepared_dir), "--output", str(tmp_path / "d")]) == 0
    groundtruth = str(synthetic_root / "valid.csv")
    assert cli_main(["compare", *inputs, "--groundtruth", groundtruth, "--output", str(tmp_path / "g")]) == 0
    capsys.readouterr()
    from_data = json.loads((tmp_path / "d" / "compare.json").read_text())
    from_csv = json.loads((tmp_path / "g" / "compare.json").read_text())
    assert from_data["comparisons"] == from_csv["comparisons"]
    assert from_data["n_studies"] == truth["Path"].str.extract(r"(patient\d+/study\d+)")[0].nunique()


def test_delong_needs_two_cases_of_each_class():
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative cases; got 1 and 3"):
        delong_test(np.array([0.9, 0.2, 0.3, 0.1]), np.array([0.5, 0.4, 0.3, 0.2]), np.array([1, 0, 0, 0]))


def test_a_label_both_models_rank_perfectly_is_not_counted_in_holm(tmp_path):
    gt = tmp_path / "valid.csv"
    paths = write_groundtruth(gt)
    for name, seed in (("a", 1), ("b", 2)):
        frame = write_predictions(tmp_path / f"{name}.csv", paths, gt, 1.0, seed)
        frame["Edema"] = pd.read_csv(gt)["Edema"] + 0.1 * seed  # both perfect on Edema
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    result = compare(load_inputs([tmp_path / "a.csv", tmp_path / "b.csv"], read_groundtruth(gt)))
    rows = {row["label"]: row for row in result["comparisons"]}
    assert rows["Edema"]["degenerate"] and rows["Edema"]["p_holm"] == 1.0 and rows["Edema"]["verdict"] == "tie"
    counted = [row for row in result["comparisons"] if not row.get("degenerate")]
    assert [row["p_holm"] for row in counted] == pytest.approx(holm([row["p"] for row in counted]))
