"""The training loss: binary cross-entropy with logits over the entries whose target is not NaN.

The uncertainty policy's ``u_ignore`` and ``blank_policy: mask`` produce NaN targets; the loss averages over the
other entries, with an optional ``pos_weight`` per label. The multi-label loss built into Transformers models does
not mask, so it is never used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from chexpert_hf.training.sampling import positive_rates


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy over the entries of ``targets`` that are not NaN (0 when all are masked)."""
    known = ~torch.isnan(targets)
    safe_targets = torch.where(known, targets, torch.zeros_like(targets))
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), safe_targets.float(), pos_weight=pos_weight, reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def balanced_pos_weight(targets: np.ndarray) -> np.ndarray:
    """Negatives over positives per label (unmasked entries; soft targets count by value)."""
    rates = positive_rates(targets)
    return (1 - rates) / rates
