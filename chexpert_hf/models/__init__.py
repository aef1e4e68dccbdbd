"""The model registry: family name → builder of a multi-label ``PreTrainedModel`` and its image processor.

Every builder takes the same arguments and returns a :class:`BuiltModel`:

- ``model_name_or_path`` — a Hub id or a local folder written by ``save_pretrained`` (the two are the same code
  path); ``None`` uses the family's default checkpoint (``FAMILIES[family].variants``), unless ``from_scratch``.
- ``from_scratch`` — build the variant's full configuration with random weights (nothing is downloaded);
  ``config_overrides`` change any configuration field, which is how tests and the demo build tiny models.
- ``labels`` — the label set (all 14 CheXpert labels or the 5 competition labels, in any order);
  ``id2label``/``label2id``/``problem_type`` are set, and the head is new unless the checkpoint's head was
  trained for exactly these labels in this order (then it is kept: evaluating or resuming a fine-tuned model).
- ``image_size`` — the checkpoint's own size when left out (224 for models from scratch); a ViT/DeiT/hybrid
  checkpoint asked for another size has its position embeddings interpolated (bicubic), never re-initialised.

Single-channel radiographs: models keep the 3-channel input their checkpoints were trained on and the grey
channel is replicated (a view, no copy) just before the model, by ``data.transforms.to_float``; the first layer's
pretrained weights are used unchanged, and a published checkpoint works with any standard image processor,
which turns grey images into RGB.  Models built from scratch may set ``num_channels=1`` instead.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoImageProcessor,
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
    ViTImageProcessor,
)
from transformers.image_utils import PILImageResampling

from chexpert_hf.labels import COMPETITION_LABELS, check_label_names
from chexpert_hf.models.resnet_vit import ResNetViTConfig, ResNetViTForImageClassification

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Variant:
    """One size of a family: its default checkpoint and its full configuration (applied over the class defaults)."""

    checkpoint: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    model_class: type[PreTrainedModel]
    config_class: type[PreTrainedConfig]
    checkpoint_model_types: tuple[str, ...]  # what a checkpoint's config.model_type may be
    variants: dict[str, Variant]
    default_variant: str
    mean: tuple[float, ...]  # normalisation when neither checkpoint nor processor says otherwise
    std: tuple[float, ...]
    position_prefix: int | None  # tokens before the patch grid ([CLS], distillation); None: no absolute positions
    # The class FSDP shards as one unit (chexpert_hf.training.fsdp): the transformer block, which holds neither the
    # input
    # embeddings nor the final norm; None: the family cannot be sharded.
    fsdp_block: str | None


FAMILIES: dict[str, Family] = {
    "vit": Family(
        ViTForImageClassification,
        ViTConfig,
        ("vit",),
        {
            "base": Variant("google/vit-base-patch16-224-in21k"),
            "large": Variant(
                "google/vit-large-patch16-224-in21k",
                dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
            ),
        },
        "base",
        HALF,
        HALF,
        1,
        "ViTLayer",
    ),
    "swin": Family(
        SwinForImageClassification,
        SwinConfig,
        ("swin",),
        {
            "tiny": Variant("microsoft/swin-tiny-patch4-window7-224"),
            "base": Variant(
                "microsoft/swin-base-patch4-window7-224-in22k",
                dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
            ),
        },
        "tiny",
        IMAGENET_MEAN,
        IMAGENET_STD,
        None,
        "SwinStage",
    ),
    "deit": Family(
        # The distilled checkpoints are DeiT's own model type; the plain class trains with labels (the
        # ...WithTeacher class cannot), its head is new, and the two distilled heads are left unused.
        DeiTForImageClassification,
        DeiTConfig,
        ("deit",),
        {
            "small": Variant(
                "facebook/deit-small-distilled-patch16-224",
                dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
            ),
            "base": Variant("facebook/deit-base-distilled-patch16-224"),
        },
        "base",
        IMAGENET_MEAN,
        IMAGENET_STD,
        2,
        "DeiTLayer",
    ),
    "resnet_vit": Family(
        ResNetViTForImageClassification,
        ResNetViTConfig,
        ("resnet_vit",),
        # R50+ViT-B/16; the default weights are timm's joint ImageNet-21k pretraining, converted on load.
        {"base": Variant("timm/vit_base_r50_s16_224.orig_in21k")},
        "base",
        HALF,
        HALF,
        1,
        "ResNetViTLayer",
    ),
    "densenet121": Family(
        TimmWrapperForImageClassification,
        TimmWrapperConfig,
        ("timm_wrapper",),
        # torchvision's ImageNet weights, as in the CheXpert paper's baseline.
        {"base": Variant("timm/densenet121.tv_in1k", dict(architecture="densenet121"))},
        "base",
        IMAGENET_MEAN,
        IMAGENET_STD,
        None,
        None,  # timm's DenseNet has no block class to shard: train.py refuses FSDP for it
    ),
}


@dataclass
class BuiltModel:
    model: PreTrainedModel
    processor: ViTImageProcessor
    family: str
    variant: str
    source: str  # the checkpoint the weights came from, or "config" for random weights

    @property
    def image_size(self) -> int:
        return self.processor.size["height"]


def checkpoint_name(source: str) -> str:
    """The last part of a :attr:`BuiltModel.source` path or Hub id (``outputs/demo_pretrain`` → ``demo_pretrain``);
    for the hybrid built from two checkpoints (``backbone + vit``), its ViT encoder's."""
    return Path(source.split(" + ")[-1].rstrip("/")).name


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _variant(family_name: str, variant: str | None) -> str:
    family = _family(family_name)
    variant = variant or family.default_variant
    if variant not in family.variants:
        raise KeyError(f"{family_name} has no variant {variant!r}; known: {', '.join(family.variants)}")
    return variant


