"""Stability of a run from its trainer_state.json: numbers against a hand-made history, and the curves figure."""

from __future__ import annotations

import json

import pytest

from chexpert_hf.benchmark.stability import STABILITY_KEYS, Curve, learning_curves_figure, read_curve, stability


def write_state(path, evaluations, losses_per_interval, summary=True):
    """``evaluations``: (epoch, auroc, eval_loss); before each, that interval's training losses."""
    history, step = [], 0
    for (epoch, auroc, eval_loss), losses in zip(evaluations, losses_per_interval, strict=True):
        for loss in losses:
            step += 10
            history.append({"epoch": epoch - 0.5, "step": step, "loss": loss, "grad_norm": 1.0, "learning_rate": 1e-3})
        history.append({"epoch": epoch, "step": step, "eval_loss": eval_loss, "eval_mean_auroc": auroc})
    if summary:
        history.append({"epoch": evaluations[-1][0], "train_loss": 9.0, "train_runtime": 1.0, "step": step})
    path.write_text(json.dumps({"log_history": history, "best_model_checkpoint": None}))
    return path


def test_the_numbers_of_a_hand_made_history(tmp_path):
    state = write_state(
        tmp_path / "trainer_state.json",
        [(1.0, 0.70, 0.50), (2.0, 0.80, 0.40), (3.0, 0.78, 0.45), (4.0, 0.75, 0.52)],
        [[0.6, 0.5], [0.4], [0.3, 0.25, 0.2], []],
    )
    curve = read_curve(state)
    assert curve.epochs == [1.0, 2.0, 3.0, 4.0]
    assert curve.train_loss[:3] == pytest.approx([0.55, 0.4, 0.25]) and curve.train_loss[3] is None
    numbers = stability(curve)
    assert set(numbers) == set(STABILITY_KEYS)
    assert numbers["epochs_evaluated"] == 4 and numbers["best_epoch"] == 2.0
    assert numbers["best_auroc"] == pytest.approx(0.80) and numbers["last_auroc"] == pytest.approx(0.75)
    assert numbers["peak_minus_last"] == pytest.approx(0.05)
    assert numbers["largest_drop"] == pytest.approx(0.03)  # 0.78 -> 0.75
    assert numbers["train_loss_best"] == pytest.approx(0.4) and numbers["val_loss_best"] == pytest.approx(0.40)
    assert numbers["train_loss_last"] is None and numbers["val_loss_last"] == pytest.approx(0.52)


def test_ties_take_the_first_best_and_a_rising_curve_never_drops(tmp_path):
    tied = stability(Curve([1, 2, 3], [0.8, 0.9, 0.9], [1, 1, 1], [1, 1, 1]))
    assert tied["best_epoch"] == 2 and tied["peak_minus_last"] == 0.0 and tied["largest_drop"] == 0.0
    one = stability(Curve([1], [0.8], [0.3], [None]))
    assert one["largest_drop"] is None and one["peak_minus_last"] == 0.0 and one["train_loss_best"] is None


def test_fractional_epochs_and_a_missing_file(tmp_path):
    state = write_state(tmp_path / "s.json", [(0.5, 0.6, 1.0), (1.0, 0.65, 0.9), (1.5, 0.62, 0.95)], [[1.0]] * 3)
    numbers = stability(read_curve(state))
    assert numbers["best_epoch"] == 1.0 and numbers["largest_drop"] == pytest.approx(0.03)
    assert read_curve(tmp_path / "absent.json") is None
    assert stability(None) == dict.fromkeys(STABILITY_KEYS)
    no_eval = tmp_path / "no_eval.json"
    no_eval.write_text(json.dumps({"log_history": [{"loss": 0.3, "epoch": 0.5}, {"train_loss": 0.3}]}))
    assert read_curve(no_eval) is None


def test_a_malformed_state_is_named(tmp_path):
    bad = tmp_path / "trainer_state.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="trainer_state.json"):
        read_curve(bad)
    bad.write_text(json.dumps({"log_history": 3}))
    with pytest.raises(ValueError, match="no log_history"):
        read_curve(bad)


def test_the_figure_fits_the_auroc_axis_and_draws_the_seed_band():
    first = Curve([1, 2, 3], [0.78, 0.80, 0.81], [0.5, 0.45, 0.44], [0.6, 0.5, 0.4])
    second = Curve([1, 2, 3], [0.79, 0.82, 0.80], [0.5, 0.46, 0.47], [0.6, 0.5, 0.45])
    figure = learning_curves_figure({"a": [first, second], "b": [first], "none": []})
    auroc_axes, loss_axes = figure.axes
    low, high = auroc_axes.get_ylim()
    assert low <= 0.78 and high >= 0.82 and high - low < 0.25
    assert auroc_axes.collections  # the min-max band over the two seeds
    assert [line.get_label() for line in auroc_axes.get_lines()] == ["a", "b"]
    assert len(loss_axes.get_lines()) == 4  # training and validation loss per recipe
    empty = learning_curves_figure({})
    assert "no finished run" in [text.get_text() for text in empty.axes[0].texts]
