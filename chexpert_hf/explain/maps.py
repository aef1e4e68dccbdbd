"""Where a CheXpert classifier looks: Grad-CAM, Grad-CAM++, attention rollout and gradient-weighted attention
relevance for every model family.

The CAM methods are the maintained ``grad-cam`` package's (pytorch-grad-cam); this module supplies what it needs
per family — the target layer, and for token models the reshape of a ``(B, tokens, C)`` activation into a
``(B, C, rows, cols)`` grid — and wraps the model so that it returns logits. Each map targets one label's raw logit
(``ClassifierOutputTarget(label index)``): in a multi-label model the labels are independent, so no softmax and no
argmax class is ever involved.

Target layers (``TARGET_LAYERS``):

* ViT: the input of the last encoder block (``vit.layers[-1].layernorm_before``), [CLS] dropped. The final norm
  would not do: the head reads [CLS] only, so no gradient reaches the patch tokens there.
* DeiT: the same, [CLS] and the distillation token dropped (transformers' DeiT always has both).
* Swin: the last stage's tokens after the final norm (``swin.layernorm``), row-major; the head average-pools them,
  so Grad-CAM there is the class activation map of the last stage.
* ResNet+ViT hybrid: ``tokens`` (its last encoder block's input, [CLS] dropped; the default) or ``cnn`` (the ResNet
  stage whose feature map becomes the tokens).
* DenseNet-121: the last dense block (``features.denseblock4``).

``attention_rollout`` (Abnar & Zuidema, 2020) multiplies the head-averaged attention matrices, each mixed half and
half with the identity for the residual path, and reads the [CLS] row over the patch tokens. It needs the attention
weights, which fused kernels do not return: the model is switched to the eager attention implementation for the
call and back afterwards. Rollout follows attention, not a logit, so its map is the same for every label.

``attention_relevance`` (Chefer, Gur & Wolf, ICCV 2021, the rule for self-attention encoders) is the
transformer-native method: it weights every layer's attention by the gradient of the target label's raw logit.
Per layer, ``Ā = mean over heads of (∇A ⊙ A)⁺`` (each head's product clamped at 0, then averaged), and the
relevance, starting from the identity, accumulates ``R ← R + Ā R`` layer by layer in forward order (the identity
stands for the residual path); the map is [CLS]'s row of ``R`` over the patch tokens. Unlike rollout it is specific
to the label (the gradient says which attention helped that logit, and the clamp drops what spoke against it), and
unlike the CAM methods, which read one layer's activations, it uses the attention of every layer. It applies where
rollout does (:data:`ROLLOUT_PREFIX`), also needs the eager attention weights, and takes no target layer.

All maps come back scaled to [0, 1] per image (a map with no positive evidence is all zeros).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from chexpert_hf.models import FAMILIES

CAM_METHODS = ("gradcam", "gradcam++")
ROLLOUT = "attention_rollout"
RELEVANCE = "attention_relevance"
ATTENTION_METHODS = (ROLLOUT, RELEVANCE)  # read [CLS]'s attention over the patch grid; no target layer
METHODS = (*CAM_METHODS, *ATTENTION_METHODS)


class UnsupportedExplanation(ValueError):
    """The method or target layer does not apply to this model; the message lists what does."""


@dataclass(frozen=True)
class TargetLayer:
    find: Callable[[PreTrainedModel], nn.Module]
    prefix: int | None  # tokens before the patch grid; None: the layer outputs a (B, C, H, W) feature map
    description: str


def _hybrid_cnn_stage(model: PreTrainedModel) -> nn.Module:
    """The backbone stage whose feature map the hybrid projects to tokens (its last ``out_features`` stage)."""
    backbone = model.resnet_vit.embeddings.backbone
    index = backbone.stage_names.index(backbone.out_features[-1]) - 1  # stage_names[0] is the stem
    stages = [module for name, module in backbone.named_modules() if name.endswith("encoder.stages")]
    if len(stages) != 1:
        raise UnsupportedExplanation(f"cannot find the stages of the hybrid's {type(backbone).__name__} backbone")
    return stages[0][index]


def _earlier_blocks(layers: Callable, prefix: int, dropped: str) -> dict[str, TargetLayer]:
    """``tokens-2`` and ``tokens-3``: the input tokens of the second- and third-to-last encoder blocks (the first
    block where the model has fewer), candidates for where the maps are read, measured against ``tokens``."""
    return {
        f"tokens-{back}": TargetLayer(
            lambda m, back=back: layers(m)[-min(back, len(layers(m)))].layernorm_before,
            prefix,
            f"the input tokens of the encoder block {back} from the end, {dropped}",
        )
        for back in (2, 3)
    }


TARGET_LAYERS: dict[str, dict[str, TargetLayer]] = {  # family → named layers, the first is the default
    "vit": {
        "tokens": TargetLayer(
            lambda m: m.vit.layers[-1].layernorm_before,
            FAMILIES["vit"].position_prefix,
            "the last encoder block's input tokens, [CLS] dropped",
        ),
        **_earlier_blocks(lambda m: m.vit.layers, FAMILIES["vit"].position_prefix, "[CLS] dropped"),
    },
    "deit": {
        "tokens": TargetLayer(
            lambda m: m.deit.layers[-1].layernorm_before,
            FAMILIES["deit"].position_prefix,
            "the last encoder block's input tokens, [CLS] and distillation tokens dropped",
        ),
        **_earlier_blocks(lambda m: m.deit.layers, FAMILIES["deit"].position_prefix, "[CLS] and distillation dropped"),
    },
    "swin": {"tokens": TargetLayer(lambda m: m.swin.layernorm, 0, "the last stage's tokens after the final norm")},
    "resnet_vit": {
        "tokens": TargetLayer(
            lambda m: m.resnet_vit.layers[-1].layernorm_before,
            FAMILIES["resnet_vit"].position_prefix,
            "the last encoder block's input tokens, [CLS] dropped",
        ),
        "cnn": TargetLayer(_hybrid_cnn_stage, None, "the ResNet stage whose feature map becomes the tokens"),
    },
    "densenet121": {"cnn": TargetLayer(lambda m: m.timm_model.features.denseblock4, None, "the last dense block")},
}
# Rollout and relevance read [CLS] (token 0) over the patch grid: the families with tokens before the grid
# ([CLS], distillation).
ROLLOUT_PREFIX = {name: family.position_prefix for name, family in FAMILIES.items() if family.position_prefix}


def model_family(model: PreTrainedModel) -> str:
    """The project's family name for a loaded classifier, from its configuration."""
    model_type = model.config.model_type
    if model_type == "timm_wrapper":
        architecture = str(getattr(model.config, "architecture", ""))
        if architecture.startswith("densenet"):
            return "densenet121"
        raise UnsupportedExplanation(
            f"no explanation target is known for the timm architecture {architecture!r}; supported: densenet"
        )
    if model_type not in TARGET_LAYERS:
        raise UnsupportedExplanation(
            f"no explanation target is known for {model_type!r} models; supported model "
            f"types: vit, deit, swin, resnet_vit and timm densenet"
        )
    return model_type