def input_channels(model: PreTrainedModel) -> int:
    """Channels the model's first layer takes (timm models keep theirs in ``model_args["in_chans"]``)."""
    model_args = getattr(model.config, "model_args", None) or {}
    return int(model_args.get("in_chans", getattr(model.config, "num_channels", 3)))


def label_config(labels: Sequence[str]) -> dict[str, Any]:
    """Configuration fields of a multi-label head for ``labels`` (canonical CheXpert names, in the given order)."""
    names = check_label_names(labels)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {name: index for index, name in enumerate(names)},
        "problem_type": "multi_label_classification",
    }


def make_processor(image_size: int, mean: Sequence[float], std: Sequence[float]) -> ViTImageProcessor:
    """Squash-resize to a square (as ``data.transforms`` decodes radiographs), rescale to [0, 1], normalise."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


DEFAULT_IMAGE_SIZE = 224


@dataclass
class ProcessorSettings:
    mean: list[float]
    std: list[float]
    image_size: int | None = None  # None: the processor does not say


def checkpoint_processor_settings(model_name_or_path: str, family: Family) -> ProcessorSettings:
    """Mean, std and square input size from the checkpoint's image processor; the family's means if it has none."""
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as error:
        logger.info("no image processor in %s (%s); using the family's normalisation", model_name_or_path, error)
        return ProcessorSettings(list(family.mean), list(family.std))
    data_config = getattr(processor, "data_config", None) or {}  # timm checkpoints
    mean = getattr(processor, "image_mean", None) or data_config.get("mean") or family.mean
    std = getattr(processor, "image_std", None) or data_config.get("std") or family.std
    size = getattr(processor, "size", None)
    height = getattr(size, "height", None) or (size.get("height") if isinstance(size, dict) else None)
    if height is None and data_config.get("input_size"):
        height = data_config["input_size"][-1]
    return ProcessorSettings([float(x) for x in mean], [float(x) for x in std], height)


def resize_position_embeddings(embeddings: torch.Tensor, prefix: int, grid: int) -> torch.Tensor:
    """``(1, prefix + g*g, D)`` → ``(1, prefix + grid*grid, D)``: bicubic interpolation of the patch positions."""
    patches = embeddings[:, prefix:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position embeddings after {prefix} prefix tokens are not a square grid")
    if old == grid:
        return embeddings
    width = patches.shape[-1]
    image = patches.reshape(1, old, old, width).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = image.permute(0, 2, 3, 1).reshape(1, grid * grid, width).to(embeddings.dtype)
    return torch.cat([embeddings[:, :prefix], patches], dim=1)


def _side(size: Any) -> int | None:
    """A square image size from a config field that may be an int or a (height, width) pair."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"only square inputs are supported, the checkpoint has image_size {list(size)}")
        return int(size[0])
    return None if size is None else int(size)


