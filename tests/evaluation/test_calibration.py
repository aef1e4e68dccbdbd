"""Calibration: Brier score and ECE against hand arithmetic and an independent loop over bins, the bin edges, the
per-label result (NaN targets, one-class labels, scores that are not probabilities), the figure and the Markdown."""

import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from chexpert_hf.evaluation.calibration import (
    ECE_BINS,
    bin_edges,
    bin_index,
    brier_score,
    calibration,
    calibration_figure,
    calibration_markdown,
    expected_calibration_error,
    reliability,
)
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.outputs import CALIBRATION_PNG

nan = np.nan
EDGES = np.linspace(0, 1, 16)  # the documented edges of the 15 bins


def reference_ece(probabilities, truth, edges):
    """ECE by a plain loop: bins [a, b), the last [a, 1], each weighted by its share of the non-NaN rows."""
    rows = [(p, t) for p, t in zip(probabilities.tolist(), truth.tolist(), strict=True) if not math.isnan(t)]
    total, counts = 0.0, []
    last = len(edges) - 2
    for k in range(len(edges) - 1):
        a, b = edges[k], edges[k + 1]
        inside = [(p, t) for p, t in rows if (a <= p <= b if k == last else a <= p < b)]
        counts.append(len(inside))
        if inside:
            mean_p = sum(p for p, _ in inside) / len(inside)
            fraction = sum(t for _, t in inside) / len(inside)
            total += len(inside) / len(rows) * abs(fraction - mean_p)
    return total, counts


def test_bin_edges_and_edge_values_go_to_the_upper_bin():
    assert ECE_BINS == 15
    np.testing.assert_array_equal(bin_edges(), EDGES)
    values = [0.0, np.nextafter(EDGES[1], 0), EDGES[1], EDGES[7], 0.5, EDGES[14], np.nextafter(1.0, 0), 1.0]
    np.testing.assert_array_equal(bin_index(values), [0, 0, 1, 7, 7, 14, 14, 14])
    assert bin_index([0.25, 0.5, 0.75, 1.0], bins=4).tolist() == [1, 2, 3, 3]  # 1.0: the closed last bin
    for bad in ([-0.01], [1.0000001], [nan]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            bin_index(bad)


def test_ece_hand_case_with_values_on_edges():
    e1, e14 = EDGES[1], EDGES[14]  # 1/15 and 14/15 as the bins' edges are computed
    p = np.array([0.0, 0.03, e1, e1, 0.5, e14, 1.0, 0.2])
    t = np.array([0, 1, 0, 0, 0, 1, 0, nan])  # the last row is left out: n = 7
    # bin 0 [0, 1/15):    0.0, 0.03 -> 2 rows, mean p 0.015, fraction 1/2: |0.5 - 0.015| = 0.485
    # bin 1 [1/15, 2/15): e1, e1    -> 2 rows, mean p 1/15,  fraction 0:   |0 - 1/15|    = 1/15
    # bin 7 [7/15, 8/15): 0.5       -> 1 row,  mean p 0.5,   fraction 0:   |0 - 0.5|     = 0.5
    # bin 14 [14/15, 1]:  e14, 1.0  -> 2 rows, mean p 29/30, fraction 1/2: |0.5 - 29/30| = 7/15
    # ECE = (2 * 0.485 + 2 * 1/15 + 1 * 0.5 + 2 * 7/15) / 7 = (1.47 + 16/15) / 7 = 2.53666.../7 = 0.3623809...
    # Had e1 gone to bin 0 and e14 to bin 13, it would be (|1 - 0.03 - 2/15| + 0.5 + |1 - 14/15| + |0 - 1|) / 7
    # = (0.83666... + 0.5 + 1/15 + 1) / 7 = 0.3433...
    expected = (2 * 0.485 + 2 / 15 + 0.5 + 2 * 7 / 15) / 7
    assert expected == pytest.approx(0.36238095238, abs=1e-10)
    assert expected_calibration_error(p, t) == pytest.approx(expected, abs=1e-12)

    diagram = reliability(p, t)
    assert diagram["counts"] == [2, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2]
    assert diagram["mean_probability"][0] == pytest.approx(0.015)
    assert diagram["mean_probability"][14] == pytest.approx(29 / 30)
    assert diagram["fraction_positive"][:3] == [0.5, 0.0, None]
    assert diagram["fraction_positive"][14] == 0.5
    assert diagram["edges"] == EDGES.tolist()


def test_brier_hand_value():
    p = np.array([0.1, 0.8, 0.6, 0.9])
    t = np.array([0, 1, 0, nan])
    # ((0.1 - 0)^2 + (0.8 - 1)^2 + (0.6 - 0)^2) / 3 = (0.01 + 0.04 + 0.36) / 3 = 0.41 / 3; the NaN row is left out
    assert brier_score(p, t) == pytest.approx(0.41 / 3, abs=1e-12)
    assert brier_score([0.9] * 4, [0, 0, 0, 0]) == pytest.approx(0.81)  # one class only still has a Brier score
    assert math.isnan(brier_score([0.3], [nan]))


def test_ece_of_calibrated_data_is_zero_and_of_confident_wrong_data_is_its_confidence():
    probabilities, truth = [], []
    for k in range(15):  # 30 rows per bin around the centre (2k + 1) / 30, 2k + 1 of them positive
        centre = (2 * k + 1) / 30
        probabilities += [centre - 0.01] * 15 + [centre + 0.01] * 15  # mean probability: the centre
        truth += [1] * (2 * k + 1) + [0] * (30 - 2 * k - 1)  # fraction positive: the centre
    probabilities, truth = np.array(probabilities), np.array(truth, dtype=float)
    assert reliability(probabilities, truth)["counts"] == [30] * 15
    assert expected_calibration_error(probabilities, truth) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(50, 0.9), np.zeros(50)) == pytest.approx(0.9, abs=1e-12)
    assert expected_calibration_error(np.zeros(10), np.zeros(10)) == 0.0


