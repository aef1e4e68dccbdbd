"""The model builder: family name → a multi-label ``PreTrainedModel`` and its image processor.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, PreTrainedConfig, PreTrainedModel, ViTImageProcessor
from transformers.image_utils import PILImageResampling

from chexpert_hf.labels import COMPETITION_LABELS, check_label_names
from chexpert_hf.models.registry import FAMILIES, Family, lookup_family, lookup_variant
from chexpert_hf.models.resize import square_side, with_image_size

logger = logging.getLogger(__name__)


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
    family = lookup_family(family_name)
    variant = lookup_variant(family_name, variant)
    head = label_config(labels)
    if image_size is not None and image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if from_scratch:
        if model_name_or_path or backbone_name_or_path:
            raise ValueError("from_scratch builds random weights; do not also give model_name_or_path")
        return _from_scratch(family_name, variant, head, image_size or DEFAULT_IMAGE_SIZE, config_overrides)
    if config_overrides:
        raise ValueError("config_overrides apply to from_scratch models; a checkpoint brings its own configuration")
    source = model_name_or_path or family.variants[variant].checkpoint
    if family_name == "resnet_vit" and (backbone_name_or_path or _is_timm_checkpoint(source)):
        model, settings, source = _load_hybrid(source, backbone_name_or_path, head, family)
    else:
        if backbone_name_or_path:
            raise ValueError(f"backbone_name_or_path applies to the resnet_vit family, not {family_name!r}")
        model, settings = _load_checkpoint(source, family_name, family, head)
    if image_size is None:  # the checkpoint's own resolution
        image_size = square_side(getattr(model.config, "image_size", None)) or settings.image_size or DEFAULT_IMAGE_SIZE
    model = with_image_size(model, family, image_size)
    processor = _processor_for(model, image_size, settings.mean, settings.std)
    return BuiltModel(model, processor, family_name, variant, source)


def _from_scratch(
    family_name: str, variant: str, head: dict[str, Any], image_size: int, config_overrides: dict[str, Any] | None
) -> BuiltModel:
    """Random weights in the variant's full configuration, ``config_overrides`` and the head applied over it."""
    family = FAMILIES[family_name]
    fields = {**family.variants[variant].config, **(config_overrides or {}), **head}
    if "image_size" in {f.name for f in dataclasses.fields(family.config_class)}:
        fields["image_size"] = image_size
    model = family.model_class(family.config_class(**fields))
    processor = _processor_for(model, image_size, family.mean, family.std)
    return BuiltModel(model, processor, family_name, variant, "config")


def _load_hybrid(
    source: str, backbone_name_or_path: str | None, head: dict[str, Any], family: Family
) -> tuple[PreTrainedModel, ProcessorSettings, str]:
    """The R50+ViT hybrid converted from timm's weights or assembled from a backbone and a ViT checkpoint; the
    returned source names both parts when there are two."""
    from chexpert_hf.models.convert import resnet_vit_from_parts, resnet_vit_from_timm

    if backbone_name_or_path:
        model = resnet_vit_from_parts(backbone_name_or_path, source, head)
        # The backbone sees the pixels first: its normalisation (ImageNet for microsoft/resnet-50) applies.
        settings = checkpoint_processor_settings(backbone_name_or_path, family)
        settings.image_size = None  # the ViT encoder fixed the grid; model.config.image_size says it
        return model, settings, f"{backbone_name_or_path} + {source}"
    model, mean, std = resnet_vit_from_timm(source, head)
    return model, ProcessorSettings(mean, std), source


def _load_checkpoint(
    source: str, family_name: str, family: Family, head: dict[str, Any]
) -> tuple[PreTrainedModel, ProcessorSettings]:
    """A ``from_pretrained`` checkpoint of the family with the head for ``head``'s labels."""
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
    return model, checkpoint_processor_settings(source, family)


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
    lookup_family(family)  # the error that lists the known names (MODELS has the same keys as FAMILIES)
    return MODELS[family](**kwargs)
