"""Validation scoring: chexpert_hf.evaluation.metrics against direct scikit-learn calls and hand-computed cases, and the
``evaluate`` module against ``score``."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from chexpert_hf.evaluation.metrics import (
    EVALUATE_MODULE,
    aggregate_studies,
    evaluation_targets,
    flat_metrics,
    score,
    snake_case,
)
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS

nan = np.nan


def random_case(rows: int, labels=CHEXPERT_LABELS, seed: int = 0, missing: float = 0.1):
    """Probabilities loosely correlated with 0/1 targets, with a fraction of NaN (left out) targets."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((rows, len(labels))) < 0.3).astype(np.float64)
    probabilities = np.clip(0.3 * targets + 0.7 * rng.random(targets.shape), 0.0, 1.0)
    targets[rng.random(targets.shape) < missing] = nan
    return probabilities, targets


def random_raw(rows: int, width: int, seed: int):
    """Raw CheXpert labels (1 / 0 / -1 / NaN) and float32 probabilities."""
    rng = np.random.default_rng(seed)
    raw = rng.choice(np.array([1.0, 0.0, -1.0, nan], dtype=np.float32), size=(rows, width), p=[0.3, 0.4, 0.1, 0.2])
    probabilities = rng.random((rows, width)).astype(np.float32)
    return probabilities, raw


# --- evaluation targets -------------------------------------------------------------------------------


def test_evaluation_targets_map_blank_to_negative_and_uncertain_to_left_out():
    targets = evaluation_targets(np.array([[1, 0, -1, nan], [nan, -1, 0, 1]], dtype=np.float32))
    expected = np.array([[1, 0, nan, 0], [0, nan, 0, 1]])
    np.testing.assert_array_equal(targets, expected)  # NaN positions must match too


@pytest.mark.parametrize("bad", [2.0, 0.5, -2.0, np.inf])
def test_evaluation_targets_reject_other_values(bad):
    with pytest.raises(ValueError, match=f"found \\[{re.escape(str(bad))}\\]"):
        evaluation_targets(np.array([[1, 0, bad], [nan, -1, 0]]))


# --- per-label metrics and means ------------------------------------------------------------------------