def supported_methods(family: str) -> tuple[str, ...]:
    return CAM_METHODS + (ATTENTION_METHODS if family in ROLLOUT_PREFIX else ())


def default_method(family: str) -> str:
    """The method ``explain`` uses unless told: attention relevance where it applies (ViT, DeiT, the hybrid), else
    Grad-CAM. Chosen by measurement (docs/explain.md): on the demo recipe over 3 seeds, attention relevance hit
    0.692 ± 0.046 of the boxed positives against Grad-CAM's 0.491 ± 0.219 (chance 0.161), with right- and
    wrong-label hit rates of 0.657 and 0.281."""
    return RELEVANCE if RELEVANCE in supported_methods(family) else "gradcam"


def check_method(family: str, method: str) -> None:
    if method not in METHODS:
        raise UnsupportedExplanation(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if method not in supported_methods(family):
        raise UnsupportedExplanation(
            f"{method} does not apply to {family} models (they have no [CLS] attention over "
            f"a patch grid); {family} supports: {', '.join(supported_methods(family))}"
        )


def target_layer(family: str, name: str | None = None) -> TargetLayer:
    layers = TARGET_LAYERS[family]
    if name is None:
        return next(iter(layers.values()))
    if name not in layers:
        raise UnsupportedExplanation(
            f"{family} has no target layer {name!r}; its layers: "
            + "; ".join(f"{key} ({layer.description})" for key, layer in layers.items())
        )
    return layers[name]


def tokens_to_grid(prefix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, prefix + rows*cols, C)`` → ``(B, C, rows, cols)`` for a square, row-major token grid."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"expected (batch, tokens, channels) activations, got shape {tuple(tokens.shape)}")
        patches = tokens[:, prefix:]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} tokens after {prefix} prefix tokens do not form a square grid")
        return patches.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


class LogitsOnly(nn.Module):
    """The classifier as grad-cam expects it: pixels in, a ``(B, labels)`` logits tensor out."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@contextlib.contextmanager
def _gradients_to_input_only(model: nn.Module) -> Iterator[None]:
    """No parameter gradients (whatever the freeze policy left trainable): the maps need activation gradients,
    which flow from an input that requires grad, so a fully frozen backbone works and no weight grads are kept."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _check_label_indices(model: PreTrainedModel, label_indices: Sequence[int]) -> None:
    labels = model.config.num_labels
    bad = [int(index) for index in label_indices if not 0 <= int(index) < labels]
    if bad:
        raise IndexError(f"label indices {bad} are out of range: the model has {labels} labels")


