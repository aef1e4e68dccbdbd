"""Freeze policies and layer-wise learning-rate decay on the tiny configuration of every family."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TINY_SIZE, tiny_model

from chexpert_hf.models import MODELS, freeze
from chexpert_hf.models.freeze import FREEZE_POLICIES, POLICIES, apply_freeze_policy, layer_ids, param_groups

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

# The trainable sets, written out for the tiny configurations of tests/conftest.py (2 encoder blocks; Swin
# depths [1, 2]; DenseNet block_config [1, 1, 1, 1]) rather than derived from the policies under test.
BLOCK = [
    "attention.q_proj.weight",
    "attention.q_proj.bias",
    "attention.k_proj.weight",
    "attention.k_proj.bias",
    "attention.v_proj.weight",
    "attention.v_proj.bias",
    "attention.o_proj.weight",
    "attention.o_proj.bias",
    "layernorm_before.weight",
    "layernorm_before.bias",
    "layernorm_after.weight",
    "layernorm_after.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]
HEAD = ["classifier.weight", "classifier.bias"]
EXPECTED_TRAINABLE = {
    "vit": {
        "head": HEAD,
        "last_block": HEAD + [f"vit.layers.1.{n}" for n in BLOCK] + ["vit.layernorm.weight", "vit.layernorm.bias"],
    },
    "deit": {
        "head": HEAD,
        "last_block": HEAD + [f"deit.layers.1.{n}" for n in BLOCK] + ["deit.layernorm.weight", "deit.layernorm.bias"],
    },
    "resnet_vit": {
        "head": HEAD,
        "last_block": HEAD
        + [f"resnet_vit.layers.1.{n}" for n in BLOCK]
        + ["resnet_vit.layernorm.weight", "resnet_vit.layernorm.bias"],
    },
    "swin": {
        "head": HEAD,
        "last_block": HEAD
        + [f"swin.encoder.layers.1.blocks.1.{n}" for n in BLOCK]
        + [
            "swin.encoder.layers.1.blocks.1.attention.relative_position_bias.relative_position_bias_table",
            "swin.layernorm.weight",
            "swin.layernorm.bias",
        ],
    },
    "densenet121": {
        "head": ["timm_model.classifier.weight", "timm_model.classifier.bias"],
        "last_block": [
            "timm_model.classifier.weight",
            "timm_model.classifier.bias",
            "timm_model.features.denseblock4.denselayer1.norm1.weight",
            "timm_model.features.denseblock4.denselayer1.norm1.bias",
            "timm_model.features.denseblock4.denselayer1.conv1.weight",
            "timm_model.features.denseblock4.denselayer1.norm2.weight",
            "timm_model.features.denseblock4.denselayer1.norm2.bias",
            "timm_model.features.denseblock4.denselayer1.conv2.weight",
            "timm_model.features.norm5.weight",
            "timm_model.features.norm5.bias",
        ],
    },
}
FAMILY_NAMES = sorted(MODELS)


def test_every_family_has_every_policy():
    assert set(FREEZE_POLICIES) == set(MODELS) == set(EXPECTED_TRAINABLE)
    for family, policies in FREEZE_POLICIES.items():
        assert tuple(policies) == POLICIES, family


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_trains_exactly_the_documented_parameters(family, policy):
    torch.manual_seed(0)  # weights and pixels independent of the tests that ran before
    model = tiny_model(family).model.train()
    summary = apply_freeze_policy(model, family, policy)
    names = [name for name, _ in model.named_parameters()]
    expected = names if policy == "full" else EXPECTED_TRAINABLE[family][policy]
    assert sorted(summary.trainable_names) == sorted(expected)
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(expected)
    total = sum(p.numel() for p in model.parameters())
    assert summary.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert summary.trainable_params + summary.frozen_params == total
    assert summary.trainable_tensors + summary.frozen_tensors == len(names)
    assert f"{summary.trainable_params:,} trainable" in str(summary)

    # Gradients reach the trainable parameters and only them.
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    model(pixel_values=pixels, labels=torch.ones(2, 5)).loss.backward()
    for name, parameter in model.named_parameters():
        if name in expected:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_a_pattern_that_matches_nothing_is_an_error(monkeypatch):
    # The transformers 4.x spelling of the last ViT block matches nothing on 5.x.
    policies = {**FREEZE_POLICIES["vit"], "last_block": [r"^classifier\.", r"^vit\.encoder\.layer\.{last_layer}\."]}
    monkeypatch.setitem(FREEZE_POLICIES, "vit", policies)
    with pytest.raises(ValueError, match=re.escape(r"^vit\.encoder\.layer\.1\. match no parameter")):
        apply_freeze_policy(tiny_model("vit").model, "vit", "last_block")


def test_unknown_names_list_the_known_ones():
    model = tiny_model("vit").model
    with pytest.raises(KeyError, match="known: head, last_block, full"):
        apply_freeze_policy(model, "vit", "lora")
    with pytest.raises(KeyError, match="known: vit"):
        apply_freeze_policy(model, "vit-huge", "head")


def _batchnorm_stats(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}


def test_frozen_batchnorm_stays_in_eval_mode_while_trainable_batchnorm_learns():
    model = tiny_model("densenet121").model
    summary = apply_freeze_policy(model, "densenet121", "last_block")
    assert summary.frozen_batchnorms > 0
    model.train()  # what the Trainer does before every step
    before = _batchnorm_stats(model)
    model(pixel_values=torch.randn(4, 3, TINY_SIZE, TINY_SIZE) * 3 + 1)
    after = _batchnorm_stats(model)
    trainable = [n for n in before if "denseblock4" in n or "norm5" in n]
    frozen = [n for n in before if n not in trainable]
    assert trainable and frozen
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
        assert not model.get_submodule(name.rsplit(".", 1)[0]).training
    for name in trainable:
        assert not torch.equal(before[name], after[name]), name

    # A later policy that trains everything releases them.
    apply_freeze_policy(model, "densenet121", "full")
    model.train()
    model(pixel_values=torch.randn(4, 3, TINY_SIZE, TINY_SIZE))
    released = _batchnorm_stats(model)
    assert all(not torch.equal(after[name], released[name]) for name in frozen)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_layer_decay_groups_are_monotone_in_depth(family):
    model = tiny_model(family).model
    apply_freeze_policy(model, family, "full")
    groups = param_groups(model, family, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    depths = [group["layer_id"] for group in groups]
    assert depths == sorted(depths)
    rates = [group["lr"] for group in groups]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(1e-3) and rates[0] < rates[-1]
    for group in groups:
        assert group["lr"] == pytest.approx(1e-3 * 0.5 ** (depths[-1] - group["layer_id"]))
    grouped = [name for group in groups for name in group["names"]]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
    head = "timm_model.classifier.weight" if family == "densenet121" else "classifier.weight"
    ids = layer_ids(model, family)
    assert ids[head] == depths[-1]
    first_block = {
        "vit": "vit.layers.0.mlp.fc1.weight",
        "deit": "deit.layers.0.mlp.fc1.weight",
        "resnet_vit": "resnet_vit.layers.0.mlp.fc1.weight",
        "swin": "swin.encoder.layers.0.blocks.0.mlp.fc1.weight",
        "densenet121": "timm_model.features.denseblock1.denselayer1.conv1.weight",
    }[family]
    assert 0 < ids[first_block] < ids[head]
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    assert [group["lr"] for group in optimizer.param_groups] == rates


def test_swin_depth_counts_blocks_across_stages():
    ids = layer_ids(tiny_model("swin").model, "swin")
    assert ids["swin.embeddings.patch_embeddings.projection.weight"] == 0
    assert ids["swin.encoder.layers.0.blocks.0.mlp.fc1.weight"] == 1
    assert ids["swin.encoder.layers.0.downsample.reduction.weight"] == 2
    assert ids["swin.encoder.layers.1.blocks.0.mlp.fc1.weight"] == 2
    assert ids["swin.encoder.layers.1.blocks.1.mlp.fc1.weight"] == 3
    assert ids["swin.layernorm.weight"] == ids["classifier.weight"] == 4


def test_param_groups_hold_only_trainable_parameters():
    model = tiny_model("vit").model
    apply_freeze_policy(model, "vit", "head")
    groups = param_groups(model, "vit", lr=1e-3, layer_decay=0.75)
    assert [name for group in groups for name in group["names"]] == ["classifier.bias", "classifier.weight"]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, "vit", lr=1e-3)
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, "vit", lr=1e-3, layer_decay=1.5)


def test_layer_rules_cover_every_parameter(monkeypatch):
    monkeypatch.setitem(freeze.LAYER_IDS, "vit", freeze.LAYER_IDS["vit"][1:])  # drop the embeddings rule
    with pytest.raises(ValueError, match=r"do not cover \['vit\.embeddings"):
        layer_ids(tiny_model("vit").model, "vit")


def test_a_failed_policy_leaves_the_model_as_it_was(monkeypatch):
    model = tiny_model("vit").model
    apply_freeze_policy(model, "vit", "head")
    policies = {**FREEZE_POLICIES["vit"], "last_block": [r"^classifier\.", r"^vit\.encoder\.layer\."]}
    monkeypatch.setitem(FREEZE_POLICIES, "vit", policies)
    with pytest.raises(ValueError, match="match no parameter"):
        apply_freeze_policy(model, "vit", "last_block")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]


# Parameters with and without weight decay, named rather than derived from the rule under test.
DECAY_EXAMPLES = {
    "vit": (
        [
            "vit.embeddings.patch_embeddings.projection.weight",
            "vit.layers.0.attention.q_proj.weight",
            "vit.layers.1.mlp.fc2.weight",
            "classifier.weight",
        ],
        [
            "vit.embeddings.cls_token",
            "vit.embeddings.position_embeddings",
            "vit.layers.0.attention.q_proj.bias",
            "vit.layers.0.layernorm_before.weight",
            "vit.layernorm.bias",
            "classifier.bias",
        ],
    ),
    "deit": (["deit.layers.0.mlp.fc1.weight"], ["deit.embeddings.distillation_token", "deit.embeddings.cls_token"]),
    "swin": (
        ["swin.encoder.layers.0.downsample.reduction.weight"],
        [
            "swin.encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table",
            "swin.embeddings.norm.weight",
        ],
    ),
    "resnet_vit": (
        ["resnet_vit.embeddings.projection.weight", "resnet_vit.embeddings.backbone.bit.embedder.convolution.weight"],
        ["resnet_vit.embeddings.position_embeddings", "resnet_vit.embeddings.backbone.bit.embedder.norm.weight"],
    ),
    "densenet121": (
        ["timm_model.features.conv0.weight", "timm_model.classifier.weight"],
        ["timm_model.features.norm0.weight", "timm_model.classifier.bias"],
    ),
}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_weight_decay_skips_biases_norms_tokens_and_position_tables(family):
    model = tiny_model(family).model
    groups = param_groups(model, family, lr=1e-3, weight_decay=0.05)
    decay = {name: group["weight_decay"] for group in groups for name in group["names"]}
    decayed, exempt = DECAY_EXAMPLES[family]
    assert all(decay[name] == 0.05 for name in decayed), decayed
    assert all(decay[name] == 0.0 for name in exempt), exempt