def test_per_label_metrics_equal_sklearn():
    probabilities, targets = random_case(300, seed=1)
    result = score(probabilities, targets, CHEXPERT_LABELS)
    assert set(result) == {
        "mean_auroc",
        "mean_auroc_all",
        "n_images",
        "per_label",
        "skipped_labels",
        "scores_are_probabilities",
    }
    assert result["n_images"] == 300 and type(result["n_images"]) is int
    assert result["skipped_labels"] == []
    assert list(result["per_label"]) == list(CHEXPERT_LABELS)
    for column, name in enumerate(CHEXPERT_LABELS):
        kept = ~np.isnan(targets[:, column])
        truth, scores = targets[kept, column], probabilities[kept, column]
        entry = result["per_label"][name]
        assert entry["auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
        assert entry["auprc"] == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
        assert entry["positives"] == int(truth.sum()) and entry["negatives"] == int((truth == 0).sum())
        assert entry["positives"] + entry["negatives"] < 300  # some NaN targets were left out
        assert type(entry["auroc"]) is float and type(entry["positives"]) is int
    aurocs = {name: entry["auroc"] for name, entry in result["per_label"].items()}
    assert result["mean_auroc_all"] == pytest.approx(np.mean(list(aurocs.values())))
    assert result["mean_auroc"] == pytest.approx(np.mean([aurocs[name] for name in COMPETITION_LABELS]))


def test_single_class_labels_are_skipped_and_left_out_of_both_means():
    probabilities, targets = random_case(120, seed=2)
    fracture = CHEXPERT_LABELS.index("Fracture")
    devices = CHEXPERT_LABELS.index("Support Devices")
    effusion = CHEXPERT_LABELS.index("Pleural Effusion")
    targets[:, fracture] = 0.0  # like the official valid set: no Fracture positive
    targets[:, devices] = np.where(np.isnan(targets[:, devices]), nan, 1.0)  # positives only
    targets[:, effusion] = nan  # nothing left to score
    targets[0, effusion] = 1.0
    result = score(probabilities, targets, CHEXPERT_LABELS)
    assert result["skipped_labels"] == ["Pleural Effusion", "Fracture", "Support Devices"]  # label order
    assert set(result["per_label"]) == set(CHEXPERT_LABELS) - set(result["skipped_labels"])
    scored = [entry["auroc"] for entry in result["per_label"].values()]
    assert len(scored) == 11
    assert result["mean_auroc_all"] == pytest.approx(np.mean(scored))
    competition = [result["per_label"][name]["auroc"] for name in COMPETITION_LABELS if name != "Pleural Effusion"]
    assert result["mean_auroc"] == pytest.approx(np.mean(competition))

    flat = flat_metrics(result)
    for name in result["skipped_labels"]:
        assert not any(snake_case(name) in key for key in flat), name


def test_mean_auroc_is_over_the_competition_labels_only():
    rng = np.random.default_rng(3)
    targets = (rng.random((60, 14)) < 0.5).astype(np.float64)
    targets[:2] = [[0.0], [1.0]]  # both classes in every column
    competition = np.isin(CHEXPERT_LABELS, COMPETITION_LABELS)
    # Perfect on the competition labels, perfectly wrong on the other nine.
    probabilities = np.where(competition, targets, 1.0 - targets)
    # Columns in a shuffled order: the competition labels are found by name, not position.
    order = rng.permutation(14)
    names = [CHEXPERT_LABELS[i] for i in order]
    result = score(probabilities[:, order], targets[:, order], names)
    assert result["mean_auroc"] == 1.0
    assert result["mean_auroc_all"] == pytest.approx(5 / 14)
    assert list(result["per_label"]) == names


def test_means_with_few_or_no_competition_labels():
    probabilities, targets = random_case(80, labels=range(3), seed=4, missing=0.0)
    result = score(probabilities, targets, ["No Finding", "Edema", "Fracture"])
    assert result["mean_auroc"] == result["per_label"]["Edema"]["auroc"]
    result = score(probabilities[:, [0, 2]], targets[:, [0, 2]], ["No Finding", "Fracture"])
    assert math.isnan(result["mean_auroc"]) and not math.isnan(result["mean_auroc_all"])
    empty = score(np.zeros((0, 5)), np.zeros((0, 5)), COMPETITION_LABELS)
    assert empty["n_images"] == 0 and empty["skipped_labels"] == list(COMPETITION_LABELS)
    assert math.isnan(empty["mean_auroc"]) and math.isnan(empty["mean_auroc_all"])


def test_label_names_are_canonicalised():
    probabilities, targets = random_case(50, labels=range(2), seed=5, missing=0.0)
    result = score(probabilities, targets, ["pleural_effusion", "Lung  Opacity"])
    assert list(result["per_label"]) == ["Pleural Effusion", "Lung Opacity"]


# --- flat metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("Pleural Effusion", "pleural_effusion"),
        ("Enlarged Cardiomediastinum", "enlarged_cardiomediastinum"),
        ("No Finding", "no_finding"),
        ("Edema", "edema"),
    ],
)
def test_snake_case(label, key):
    assert snake_case(label) == key


