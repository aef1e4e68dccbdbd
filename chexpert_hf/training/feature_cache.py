"""Feature caching for head-only training (``cache_features: true``).

With the ``head`` freeze policy the backbone never changes, so its output for an image is the same in every
epoch. :func:`attach_cached_features` runs the frozen model once over the training and validation images (in eval
mode, without augmentation), keeps what enters the classification head (the pooled features: ViT/DeiT/hybrid
[CLS] after the final norm, Swin's pooled output, DenseNet's global average pool), and stores it on disk; the
Trainer then trains :class:`FeatureHeadModel` — the head alone, reading those features. The head is the full
model's own module (the same tensors), so when training ends the full model holds the trained head and is saved
as a normal checkpoint that ``from_pretrained``, ``chexpert-hf evaluate`` and ``explain`` accept.

Where and under which key
    ``<prepared dataset>.features/<family>-<source>-<size>px-<key>/<split>-<rows>.npy`` (``feature_cache_dir``
    moves the root). ``<key>`` hashes the backbone's weights (every tensor but the head's, so a retrained
    checkpoint at the same path gets a new key), its configuration (label fields aside), the input size, the
    normalisation, the input channels, the precision and the prepared dataset (its folder and
    ``prepare_info.json``: the same paths prepared at another size are other pixels); ``<rows>`` hashes the image
    paths of the split in order (views, sample limits and patient splits select other rows). A later run with
    the same backbone reuses the files: every seed of a head-only grid after the first trains without touching
    an image. A JSON file next to each array says what it holds. Arrays are float32, ``rows × features``,
    memory-mapped when read.

The same training?
    The features come from the backbone in eval mode, as at evaluation. For ViT, DeiT and the hybrid (no dropout
    in their configurations) and DenseNet (frozen BatchNorm is held in eval mode anyway) that is exactly what the
    head sees on the fly; Swin's stochastic depth (``drop_path_rate`` 0.1) would perturb the frozen backbone's
    output on the fly and does not here. Augmentation does not apply: every epoch sees the same features.

Several processes
    Every process asks for the same files; the first to take a file's lock extracts it, the others wait on that
    lock (no collective barrier, so no ``ddp_timeout`` however long the extraction takes) and then read it. The
    head then trains under DDP as any model would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from chexpert_hf.data.loading import DecodeCollator, LabelledImages, cache_lock
from chexpert_hf.data.transforms import to_float
from chexpert_hf.models import checkpoint_name, classifier, input_channels
from chexpert_hf.outputs import PREPARE_INFO_JSON
from chexpert_hf.utils import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _head_name(model: PreTrainedModel) -> str:
    head = classifier(model)
    for name, module in model.named_modules():
        if module is head:
            return name
    raise ValueError(f"{type(model).__name__}: its classification head is not one of its submodules")


class FeatureHeadModel(nn.Module):
    """The classification head of ``model`` alone, taking pooled features as ``pixel_values``.

    The head module is registered under the same dotted name as in ``model`` (``classifier``,
    ``timm_model.classifier``), so freeze-policy names, parameter groups and layer decay apply unchanged; the full
    model is kept as ``full_model`` (not a submodule: it is not moved, trained or saved through this module).
    """

    main_input_name = "pixel_values"

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.head_name = _head_name(model)
        parent: nn.Module = self
        *path, leaf = self.head_name.split(".")
        for part in path:
            child = nn.Module()
            parent.add_module(part, child)
            parent = child
        parent.add_module(leaf, model.get_submodule(self.head_name))
        self.config = model.config
        object.__setattr__(self, "full_model", model)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.get_submodule(self.head_name)(pixel_values))


# ---------------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------------


def backbone_fingerprint(model: PreTrainedModel) -> str:
    """SHA-256 over the name, dtype, shape and bytes of every parameter and buffer outside the head."""
    head = _head_name(model) + "."
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(head):
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rows_fingerprint(split: LabelledImages) -> str:
    """A short hash of the split's image paths, in order."""
    paths = split.dataset.with_format("arrow")["path"].to_pylist()
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def _source_tag(source: str) -> str:
    """A readable name for where the weights came from: ``scratch``, a folder's name or a Hub id."""
    if source == "config":
        return "scratch"
    tag = checkpoint_name(source) or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag)[:60]


@dataclass
class FeatureCache:
    """The cache folder of one model, input size and precision (see the module doc)."""

    folder: Path
    description: dict

    def path(self, split_name: str, split: LabelledImages) -> Path:
        return self.folder / f"{split_name}-{rows_fingerprint(split)}.npy"


# Configuration fields that do not change what the backbone computes.
_UNKEYED_CONFIG = {
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
}