def test_ece_matches_an_independent_loop_on_random_data():
    rng = np.random.default_rng(7)
    p = rng.random(2000)
    on_edges = rng.choice(2000, size=300, replace=False)
    p[on_edges] = rng.choice(EDGES, size=300)  # every edge, 0 and 1 included
    t = (rng.random(2000) < p**1.5).astype(float)  # miscalibrated on purpose: the ECE is well above 0
    t[rng.random(2000) < 0.05] = nan
    expected, counts = reference_ece(p, t, EDGES.tolist())
    assert expected > 0.05
    assert expected_calibration_error(p, t) == pytest.approx(expected, abs=1e-12)
    assert reliability(p, t)["counts"] == counts
    assert sum(counts) == int((~np.isnan(t)).sum())
    expected_6, _ = reference_ece(p, t, np.linspace(0, 1, 7).tolist())
    assert expected_calibration_error(p, t, bins=6) == pytest.approx(expected_6, abs=1e-12)


def random_case(labels, rows=400, seed=0):
    rng = np.random.default_rng(seed)
    probabilities = rng.random((rows, len(labels)))
    targets = (rng.random(probabilities.shape) < probabilities).astype(float)
    return probabilities, targets


def test_calibration_per_label_leaves_nan_out_and_skips_one_class_labels():
    labels = [*COMPETITION_LABELS, "Fracture", "Pneumonia"]
    probabilities, targets = random_case(labels)
    targets[::7, 0] = nan
    targets[:, 5] = 0.0  # Fracture: negatives only
    targets[:, 6] = nan  # Pneumonia: no row left
    result = calibration(probabilities, targets, labels)
    assert result["bins"] == ECE_BINS
    assert result["skipped_labels"] == ["Fracture", "Pneumonia"]
    assert list(result["per_label"]) == list(COMPETITION_LABELS)
    json.dumps(result, allow_nan=False)  # goes into metrics.json as it is

    entry = result["per_label"][labels[0]]
    kept = ~np.isnan(targets[:, 0])
    assert entry["n"] == int(kept.sum()) == 400 - 58
    assert entry["positives"] == int(targets[kept, 0].sum())
    assert entry["ece"] == pytest.approx(reference_ece(probabilities[kept, 0], targets[kept, 0], EDGES.tolist())[0])
    assert entry["brier"] == pytest.approx(np.mean((probabilities[kept, 0] - targets[kept, 0]) ** 2))
    assert entry["reliability"] == reliability(probabilities[kept, 0], targets[kept, 0])
    assert sum(entry["reliability"]["counts"]) == entry["n"]