def test_flat_metrics_keys_and_values():
    probabilities, targets = random_case(100, labels=COMPETITION_LABELS, seed=6)
    targets[:, 1] = 0.0  # Cardiomegaly skipped
    result = score(probabilities, targets, COMPETITION_LABELS, study_ids=np.arange(100) // 2)
    flat = flat_metrics(result)
    scored = ["atelectasis", "consolidation", "edema", "pleural_effusion"]
    expected_keys = {"mean_auroc", "mean_auroc_all", "n_studies"}
    expected_keys |= {f"{metric}_{label}" for metric in ("auroc", "auprc") for label in scored}
    assert set(flat) == expected_keys
    assert flat["n_studies"] == 50
    assert flat["auroc_pleural_effusion"] == result["per_label"]["Pleural Effusion"]["auroc"]
    assert flat["auprc_edema"] == result["per_label"]["Edema"]["auprc"]
    assert flat["mean_auroc"] == result["mean_auroc"]
    assert "n_images" in flat_metrics(score(probabilities, targets, COMPETITION_LABELS))


# --- studies -------------------------------------------------------------------------------------------


def test_study_probability_is_the_max_over_its_images():
    # Studies A..D; A and C have two images each, interleaved with the others.
    ids = ["A", "C", "A", "B", "D", "C"]
    probabilities = np.array([[0.2], [0.3], [0.7], [0.5], [0.8], [0.75]])
    targets = np.array([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]])
    study_probabilities, study_targets, study_ids = aggregate_studies(probabilities, targets, ids)
    assert list(study_ids) == ["A", "C", "B", "D"]  # order of first appearance
    np.testing.assert_array_equal(study_probabilities[:, 0], [0.7, 0.75, 0.5, 0.8])
    np.testing.assert_array_equal(study_targets[:, 0], [1, 0, 0, 1])

    result = score(probabilities, targets, ["Edema"], study_ids=ids)
    assert result["n_studies"] == 4 and "n_images" not in result
    # Positives A (0.7), D (0.8); negatives C (0.75), B (0.5): 3 of the 4 pairs are ordered right.
    assert result["per_label"]["Edema"]["auroc"] == pytest.approx(0.75)
    # Ranked D+, C-, A+, B-: precision 1 at recall 1/2, 2/3 at recall 1.
    assert result["per_label"]["Edema"]["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert score(probabilities, targets, ["Edema"])["per_label"]["Edema"]["auroc"] != pytest.approx(0.75)


def test_study_targets_take_the_max_of_non_nan_targets():
    ids = [1, 1, 2, 2, 3, 3, 4]
    targets = np.array(
        [
            [nan, 0.0, 1.0],
            [0.0, nan, 0.0],  # study 1: 0, 0, 1
            [nan, 1.0, nan],
            [nan, 0.0, nan],  # study 2: NaN, 1, NaN
            [1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],  # study 3: 1, 0, 0
            [nan, nan, nan],  # study 4: NaN, NaN, NaN
        ]
    )
    probabilities = np.full(targets.shape, 0.5)
    _, study_targets, _ = aggregate_studies(probabilities, targets, ids)
    expected = np.array([[0, 0, 1], [nan, 1, nan], [1, 0, 0], [nan, nan, nan]])
    np.testing.assert_array_equal(study_targets, expected)

    result = score(probabilities, targets, ["Atelectasis", "Edema", "Fracture"], study_ids=ids)
    assert result["per_label"]["Atelectasis"]["positives"] == 1 and result["per_label"]["Atelectasis"]["negatives"] == 1
    assert result["per_label"]["Edema"]["positives"] == 1 and result["per_label"]["Edema"]["negatives"] == 2
    assert result["per_label"]["Edema"]["auroc"] == 0.5  # all tied
    assert result["per_label"]["Fracture"]["positives"] == 1 and result["per_label"]["Fracture"]["negatives"] == 1


def test_aggregation_matches_pandas_groupby_at_scale():
    rows, studies = 200_000, 60_000
    rng = np.random.default_rng(7)
    probabilities, targets = random_case(rows, labels=range(5), seed=7, missing=0.5)
    ids = rng.integers(0, studies, size=rows).astype(str)  # string ids, in no particular order
    study_probabilities, study_targets, study_ids = aggregate_studies(probabilities, targets, ids)

    frame = pd.DataFrame(np.hstack([probabilities, targets]))
    frame["study"] = ids
    expected = frame.groupby("study", sort=False).max()  # first-appearance order; max skips NaN
    assert list(study_ids) == list(expected.index)
    np.testing.assert_array_equal(study_probabilities, expected.to_numpy()[:, :5])
    np.testing.assert_array_equal(study_targets, expected.to_numpy()[:, 5:])


def test_uncertain_entries_are_left_out_of_their_label_only():
    names = ["Atelectasis", "Edema"]
    raw = np.array([[1, 1], [0, 0], [-1, 1], [0, nan], [1, 0], [nan, -1]], dtype=np.float32)
    probabilities = np.array([[0.9, 0.8], [0.2, 0.1], [0.1, 0.7], [0.3, 0.4], [0.6, 0.3], [0.95, 0.2]])
    result = score(probabilities, evaluation_targets(raw), names)
    atelectasis, edema = result["per_label"]["Atelectasis"], result["per_label"]["Edema"]
    assert (atelectasis["positives"], atelectasis["negatives"]) == (2, 3)  # row 2 left out, row 5 blank -> 0
    assert (edema["positives"], edema["negatives"]) == (2, 3)  # row 5 left out, row 3 blank -> 0
    keep = [0, 1, 3, 4, 5]
    assert atelectasis["auroc"] == pytest.approx(roc_auc_score([1, 0, 0, 1, 0], probabilities[keep, 0]))
    assert edema["auroc"] == pytest.approx(roc_auc_score([1, 0, 1, 0, 0], probabilities[:5, 1]))

    # Study 2 = rows 2 and 5: Atelectasis uncertain + blank -> negative; Edema positive + uncertain -> positive.
    result = score(probabilities, evaluation_targets(raw), names, study_ids=[0, 1, 2, 3, 4, 2])
    assert result["n_studies"] == 5
    atelectasis, edema = result["per_label"]["Atelectasis"], result["per_label"]["Edema"]
    assert (atelectasis["positives"], atelectasis["negatives"]) == (2, 3)
    assert (edema["positives"], edema["negatives"]) == (2, 3)


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probabilities", "targets", "names", "study_ids", "message"),
    [
        (np.zeros((4, 2)), np.zeros((4, 3)), ["Edema", "Fracture"], None, "targets have shape"),
        (np.zeros((4, 2)), np.zeros((3, 2)), ["Edema", "Fracture"], None, "targets have shape"),
        (np.zeros(4), np.zeros(4), ["Edema"], None, r"shape \(N, L\)"),
        (np.zeros((4, 2)), np.zeros((4, 2)), ["Edema"], None, "2 columns but 1 label names"),
        (np.zeros((4, 2)), np.zeros((4, 2)), ["Edema", "Fracture"], [1, 2, 3], "study_ids has shape"),
        (np.zeros((4, 2)), np.zeros((4, 2)), ["Edema", "Fractures"], None, "unknown CheXpert label"),
        (np.array([[0.1, nan], [0.2, 0.3]]), np.zeros((2, 2)), ["Edema", "Fracture"], None, "NaN or infinite"),
        (np.array([[0.1, np.inf], [0.2, 0.3]]), np.zeros((2, 2)), ["Edema", "Fracture"], None, "NaN or infinite"),
        (np.zeros((2, 2)), np.array([[1, -1], [0, 0]]), ["Edema", "Fracture"], None, r"found \[-1.0\]"),
    ],
)
def test_score_rejects_bad_input(probabilities, targets, names, study_ids, message):
    with pytest.raises(ValueError, match=message):
        score(probabilities, targets, names, study_ids=study_ids)


