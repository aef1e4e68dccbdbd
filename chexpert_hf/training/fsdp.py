"""What FSDP shards as one unit for each model family, chosen here so that one ``accelerate_configs/fsdp.yaml``
serves every family.

With ``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP`` and no class named, accelerate makes a unit of every class
in the model's ``_no_split_modules``; since accelerate 1.14 its FSDP2 preparation then also shards
``model.get_input_embeddings()`` and the base model's final norm as units of their own.  A module cannot be
sharded inside a unit that already holds it: ViT and DeiT list their embeddings (``ViTEmbeddings``), whose child
``patch_embeddings`` is the input embedding, and preparation fails with ``TypeError: Invariant encountered``.
So each family names its transformer block (``Family.fsdp_block``: ViT/DeiT/hybrid layers, Swin stages), which
holds neither; the rest (embeddings, pooling, head) stays in the root unit.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from torch import nn

from chexpert_hf.models import FAMILIES
from chexpert_hf.training.arguments import ConfigurationError

logger = logging.getLogger(__name__)


def fsdp_block_classes(family: str) -> list[str]:
    """The class names FSDP wraps for ``family`` (``transformer_cls_names_to_wrap``); an error if it has none."""
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    block = FAMILIES[family].fsdp_block
    if block is None:
        sharded = [name for name, entry in FAMILIES.items() if entry.fsdp_block]
        raise ConfigurationError(
            f"FSDP cannot shard {family} (no block class to wrap); FSDP works for {', '.join(sharded)}: train "
            f"{family} with DDP (accelerate_configs/multi_gpu.yaml)"
        )
    return [block]


def fsdp_wrapped_modules(model: nn.Module, family: str) -> list[str]:
    """Names of the submodules of ``model`` that :func:`apply_fsdp_wrap_policy` makes units (besides the root)."""
    names = set(fsdp_block_classes(family))
    return [name for name, module in model.named_modules() if name and type(module).__name__ in names]


def apply_fsdp_wrap_policy(accelerator: Any, family: str) -> list[str] | None:
    """Make ``accelerator``'s FSDP plugin wrap ``family``'s block class; returns the class names, or None
    (nothing changed) when the accelerator does not use FSDP.

    Call it after the ``Trainer`` is built (it creates the accelerator from ``accelerate launch``'s settings) and
    before ``train()`` or ``evaluate()`` (the first ``accelerator.prepare`` reads the choice and shards the model).
    A class named in the accelerate config (``fsdp_transformer_layer_cls_to_wrap``) is replaced, with a warning.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return None
    names = fsdp_block_classes(family)
    policy = plugin.auto_wrap_policy
    if isinstance(policy, functools.partial):  # accelerate binds the classes once it has prepared a model
        policy = policy.func
    if policy is not transformer_auto_wrap_policy:
        raise ConfigurationError(
            f"FSDP needs fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP (as in accelerate_configs/fsdp.yaml), so that "
            f"each {names[0]} is one unit; this accelerate config has {getattr(policy, '__name__', policy)!r}"
        )
    configured = plugin.transformer_cls_names_to_wrap
    if configured is not None and list(configured) != names:
        logger.warning(
            "FSDP wraps %s for %s, not the accelerate config's fsdp_transformer_layer_cls_to_wrap %s",
            names,
            family,
            list(configured),
        )
    plugin.transformer_cls_names_to_wrap = names
    return names


__all__ = ["apply_fsdp_wrap_policy", "fsdp_block_classes", "fsdp_wrapped_modules"]
