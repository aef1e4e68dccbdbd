"""Fine-tuning strategies as parameter-name regexes, and layer-wise learning-rate decay.

``FREEZE_POLICIES[family][policy]`` is an ordered list of regexes; a parameter trains when any of them matches
its name (``re.search``).  ``{last}``-style fields are filled from the model's configuration, so a policy names
the same block whatever the depth:

- ``head`` — only the classification head;
- ``last_block`` — the head, the last transformer block (Swin: the last stage's last block; the hybrid: the
  encoder's last block; DenseNet: the last dense block) and the final norm;
- ``full`` — everything.

The names are those of transformers 5 (``vit.layers.N``, not 4.x's ``vit.encoder.layer.N``); a pattern that
matches nothing is an error, so a rename cannot silently freeze the whole model.  BatchNorm layers whose
parameters are all frozen are kept in eval mode (a forward pre-hook), so their running statistics stay those of
the checkpoint; apply the policy after any ``SyncBatchNorm.convert_sync_batchnorm``, which builds new modules.

``LAYER_IDS`` maps each parameter to a depth (0 = input side) for layer-wise learning-rate decay:
a parameter at depth ``d`` of ``D`` gets ``lr * decay ** (D - d)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

POLICIES = ("head", "last_block", "full")


def _encoder_policies(prefix: str) -> dict[str, list[str]]:
    """ViT-style models: ``<prefix>.layers.N`` blocks, a ``<prefix>.layernorm`` and a ``classifier`` head."""
    return {
        "head": [r"^classifier\."],
        "last_block": [r"^classifier\.", rf"^{prefix}\.layers\.{{last_layer}}\.", rf"^{prefix}\.layernorm\."],
        "full": [r"."],
    }


FREEZE_POLICIES: dict[str, dict[str, list[str]]] = {
    "vit": _encoder_policies("vit"),
    "deit": _encoder_policies("deit"),
    "resnet_vit": _encoder_policies("resnet_vit"),
    "swin": {
        "head": [r"^classifier\."],
        "last_block": [
            r"^classifier\.",
            r"^swin\.encoder\.layers\.{last_stage}\.blocks\.{last_stage_block}\.",
            r"^swin\.layernorm\.",
        ],
        "full": [r"."],
    },
    "densenet121": {
        "head": [r"^timm_model\.classifier\."],
        "last_block": [
            r"^timm_model\.classifier\.",
            r"^timm_model\.features\.denseblock{last_dense_block}\.",
            r"^timm_model\.features\.norm5\.",
        ],
        "full": [r"."],
    },
}


def _depth_fields(family: str, config: Any) -> dict[str, int]:
    """The numbers the patterns refer to, read from the configuration (not from parameter names)."""
    if family in ("vit", "deit", "resnet_vit"):
        return {"layers": config.num_hidden_layers, "last_layer": config.num_hidden_layers - 1}
    if family == "swin":
        return {
            "stages": len(config.depths),
            "last_stage": len(config.depths) - 1,
            "last_stage_block": config.depths[-1] - 1,
            "blocks": sum(config.depths),
        }
    if family == "densenet121":
        blocks = len((config.model_args or {}).get("block_config", (6, 12, 24, 16)))
        return {"dense_blocks": blocks, "last_dense_block": blocks}
    raise KeyError(f"unknown model family {family!r}; known: {', '.join(FREEZE_POLICIES)}")


def policy_patterns(family: str, policy: str, config: Any) -> list[str]:
    """The regexes of ``policy`` for ``family`` with the depth fields of ``config`` filled in."""
    if family not in FREEZE_POLICIES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FREEZE_POLICIES)}")
    if policy not in FREEZE_POLICIES[family]:
        raise KeyError(f"unknown freeze policy {policy!r}; known: {', '.join(FREEZE_POLICIES[family])}")
    fields = _depth_fields(family, config)
    return [pattern.format(**fields) for pattern in FREEZE_POLICIES[family][policy]]


@dataclass
class FreezeSummary:
    family: str
    policy: str
    patterns: list[str]
    trainable_names: list[str]
    trainable_params: int
    frozen_params: int
    trainable_tensors: int
    frozen_tensors: int
    frozen_batchnorms: int = 0
    matches: dict[str, int] = field(default_factory=dict)  # pattern → parameter tensors it matched

    @property
    def trainable_fraction(self) -> float:
        total = self.trainable_params + self.frozen_params
        return self.trainable_params / total if total else 0.0

    def __str__(self) -> str:
        return (
            f"freeze policy {self.policy!r} on {self.family}: {self.trainable_params:,} trainable / "
            f"{self.frozen_params:,} frozen parameters ({100 * self.trainable_fraction:.2f}% trainable) in "
            f"{self.trainable_tensors} / {self.frozen_tensors} tensors; {self.frozen_batchnorms} BatchNorm "
            f"layers held in eval mode"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "policy": self.policy,
            "patterns": self.patterns,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "trainable_tensors": self.trainable_tensors,
            "frozen_tensors": self.frozen_tensors,
            "frozen_batchnorms": self.frozen_batchnorms,
        }


def _hold_in_eval(module: nn.Module, args: Any) -> None:
    # A forward pre-hook, not an override of .train(): the Trainer calls model.train() every step.
    module.training = False


def apply_freeze_policy(model: PreTrainedModel, family: str, policy: str) -> FreezeSummary:
    """Set ``requires_grad`` by ``policy``; returns the counts that training logs."""
    patterns = policy_patterns(family, policy, model.config)
    compiled = [re.compile(pattern) for pattern in patterns]
    matches = dict.fromkeys(patterns, 0)
    trains: dict[str, bool] = {}
    for name, _ in model.named_parameters():
        hits = [pattern for pattern, regex in zip(patterns, compiled, strict=True) if regex.search(name)]
        for pattern in hits:
            matches[pattern] += 1
        trains[name] = bool(hits)
    unmatched = [pattern for pattern, count in matches.items() if count == 0]
    if unmatched:  # checked before any flag changes, so a failed call leaves the model as it was
        raise ValueError(
            f"freeze policy {policy!r} for {family}: pattern(s) {', '.join(unmatched)} match no parameter of "
            f"{type(model).__name__} "
            f"(parameter names changed? first names: {[n for n, _ in model.named_parameters()][:3]})"
        )
    trainable_names, counts = [], {True: [0, 0], False: [0, 0]}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trains[name])
        counts[trains[name]][0] += parameter.numel()
        counts[trains[name]][1] += 1
        if trains[name]:
            trainable_names.append(name)
    frozen_batchnorms = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters(recurse=False))
            hooks = {key for key, hook in module._forward_pre_hooks.items() if hook is _hold_in_eval}
            if parameters and not any(p.requires_grad for p in parameters):
                if not hooks:
                    module.register_forward_pre_hook(_hold_in_eval)
                module.eval()
                frozen_batchnorms += 1
            else:
                for key in hooks:  # a policy applied again may unfreeze what an earlier one froze
                    del module._forward_pre_hooks[key]
    return FreezeSummary(
        family=family,
        policy=policy,
        patterns=patterns,
        trainable_names=trainable_names,
        trainable_params=counts[True][0],
        frozen_params=counts[False][0],
        trainable_tensors=counts[True][1],
        frozen_tensors=counts[False][1],
        frozen_batchnorms=frozen_batchnorms,
        matches=matches,
    )


# ---------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ---------------------------------------------------------------------------------------------------------------

LayerRule = tuple[str, Callable[[re.Match, dict[str, int]], int]]


def _fixed(depth: int) -> Callable[[re.Match, dict[str, int]], int]:
    return lambda match, fields: depth


def _top(key: str) -> Callable[[re.Match, dict[str, int]], int]:
    return lambda match, fields: fields[key] + 1


def _block(match: re.Match, fields: dict[str, int]) -> int:
    return int(match[1]) + 1


def _swin_block(match: re.Match, fields: dict[str, int]) -> int:
    return fields["stage_offsets"][int(match[1])] + int(match[2]) + 1


def _swin_downsample(match: re.Match, fields: dict[str, int]) -> int:
    # Patch merging ends stage s and feeds stage s + 1: it shares the depth of the next stage's first block.
    return fields["stage_offsets"][int(match[1]) + 1] + 1


def _dense(match: re.Match, fields: dict[str, int]) -> int:
    return int(match[1])


def _encoder_depths(prefix: str) -> list[LayerRule]:
    """ViT-style models (``<prefix>.embeddings``, ``<prefix>.layers.N``, ``<prefix>.layernorm``, ``classifier``)."""
    return [
        (rf"^{prefix}\.embeddings\.", _fixed(0)),
        (rf"^{prefix}\.layers\.(\d+)\.", _block),
        (rf"^({prefix}\.layernorm|classifier)\.", _top("layers")),
    ]


# Depth of every parameter: embeddings 0, block i at i + 1, final norm and head at the top (number of blocks + 1).
# The hybrid's whole ResNet counts as embeddings (depth 0), as in timm's layer decay for its hybrids.
LAYER_IDS: dict[str, list[LayerRule]] = {
    "vit": _encoder_depths("vit"),
    "deit": _encoder_depths("deit"),
    "resnet_vit": _encoder_depths("resnet_vit"),
    "swin": [
        (r"^swin\.embeddings\.", _fixed(0)),
        (r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.", _swin_block),
        (r"^swin\.encoder\.layers\.(\d+)\.downsample\.", _swin_downsample),
        (r"^(swin\.layernorm|classifier)\.", _top("blocks")),
    ],
    "densenet121": [
        (r"^timm_model\.features\.(conv0|norm0)\.", _fixed(0)),
        (r"^timm_model\.features\.(?:denseblock|transition)(\d+)\.", _dense),
        (r"^timm_model\.(features\.norm5|classifier)\.", _top("dense_blocks")),
    ],
}


def layer_ids(model: PreTrainedModel, family: str) -> dict[str, int]:
    """Depth of every parameter of ``model``; a parameter no rule covers is an error."""
    if family not in LAYER_IDS:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(LAYER_IDS)}")
    fields: dict[str, Any] = _depth_fields(family, model.config)
    if family == "swin":
        offsets = [0]
        for depth in model.config.depths:
            offsets.append(offsets[-1] + depth)
        fields["stage_offsets"] = offsets
    rules = [(re.compile(pattern), rule) for pattern, rule in LAYER_IDS[family]]
    depths, uncovered = {}, []
    for name, _ in model.named_parameters():
        for regex, rule in rules:
            match = regex.search(name)
            if match:
                depths[name] = rule(match, fields)
                break
        else:
            uncovered.append(name)
    if uncovered:
        raise ValueError(f"layer-decay rules for {family} do not cover {uncovered[:5]}")
    return depths


def _no_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Biases, norms, tokens and position tables are not decayed (as in ViT, DeiT, Swin and timm)."""
    return parameter.ndim <= 1 or bool(re.search(r"position|cls_token|distillation_token", name))