def with_image_size(model: PreTrainedModel, family: Family, image_size: int) -> PreTrainedModel:
    """The same weights at another input resolution: positions interpolated, everything else unchanged.

    The returned model shares its tensors with ``model`` (which should no longer be used); ``requires_grad``
    flags and the train/eval mode of every submodule carry over.
    """
    config = model.config
    if not hasattr(config, "image_size") or _side(config.image_size) == image_size:
        return model
    new_config = copy.deepcopy(config)
    new_config.image_size = image_size
    with torch.device("meta"):
        resized = type(model)(new_config)
    state = model.state_dict()
    shapes = resized.state_dict()
    for key, value in state.items():
        if not key.endswith("position_embeddings"):
            continue
        if family.position_prefix is None:
            raise ValueError(f"{key} cannot be resized: this family has no position-embedding layout to interpolate")
        target = shapes[key].shape[1] - family.position_prefix
        state[key] = resize_position_embeddings(value, family.position_prefix, math.isqrt(target))
    resized.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (e.g. Swin's relative position index) are rebuilt for the real device.
    # They depend on the window or patch layout, not on the image size, so the old model's values carry over.
    for module_name, module in resized.named_modules():
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                source = model.get_submodule(module_name).get_buffer(buffer_name)
                if source.shape != buffer.shape:
                    raise ValueError(f"buffer {module_name}.{buffer_name} changes shape with the image size")
                module.register_buffer(buffer_name, source.clone(), persistent=False)
    for name, parameter in resized.named_parameters():
        parameter.requires_grad_(model.get_parameter(name).requires_grad)
    for name, module in resized.named_modules():
        module.training = model.get_submodule(name).training
    return resized


def _check_loading(info: dict[str, list], model: PreTrainedModel, source: str) -> None:
    """Only the head may be missing or mismatched: anything else means the checkpoint does not fit the family."""
    head = ("classifier.", "timm_model.classifier.", "timm_model.head.")
    missing = [key for key in info.get("missing_keys", []) if not key.startswith(head)]
    mismatched = [entry for entry in info.get("mismatched_keys", []) if not entry[0].startswith(head)]
    if missing or mismatched:
        details = missing[:5] + [f"{key} {tuple(a)} vs {tuple(b)}" for key, a, b in mismatched[:5]]
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: {len(missing)} missing and {len(mismatched)} "
            f"mismatched weights outside the head, e.g. {details}"
        )


def _checkpoint_config(model_name_or_path: str, family_name: str, family: Family) -> PreTrainedConfig:
    config = AutoConfig.from_pretrained(model_name_or_path)
    if config.model_type not in family.checkpoint_model_types:
        raise ValueError(
            f"{model_name_or_path} is a {config.model_type!r} checkpoint; family {family_name!r} loads "
            f"{' or '.join(repr(t) for t in family.checkpoint_model_types)} checkpoints"
        )
    return config


def classifier(model: PreTrainedModel) -> torch.nn.Module:
    """The classification head (timm models keep theirs inside the wrapped network)."""
    if hasattr(model, "timm_model"):
        return model.timm_model.get_classifier()
    return model.classifier


