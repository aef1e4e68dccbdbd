"""Pretrained starting points for the ResNet-ViT hybrid.

Two routes, both ending in a :class:`ResNetViTForImageClassification` with a new head:

- :func:`resnet_vit_from_timm` — timm's jointly pretrained R50+ViT (``vit_base_r50_s16_*``): its ResNetV2 is a
  BiT network (weight-standardised convolutions, GroupNorm), converted weight for weight; the fused ``qkv``
  projection is split into ``q_proj``/``k_proj``/``v_proj``.
- :func:`resnet_vit_from_parts` — a transformers ResNet/BiT checkpoint (e.g. ``microsoft/resnet-50``) for the
  backbone, cut after ``stages`` stages, and a ViT checkpoint for the encoder, whose position embeddings are
  interpolated to the backbone's token grid; the token projection is new, as in the paper's fine-tuning.

Every weight of the result is accounted for: a checkpoint that leaves one out is an error, not a silent re-init.
This module may import timm and chexpert_hf; the model's own folder may not.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, ViTModel
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from chexpert_hf.models.resize import resize_position_embeddings
from chexpert_hf.models.resnet_vit import ResNetViTConfig, ResNetViTForImageClassification

_TIMM_BACKBONE_RULES = [
    (r"^stem\.conv\.", "embedder.convolution."),
    (r"^stem\.norm\.", "embedder.norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.stages.\1.layers.\2."),
]
_TIMM_BLOCK_RULES = [
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"layers.\1.mlp.fc\2."),
    (r"^norm\.", "layernorm."),
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.projection."),
]


def _rename(name: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        if re.search(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _timm_name(model_name_or_path: str) -> str:
    if model_name_or_path.startswith(("hf-hub:", "local-dir:")):
        return model_name_or_path
    if Path(model_name_or_path).is_dir():
        return f"local-dir:{model_name_or_path}"
    return f"hf-hub:{model_name_or_path}"


def _check_timm_hybrid(model: Any) -> None:
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    problems = []
    if not isinstance(model, VisionTransformer) or not isinstance(model.patch_embed, HybridEmbed):
        raise ValueError(f"expected a timm hybrid VisionTransformer (vit_*_r50_*), got {type(model).__name__}")
    backbone = model.patch_embed.backbone
    if not isinstance(backbone, ResNetV2) or not hasattr(backbone.stem, "conv"):
        problems.append(f"backbone is {type(backbone).__name__}, not a ResNetV2 with a convolution stem")
    elif not hasattr(backbone.stages[0].blocks[0], "norm3"):
        problems.append("backbone uses pre-activation blocks; the hybrid's BiT backbone is post-activation")
    if model.global_pool != "token" or model.num_prefix_tokens != 1:
        problems.append(f"pooling {model.global_pool!r} with {model.num_prefix_tokens} prefix tokens (need one [CLS])")
    first = model.blocks[0]
    if any(not isinstance(m, torch.nn.Identity) for m in (first.ls1, first.attn.q_norm, model.fc_norm)):
        problems.append("layer scale, q/k norm or fc_norm are present, which the hybrid does not have")
    if problems:
        raise ValueError("cannot convert this timm model: " + "; ".join(problems))


def resnet_vit_config_from_timm(model: Any, head: dict[str, Any]) -> ResNetViTConfig:
    """The hybrid configuration equivalent to a timm ``vit_*_r50_*`` model."""
    _check_timm_hybrid(model)
    backbone = model.patch_embed.backbone
    stem_conv = backbone.stem.conv
    block = model.blocks[0]
    backbone_config = {
        "model_type": "bit",
        "num_channels": stem_conv.in_channels,
        "embedding_size": stem_conv.out_channels,
        "depths": [len(stage.blocks) for stage in backbone.stages],
        "hidden_sizes": [stage.blocks[-1].conv3.out_channels for stage in backbone.stages],
        "num_groups": backbone.stem.norm.num_groups,
        "out_features": [f"stage{len(backbone.stages)}"],
        "global_padding": "same",
        "layer_type": "bottleneck",
        "embedding_dynamic_padding": True,
    }
    return ResNetViTConfig(
        backbone_config=backbone_config,
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        layer_norm_eps=model.norm.eps,
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        num_channels=stem_conv.in_channels,
        qkv_bias=block.attn.qkv.bias is not None,
        **head,
    )


def convert_timm_hybrid(model: Any, head: dict[str, Any]) -> ResNetViTForImageClassification:
    """A :class:`ResNetViTForImageClassification` with the weights of a timm hybrid and a new head."""
    config = resnet_vit_config_from_timm(model, head)
    hybrid = ResNetViTForImageClassification(config)
    state: dict[str, torch.Tensor] = {}
    unused = []
    for name, tensor in model.state_dict().items():
        if name.startswith("patch_embed.backbone."):
            target = _rename(name.removeprefix("patch_embed.backbone."), _TIMM_BACKBONE_RULES)
            target = None if target is None else f"embeddings.backbone.bit.{target}"
        elif match := re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", name):
            for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                state[f"layers.{match[1]}.attention.{part}_proj.{match[2]}"] = chunk
            continue
        elif name.startswith("head."):
            continue  # the head is new
        else:
            target = _rename(name, _TIMM_BLOCK_RULES)
        if target is None:
            unused.append(name)
        else:
            state[target] = tensor
    if unused:
        raise ValueError(f"timm weights with no place in the hybrid: {unused[:10]}")
    _load_exactly(hybrid.resnet_vit, state, "the timm checkpoint")
    return hybrid


def resnet_vit_from_timm(model_name_or_path: str, head: dict[str, Any]):
    """Download (or read from a local folder) timm weights and convert them; returns (model, mean, std)."""
    import timm

    model = timm.create_model(_timm_name(model_name_or_path), pretrained=True)
    data = getattr(model, "pretrained_cfg", None) or {}  # timm.create_model always sets it; (0.5, 0.5) otherwise
    mean, std = data.get("mean", (0.5, 0.5, 0.5)), data.get("std", (0.5, 0.5, 0.5))
    return convert_timm_hybrid(model, head), [float(x) for x in mean], [float(x) for x in std]


def resnet_vit_from_parts(
    backbone_name_or_path: str, encoder_name_or_path: str, head: dict[str, Any], stages: int = 3
) -> ResNetViTForImageClassification:
    """Backbone weights from a ResNet/BiT checkpoint (first ``stages`` stages), encoder weights from a ViT one."""
    backbone_config = copy.deepcopy(AutoConfig.from_pretrained(backbone_name_or_path))
    if backbone_config.model_type not in ("resnet", "bit"):
        raise ValueError(f"{backbone_name_or_path} is a {backbone_config.model_type!r} model, not a ResNet or BiT")
    if not 1 <= stages <= len(backbone_config.depths):
        raise ValueError(f"stages must be 1..{len(backbone_config.depths)}, got {stages}")
    backbone_config.depths = backbone_config.depths[:stages]
    backbone_config.hidden_sizes = backbone_config.hidden_sizes[:stages]
    backbone_config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, stages + 1)]
    backbone_config.out_features = [f"stage{stages}"]
    backbone_config.out_indices = [stages]
    # The concrete class, not AutoBackbone.from_pretrained: that one asks the Hub whether the name exists first.
    backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(backbone_config)]
    backbone, info = backbone_class.from_pretrained(
        backbone_name_or_path, config=backbone_config, output_loading_info=True
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{backbone_name_or_path} lacks backbone weights: {sorted(info['missing_keys'])[:10]}")

    encoder, info = ViTModel.from_pretrained(encoder_name_or_path, add_pooling_layer=False, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{encoder_name_or_path} lacks encoder weights: {sorted(info['missing_keys'])[:10]}")
    vit = encoder.config
    config = ResNetViTConfig(
        backbone_config=backbone_config.to_dict(),
        hidden_size=vit.hidden_size,
        num_hidden_layers=vit.num_hidden_layers,
        num_attention_heads=vit.num_attention_heads,
        intermediate_size=vit.intermediate_size,
        hidden_act=vit.hidden_act,
        layer_norm_eps=vit.layer_norm_eps,
        image_size=vit.image_size,
        num_channels=backbone_config.num_channels,
        qkv_bias=vit.qkv_bias,
        **head,
    )
    hybrid = ResNetViTForImageClassification(config)
    state = {f"embeddings.backbone.{name}": tensor for name, tensor in backbone.state_dict().items()}
    for name, tensor in encoder.state_dict().items():
        if name.startswith("embeddings.patch_embeddings."):
            continue  # a 16x16 pixel patch projection has no use on feature-map cells
        if name == "embeddings.position_embeddings":
            tensor = resize_position_embeddings(tensor, 1, config.grid_size)
        state[name] = tensor
    projection = hybrid.resnet_vit.embeddings.projection
    state["embeddings.projection.weight"] = projection.weight.detach().clone()
    state["embeddings.projection.bias"] = projection.bias.detach().clone()
    _load_exactly(hybrid.resnet_vit, state, f"{backbone_name_or_path} + {encoder_name_or_path}")
    return hybrid


def _load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or extra or wrong:
        raise ValueError(
            f"{source} does not fit the hybrid: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    module.load_state_dict(state, strict=True)
