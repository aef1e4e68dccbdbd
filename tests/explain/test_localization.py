"""The pointing game, its chance level, rank correlations and lesions.csv, against hand-made maps and boxes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_csv
from scipy.stats import spearmanr

from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.explain.localization import (
    LESION_COLUMNS,
    Box,
    MethodTally,
    chance_hit_rate,
    image_key,
    localization_text,
    peak,
    pointing_hit,
    rank_correlations,
    read_lesions,
    score_label_specificity,
)


def test_the_peak_is_the_maximum_or_the_middle_of_a_flat_maximum():
    heatmap = np.zeros((40, 50))
    heatmap[7, 31] = 1.0
    assert peak(heatmap) == (31.0, 7.0)
    flat = np.zeros((40, 50))
    flat[10:21, 20:31] = 1.0  # an upsampled coarse cell: a plateau whose centre is (25, 15)
    assert peak(flat) == (25.0, 15.0)


def test_a_hit_is_a_peak_inside_a_box_grown_by_the_tolerance():
    heatmap = np.zeros((100, 100))
    heatmap[50, 70] = 1.0  # peak at x=70, y=50
    box = Box(10, 40, 60, 60)
    assert not pointing_hit(heatmap, [box], tolerance=9)
    assert pointing_hit(heatmap, [box], tolerance=10)
    assert pointing_hit(heatmap, [Box(0, 0, 5, 5), Box(65, 45, 75, 55)], tolerance=0)  # any of several boxes
    assert not pointing_hit(heatmap, [], tolerance=100)


def test_a_flat_map_points_nowhere():
    box = Box(0, 0, 99, 99)  # the whole image: any peak would hit
    assert not pointing_hit(np.zeros((100, 100)), [box], tolerance=0)
    assert not pointing_hit(np.full((100, 100), 0.7), [box], tolerance=0)


def test_a_map_of_a_resized_copy_is_compared_in_the_original_pixels():
    """A map of a half-size copy peaking at x=35, y=25 points at x=70.5, y=50.5 of the original (pixel centres)."""
    small = np.zeros((50, 50))
    small[25, 35] = 1.0
    assert pointing_hit(small, [Box(70, 50, 72, 52)], tolerance=0, scale=(0.5, 0.5))
    assert not pointing_hit(small, [Box(34, 24, 36, 26)], tolerance=0, scale=(0.5, 0.5))


def test_the_chance_level_is_the_share_of_pixels_in_the_grown_boxes():
    assert chance_hit_rate([Box(10, 10, 19, 19)], 100, 50, tolerance=0) == pytest.approx(100 / 5000)
    assert chance_hit_rate([Box(10, 10, 19, 19)], 100, 50, tolerance=5) == pytest.approx(400 / 5000)
    # clipped at the image border, and overlapping boxes count once
    assert chance_hit_rate([Box(0, 0, 9, 9), Box(5, 5, 14, 14)], 100, 100, tolerance=0) == pytest.approx(175 / 10000)
    assert chance_hit_rate([Box(-30, -30, 500, 500)], 40, 30) == 1.0


def test_the_chance_level_is_what_random_maps_score():
    rng = np.random.default_rng(0)
    boxes = [Box(20, 30, 49, 44)]
    hits = [pointing_hit(rng.random((60, 80)), boxes, tolerance=3) for _ in range(4000)]
    assert np.mean(hits) == pytest.approx(chance_hit_rate(boxes, 80, 60, tolerance=3), abs=0.02)


def test_rank_correlations_match_scipy_and_flag_constant_maps():
    rng = np.random.default_rng(1)
    first, second = rng.random((3, 12, 10)), rng.random((3, 12, 10))
    second[1] = first[1] ** 3  # monotone: rank correlation 1
    values = rank_correlations(first, second)
    for index in range(3):
        assert values[index] == pytest.approx(spearmanr(first[index].ravel(), second[index].ravel())[0])
    assert values[1] == pytest.approx(1.0)
    assert np.isnan(rank_correlations(first[0], np.zeros((12, 10))))[0]


def test_image_keys_match_absolute_relative_and_dataset_folder_paths():
    key = "valid/patient64541/study1/view1_frontal.jpg"
    assert image_key("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg") == key
    assert image_key("/data/x/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg") == key
    assert image_key("valid\\patient64541\\study1\\view1_frontal.jpg") == key
    assert image_key("/tmp/scan.png") == "scan.png"


def test_lesions_csv_is_read_and_its_errors_name_the_line(tmp_path):
    rows = [
        ("CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg", "Pleural Effusion", 1, 2, 30, 40),
        ("CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg", "Pleural Effusion", 50, 2, 80, 40),
        ("CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg", "Cardiomegaly", 5, 6, 7, 8),
    ]
    lesions = read_lesions(write_csv(tmp_path / "lesions.csv", LESION_COLUMNS, rows))
    key = "valid/patient00001/study1/view1_frontal.jpg"
    assert lesions.for_image(key, "Pleural Effusion") == [Box(1, 2, 30, 40), Box(50, 2, 80, 40)]
    assert lesions.for_image(key, "Edema") == [] and lesions.for_image("other.jpg", "Cardiomegaly") == []
    assert lesions.original_size(key) is None  # the image file is not there

    # positives come from the split CSV next to lesions.csv: boxes are drawn for uncertain findings too
    header = ["Path", "Cardiomegaly", "Pleural Effusion"]
    write_csv(tmp_path / "valid.csv", header, [[rows[0][0], "-1.0", "1.0"]])
    assert lesions.positive(key, "Pleural Effusion") is True
    assert lesions.positive(key, "Cardiomegaly") is False
    assert lesions.positive("valid/patient00009/study1/view1_frontal.jpg", "Cardiomegaly") is None

    bad = [rows[0], (rows[1][0], "Pneumonitis", 1, 2, 3, 4)]
    with pytest.raises(CheXpertFormatError, match="lesions.csv, line 3: unknown label 'Pneumonitis'"):
        read_lesions(write_csv(tmp_path / "bad1" / "lesions.csv", LESION_COLUMNS, bad))
    with pytest.raises(CheXpertFormatError, match="line 2: box coordinates must be numbers"):
        read_lesions(
            write_csv(tmp_path / "bad2" / "lesions.csv", LESION_COLUMNS, [(rows[0][0], "Edema", "a", 1, 2, 3)])
        )
    with pytest.raises(CheXpertFormatError, match="line 2: not a box"):
        read_lesions(write_csv(tmp_path / "bad3" / "lesions.csv", LESION_COLUMNS, [(rows[0][0], "Edema", 9, 1, 2, 3)]))
    with pytest.raises(CheXpertFormatError, match=r"missing column\(s\) \['y1'\]"):
        read_lesions(write_csv(tmp_path / "bad4" / "lesions.csv", LESION_COLUMNS[:-1], [rows[0][:-1]]))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_lesions(tmp_path / "nowhere.csv")


def test_the_tally_summarises_hits_chance_and_randomization():
    tally = MethodTally(randomized=True)
    for hit, chance, randomized, flat in [
        (True, 0.1, False, False),
        (True, 0.2, True, False),
        (False, 0.3, False, True),
    ]:
        tally.labels["Edema"].add(hit, chance, randomized, flat)
    tally.labels["Cardiomegaly"].add(True, 0.4, False)
    tally.correlations += [np.array([0.1, np.nan]), np.array([0.3])]
    summary = tally.summary(["Cardiomegaly", "Edema", "Atelectasis"])
    assert list(summary["per_label"]) == ["Cardiomegaly", "Edema"]  # labels without positives are left out
    edema = summary["per_label"]["Edema"]
    assert edema == {
        "positives": 3,
        "hits": 2,
        "hit_rate": pytest.approx(2 / 3),
        "uniform_random_hit_rate": pytest.approx(0.2),
        "randomized_model_hit_rate": pytest.approx(1 / 3),
        "flat_maps": 1,
    }
    assert summary["hit_rate"] == pytest.approx(3 / 4)
    assert summary["mean_hit_rate"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["uniform_random_hit_rate"] == pytest.approx(1.0 / 4)
    assert summary["randomization"] == {
        "maps": 3,
        "constant_maps": 1,
        "spearman_mean": pytest.approx(0.2),
        "spearman_median": pytest.approx(0.2),
    }
    text = localization_text({"tolerance_px": 15.0, "methods": {"gradcam": summary}})
    assert "Edema" in text and "0.667" in text and "mean 0.200" in text


def _peaked(height: int, width: int, x: int, y: int) -> np.ndarray:
    """A map rising towards (x, y): its peak is there, and its ranking differs from a map peaked elsewhere."""
    rows, cols = np.mgrid[0:height, 0:width]
    return -np.hypot(cols - x, rows - y)


def test_label_specificity_scores_each_map_against_the_other_findings_boxes():
    boxes = {"Edema": [Box(0, 0, 9, 9)], "Pleural Effusion": [Box(40, 40, 59, 59)], "Atelectasis": [Box(0, 50, 9, 59)]}
    # Edema's map points at Edema; Pleural Effusion's at Edema too (not label-specific); Atelectasis has no map
    maps = {"Edema": _peaked(60, 60, 5, 5), "Pleural Effusion": _peaked(60, 60, 4, 4)}
    hits, correlations = score_label_specificity(maps, boxes, tolerance=0.0)
    assert hits == {"Edema": (True, [False]), "Pleural Effusion": (False, [True])}
    assert len(correlations) == 1 and correlations[0] > 0.99  # two maps peaked 1 px apart rank alike
    # one finding with a map: nothing to compare
    assert score_label_specificity({"Edema": maps["Edema"]}, boxes, tolerance=0.0) == ({}, [])

    tally = MethodTally()
    tally.add_specificity(hits, correlations)
    apart = {"Edema": _peaked(60, 60, 5, 5), "Pleural Effusion": _peaked(60, 60, 50, 50)}
    tally.add_specificity(*score_label_specificity(apart, boxes, tolerance=0.0))
    tally.labels["Edema"].add(True, 0.1, None)  # the pointing game proper, for the summary to have rows
    summary = tally.summary(["Atelectasis", "Edema", "Pleural Effusion"])["label_specificity"]
    assert summary["images"] == 2 and summary["label_pairs"] == 2
    assert summary["per_label"]["Edema"] == {"images": 2, "right_label_hit_rate": 1.0, "wrong_label_hit_rate": 0.0}
    assert summary["per_label"]["Pleural Effusion"]["right_label_hit_rate"] == 0.5
    assert summary["right_label_hit_rate"] == 0.75 and summary["wrong_label_hit_rate"] == 0.25
    # maps peaked at opposite corners rank in opposite orders over most of the image
    expected = np.mean([correlations[0], rank_correlations(apart["Edema"], apart["Pleural Effusion"])[0]])
    assert summary["spearman_between_labels_mean"] == pytest.approx(expected)
    text = localization_text({"tolerance_px": 0.0, "methods": {"gradcam": tally.summary(["Edema"])}})
    assert "wrong-label 0.250" in text and "right-label hit rate 0.750" in text


def test_across_models_averages_what_each_model_has():
    from chexpert_hf.explain.localization import across_models, across_models_text

    def result(edema: float, spearman: float | None) -> dict:
        specificity = {"right_label_hit_rate": 0.5, "wrong_label_hit_rate": 0.25}
        if spearman is not None:
            specificity["spearman_between_labels_mean"] = spearman
        return {
            "methods": {
                "gradcam": {
                    "hit_rate": edema,
                    "per_label": {"Edema": {"hit_rate": edema, "uniform_random_hit_rate": 0.2}},
                    "label_specificity": specificity,
                }
            }
        }

    summary = across_models({"seed0": result(0.5, 0.3), "seed1": result(0.7, None), "seed2": result(0.9, 0.5)})
    edema = summary["methods"]["gradcam"]["per_label"]["Edema"]["hit_rate"]
    assert edema["values"] == [0.5, 0.7, 0.9] and edema["mean"] == pytest.approx(0.7)
    assert edema["std"] == pytest.approx(0.2)  # the sample standard deviation
    between = summary["methods"]["gradcam"]["overall"]["spearman_between_labels"]
    assert between == {"mean": pytest.approx(0.4), "std": pytest.approx(np.std([0.3, 0.5], ddof=1)), "models": 2,
                       "values": [0.3, None, 0.5]}  # fmt: skip
    missing = summary["methods"]["gradcam"]["per_label"]["Edema"]["randomized_model_hit_rate"]
    assert missing["mean"] is None and missing["std"] is None
    assert "0.700 ± 0.200" in across_models_text(summary)


def test_the_baseline_check_names_every_label_and_model_below_a_baseline():
    from chexpert_hf.explain.localization import across_models, across_models_text

    def result(edema: float, atelectasis: float, randomized: float) -> dict:
        per_label = {
            "Edema": {"hit_rate": edema, "uniform_random_hit_rate": 0.2, "randomized_model_hit_rate": 0.1},
            "Atelectasis": {"hit_rate": atelectasis, "uniform_random_hit_rate": 0.05,
                            "randomized_model_hit_rate": randomized},
        }  # fmt: skip
        overall = (edema + atelectasis) / 2
        return {"methods": {"m": {"hit_rate": overall, "uniform_random_hit_rate": 0.125, "per_label": per_label}}}

    good = across_models({"s0": result(0.9, 0.3, 0.1), "s1": result(0.8, 0.2, 0.1)})["methods"]["m"]["baselines"]
    assert good["beaten_everywhere"] and good["shortfalls"] == []
    assert good["hit_rate_over_chance"]["values"] == [pytest.approx(0.6 / 0.125), pytest.approx(0.5 / 0.125)]
    # s1's Atelectasis ties the randomized model (not above it) and s2's falls below the uniform map
    summary = across_models({"s0": result(0.9, 0.3, 0.1), "s1": result(0.8, 0.2, 0.2), "s2": result(0.7, 0.04, 0.0)})
    check = summary["methods"]["m"]["baselines"]
    assert not check["beaten_everywhere"]
    assert check["shortfalls"] == [
        {"label": "Atelectasis", "model": "s2", "baseline": "uniform map", "hit_rate": 0.04, "level": 0.05},
        {"label": "Atelectasis", "model": "s1", "baseline": "randomized model", "hit_rate": 0.2, "level": 0.2},
    ]
    assert "not above the uniform map or the randomized model: Atelectasis (s2, s1)" in across_models_text(summary)
