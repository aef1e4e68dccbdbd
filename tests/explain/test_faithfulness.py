"""ROAD faithfulness: a planted model whose logits read fixed squares, maps that are its evidence or the opposite,
agreement with pytorch-grad-cam's own ROAD classes, the tally and the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from pytorch_grad_cam.metrics.road import (
    ROADCombined,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from chexpert_hf.explain.faithfulness import (
    ROAD_KEYS,
    ROAD_PERCENTILES,
    FaithfulnessTally,
    faithfulness_text,
    rank_maps,
    road_scores,
)

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

SIZE = 32
REGIONS = ((slice(4, 12), slice(4, 12)), (slice(18, 28), slice(16, 26)))  # label 0's square, label 1's


class SquareReader(nn.Module):
    """Label j's logit is the mean intensity inside ``REGIONS[j]``; records the training flag of each call."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.norm = nn.BatchNorm2d(3)  # a submodule to keep in eval mode while the reader trains
        self.modes: list[bool] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return torch.stack([self.scale * pixels[:, :, rows, cols].mean(dim=(1, 2, 3)) for rows, cols in REGIONS], 1)


def images(count: int = 4) -> torch.Tensor:
    """Dim noise with both squares bright: removing a square's pixels (imputed from its dim border) drops its logit."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.2
    for rows, cols in REGIONS:
        pixels[:, :, rows, cols] += 1.0
    return pixels


def evidence(label: int, count: int = 4) -> np.ndarray:
    """``(count, H, W)``: 1 inside the label's square, 0 elsewhere (plateaus everywhere: ties to break)."""
    out = np.zeros((count, SIZE, SIZE), dtype=np.float32)
    out[(slice(None), *REGIONS[label])] = 1.0
    return out


def test_the_evidence_is_more_faithful_than_its_inverse_and_than_noise():
    model, pixels = SquareReader(), images()
    evidence_map = evidence(0)
    noise = np.random.default_rng(3).random(evidence_map.shape, dtype=np.float32)
    candidates = {"evidence": evidence_map, "inverse": 1 - evidence_map, "noise": noise}
    scores = {name: road_scores(model, pixels, cam[:, None], [0]) for name, cam in candidates.items()}
    before = model(pixels)[:, 0].detach().numpy()  # about 1.1
    morf = {name: result["most_relevant_first"][:, 0] for name, result in scores.items()}
    lerf = {name: result["least_relevant_first"][:, 0] for name, result in scores.items()}
    combined = {name: result["combined"][:, 0] for name, result in scores.items()}
    # Removing the evidence first drops the logit by most of its value; removing everything else first leaves it.
    assert (morf["evidence"] < -0.6 * before).all()
    assert np.abs(lerf["evidence"]).max() < 0.01  # the square is always among the kept pixels
    # The inverse map the other way round: the square goes last under MoRF and first under LeRF.
    assert np.abs(morf["inverse"]).max() < 0.01
    assert (lerf["inverse"] < -0.6 * before).all()
    assert (combined["evidence"] > 0.3 * before).all() and (combined["inverse"] < -0.3 * before).all()
    assert (combined["evidence"] > combined["noise"] + 0.1).all()
    assert (combined["noise"] > combined["inverse"] + 0.1).all()
    assert np.allclose(combined["evidence"], (lerf["evidence"] - morf["evidence"]) / 2)