def unit_scale(maps: np.ndarray) -> np.ndarray:
    """Each ``(H, W)`` map (over the leading axes) min-max scaled to [0, 1]; a constant map becomes zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def cam_maps(
    model: PreTrainedModel,
    pixel_values: torch.Tensor,
    label_indices: Sequence[int],
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """``(B, len(label_indices), H, W)`` maps in [0, 1] at the input resolution; ``[b, j]`` explains the logit of
    label ``label_indices[j]`` for image ``b``."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    family = model_family(model)
    check_method(family, method)
    if method not in CAM_METHODS:
        raise UnsupportedExplanation(f"cam_maps computes {', '.join(CAM_METHODS)}; use {method}() for {method}")
    target = target_layer(family, layer)
    _check_label_indices(model, label_indices)
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]
    reshape = None if target.prefix is None else tokens_to_grid(target.prefix)
    batch, height, width = pixel_values.shape[0], *pixel_values.shape[-2:]
    out = np.full((batch, len(label_indices), height, width), np.nan, dtype=np.float32)
    model.eval()
    inputs = pixel_values.detach().clone().requires_grad_(True)
    # Not grad-cam's `with` form: its __exit__ swallows IndexError and would hand back unfilled maps.
    cam = cam_class(model=LogitsOnly(model), target_layers=[target.find(model)], reshape_transform=reshape)
    try:
        with _gradients_to_input_only(model):
            for column, index in enumerate(label_indices):
                out[:, column] = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(index))] * batch)
    finally:
        cam.activations_and_grads.release()
    if not np.isfinite(out).all():
        raise RuntimeError(f"{method} produced non-finite maps for labels {list(label_indices)}")
    return unit_scale(out)


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """The eager attention implementation (which returns attention weights) for the duration of the block.

    transformers' ViT and DeiT switch with ``set_attn_implementation``; the hybrid computes the weights itself
    whenever they are asked for and cannot be switched."""
    previous = getattr(model.config, "_attn_implementation", None)
    switched = False
    if previous not in (None, "eager") and model._can_set_attn_implementation():
        model.set_attn_implementation("eager")
        switched = True
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation(previous)


def rollout_grid(attentions: Sequence[torch.Tensor], prefix: int) -> torch.Tensor:
    """``(B, rows, cols)``: how much [CLS] draws on each patch through every layer, from per-layer attention
    weights ``(B, heads, tokens, tokens)`` (heads averaged, each layer mixed half and half with the identity)."""
    rollout = None
    for weights in attentions:
        mixed = 0.5 * weights.float().mean(dim=1) + 0.5 * torch.eye(weights.shape[-1], device=weights.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return tokens_to_grid(prefix)(rollout[:, :1, :].transpose(1, 2))[:, 0]  # [CLS]'s row over the patch grid


def attention_rollout(model: PreTrainedModel, pixel_values: torch.Tensor) -> np.ndarray:
    """``(B, H, W)`` attention-rollout maps in [0, 1] at the input resolution (the same for every label)."""
    family = model_family(model)
    check_method(family, ROLLOUT)
    prefix = ROLLOUT_PREFIX[family]
    model.eval()
    with eager_attention(model), torch.no_grad():
        attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
    if not attentions or any(weights is None for weights in attentions):
        raise UnsupportedExplanation(f"{type(model).__name__} returned no attention weights")
    grid = rollout_grid(attentions, prefix)[:, None]
    maps = F.interpolate(grid, size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=False)
    return unit_scale(maps[:, 0].cpu().numpy())


def relevance_grid(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor], prefix: int) -> torch.Tensor:
    """``(B, rows, cols)``: [CLS]'s gradient-weighted attention relevance on each patch (Chefer et al., 2021), from
    per-layer attention weights ``(B, heads, tokens, tokens)`` in forward order and the target logit's gradients
    with respect to them (the same shapes): ``R = I``, then per layer ``R ← R + mean_heads((∇A ⊙ A)⁺) @ R``."""
    if len(attentions) != len(gradients):
        raise ValueError(f"{len(attentions)} layers of attention weights but {len(gradients)} of gradients")
    if not attentions:
        raise ValueError("no attention weights: relevance needs at least one layer")
    relevance = None
    for weights, grads in zip(attentions, gradients, strict=True):
        if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or grads.shape != weights.shape:
            raise ValueError(
                f"expected (batch, heads, tokens, tokens) weights and gradients of the same shape, got "
                f"{tuple(weights.shape)} and {tuple(grads.shape)}"
            )
        weighted = (grads.float() * weights.float()).clamp(min=0).mean(dim=1)  # (B, T, T)
        if relevance is None:
            eye = torch.eye(weights.shape[-1], device=weights.device)
            relevance = eye.expand_as(weighted).clone()
        relevance = relevance + weighted @ relevance
    return tokens_to_grid(prefix)(relevance[:, :1, :].transpose(1, 2))[:, 0]  # [CLS]'s row over the patch grid