def reset_head(model: PreTrainedModel) -> None:
    """Fresh head weights: truncated normal (std = ``initializer_range``), zero bias."""
    head = classifier(model)
    with torch.no_grad():
        torch.nn.init.trunc_normal_(head.weight, std=getattr(model.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(head.bias)


def _build(
    family_name: str,
    *,
    model_name_or_path: str | None = None,
    variant: str | None = None,
    labels: Sequence[str] = COMPETITION_LABELS,
    image_size: int | None = None,
    from_scratch: bool = False,
    config_overrides: dict[str, Any] | None = None,
    backbone_name_or_path: str | None = None,
) -> BuiltModel:
    family = _family(family_name)
    variant = _variant(family_name, variant)
    head = label_config(labels)
    if image_size is not None and image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if from_scratch:
        image_size = image_size or DEFAULT_IMAGE_SIZE
        if model_name_or_path or backbone_name_or_path:
            raise ValueError("from_scratch builds random weights; do not also give model_name_or_path")
        fields = {**family.variants[variant].config, **(config_overrides or {}), **head}
        if "image_size" in {f.name for f in dataclasses.fields(family.config_class)}:
            fields["image_size"] = image_size
        model = family.model_class(family.config_class(**fields))
        processor = _processor_for(model, image_size, family.mean, family.std)
        return BuiltModel(model, processor, family_name, variant, "config")
    if config_overrides:
        raise ValueError("config_overrides apply to from_scratch models; a checkpoint brings its own configuration")
    source = model_name_or_path or family.variants[variant].checkpoint
    if family_name == "resnet_vit" and (backbone_name_or_path or _is_timm_checkpoint(source)):
        from chexpert_hf.models.convert import resnet_vit_from_parts, resnet_vit_from_timm

        if backbone_name_or_path:
            model = resnet_vit_from_parts(backbone_name_or_path, source, head)
            # The backbone sees the pixels first: its normalisation (ImageNet for microsoft/resnet-50) applies.
            settings = checkpoint_processor_settings(backbone_name_or_path, family)
            settings.image_size = None  # the ViT encoder fixed the grid; model.config.image_size says it
            source = f"{backbone_name_or_path} + {source}"
        else:
            model, mean, std = resnet_vit_from_timm(source, head)
            settings = ProcessorSettings(mean, std)
    else:
        if backbone_name_or_path:
            raise ValueError(f"backbone_name_or_path applies to the resnet_vit family, not {family_name!r}")
        checkpoint_config = _checkpoint_config(source, family_name, family)
        checkpoint_labels = [checkpoint_config.id2label[i] for i in sorted(checkpoint_config.id2label)]
        config = copy.deepcopy(checkpoint_config)
        config.id2label, config.label2id = head["id2label"], head["label2id"]  # num_labels follows id2label
        config.problem_type = head["problem_type"]
        model, info = family.model_class.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, output_loading_info=True
        )
        _check_loading(info, model, source)
        # A head of the right size trained for other labels (or another order) is no head for these.
        if checkpoint_labels != list(head["id2label"].values()):
            reset_head(model)
        settings = checkpoint_processor_settings(source, family)
    if image_size is None:  # the checkpoint's own resolution
        image_size = _side(getattr(model.config, "image_size", None)) or settings.image_size or DEFAULT_IMAGE_SIZE
    model = with_image_size(model, family, image_size)
    processor = _processor_for(model, image_size, settings.mean, settings.std)
    return BuiltModel(model, processor, family_name, variant, source)


def _processor_for(
    model: PreTrainedModel, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> ViTImageProcessor:
    channels = input_channels(model)
    if channels == 1 and len(mean) == 3:
        mean, std = mean[:1], std[:1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"the model takes {channels} channels but the normalisation has {len(mean)} values")
    processor = make_processor(image_size, mean, std)
    processor.do_convert_rgb = channels == 3
    return processor


def _is_timm_checkpoint(model_name_or_path: str) -> bool:
    """timm's own weights: ``timm/...`` Hub ids, ``hf-hub:``/``local-dir:`` names, or a folder timm saved."""
    if model_name_or_path.startswith(("timm/", "hf-hub:", "local-dir:")):
        return True
    try:
        config = AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        return False
    return config.model_type == "timm_wrapper"


def _builder(family_name: str) -> Callable[..., BuiltModel]:
    def build(**kwargs: Any) -> BuiltModel:
        return _build(family_name, **kwargs)

    build.__name__ = f"build_{family_name}"
    build.__doc__ = f"Build a {family_name} classifier; see :func:`build_model` for the arguments."
    return build


MODELS: dict[str, Callable[..., BuiltModel]] = {name: _builder(name) for name in FAMILIES}


def build_model(family: str, **kwargs: Any) -> BuiltModel:
    """Look ``family`` up in :data:`MODELS` and build it (keyword arguments as described in the module doc)."""
    _family(family)  # the error that lists the known names (MODELS has the same keys as FAMILIES)
    return MODELS[family](**kwargs)


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
