"""Readers (radiologists) against the model's ROC curve: the curve read between its points, reader operating points
with Wilson intervals against the formula, under-the-curve on hand-made curves, reader files and their errors, and
the comparison on synthetic data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import write_csv

from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.data.synthetic import TRAIN_HEADER
from chexpert_hf.evaluation.evaluate import match_to_groundtruth, read_groundtruth, read_predictions
from chexpert_hf.evaluation.readers import (
    compare_readers,
    curve_fpr_at,
    curve_tpr_at,
    draw_readers,
    match_reader,
    read_reader,
    reader_point,
    readers_markdown,
    readers_text,
)
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS

Z = 1.959963984540054

# A curve with a vertical segment at fpr 0 (0 → 0.5) and at fpr 0.25 (0.5 → 0.75), a horizontal one at tpr 0.5
# (fpr 0 → 0.25) and at tpr 1 (fpr 0.5 → 1), and a diagonal between (0.25, 0.75) and (0.5, 1).
FPR = np.array([0.0, 0.0, 0.25, 0.25, 0.5, 1.0])
TPR = np.array([0.0, 0.5, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.0, 0.5),  # the top of the vertical segment at fpr 0
        (0.125, 0.5),  # on the horizontal segment
        (0.25, 0.75),  # the top of the second vertical segment, not its foot (0.5)
        (0.375, 0.875),  # half way along the diagonal
        (0.5, 1.0),
        (0.75, 1.0),
        (1.0, 1.0),
    ],
)
def test_curve_tpr_at(x, expected):
    assert curve_tpr_at(FPR, TPR, x) == expected


def test_curve_tpr_at_is_not_np_interp_on_repeated_points():
    # np.interp on the repeated fpr 0.25 may pick the foot of the segment; the curve reaches its top
    assert curve_tpr_at(FPR, TPR, 0.25) == 0.75
    assert curve_tpr_at(FPR, TPR, 0.25 + 1e-9) > 0.75


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (0.0, 0.0),
        (0.25, 0.0),  # on the vertical segment at fpr 0
        (0.5, 0.0),  # the first of the points with tpr 0.5 (the horizontal segment's left end)
        (0.625, 0.25),  # on the second vertical segment
        (0.75, 0.25),
        (0.875, 0.375),  # on the diagonal
        (1.0, 0.5),  # the lowest fpr reaching tpr 1
    ],
)
def test_curve_fpr_at(y, expected):
    assert curve_fpr_at(FPR, TPR, y) == expected


def test_a_rate_outside_the_curve_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        curve_tpr_at(np.array([0.0, 0.5]), np.array([0.0, 1.0]), 0.75)


def wilson(successes: int, total: int) -> tuple[float, float]:
    p = successes / total
    center = (p + Z**2 / (2 * total)) / (1 + Z**2 / total)
    half = Z / (1 + Z**2 / total) * math.sqrt(p * (1 - p) / total + Z**2 / (4 * total**2))
    return center - half, center + half


def test_reader_point_counts_and_wilson_intervals():
    # 10 positives (7 read positive), 14 negatives (2 read positive), 3 rows without a target
    truth = np.array([1.0] * 10 + [0.0] * 14 + [np.nan] * 3)
    reads = np.array([1.0] * 7 + [0.0] * 3 + [1.0] * 2 + [0.0] * 12 + [1.0, 0.0, 1.0])
    point = reader_point(reads, truth)
    assert (point["tp"], point["fn"], point["fp"], point["tn"]) == (7, 3, 2, 12)
    assert point["sensitivity"] == pytest.approx(0.7)
    assert point["specificity"] == pytest.approx(12 / 14)
    assert point["sensitivity_ci95"] == pytest.approx(wilson(7, 10), abs=1e-12)
    assert point["specificity_ci95"] == pytest.approx(wilson(12, 14), abs=1e-12)
    # the interval is not the Wald one
    wald = 0.7 - Z * math.sqrt(0.21 / 10)
    assert abs(point["sensitivity_ci95"][0] - wald) > 0.01


def test_reader_point_at_the_edges_and_without_a_class():
    point = reader_point(np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0]))
    assert point["sensitivity"] == 1.0 and point["sensitivity_ci95"][1] == pytest.approx(1.0)
    assert point["sensitivity_ci95"] == pytest.approx(wilson(2, 2), abs=1e-12)
    none = reader_point(np.array([1.0, 0.0]), np.array([0.0, 0.0]))
    assert none["sensitivity"] is None and none["sensitivity_ci95"] is None
    with pytest.raises(ValueError, match="0 or 1"):
        reader_point(np.array([0.5, 1.0]), np.array([1.0, 0.0]))


# 4 positives, 4 negatives; two positives and two negatives tie at 0.5, so the curve (with every point) is
# (0, 0), (0, 0.25), (0.5, 0.75), (0.5, 1), (0.75, 1), (1, 1): a diagonal from (0, 0.25) to (0.5, 0.75).
HAND_TRUTH = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
HAND_SCORES = np.array([0.9, 0.5, 0.5, 0.3, 0.5, 0.5, 0.2, 0.1])


def reads_for(true_positives: int, false_positives: int) -> np.ndarray:
    reads = (
        [1.0] * true_positives + [0.0] * (4 - true_positives) + [1.0] * false_positives + [0.0] * (4 - false_positives)
    )
    return np.array(reads)[:, None]


def test_the_hand_made_curve_is_what_the_test_assumes():
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(HAND_TRUTH, HAND_SCORES, drop_intermediate=False)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 0.75, 1.0]
    assert tpr.tolist() == [0.0, 0.25, 0.75, 1.0, 1.0, 1.0]


def test_readers_under_above_and_exactly_on_the_curve():
    readers = {
        "under": reads_for(1, 1),  # (0.25, 0.25): the curve is at 0.5 there
        "above": reads_for(2, 0),  # (0, 0.5): the curve is at 0.25 there
        "on": reads_for(2, 1),  # (0.25, 0.5): on the interpolated diagonal, exactly
        "vertex": reads_for(1, 0),  # (0, 0.25): a point of the curve, the top of its first vertical segment
    }
    result = compare_readers(HAND_SCORES[:, None], HAND_TRUTH[:, None], ["Edema"], readers)
    entry = result["per_label"]["Edema"]
    under = {name: point["under_curve"] for name, point in entry["readers"].items()}
    assert under == {"under": True, "above": False, "on": False, "vertex": False}
    assert entry["under_curve"] == 1
    assert result["mean_under_curve"] == 1.0 and result["mean_under_curve_labels"] == ["Edema"]
    # model sensitivity at the reader's specificity (0.75 → fpr 0.25): half way along the diagonal
    assert entry["readers"]["under"]["model_sensitivity_at_reader_specificity"] == 0.5
    assert entry["readers"]["above"]["model_sensitivity_at_reader_specificity"] == 0.25
    # model specificity at the reader's sensitivity: 0.5 is reached at fpr 0.25, 0.25 at fpr 0
    assert entry["readers"]["on"]["model_specificity_at_reader_sensitivity"] == 0.75
    assert entry["readers"]["under"]["model_specificity_at_reader_sensitivity"] == 1.0
    assert entry["reader_mean"] == {
        "sensitivity": pytest.approx((0.25 + 0.5 + 0.5 + 0.25) / 4),
        "specificity": pytest.approx((0.75 + 1.0 + 0.75 + 1.0) / 4),
    }


def test_one_minus_specificity_in_floating_point_finds_the_curves_point():
    """10 negatives: 1 − 0.7 is 0.30000000000000004, past the curve's fpr 0.3. The curve rises there from the top of a
    vertical segment (0.3, 0.5) along a steep diagonal (3 positives and a negative tied) to (0.4, 0.8), so reading
    it just past 0.3 gives 0.5000000000000001: a reader at (0.3, 0.5), on the curve, must still not be under it."""
    from sklearn.metrics import roc_curve

    order = "PPPNNNPP" + "T" + "PPNNNNNN"  # by decreasing score; T: three positives and a negative, tied
    truth, scores = [], []
    for rank, kind in enumerate(order):
        tied = [1.0, 1.0, 1.0, 0.0] if kind == "T" else [1.0 if kind == "P" else 0.0]
        truth += tied
        scores += [1.0 - rank / len(order)] * len(tied)
    truth, scores = np.array(truth), np.array(scores)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    assert 0.3 in fpr.tolist() and 1 - 0.7 > 0.3
    assert curve_tpr_at(fpr, tpr, 1 - 0.7) == 0.5
    positives = np.flatnonzero(truth == 1)[:5]  # the five highest positives
    negatives = np.flatnonzero(truth == 0)[:3]  # the three highest negatives
    reads = np.zeros(len(truth))
    reads[positives], reads[negatives] = 1.0, 1.0
    result = compare_readers(scores[:, None], truth[:, None], ["Edema"], {"r": reads[:, None]})
    point = result["per_label"]["Edema"]["readers"]["r"]
    assert (point["sensitivity"], point["specificity"]) == (0.5, 0.7)
    assert point["model_sensitivity_at_reader_specificity"] == 0.5
    assert point["model_specificity_at_reader_sensitivity"] == 0.7
    assert point["under_curve"] is False


# --- reader files ----------------------------------------------------------------------------------------------


def study(index: int) -> str:
    return f"CheXpert-v1.0/test/patient{64741 + index:05d}/study1"


def key(index: int) -> str:
    return f"patient{64741 + index:05d}/study1"


def test_read_reader_picks_columns_by_name(tmp_path):
    path = write_csv(
        tmp_path / "rad1.csv",
        ["Study", "Pleural_Effusion", "Atelectasis"],
        [[study(0), "1", "0"], [study(1), "0.0", "1.0"], [study(2), " 1 ", "1"]],
    )
    reader = read_reader(path)
    assert reader.level == "study" and reader.labels == ["Pleural Effusion", "Atelectasis"]
    assert reader.lines == [2, 3, 4]
    # in the order asked for, studies in the order of the truth (one more in the file than asked)
    reads = match_reader(reader, np.array([key(1), key(0)], dtype=object), ["Atelectasis", "Pleural Effusion"])
    assert reads.tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("value", ["2", "", "-1", "0.5", "yes", "nan"])
def test_a_reader_value_other_than_0_or_1_names_file_line_and_column(tmp_path, value):
    path = write_csv(
        tmp_path / "rad1.csv",
        ["Study", "Pleural Effusion", "Atelectasis"],
        [[study(0), "1", "0"], [study(1), "0", value], [study(2), "1", "1"]],
    )
    with pytest.raises(CheXpertFormatError) as error:
        read_reader(path)
    message = str(error.value)
    assert str(path) in message
    assert "line 3" in message
    assert "column 'Atelectasis'" in message
    assert repr(value) in message


def test_a_missing_label_names_the_file_the_label_and_the_columns(tmp_path):
    path = write_csv(tmp_path / "rad1.csv", ["Study", "Edema"], [[study(0), "1"]])
    with pytest.raises(CheXpertFormatError) as error:
        match_reader(read_reader(path), np.array([key(0)], dtype=object), ["Edema", "Cardiomegaly"])
    message = str(error.value)
    assert str(path) in message and "['Cardiomegaly']" in message and "it has: Edema" in message


def test_a_missing_study_names_the_file_and_the_study(tmp_path):
    path = write_csv(tmp_path / "rad1.csv", ["Study", "Edema"], [[study(0), "1"], [study(2), "0"]])
    with pytest.raises(CheXpertFormatError) as error:
        match_reader(read_reader(path), np.array([key(0), key(1), key(2)], dtype=object), ["Edema"])
    message = str(error.value)
    assert str(path) in message and key(1) in message and "1 study(ies)" in message
    assert key(0) not in message and key(2) not in message


def test_an_unknown_column_and_a_repeated_study_are_errors(tmp_path):
    path = write_csv(tmp_path / "rad1.csv", ["Study", "Edema", "Confidence"], [[study(0), "1", "3"]])
    with pytest.raises(CheXpertFormatError, match=r"unknown column\(s\) \['Confidence'\]"):
        read_reader(path)
    path = write_csv(tmp_path / "rad2.csv", ["Study", "Edema"], [[study(0), "1"], [study(0), "0"]])
    with pytest.raises(CheXpertFormatError, match=re.escape("lines [2, 3]")):
        read_reader(path)


def test_an_image_level_reader_is_reduced_to_studies_by_the_maximum(tmp_path):
    path = write_csv(
        tmp_path / "rad1.csv",
        ["Path", "Edema"],
        [
            ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "0"],
            ["CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg", "1"],
            ["CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg", "0"],
        ],
    )
    reader = read_reader(path)
    assert reader.level == "image"
    truth_keys = np.array(["patient64542/study1", "patient64541/study1"], dtype=object)
    assert match_reader(reader, truth_keys, ["Edema"]).tolist() == [[0.0], [1.0]]


def test_readers_match_what_match_to_groundtruth_scores(tmp_path):
    """The whole path: a valid.csv, an image-level predictions file, a study-level reader file in another order."""
    rng = np.random.default_rng(3)
    rows, pred_rows, reader_rows, edema = [], [], [], []
    for index in range(12):
        labels = ["1.0" if rng.random() < 0.4 else "0.0" for _ in CHEXPERT_LABELS]
        labels[CHEXPERT_LABELS.index("Edema")] = f"{index % 2}.0"
        edema.append(index % 2)
        path = f"CheXpert-v1.0-small/valid/patient{64541 + index:05d}/study1/view1_frontal.jpg"
        rows.append([path, "Female", 50, "Frontal", "AP", *labels])
        pred_rows.append([path, f"{rng.random():.4f}", f"{rng.random():.4f}"])
        reader_rows.append([f"valid/patient{64541 + index:05d}/study1", str(index % 2), "0"])
    truth = read_groundtruth(write_csv(tmp_path / "valid.csv", TRAIN_HEADER, rows))
    pred = read_predictions(write_csv(tmp_path / "pred.csv", ["Path", "Edema", "Cardiomegaly"], pred_rows))
    matched = match_to_groundtruth(pred, truth)
    reader_rows.reverse()
    reader = read_reader(write_csv(tmp_path / "rad.csv", ["Study", "Edema", "Cardiomegaly"], reader_rows))
    reads = match_reader(reader, matched.keys, matched.labels)
    assert reads[:, 0].tolist() == edema  # the reader read Edema perfectly
    result = compare_readers(matched.scores, matched.targets, matched.labels, {"rad": reads})
    point = result["per_label"]["Edema"]["readers"]["rad"]
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0 and point["under_curve"] is False


# --- the comparison on synthetic data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    labels = [*COMPETITION_LABELS, "No Finding", "Fracture"]
    n = 400
    targets = (rng.random((n, len(labels))) < 0.3).astype(np.float64)
    targets[:, labels.index("Fracture")] = 0.0  # one class only: skipped
    targets[rng.random((n, len(labels))) < 0.05] = np.nan  # left out
    scores = np.nan_to_num(targets, nan=0.5) + rng.normal(0.0, 0.35, size=targets.shape)  # a good model
    readers = {}
    for name in ("rad1", "rad2", "rad3"):
        flips = rng.random(targets.shape) < 0.10
        readers[name] = np.where(flips, 1.0 - np.nan_to_num(targets), np.nan_to_num(targets))
    return compare_readers(scores, targets, labels, readers), labels, readers, targets


def test_compare_readers_on_synthetic_data(synthetic):
    result, labels, readers, targets = synthetic
    assert result["readers"] == ["rad1", "rad2", "rad3"]
    assert result["skipped_labels"] == ["Fracture"]
    assert list(result["per_label"]) == labels[:-1]
    for label, entry in result["per_label"].items():
        assert 0 <= entry["under_curve"] <= 3
        assert entry["under_curve"] == sum(point["under_curve"] for point in entry["readers"].values())
        for point in entry["readers"].values():
            assert 0.8 < point["sensitivity"] < 0.97 and 0.8 < point["specificity"] < 0.97  # 10% flipped
            low, high = point["sensitivity_ci95"]
            assert low < point["sensitivity"] < high
            assert 0.0 <= point["model_sensitivity_at_reader_specificity"] <= 1.0
            # under the curve exactly when the model is more sensitive at the reader's specificity
            assert point["under_curve"] == (point["model_sensitivity_at_reader_specificity"] > point["sensitivity"])
        column = labels.index(label)
        kept = ~np.isnan(targets[:, column])
        assert entry["positives"] + entry["negatives"] == int(kept.sum())
    counts = [result["per_label"][label]["under_curve"] for label in COMPETITION_LABELS]
    assert result["mean_under_curve"] == pytest.approx(np.mean(counts))
    json.dumps(result)  # JSON types only


def test_the_markdown_section_and_the_text_table(synthetic):
    result = synthetic[0]
    lines = readers_markdown(result)
    text = "\n".join(lines)
    assert lines[0] == "## Readers"
    assert "interpolated linearly between its points" in text and "strictly above" in text
    assert "| label | reader | sensitivity (95% CI) | specificity (95% CI) |" in text
    entry = result["per_label"]["Edema"]
    point = entry["readers"]["rad2"]
    low, high = point["sensitivity_ci95"]
    assert f"| Edema ★ | rad2 | {point['sensitivity']:.3f} ({low:.3f}–{high:.3f}) |" in text
    assert f"| Edema ★ | {entry['under_curve']} of 3 |" in text
    assert f"mean over the competition labels: {result['mean_under_curve']:.1f}" in text
    assert "Not compared (one class only): Fracture." in text
    table = readers_text(result)
    assert f"{entry['under_curve']}/3" in table and "rad3" in table
    assert f"{point['sensitivity']:.3f} / {point['specificity']:.3f}" in table


def test_draw_readers_marks_each_reader_once_in_the_legend(synthetic):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    result = synthetic[0]
    axes = Figure().add_subplot()
    colors = {label: f"C{index}" for index, label in enumerate(result["per_label"])}
    draw_readers(axes, result, colors)
    handles, names = axes.get_legend_handles_labels()
    assert names == ["rad1", "rad2", "rad3", "readers' mean"]
    assert len({handle.get_marker() for handle in handles}) == 4
    # one point per reader and label, and one mean per label
    labels = len(result["per_label"])
    assert len(axes.collections) == 3 * labels + labels
    edema = result["per_label"]["Edema"]["readers"]["rad1"]
    offsets = np.concatenate([collection.get_offsets() for collection in axes.collections])
    assert any(np.allclose(row, [1 - edema["specificity"], edema["sensitivity"]]) for row in offsets)
