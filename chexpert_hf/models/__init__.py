"""Models: the family table (``registry``), the builder (``build``), the resolution change (``resize``), the
freeze policies (``freeze``), checkpoint conversion (``convert``) and the R50+ViT hybrid (``resnet_vit``).

The public names are re-exported here, so ``from chexpert_hf.models import build_model, FAMILIES`` works.
"""

from chexpert_hf.models.build import (
    MODELS,
    BuiltModel,
    build_model,
    checkpoint_name,
    classifier,
    input_channels,
    label_config,
    make_processor,
    reset_head,
)
from chexpert_hf.models.registry import FAMILIES, Family, Variant
from chexpert_hf.models.resize import resize_position_embeddings, with_image_size

__all__ = [
    "FAMILIES",
    "MODELS",
    "BuiltModel",
    "Family",
    "Variant",
    "build_model",
    "checkpoint_name",
    "classifier",
    "reset_head",
    "input_channels",
    "label_config",
    "make_processor",
    "resize_position_embeddings",
    "with_image_size",
]