def attention_relevance(model: PreTrainedModel, pixel_values: torch.Tensor, label_indices: Sequence[int]) -> np.ndarray:
    """``(B, len(label_indices), H, W)`` gradient-weighted attention relevance maps in [0, 1] at the input
    resolution; ``[b, j]`` explains the raw logit of label ``label_indices[j]`` for image ``b``.

    One forward pass (eager attention, eval mode) whose graph is kept for one ``torch.autograd.grad`` per label;
    each label's logit is summed over the batch, which gives every image its own gradients since images do not
    interact in eval mode. Only the input requires grad during the call, and no parameter's ``.grad`` is touched."""
    family = model_family(model)
    check_method(family, RELEVANCE)
    prefix = ROLLOUT_PREFIX[family]
    _check_label_indices(model, label_indices)
    batch, height, width = pixel_values.shape[0], *pixel_values.shape[-2:]
    out = np.full((batch, len(label_indices), height, width), np.nan, dtype=np.float32)
    model.eval()
    inputs = pixel_values.detach().clone().requires_grad_(True)  # the graph's only leaf that requires grad
    with eager_attention(model), _gradients_to_input_only(model), torch.enable_grad():
        outputs = model(pixel_values=inputs, output_attentions=True)
        attentions = outputs.attentions
        if not attentions or any(weights is None for weights in attentions):
            raise UnsupportedExplanation(f"{type(model).__name__} returned no attention weights")
        attentions = tuple(attentions)
        detached = [weights.detach() for weights in attentions]
        for column, index in enumerate(label_indices):
            gradients = torch.autograd.grad(
                outputs.logits[:, int(index)].sum(),
                attentions,
                retain_graph=column < len(label_indices) - 1,
                allow_unused=True,  # a layer the logit does not depend on gets no relevance
            )
            gradients = [
                torch.zeros_like(weights) if grads is None else grads
                for weights, grads in zip(detached, gradients, strict=True)
            ]
            grid = relevance_grid(detached, gradients, prefix)[:, None]
            maps = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
            out[:, column] = maps[:, 0].cpu().numpy()
    if not np.isfinite(out).all():
        raise RuntimeError(f"{RELEVANCE} produced non-finite maps for labels {list(label_indices)}")
    return unit_scale(out)


def explanation_maps(
    model: PreTrainedModel,
    pixel_values: torch.Tensor,
    label_indices: Sequence[int],
    *,
    method: str,
    layer: str | None = None,
) -> np.ndarray:
    """``(B, len(label_indices), H, W)`` maps in [0, 1] at the input resolution, by any method (``layer``: the CAM
    methods' target layer, see :data:`TARGET_LAYERS`)."""
    if method == ROLLOUT:  # every encoder layer: ``layer`` (which the CAM methods read) does not apply
        maps = attention_rollout(model, pixel_values)
        return np.repeat(maps[:, None], len(label_indices), axis=1)
    if method == RELEVANCE:  # every encoder layer too: ``layer`` does not apply
        return attention_relevance(model, pixel_values, label_indices)
    return cam_maps(model, pixel_values, label_indices, method=method, layer=layer)


def randomized_copy(model: PreTrainedModel, seed: int = 0) -> PreTrainedModel:
    """The same architecture with freshly initialised weights (the model-randomization sanity check of Adebayo et
    al., 2018): a map that survives this does not depend on what the model learned."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.config))
    return fresh.to(next(model.parameters()).device).eval()


def to_size(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """One ``(h, w)`` map resized (bilinear) to ``(height, width)`` and scaled back to [0, 1]: the processors
    squash images to a square, so squashing the map back puts it over the original image."""
    tensor = torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    return unit_scale(resized)


__all__ = [
    "ATTENTION_METHODS",
    "default_method",
    "CAM_METHODS",
    "METHODS",
    "RELEVANCE",
    "ROLLOUT",
    "TARGET_LAYERS",
    "LogitsOnly",
    "UnsupportedExplanation",
    "attention_relevance",
    "attention_rollout",
    "cam_maps",
    "eager_attention",
    "explanation_maps",
    "model_family",
    "randomized_copy",
    "relevance_grid",
    "rollout_grid",
    "supported_methods",
    "target_layer",
    "to_size",
    "tokens_to_grid",
    "unit_scale",
]
