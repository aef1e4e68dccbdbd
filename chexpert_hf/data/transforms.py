"""From embedded JPEG bytes to model-ready tensors, a batch at a time.

Decoding happens here, in the data loader's collate function, rather than through
``Dataset.set_transform`` (which hands Python lists of PIL images around): the batch goes from Arrow
bytes straight to one ``uint8`` tensor ``(B, 1, S, S)``; the cast to float and normalisation happen on
the training device, where they are cheap.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset
from PIL import Image


def decode_radiograph(data: bytes, size: int) -> np.ndarray:
    """``(size, size)`` uint8 array of one embedded image (squashed to a square, as HF image processors do)."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (size, size))  # JPEGs stored at >= 2x the size decode directly at a reduced scale
        if image.mode != "L":
            image = image.convert("L")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image)


def decode_batch(images: Sequence[bytes], size: int) -> torch.Tensor:
    """``(B, 1, size, size)`` uint8 tensor of a batch of embedded images."""
    batch = np.empty((len(images), 1, size, size), dtype=np.uint8)
    for index, data in enumerate(images):
        batch[index, 0] = decode_radiograph(data, size)
    return torch.from_numpy(batch)


def image_bytes(dataset: Dataset, start: int, stop: int) -> list[bytes]:
    """The encoded images of rows ``start:stop`` read straight from Arrow (no PIL objects, no dicts)."""
    table = dataset.with_format("arrow")[start:stop]
    return table.column("image").combine_chunks().field("bytes").to_pylist()


def to_float(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels: int = 1) -> torch.Tensor:
    """Normalised float tensor from a uint8 batch; grayscale is repeated when the model expects 3 channels."""
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each, got {list(mean)} and {list(std)}")
    if batch.shape[1] == 1 and len(set(mean)) == 1 and len(set(std)) == 1:
        # one grey channel normalised once, then repeated as a view: no work for the copies
        pixels = batch.float().mul_(1.0 / (255.0 * std[0])).sub_(mean[0] / std[0])
        return pixels.expand(-1, channels, -1, -1)
    pixels = batch.float().div_(255.0).expand(-1, channels, -1, -1)
    mean_t = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean_t) / std_t
