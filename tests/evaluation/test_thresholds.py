"""Operating points: each threshold rule on hand cases, Wilson intervals, and thresholds kept in config.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_model
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from chexpert_hf.evaluation.thresholds import (
    CONFIG_THRESHOLD_SOURCE,
    CONFIG_THRESHOLDS,
    choose_threshold,
    choose_thresholds,
    operating_point,
    parse_rule,
    saved_thresholds,
    store_thresholds,
    wilson_interval,
)
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models import MODELS

# Eight studies, scores in decreasing order; 4 positives (1) and 4 negatives (0). Calling "score >= t" positive:
#   t     0.9  0.8  0.7  0.6  0.5  0.4  0.3  0.2
#   truth  1    1    0    1    0    0    1    0
#   TPR   1/4  2/4  2/4  3/4  3/4  3/4  4/4  4/4
#   FPR    0    0   1/4  1/4  2/4  3/4  3/4  4/4
#   J     .25  .50  .25  .50  .25   0   .25   0     -> Youden: 0.8 and 0.6 tie at 0.5; the higher, 0.8
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
TRUTH = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=float)


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("youden", 0.8),
        ("sensitivity:0.75", 0.6),  # the highest threshold reaching TPR 3/4
        ("sensitivity:0.7", 0.6),
        ("sensitivity:1", 0.3),
        ("specificity:0.75", 0.6),  # the lowest threshold keeping FPR at most 1/4
        ("specificity:0.5", 0.5),
        ("specificity:0.25", 0.3),  # FPR 3/4 at 0.4 and at 0.3: the lower
    ],
)
def test_each_rule_picks_the_threshold_worked_out_by_hand(rule, expected):
    assert choose_threshold(SCORES, TRUTH, rule) == expected


def test_a_threshold_applied_again_gives_what_the_rule_saw():
    point = operating_point(SCORES, TRUTH, choose_threshold(SCORES, TRUTH, "sensitivity:0.75"))
    assert (point["tp"], point["fn"], point["fp"], point["tn"]) == (3, 1, 1, 3)
    assert point["sensitivity"] == 0.75 and point["specificity"] == 0.75
    assert point["ppv"] == 0.75 and point["npv"] == 0.75


def test_a_rule_met_only_by_calling_nothing_positive_sits_just_above_the_highest_score():
    scores, truth = np.array([0.9, 0.5, 0.1]), np.array([0.0, 1.0, 0.0])  # a negative scored highest
    threshold = choose_threshold(scores, truth, "specificity:1")
    assert threshold == np.nextafter(0.9, 1.0) and math.isfinite(threshold)
    point = operating_point(scores, truth, threshold)
    assert point["tp"] == point["fp"] == 0 and point["ppv"] is None and point["ppv_ci95"] is None


def test_uncertain_targets_are_left_out_and_one_class_has_no_threshold():
    scores = np.array([[0.9, 0.9], [0.8, 0.2], [0.1, 0.3]])
    targets = np.array([[1.0, 1.0], [np.nan, 1.0], [0.0, 1.0]])
    assert choose_thresholds(scores, targets, ["Atelectasis", "Edema"], "youden") == {"Atelectasis": 0.9}
    assert (
        operating_point(scores[:, 0], targets[:, 0], 0.5)["tp"]
        + operating_point(scores[:, 0], targets[:, 0], 0.5)["fn"]
        == 1
    )


def test_wilson_interval_matches_the_formula_by_hand():
    z = 1.959963984540054
    for successes, total in ((3, 4), (0, 10), (10, 10), (37, 120)):
        p = successes / total
        centre = (p + z * z / (2 * total)) / (1 + z * z / total)
        half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
        low, high = wilson_interval(successes, total)
        assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert wilson_interval(0, 0) is None


@pytest.mark.parametrize("text", ["youdn", "sensitivity", "sensitivity:0", "specificity:1.5", "recall:0.9", ""])
def test_a_rule_that_is_not_one_names_what_is_accepted(text):
    with pytest.raises(ValueError, match="youden, sensitivity:X, specificity:X"):
        parse_rule(text)


def test_rules_read_back_as_written():
    assert str(parse_rule(" sensitivity:0.90 ")) == "sensitivity:0.9"
    assert str(parse_rule("youden")) == "youden"


@pytest.mark.parametrize("family", sorted(MODELS))
def test_thresholds_survive_save_pretrained_and_from_pretrained(family, tmp_path):
    built = tiny_model(family)
    thresholds = {label: 0.1 + 0.1 * index + 1e-13 for index, label in enumerate(COMPETITION_LABELS)}
    source = {"rule": "sensitivity:0.9", "split": "validation", "level": "study", "count": 300}
    store_thresholds(built.model.config, thresholds, source)
    built.model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written[CONFIG_THRESHOLDS] == thresholds and written[CONFIG_THRESHOLD_SOURCE] == source

    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert saved_thresholds(loaded.config) == (thresholds, source)  # every digit: floats go through JSON exactly
    with torch.no_grad():  # the model still runs with them in its config
        loaded.eval()(torch.randn(1, 3, TINY_SIZE, TINY_SIZE))
    loaded.save_pretrained(tmp_path / "again")  # and a second save keeps them
    assert saved_thresholds(AutoConfig.from_pretrained(tmp_path / "again")) == (thresholds, source)
    if family == "resnet_vit":  # the configuration class that ships with the checkpoint keeps them too
        remote_class = get_class_from_dynamic_module(written["auto_map"]["AutoConfig"], str(tmp_path))
        assert remote_class.__module__.startswith("transformers_modules")
        assert saved_thresholds(remote_class.from_pretrained(tmp_path)) == (thresholds, source)


def test_a_model_without_thresholds_has_none():
    built = tiny_model("vit")
    assert saved_thresholds(built.model.config) == ({}, {})


@pytest.mark.parametrize(
    "saved", [{"Edema": None}, {"Edema": "0.5"}, {"Edema": float("nan")}, {"Oedema": 0.5}, [0.5], {"Edema": True}]
)
def test_thresholds_edited_by_hand_into_nonsense_are_named(saved):
    built = tiny_model("vit")
    setattr(built.model.config, CONFIG_THRESHOLDS, saved)
    with pytest.raises(ValueError, match="decision_thresholds"):
        saved_thresholds(built.model.config)