def config_fingerprint(model: PreTrainedModel) -> str:
    fields = {
        key: value
        for key, value in model.config.to_dict().items()
        if not key.startswith("_") and key not in _UNKEYED_CONFIG
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def dataset_fingerprint(prepared: str | os.PathLike) -> str:
    """The prepared dataset: its folder and the contents of its ``prepare_info.json`` (source, size, counts)."""
    prepared = Path(prepared).expanduser().resolve()
    info = prepared / PREPARE_INFO_JSON
    digest = hashlib.sha256(str(prepared).encode())
    if info.is_file():
        digest.update(info.read_bytes())
    return digest.hexdigest()


def feature_cache(
    model: PreTrainedModel,
    family: str,
    source: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    precision: str,
    root: str | os.PathLike,
    prepared: str | os.PathLike | None = None,
) -> FeatureCache:
    description = {
        "format": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "family": family,
        "source": source,
        "backbone_sha256": backbone_fingerprint(model),
        "config_sha256": config_fingerprint(model),
        "dataset_sha256": dataset_fingerprint(prepared) if prepared is not None else None,
        "image_size": int(image_size),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "channels": input_channels(model),
        "precision": precision,
    }
    keyed = {key: value for key, value in description.items() if key not in ("family", "source")}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(root).expanduser() / f"{family}-{_source_tag(source)}-{image_size}px-{key}"
    return FeatureCache(folder, description)


def default_root(prepared: str | os.PathLike) -> Path:
    """Next to the prepared dataset: ``<prepared>.features``."""
    prepared = Path(prepared).resolve()
    return prepared.parent / f"{prepared.name}.features"


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(
    model: PreTrainedModel,
    split: LabelledImages,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "extracting features",
) -> np.ndarray:
    """What enters ``model``'s head for every image of ``split``, in order: float32, ``len(split) × features``.

    The model runs in eval mode (dropout off, BatchNorm on its running statistics) on unaugmented images
    normalised as in training; its mode is restored afterwards.
    """
    device = torch.device(device)
    channels = input_channels(model)
    captured: list[torch.Tensor] = []
    hook = classifier(model).register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    loader = torch.utils.data.DataLoader(
        split,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=DecodeCollator(image_size),
        pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    features: np.ndarray | None = None
    start = 0
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    try:
        for batch in tqdm(loader, desc=desc, unit=" batches"):
            pixels = batch["pixel_values"].to(device, non_blocking=True).float()
            pixels = to_float(pixels, mean, std, channels)
            captured.clear()
            with autocast:
                model(pixel_values=pixels)
            if len(captured) != 1:
                raise RuntimeError(f"the head of {type(model).__name__} ran {len(captured)} times in one forward")
            values = captured[0].float().flatten(1).cpu().numpy()
            if features is None:
                features = np.empty((len(split), values.shape[1]), dtype=np.float32)
            features[start : start + len(values)] = values
            start += len(values)
    finally:
        hook.remove()
        model.train(was_training)
    if features is None or start != len(split):
        raise RuntimeError(f"extracted {start} feature rows for a split of {len(split)} images")
    return features


def _fsynced(write: Callable[[BinaryIO], object]) -> Callable[[str], None]:
    """A writer for :func:`chexpert_hf.utils.atomic_write` that puts the bytes on disk before the rename."""

    def to_disk(name: str) -> None:
        with open(name, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())

    return to_disk


def _save_array(path: Path, array: np.ndarray, description: dict) -> None:
    """The array and its description, each written to a temporary name and renamed (never half a file)."""
    atomic_write(path, _fsynced(lambda stream: np.save(stream, array)))
    atomic_write(
        path.with_suffix(".json"),
        _fsynced(lambda stream: stream.write(json.dumps(description, indent=2).encode() + b"\n")),
    )


@dataclass
class CachedFeatures:
    seconds: float  # time spent extracting in this run (0 when every split came from the cache)
    reused: list[str]  # splits read from the cache
    extracted: list[str]  # splits computed now
    folder: Path


def attach_cached_features(
    model: PreTrainedModel,
    splits: dict[str, LabelledImages],
    cache: FeatureCache,
    **extraction: Any,
) -> CachedFeatures:
    """Give every split its features (``split.features``), from the cache or computed now and stored;
    ``extraction`` are the keyword arguments of :func:`extract_features` (``image_size``, ``mean``, ``std``,
    ``device``, ``batch_size``, ``num_workers``, ``autocast_dtype``).

    One writer per file, also across the processes of a run and concurrent runs (a file lock); a file that does
    not match the split (rows) is an error that names it, never silently used.
    """
    seconds, reused, extracted = 0.0, [], []
    for name, split in splits.items():
        path = cache.path(name, split)
        with cache_lock(path, f"extracting {name} features"):
            if path.is_file():
                features = np.load(path, mmap_mode="r")  # rows are read as batches ask for them
                if features.ndim != 2 or len(features) != len(split):
                    raise ValueError(
                        f"{path} holds {features.shape} features for a split of {len(split)} images; "
                        f"delete it to extract again"
                    )
                reused.append(name)
            else:
                began = time.perf_counter()
                features = extract_features(model, split, desc=f"extracting {name} features", **extraction)
                spent = time.perf_counter() - began
                seconds += spent
                _save_array(
                    path,
                    features,
                    {
                        **cache.description,
                        "split": name,
                        "rows": len(split),
                        "features": int(features.shape[1]),
                        "seconds": round(spent, 3),
                    },
                )
                extracted.append(name)
        split.features = features
        split.decoded = None  # the pixels are no longer read
    return CachedFeatures(seconds, reused, extracted, cache.folder)