def param_groups(
    model: PreTrainedModel,
    family: str,
    lr: float,
    weight_decay: float = 0.01,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters, one per (depth, decayed or not), each with its own ``lr``.

    ``layer_decay`` = 1 gives every group ``lr``; below 1, a group at depth ``d`` gets
    ``lr * layer_decay ** (top - d)``, so the head keeps ``lr`` and the embeddings get the least.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depths = layer_ids(model, family)
    top = max(depths.values())
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = depths[name]
        decayed = not _no_weight_decay(name, parameter)
        group = groups.setdefault(
            (depth, decayed),
            {
                "params": [],
                "names": [],
                "lr": lr * layer_decay ** (top - depth),
                "weight_decay": weight_decay if decayed else 0.0,
                "layer_id": depth,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters: apply a freeze policy that leaves something to train")
    return [groups[key] for key in sorted(groups)]


def policy_table(labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Parameter counts of every family and variant at full size under every policy (built on the meta device)."""
    from chexpert_hf.labels import CHEXPERT_LABELS
    from chexpert_hf.models import FAMILIES, build_model

    rows = []
    for family_name, family in FAMILIES.items():
        for variant, spec in family.variants.items():
            with torch.device("meta"):  # shapes only: nothing is allocated or downloaded
                model = build_model(
                    family_name, variant=variant, from_scratch=True, labels=labels or CHEXPERT_LABELS
                ).model
            row: dict[str, Any] = {"family": family_name, "variant": variant, "checkpoint": spec.checkpoint}
            for policy in POLICIES:
                summary = apply_freeze_policy(model, family_name, policy)
                row[policy] = summary.trainable_params
            row["total"] = summary.trainable_params + summary.frozen_params
            rows.append(row)
    return rows
