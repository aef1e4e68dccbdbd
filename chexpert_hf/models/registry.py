"""The model families: for each, its classes, default checkpoints per size, normalisation and layout facts.

One table, :data:`FAMILIES`, so that adding a family is one entry here and every stage (building, freezing,
FSDP, attribution maps) reads the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    SwinConfig,
    SwinForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from chexpert_hf.models.resnet_vit import ResNetViTConfig, ResNetViTForImageClassification

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Variant:
    """One size of a family: its default checkpoint and its full configuration (applied over the class defaults)."""

    checkpoint: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Family:
    """What the builder and the later stages need to know about one architecture (keyword-only: eight fields
    read by name, never by position)."""

    model_class: type[PreTrainedModel]
    config_class: type[PreTrainedConfig]
    checkpoint_model_types: tuple[str, ...]  # what a checkpoint's config.model_type may be
    variants: dict[str, Variant]
    default_variant: str
    mean: tuple[float, ...]  # normalisation when neither checkpoint nor processor says otherwise
    std: tuple[float, ...]
    position_prefix: int | None  # tokens before the patch grid ([CLS], distillation); None: no absolute positions
    # The class FSDP shards as one unit (chexpert_hf.training.fsdp): the transformer block, which holds neither the
    # input embeddings nor the final norm; None: the family cannot be sharded.
    fsdp_block: str | None


FAMILIES: dict[str, Family] = {
    "vit": Family(
        model_class=ViTForImageClassification,
        config_class=ViTConfig,
        checkpoint_model_types=("vit",),
        variants={
            "base": Variant("google/vit-base-patch16-224-in21k"),
            "large": Variant(
                "google/vit-large-patch16-224-in21k",
                dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
            ),
        },
        default_variant="base",
        mean=HALF,
        std=HALF,
        position_prefix=1,
        fsdp_block="ViTLayer",
    ),
    "swin": Family(
        model_class=SwinForImageClassification,
        config_class=SwinConfig,
        checkpoint_model_types=("swin",),
        variants={
            "tiny": Variant("microsoft/swin-tiny-patch4-window7-224"),
            "base": Variant(
                "microsoft/swin-base-patch4-window7-224-in22k",
                dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
            ),
        },
        default_variant="tiny",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        position_prefix=None,
        fsdp_block="SwinStage",
    ),
    "deit": Family(
        # The distilled checkpoints are DeiT's own model type; the plain class trains with labels (the
        # ...WithTeacher class cannot), its head is new, and the two distilled heads are left unused.
        model_class=DeiTForImageClassification,
        config_class=DeiTConfig,
        checkpoint_model_types=("deit",),
        variants={
            "small": Variant(
                "facebook/deit-small-distilled-patch16-224",
                dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
            ),
            "base": Variant("facebook/deit-base-distilled-patch16-224"),
        },
        default_variant="base",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        position_prefix=2,
        fsdp_block="DeiTLayer",
    ),
    "resnet_vit": Family(
        model_class=ResNetViTForImageClassification,
        config_class=ResNetViTConfig,
        checkpoint_model_types=("resnet_vit",),
        # R50+ViT-B/16; the default weights are timm's joint ImageNet-21k pretraining, converted on load.
        variants={"base": Variant("timm/vit_base_r50_s16_224.orig_in21k")},
        default_variant="base",
        mean=HALF,
        std=HALF,
        position_prefix=1,
        fsdp_block="ResNetViTLayer",
    ),
    "densenet121": Family(
        model_class=TimmWrapperForImageClassification,
        config_class=TimmWrapperConfig,
        checkpoint_model_types=("timm_wrapper",),
        # torchvision's ImageNet weights, as in the CheXpert paper's baseline.
        variants={"base": Variant("timm/densenet121.tv_in1k", dict(architecture="densenet121"))},
        default_variant="base",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        position_prefix=None,
        fsdp_block=None,  # timm's DenseNet has no block class to shard: train.py refuses FSDP for it
    ),
}


def lookup_family(name: str) -> Family:
    """``FAMILIES[name]``, or a KeyError that lists the known names."""
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def lookup_variant(family_name: str, variant: str | None) -> str:
    """The variant name (the family's default for None), or a KeyError that lists the family's variants."""
    family = lookup_family(family_name)
    variant = variant or family.default_variant
    if variant not in family.variants:
        raise KeyError(f"{family_name} has no variant {variant!r}; known: {', '.join(family.variants)}")
    return variant