def test_each_label_is_scored_against_its_own_map():
    model, pixels = SquareReader(), images(3)
    right = np.stack([evidence(0, 3), evidence(1, 3)], axis=1)  # (B, 2, H, W)
    swapped = right[:, ::-1].copy()
    good, bad = road_scores(model, pixels, right, [0, 1]), road_scores(model, pixels, swapped, [0, 1])
    for key in ROAD_KEYS:
        assert good[key].shape == bad[key].shape == (3, 2)
        assert good[key].dtype == np.float32
    assert (good["combined"] > 0.3).all()
    assert (good["combined"] > bad["combined"] + 0.2).all()


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")  # the library's own
def test_scores_agree_with_the_library_on_a_map_without_ties():
    model, pixels = SquareReader(), images(2)
    cam = np.random.default_rng(5).random((2, SIZE, SIZE), dtype=np.float32)  # no ties: ranks select the same pixels
    ours = road_scores(model, pixels, cam[:, None], [1], seed=7)
    targets = [ClassifierOutputTarget(1)] * 2
    torch.manual_seed(7)
    lerf = ROADLeastRelevantFirstAverage(list(ROAD_PERCENTILES))(pixels, cam, targets, model)
    morf = ROADMostRelevantFirstAverage(list(ROAD_PERCENTILES))(pixels, cam, targets, model)
    torch.manual_seed(7)
    combined = ROADCombined(list(ROAD_PERCENTILES))(pixels, cam, targets, model)
    np.testing.assert_allclose(ours["least_relevant_first"][:, 0], lerf, atol=1e-5)
    np.testing.assert_allclose(ours["most_relevant_first"][:, 0], morf, atol=1e-5)
    np.testing.assert_allclose(ours["combined"][:, 0], combined, atol=1e-5)


def test_labels_with_one_map_share_the_imputed_images():
    model, pixels = SquareReader(), images(2)
    cam = np.random.default_rng(6).random((2, SIZE, SIZE), dtype=np.float32)
    together = road_scores(model, pixels, np.stack([cam, cam], axis=1), [0, 1], seed=3)
    for column, label in enumerate((0, 1)):
        alone = road_scores(model, pixels, cam[:, None], [label], seed=3)
        for key in ROAD_KEYS:
            np.testing.assert_allclose(together[key][:, column], alone[key][:, 0], atol=1e-6)


def test_the_seed_fixes_the_scores_and_leaves_the_global_generators_alone():
    model, pixels = SquareReader(), images(2)
    cam = evidence(1, 2)[:, None]
    state = torch.get_rng_state()
    first, second = road_scores(model, pixels, cam, [1], seed=11), road_scores(model, pixels, cam, [1], seed=11)
    assert torch.equal(state, torch.get_rng_state())
    for key in ROAD_KEYS:
        np.testing.assert_array_equal(first[key], second[key])
    other = road_scores(model, pixels, cam, [1], seed=12)
    assert not np.array_equal(first["most_relevant_first"], other["most_relevant_first"])


def test_a_map_without_evidence_scores_like_a_random_one():
    """All zeros: the library's ``map < percentile`` alone would keep no pixel and impute the whole image for
    both orders; ranked with ties broken at random, each percentile removes its share of random pixels."""
    model, pixels = SquareReader(), images()
    before = model(pixels)[:, 0].detach().numpy()
    flat = road_scores(model, pixels, np.zeros((4, 1, SIZE, SIZE), dtype=np.float32), [0])
    assert (flat["most_relevant_first"][:, 0] > -0.8 * before).all()
    assert (flat["least_relevant_first"][:, 0] > -0.8 * before).all()
    assert (np.abs(flat["combined"][:, 0]) < 0.1 * before).all()


def test_ranks_break_ties_and_keep_the_order():
    maps = np.zeros((2, 4, 5), dtype=np.float32)
    maps[0, 1:3, 1:4] = 1.0
    maps[1] = np.arange(20).reshape(4, 5)[::-1]
    ranked = rank_maps(maps, np.random.default_rng(0))
    assert ranked.shape == maps.shape and ranked.min() == 0 and ranked.max() == 1
    for image in range(2):
        assert len(np.unique(ranked[image])) == 20
    assert ranked[0][maps[0] == 1].min() > ranked[0][maps[0] == 0].max()
    np.testing.assert_allclose(ranked[1], maps[1] / 19)


