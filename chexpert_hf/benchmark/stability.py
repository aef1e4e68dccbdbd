"""The stability of a training run, from its validation during training: the learning curve and what it shows.

``trainer_state.json`` is written by ``Trainer.save_state()`` after training and before the final evaluation, so its
``log_history`` holds exactly the evaluations made during training (one per epoch with ``eval_strategy: epoch``).
Each evaluation is one point of the curve: validation mean AUROC and loss, and the training loss as the mean of the
``loss`` values the Trainer logged since the previous evaluation (each is itself a mean over its logging window).
From the curve: **peak − last**, the AUROC lost after the best evaluation (overfitting), and the **largest drop**,
the largest fall of AUROC from one evaluation to the next (instability).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STABILITY_KEYS = (
    "epochs_evaluated",
    "best_epoch",
    "best_auroc",
    "last_auroc",
    "peak_minus_last",
    "largest_drop",
    "train_loss_best",
    "val_loss_best",
    "train_loss_last",
    "val_loss_last",
)


@dataclass
class Curve:
    """One run's validation history: one point per evaluation during training, in log order."""

    epochs: list[float]
    val_auroc: list[float | None]
    val_loss: list[float | None]
    train_loss: list[float | None]  # mean of the training losses logged since the previous evaluation


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def read_curve(path: str | os.PathLike) -> Curve | None:
    """The curve of a ``trainer_state.json``; None when the file is missing or holds no evaluation."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text()).get("log_history")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{path}: not a Trainer state file ({error})") from None
    if not isinstance(history, list):
        raise ValueError(f"{path}: no log_history list")
    curve = Curve([], [], [], [])
    losses: list[float] = []
    for entry in history:
        if not isinstance(entry, dict):
            continue
        if "eval_loss" in entry or "eval_mean_auroc" in entry:
            curve.epochs.append(float(entry.get("epoch", len(curve.epochs) + 1)))
            curve.val_auroc.append(_finite(entry.get("eval_mean_auroc")))
            curve.val_loss.append(_finite(entry.get("eval_loss")))
            curve.train_loss.append(float(np.mean(losses)) if losses else None)
            losses = []
        elif (loss := _finite(entry.get("loss"))) is not None:  # a training log (the summary has train_loss)
            losses.append(loss)
    return curve if curve.epochs else None


def stability(curve: Curve | None) -> dict[str, float | int | None]:
    """Every key of :data:`STABILITY_KEYS` (None where the curve does not tell): the evaluations with an AUROC,
    the best one (the first on ties), the last, peak − last, the largest fall between consecutive evaluations (0.0
    when it never falls; None with one point), and the training and validation losses at the best and the last."""
    result: dict[str, float | int | None] = dict.fromkeys(STABILITY_KEYS)
    points = [index for index, value in enumerate(curve.val_auroc) if value is not None] if curve else []
    if not points:
        return result
    aurocs = [curve.val_auroc[index] for index in points]
    best = points[int(np.argmax(aurocs))]  # argmax: the first of equal maxima
    last = points[-1]
    drops = [earlier - later for earlier, later in zip(aurocs[:-1], aurocs[1:], strict=True)]
    result.update(
        epochs_evaluated=len(points),
        best_epoch=curve.epochs[best],
        best_auroc=curve.val_auroc[best],
        last_auroc=curve.val_auroc[last],
        peak_minus_last=curve.val_auroc[best] - curve.val_auroc[last],
        largest_drop=max(0.0, *drops) if drops else None,
        train_loss_best=curve.train_loss[best],
        val_loss_best=curve.val_loss[best],
        train_loss_last=curve.train_loss[last],
        val_loss_last=curve.val_loss[last],
    )
    return result


def _by_epoch(curves: Sequence[Curve], field: str) -> tuple[list[float], list[list[float]]]:
    """The epochs any curve evaluated at, and at each the values of the curves that have one there."""
    values: dict[float, list[float]] = {}
    for curve in curves:
        for epoch, value in zip(curve.epochs, getattr(curve, field), strict=True):
            if value is not None:
                values.setdefault(round(epoch, 6), []).append(value)
    epochs = sorted(values)
    return epochs, [values[epoch] for epoch in epochs]


def learning_curves_figure(curves: Mapping[str, Sequence[Curve]]):
    """Two panels: validation mean AUROC per epoch (one line per recipe: the mean over seeds, a band from their
    minimum to their maximum) on an axis fitted to the data; training (dashed) and validation (solid) loss, mean
    over seeds. A Figure (no pyplot state)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11.0, 4.4), dpi=120)
    auroc_axes, loss_axes = figure.subplots(1, 2)
    drawn = [(name, runs) for name, runs in curves.items() if runs]
    for index, (name, runs) in enumerate(drawn):
        colour = f"C{index}"
        epochs, values = _by_epoch(runs, "val_auroc")
        if epochs:
            auroc_axes.plot(epochs, [np.mean(v) for v in values], "-o", color=colour, markersize=3, label=name)
            auroc_axes.fill_between(
                epochs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.18, linewidth=0
            )
        for field, style in (("val_loss", "-"), ("train_loss", "--")):
            epochs, values = _by_epoch(runs, field)
            if epochs:
                loss_axes.plot(
                    epochs,
                    [np.mean(v) for v in values],
                    style,
                    color=colour,
                    label=f"{name} ({'validation' if field == 'val_loss' else 'training'})",
                )
    auroc_axes.set(xlabel="epoch", ylabel="validation mean AUROC (5 competition labels)")
    auroc_axes.set_title("Validation AUROC per epoch: mean over seeds, band min–max", fontsize=9)
    loss_axes.set(xlabel="epoch", ylabel="loss (masked BCE)")
    loss_axes.set_title("Training (dashed) and validation (solid) loss, mean over seeds", fontsize=9)
    for axes in (auroc_axes, loss_axes):
        axes.grid(linewidth=0.4, alpha=0.6)
        if drawn:
            axes.legend(fontsize=7)
        else:
            axes.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    return figure
