"""Weighted sampling of the training rows (``sampling: inverse_frequency`` or ``sqrt_inverse_frequency``).

For label ``j`` let ``p_j`` be the mean training target over the rows where it is not masked (the positive rate;
soft targets count by their value). A row's weight is the mean over its unmasked labels of

    ``y_ij / (2 p_j) + (1 - y_ij) / (2 (1 - p_j))``

so for every label, positives and negatives carry the same total weight (N/2 each) and a row that is positive for
rare findings is drawn more often. ``sqrt_inverse_frequency`` uses the square root of that weight (a softer
rebalancing). Weights are scaled to mean 1 and drawn with replacement, N draws per epoch.

Every process draws the same sequence, seeded by (seed, epoch); Accelerate then deals the batches out to the
processes, so one epoch over N processes covers exactly the draws of one process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def positive_rates(targets: np.ndarray) -> np.ndarray:
    """Per-label mean target over the unmasked rows (NaN = masked), clipped away from 0 and 1."""
    targets = np.asarray(targets, dtype=np.float64)
    counted = (~np.isnan(targets)).sum(axis=0)
    rates = np.nansum(targets, axis=0) / np.maximum(counted, 1)
    floor = 1.0 / max(len(targets), 2)
    return np.clip(rates, floor, 1.0 - floor)


def sample_weights(targets: np.ndarray, method: str) -> np.ndarray:
    """Per-row sampling weights (mean 1) for multi-label ``targets``; see the module doc for the formula."""
    if method not in ("inverse_frequency", "sqrt_inverse_frequency"):
        raise ValueError(f"unknown sampling {method!r}; choose inverse_frequency or sqrt_inverse_frequency")
    targets = np.asarray(targets, dtype=np.float64)
    rates = positive_rates(targets)
    per_entry = targets / (2 * rates) + (1 - targets) / (2 * (1 - rates))
    known = ~np.isnan(per_entry)
    counts = known.sum(axis=1)
    weights = np.where(counts > 0, np.nansum(per_entry, axis=1) / np.maximum(counts, 1), 1.0)
    if method == "sqrt_inverse_frequency":
        weights = np.sqrt(weights)
    return weights / weights.mean()


class WeightedEpochSampler(torch.utils.data.Sampler[int]):
    """``num_samples`` indices drawn with replacement by ``weights``, the same on every process for one epoch."""

    def __init__(self, weights: Sequence[float], num_samples: int | None = None, seed: int = 0):
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if self.weights.ndim != 1 or not len(self.weights) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be a non-empty 1-D array of non-negative numbers, not all 0")
        self.num_samples = len(self.weights) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.draws(self.epoch))

    def __len__(self) -> int:
        return self.num_samples


def epoch_samplers(loader: Any) -> list[Any]:
    """The samplers with ``set_epoch`` inside a (prepared) training dataloader, however Accelerate wrapped them."""
    found, stack, seen = [], [loader], set()
    while stack:
        item = stack.pop()
        for name in ("batch_sampler", "sampler"):
            child = getattr(item, name, None)
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            if hasattr(child, "set_epoch"):
                found.append(child)
            stack.append(child)
    return found


class SamplerEpoch(TrainerCallback):
    """Sets the training samplers' epoch from the training state at the start of every epoch.

    Transformers calls ``set_epoch`` on the dataloader, but on a run resumed mid-epoch under several processes the
    dataloader is Accelerate's batch-skipping copy, whose ``set_epoch`` does not reach a sampler inside its batch
    sampler shard: the resumed epoch would replay epoch 0's draws. ``state.epoch`` is the resumed checkpoint's
    (e.g. 2.5 for half of the third epoch) or, at an epoch's start, exactly the epochs completed."""

    def __init__(self):
        self.samplers: list[Any] = []

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        epoch = math.floor((state.epoch or 0.0) + 1e-6)
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