def test_the_training_flags_are_restored_and_the_model_runs_in_eval_mode():
    model, pixels = SquareReader(), images(2)
    model.train()
    model.norm.eval()
    road_scores(model, pixels, evidence(0, 2)[:, None], [0], percentiles=(50,))
    assert model.modes and not any(model.modes)
    assert model.training and not model.norm.training
    with pytest.raises(IndexError, match="out of range"):
        road_scores(model, pixels, evidence(0, 2)[:, None], [2])
    assert model.training and not model.norm.training


def test_bad_maps_and_percentiles_are_refused():
    model, pixels = SquareReader(), images(2)
    with pytest.raises(ValueError, match="maps must be"):
        road_scores(model, pixels, evidence(0, 2), [0])
    with pytest.raises(ValueError, match="maps must be"):
        road_scores(model, pixels, evidence(0, 2)[:, None], [0, 1])
    nan = evidence(0, 2)[:, None]
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        road_scores(model, pixels, nan, [0])
    with pytest.raises(ValueError, match="percentiles"):
        road_scores(model, pixels, evidence(0, 2)[:, None], [0], percentiles=(0, 50))


def test_a_hugging_face_classifier_is_scored_through_its_logits():
    model = tiny_model("vit").model
    pixels = torch.randn(2, 3, 32, 32)
    cam = np.random.default_rng(0).random((2, 2, 32, 32), dtype=np.float32)
    scores = road_scores(model, pixels, cam, [0, 3], percentiles=(50,))
    for key in ROAD_KEYS:
        assert scores[key].shape == (2, 2) and np.isfinite(scores[key]).all()


def test_the_tally_averages_over_batches_per_label():
    rng = np.random.default_rng(0)
    batches = [{key: rng.normal(size=(count, 2)).astype(np.float32) for key in ROAD_KEYS} for count in (3, 5)]
    batches[1]["combined"][4, 1] = np.nan  # left out of label 1's means, every key
    tally = FaithfulnessTally()
    for batch in batches:
        tally.add(batch)
    summary = tally.summary(["Edema", "Cardiomegaly"])
    assert list(summary) == ["Edema", "Cardiomegaly"]
    assert summary["Edema"]["images"] == 8 and summary["Cardiomegaly"]["images"] == 7
    for key in ROAD_KEYS:
        stacked = np.concatenate([batch[key] for batch in batches]).astype(np.float64)
        assert summary["Edema"][key] == pytest.approx(stacked[:, 0].mean(), abs=1e-6)
        assert summary["Cardiomegaly"][key] == pytest.approx(stacked[:7, 1].mean(), abs=1e-6)
        assert type(summary["Edema"][key]) is float
    json.dumps(summary)
    with pytest.raises(ValueError, match="label name"):
        tally.summary(["Edema"])
    with pytest.raises(ValueError, match="label"):
        tally.add({key: np.zeros((2, 3)) for key in ROAD_KEYS})


def test_the_tally_of_real_scores_and_its_table():
    model, pixels = SquareReader(), images(2)
    tally = FaithfulnessTally()
    maps = np.stack([evidence(0, 2), evidence(1, 2)], axis=1)
    first = road_scores(model, pixels, maps, [0, 1], percentiles=(50,))
    second = road_scores(model, pixels, maps[:, ::-1].copy(), [0, 1], percentiles=(50,))
    tally.add(first)
    tally.add(second)
    summary = tally.summary(["Atelectasis", "Edema"])
    expected = (first["combined"].mean(axis=0) + second["combined"].mean(axis=0)) / 2
    assert [summary[name]["combined"] for name in summary] == pytest.approx(expected.tolist(), abs=1e-6)
    text = faithfulness_text(summary)
    lines = text.splitlines()
    assert len(lines) == 3 and "combined" in lines[0]
    assert lines[1].split()[0] == "Atelectasis" and lines[1].split()[-1] == "4"
    assert f"{summary['Edema']['combined']:.3f}" in lines[2]
    empty = FaithfulnessTally().summary(["Edema"])
    assert empty == {
        "Edema": {"most_relevant_first": None, "least_relevant_first": None, "combined": None, "images": 0}
    }
    assert "-" in faithfulness_text(empty).splitlines()[1]