@pytest.mark.parametrize("bad", [-0.2, 1.5, nan])
def test_scores_outside_unit_interval_are_skipped_with_a_reason(bad):
    probabilities, targets = random_case(COMPETITION_LABELS)
    probabilities[3, 2] = bad
    result = calibration(probabilities, targets, COMPETITION_LABELS)
    assert set(result) == {"skipped"}
    assert "not probabilities" in result["skipped"] and "[0, 1]" in result["skipped"]
    lines = calibration_markdown(result)
    assert lines[0] == "## Calibration"
    assert any("not probabilities" in line for line in lines)
    assert not any("|" in line or CALIBRATION_PNG in line for line in lines)
    with pytest.raises(ValueError, match="not probabilities"):
        calibration_figure(result)


def test_calibration_rejects_bad_input():
    probabilities, targets = random_case(COMPETITION_LABELS)
    with pytest.raises(ValueError, match="columns"):
        calibration(probabilities, targets, COMPETITION_LABELS[:4])
    targets[0, 0] = -1.0
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        calibration(probabilities, targets, COMPETITION_LABELS)


def test_figure_has_one_reliability_panel_per_competition_label():
    labels = ["No Finding", *COMPETITION_LABELS, "Fracture"]
    probabilities, targets = random_case(labels)
    targets[:, -1] = 0.0  # Fracture: skipped
    result = calibration(probabilities, targets, labels)
    figure = calibration_figure(result)
    assert isinstance(figure, Figure)
    panels = [axes for axes in figure.axes if axes.get_title()]  # the others are the twin axes of the counts
    assert len(panels) == len(COMPETITION_LABELS) and len(figure.axes) == 2 * len(COMPETITION_LABELS)
    for axes, label in zip(panels, COMPETITION_LABELS, strict=True):
        entry = result["per_label"][label]
        assert axes.get_title().startswith(label)
        assert f"ECE {entry['ece']:.3f}" in axes.get_title() and f"Brier {entry['brier']:.3f}" in axes.get_title()
        assert axes.get_xlabel() == "mean predicted probability"
        curve = [line for line in axes.get_lines() if line.get_label() == "bins"][0]
        expected = [value for value in entry["reliability"]["fraction_positive"] if value is not None]
        np.testing.assert_allclose(curve.get_ydata(), expected)
    # without competition labels: the first labels that were calibrated, at most five
    others = ["No Finding", "Fracture", "Pneumonia", "Lung Lesion", "Pneumothorax", "Support Devices"]
    probabilities, targets = random_case(others, seed=1)
    figure = calibration_figure(calibration(probabilities, targets, others))
    assert [axes.get_title().split("\n")[0] for axes in figure.axes if axes.get_title()] == others[:5]
    figure = calibration_figure(calibration(probabilities, targets, others), labels=["Fracture"])
    assert len(figure.axes) == 2


def test_markdown_holds_the_table():
    labels = [*COMPETITION_LABELS, "No Finding", "Fracture"]
    probabilities, targets = random_case(labels)
    targets[:, -1] = 1.0
    result = calibration(probabilities, targets, labels)
    lines = calibration_markdown(result)
    assert lines[0] == "## Calibration"
    assert any("15 equal-width bins" in line and "last closed" in line for line in lines)
    assert "| label | Brier | ECE | n | positives |" in lines
    assert "|---|---:|---:|---:|---:|" in lines
    for label, entry in result["per_label"].items():
        name = f"{label} ★" if label in COMPETITION_LABELS else label
        row = f"| {name} | {entry['brier']:.4f} | {entry['ece']:.4f} | {entry['n']:,} | {entry['positives']:,} |"
        assert row in lines
    assert "| No Finding |" in "\n".join(lines)
    assert not any(line.startswith("| Fracture") for line in lines)
    assert any("Fracture" in line and "one class only" in line for line in lines)
    assert lines[-1] == f"![Calibration]({CALIBRATION_PNG})"