# --- the evaluate module -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chexpert_auroc(tmp_path_factory):
    evaluate = pytest.importorskip("evaluate")
    return evaluate.load(str(EVALUATE_MODULE), cache_dir=str(tmp_path_factory.mktemp("evaluate")))


def test_evaluate_module_equals_score(chexpert_auroc):
    probabilities, raw = random_raw(400, 14, seed=8)
    expected = score(probabilities, evaluation_targets(raw), CHEXPERT_LABELS)
    assert chexpert_auroc.compute(predictions=probabilities, references=raw) == expected
    lists = chexpert_auroc.compute(predictions=probabilities.tolist(), references=raw.tolist(), flat=True)
    assert lists == flat_metrics(expected)


def test_evaluate_module_batches_and_studies(chexpert_auroc):
    probabilities, raw = random_raw(300, 5, seed=9)
    study_ids = np.random.default_rng(9).integers(0, 120, size=300)
    for start in range(0, 300, 128):
        batch = slice(start, start + 128)
        chexpert_auroc.add_batch(predictions=probabilities[batch], references=raw[batch])
    result = chexpert_auroc.compute(study_ids=study_ids)
    expected = score(probabilities, evaluation_targets(raw), COMPETITION_LABELS, study_ids=study_ids)
    assert result == expected
    assert result["n_studies"] == len(np.unique(study_ids))


def test_evaluate_module_label_names(chexpert_auroc):
    probabilities, raw = random_raw(100, 3, seed=10)
    names = ["Fracture", "No Finding", "Edema"]
    result = chexpert_auroc.compute(predictions=probabilities, references=raw, label_names=names)
    assert result == score(probabilities, evaluation_targets(raw), names)
    with pytest.raises(ValueError, match="label_names is required"):
        chexpert_auroc.compute(predictions=probabilities, references=raw)
    bad = raw.copy()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        chexpert_auroc.compute(predictions=probabilities, references=bad, label_names=names)
