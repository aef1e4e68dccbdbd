"""Are the maps faithful to the model? ROAD (Rong et al., ICML 2022) from pytorch-grad-cam's metrics.

ROAD (RemOve And Debias) deletes a share of an image's pixels in the order a map ranks them, fills them in by noisy
linear imputation (each removed pixel the weighted mean of its eight neighbours, plus Gaussian noise of 0.01), and
measures how the explained label's raw logit changes. The imputation is pytorch-grad-cam's
(``pytorch_grad_cam.metrics.road``); each score is that library's: **logit after imputation minus logit before**, in
logit units (the targets are ``ClassifierOutputTarget(label index)`` on raw logits, as for the maps).

* ``most_relevant_first`` (MoRF, deletion): the highest-ranked pixels removed. A faithful map removes the evidence,
  so the logit falls: **more negative is more faithful**.
* ``least_relevant_first`` (LeRF, insertion-like): the lowest-ranked pixels removed. A faithful map leaves the
  evidence in place, so the logit holds: **higher (near zero or above) is more faithful**.
* ``combined``: ROADCombined's ``(least_relevant_first - most_relevant_first) / 2``: **higher is more faithful**;
  about zero for a map that ranks pixels at random, negative for one that ranks the evidence last.

A percentile ``p`` is the library's threshold: MoRF keeps the pixels ranked below the map's ``p``-th percentile
and imputes the top ``100 - p`` %, LeRF keeps the top ``p`` % and imputes the bottom ``100 - p`` %. The scores are
averaged over :data:`ROAD_PERCENTILES`, ``(20, 40, 60, 80)`` (the library's README example; its default
``10, 20, ..., 90`` costs 9/4 as much for much the same curve).

Ties: the library thresholds with ``map < percentile``, so a map with plateaus (Grad-CAM's zeros after its ReLU, an
upsampled coarse grid) does not remove the share a percentile names — at a percentile inside a plateau of zeros
MoRF removes the whole image. Each map is therefore replaced by its ranks, ties broken at random (seeded), before
the library sees it: for a map without ties this changes nothing (the thresholds select the same pixels), and a map
with no evidence anywhere (all zeros) ranks its pixels at random, which scores like a random map.

Cost: one sparse linear solve per image, per percentile, per order (MoRF, LeRF) and per distinct map, on the CPU
(scipy), whatever the model's device; identical maps across labels (attention rollout) share their imputed images.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from chexpert_hf.explain.maps import LogitsOnly

ROAD_PERCENTILES = (20, 40, 60, 80)
ROAD_KEYS = ("most_relevant_first", "least_relevant_first", "combined")


class _Logits(nn.Module):
    """pixels → float ``(B, labels)`` logits: a HF model through :class:`LogitsOnly`, a plain module as it is (its
    output's ``.logits`` if it has them); the float32 pixels the imputer works on are cast to the model's dtype."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = LogitsOnly(model) if isinstance(model, PreTrainedModel) else model
        dtypes = {parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values if self.dtype is None else pixel_values.to(self.dtype))
        return getattr(out, "logits", out).float()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; afterwards every submodule's own training flag back as it was."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def rank_maps(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each ``(H, W)`` map (over the leading axes) replaced by its ranks scaled to [0, 1], ties broken at random:
    the same order as the map wherever it has one, and no two pixels equal."""
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    jitter = rng.random(flat.shape)
    order = np.lexsort((jitter, flat), axis=-1)  # by value, then by the random key
    ranks = np.empty(flat.shape, dtype=np.float32)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1], dtype=np.float32)[None], axis=-1)
    return (ranks / max(flat.shape[1] - 1, 1)).reshape(maps.shape)


def _groups(maps: np.ndarray) -> list[list[int]]:
    """Columns of ``(B, L, H, W)`` maps grouped by identical maps (attention rollout gives every label the same)."""
    groups: list[list[int]] = []
    for column in range(maps.shape[1]):
        for group in groups:
            if np.array_equal(maps[:, group[0]], maps[:, column]):
                group.append(column)
                break
        else:
            groups.append([column])
    return groups


def road_scores(
    model: nn.Module,
    pixel_values: torch.Tensor,
    maps: np.ndarray,
    label_indices: Sequence[int],
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    *,
    seed: int | None = 0,
) -> dict[str, np.ndarray]:
    """ROAD scores of ``(B, L, H, W)`` maps: ``maps[b, j]`` explains the logit of label ``label_indices[j]`` for
    image ``b`` of ``pixel_values`` ``(B, C, H, W)`` (the model's input, normalized as it expects).

    Returns ``(B, L)`` float32 arrays, each the library's logit change averaged over ``percentiles``:
    ``most_relevant_first`` (more negative = more faithful), ``least_relevant_first`` (higher = more faithful) and
    ``combined`` = ``(least_relevant_first - most_relevant_first) / 2`` as ROADCombined defines it (higher = more
    faithful). ``model`` is a HF classifier or any module mapping pixels to ``(B, labels)`` logits; it runs in eval
    mode without gradients, and every submodule's training flag is restored afterwards. ``seed`` fixes the random
    tie-breaking and the imputation noise (without touching the global generators); None draws from the global
    torch generator and a fresh numpy one.
    """
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps = np.asarray(maps, dtype=np.float32)
    batch, height, width = pixel_values.shape[0], *pixel_values.shape[-2:]
    if maps.shape != (batch, len(label_indices), height, width):
        raise ValueError(
            f"maps must be (batch, labels, height, width) = {(batch, len(label_indices), height, width)} for "
            f"pixel_values {tuple(pixel_values.shape)} and {len(label_indices)} label(s); got {maps.shape}"
        )
    if not np.isfinite(maps).all():
        raise ValueError("maps contain non-finite values")
    percentiles = tuple(float(p) for p in percentiles)
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles must be numbers strictly between 0 and 100, got {percentiles}")
    indices = [int(index) for index in label_indices]
    inputs = pixel_values.detach().float()  # the imputer hands pixels to numpy (no bfloat16 there)
    scorer = _Logits(model)
    out = {key: np.zeros((batch, len(indices)), dtype=np.float32) for key in ROAD_KEYS[:2]}
    rng = np.random.default_rng(seed)
    orders = (("least_relevant_first", ROADLeastRelevantFirst), ("most_relevant_first", ROADMostRelevantFirst))
    with (
        _eval_mode(model),
        torch.no_grad(),
        torch.random.fork_rng(devices=[], enabled=seed is not None),
        warnings.catch_warnings(),
    ):
        # The library's imputer hands torch tensors to numpy functions, which numpy 2 warns about on every image.
        warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
        if seed is not None:
            torch.manual_seed(seed)
        before = scorer(inputs).cpu().numpy()
        bad = [index for index in indices if not 0 <= index < before.shape[1]]
        if bad:
            raise IndexError(f"label indices {bad} are out of range: the model has {before.shape[1]} outputs")
        for group in _groups(maps):
            ranked = rank_maps(maps[:, group[0]], rng)
            targets = [ClassifierOutputTarget(indices[group[0]])] * batch
            for key, metric_class in orders:  # LeRF first, as ROADCombined: the same noise for the same seed
                for percentile in percentiles:
                    after, imputed = metric_class(percentile)(
                        inputs, ranked, targets, scorer, return_visualization=True, return_diff=False
                    )
                    out[key][:, group[0]] += after - before[:, indices[group[0]]]
                    if len(group) > 1:
                        logits = scorer(imputed).cpu().numpy()
                        for column in group[1:]:
                            out[key][:, column] += logits[:, indices[column]] - before[:, indices[column]]
    for key in ROAD_KEYS[:2]:
        out[key] /= len(percentiles)
    out["combined"] = (out["least_relevant_first"] - out["most_relevant_first"]) / 2
    return out


def _mean(total: float, count: int) -> float | None:
    return float(total / count) if count else None


@dataclass
class FaithfulnessTally:
    """:func:`road_scores` summed per label column over batches (every batch must explain the same labels, in the
    same order); an image with a non-finite score for a label is left out of that label's means."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)  # key → (L,) float64 sums
    images: np.ndarray | None = None  # (L,) images counted per label

    def add(self, scores: Mapping[str, np.ndarray]) -> None:
        missing = [key for key in ROAD_KEYS if key not in scores]
        if missing:
            raise KeyError(f"road scores lack {missing}")
        values = {key: np.asarray(scores[key], dtype=np.float64) for key in ROAD_KEYS}
        shape = values[ROAD_KEYS[0]].shape
        if len(shape) != 2 or any(value.shape != shape for value in values.values()):
            raise ValueError(f"road scores must be (batch, labels) arrays of one shape, got {values}")
        if self.images is not None and shape[1] != self.images.shape[0]:
            raise ValueError(f"scores for {shape[1]} label(s) added to a tally of {self.images.shape[0]}")
        finite = np.logical_and.reduce([np.isfinite(value) for value in values.values()])
        if self.images is None:
            self.images = np.zeros(shape[1], dtype=np.int64)
            self.sums = {key: np.zeros(shape[1]) for key in ROAD_KEYS}
        self.images += finite.sum(axis=0)
        for key, value in values.items():
            self.sums[key] += np.where(finite, value, 0.0).sum(axis=0)

    def summary(self, label_names: Sequence[str]) -> dict[str, dict]:
        """``{label name: {most_relevant_first, least_relevant_first, combined: mean (None without images),
        images: n}}``, label ``j`` named ``label_names[j]`` (JSON-safe: Python floats and ints)."""
        labels = 0 if self.images is None else self.images.shape[0]
        if self.images is not None and len(label_names) != labels:
            raise ValueError(f"{len(label_names)} label name(s) for a tally of {labels} label(s)")
        out: dict[str, dict] = {}
        for column, name in enumerate(label_names):
            count = 0 if self.images is None else int(self.images[column])
            entry: dict = {
                key: (_mean(self.sums[key][column], count) if self.images is not None else None) for key in ROAD_KEYS
            }
            entry["images"] = count
            out[name] = entry
        return out


def faithfulness_text(summary: Mapping[str, Mapping]) -> str:
    """A :meth:`FaithfulnessTally.summary` as a header and one row per label, indented two spaces (the caller
    writes the method's line above it)."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"  {'label':<28}{'MoRF':>10}{'LeRF':>10}{'combined':>10}{'images':>8}"
        "   (ROAD logit change; MoRF lower, LeRF and combined higher = more faithful)"
    ]
    for label, entry in summary.items():
        lines.append(
            f"  {label:<28}{number(entry['most_relevant_first']):>10}{number(entry['least_relevant_first']):>10}"
            f"{number(entry['combined']):>10}{entry['images']:>8}"
        )
    if not summary:
        lines.append("  no label scored")
    return "\n".join(lines)


__all__ = [
    "ROAD_KEYS",
    "ROAD_PERCENTILES",
    "FaithfulnessTally",
    "faithfulness_text",
    "rank_maps",
    "road_scores",
]
