"""A checkpoint at another input resolution: its absolute position embeddings interpolated (bicubic), never
re-initialised, so a ViT/DeiT/hybrid pretrained at 224 pixels keeps what it learnt when trained at 320."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel

if TYPE_CHECKING:
    from chexpert_hf.models.registry import Family


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


def square_side(size: Any) -> int | None:
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
    if not hasattr(config, "image_size") or square_side(config.image_size) == image_size:
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
    _carry_over(model, resized)
    return resized


def _carry_over(model: PreTrainedModel, resized: PreTrainedModel) -> None:
    """What ``load_state_dict`` does not bring: non-persistent buffers, ``requires_grad`` and train/eval modes."""
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
