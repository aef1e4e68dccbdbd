"""Tiny configurations of every model family: a few thousand parameters at 32 px, for tests, quick benchmarks and
demos that must run in seconds on a CPU through the same code path as the full-size models.

:func:`tiny_config` returns ``config_overrides`` for :func:`chexpert_hf.models.build_model` (with
``from_scratch=True``), or keyword arguments for the family's configuration class. One definition, so that a test
and a benchmark that both say "a tiny ViT" build the same model unless they ask for other sizes.
"""

from __future__ import annotations

import copy
from typing import Any

TINY_IMAGE_SIZE = 32  # the input size the tiny models are built for (the patch grids below divide it)

# A small BiT stem for the hybrid: two one-block stages.
_TINY_BIT = {
    "model_type": "bit", "depths": [1, 1], "hidden_sizes": [16, 32], "embedding_size": 8, "num_groups": 4,
    "out_features": ["stage2"], "global_padding": "same", "layer_type": "bottleneck", "embedding_dynamic_padding": True,
}  # fmt: skip
_TINY: dict[str, dict[str, Any]] = {
    "vit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, patch_size=8),
    "swin": dict(patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[2, 4], window_size=4),
    "deit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, patch_size=8),
    "resnet_vit": dict(
        backbone_config=_TINY_BIT, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    ),
    "densenet121": dict(model_args={"growth_rate": 8, "block_config": [1, 1, 1, 1]}),
}
TINY_FAMILIES = tuple(_TINY)


def tiny_config(family: str, **overrides: Any) -> dict[str, Any]:
    """The tiny configuration of ``family`` with ``overrides`` on top (a new dict each call: change it freely).

    An override replaces a field as a whole (``backbone_config=...`` is the whole backbone). ``num_channels`` goes
    wherever the family reads its input channels: also into the hybrid's backbone, and into timm's
    ``model_args["in_chans"]`` for densenet121 (which has no ``num_channels`` field).
    """
    if family not in _TINY:
        raise KeyError(f"no tiny configuration for model family {family!r}; known: {', '.join(_TINY)}")
    config = copy.deepcopy({**_TINY[family], **overrides})
    if "num_channels" in overrides:
        channels = overrides["num_channels"]
        if family == "resnet_vit":
            config["backbone_config"] = {**config["backbone_config"], "num_channels": channels}
        elif family == "densenet121":
            del config["num_channels"]
            config["model_args"] = {**config["model_args"], "in_chans": channels}
    return config


__all__ = ["TINY_FAMILIES", "TINY_IMAGE_SIZE", "tiny_config"]
