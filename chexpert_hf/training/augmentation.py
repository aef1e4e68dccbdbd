"""Training augmentation, on the device a batch at a time (``augmentation: light``).

Never a flip: laterality matters on a radiograph.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

LIGHT_AUGMENTATION = {"degrees": 7.0, "scale": (0.95, 1.05), "translate": 0.04}


def light_affine(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A small random rotation, scale and shift per image of a float ``(B, C, H, W)`` batch (zeros outside),
    drawn from ``generator`` (on the batch's device; None: torch's default generator)."""
    batch = pixels.shape[0]
    device = pixels.device
    angle = torch.empty(batch, device=device).uniform_(-1, 1, generator=generator) * math.radians(
        LIGHT_AUGMENTATION["degrees"]
    )
    low, high = LIGHT_AUGMENTATION["scale"]
    scale = torch.empty(batch, device=device).uniform_(low, high, generator=generator)
    shift = (
        torch.empty(batch, 2, device=device).uniform_(-1, 1, generator=generator) * 2 * LIGHT_AUGMENTATION["translate"]
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augmentation_generator(seed: int, process: int, step: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator for one training batch's augmentation: seeded by (seed, process, optimizer step, batch within
    the step), so every process draws its own transforms (every process is seeded alike, so torch's default
    generator would give each the same) and a run resumed from a checkpoint draws what the uninterrupted run did."""
    state = np.random.SeedSequence([seed, process, step, batch]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))
