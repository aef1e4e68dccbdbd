"""Gradient-weighted attention relevance (Chefer et al., 2021): the rule on hand-made attention, and the maps of the
tiny transformer families (label-specific, unit range, no weight gradients, attention implementation put back)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_model
from torch.nn import functional as F

from chexpert_hf.explain.maps import (
    RELEVANCE,
    ROLLOUT,
    ROLLOUT_PREFIX,
    UnsupportedExplanation,
    attention_relevance,
    explanation_maps,
    relevance_grid,
    supported_methods,
    unit_scale,
)

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

TRANSFORMERS = ["vit", "deit", "resnet_vit"]  # the families with [CLS] attention over a patch grid
SIZE = 32  # the tiny models' input (a 4 × 4 patch grid for ViT and DeiT)


def hand_made_layers():
    """Two layers, two heads, one image of 1 + 4 tokens ([CLS] and a 2 × 2 grid); attention and gradients zero
    except where set, so each layer's ``mean_heads((∇A ⊙ A)⁺)`` can be read off by hand."""
    tokens = 5
    a1, g1 = np.zeros((2, tokens, tokens)), np.zeros((2, tokens, tokens))
    a1[0, 0, :2] = [0.5, 0.5]  # head 0: [CLS] → itself and patch token 1
    g1[0, 0, 1] = 2.0  # ∇A ⊙ A = +1.0 at (0, 1)
    a1[0, 3, 3:] = [0.5, 0.5]  # head 0: token 3 → itself and token 4
    g1[0, 3, 4] = 1.0  # +0.5 at (3, 4)
    a1[1, 0, [0, 1, 3]] = [0.25, 0.5, 0.25]  # head 1: [CLS] → itself, token 1 and token 3
    g1[1, 0, 1] = -6.0  # -3.0 at (0, 1): clamped to 0 before the head mean (the mean first would give 0, not 0.5)
    g1[1, 0, 3] = 2.0  # +0.5 at (0, 3)
    a2, g2 = np.zeros((2, tokens, tokens)), np.zeros((2, tokens, tokens))
    a2[:, 0, [2, 3]] = 0.5  # both heads: [CLS] → tokens 2 and 3
    g2[:, 0, 3] = 2.0  # +1.0 at (0, 3) in both heads
    g2[0, 0, 2], g2[1, 0, 2] = -2.0, -1.0  # -1.0 and -0.5 at (0, 2): clamped away
    return (a1, g1), (a2, g2)


def test_relevance_follows_the_gradient_weighted_attention_on_a_hand_made_case():
    (a1, g1), (a2, g2) = hand_made_layers()
    # By hand: layer 1's mean over heads of the positive parts is (1.0 + 0) / 2 = 0.5 at (0, 1), (0 + 0.5) / 2 = 0.25
    # at (0, 3) and (0.5 + 0) / 2 = 0.25 at (3, 4); layer 2's is (1.0 + 1.0) / 2 = 1.0 at (0, 3), 0 at (0, 2).
    bar1 = np.zeros((5, 5))
    bar1[0, 1], bar1[0, 3], bar1[3, 4] = 0.5, 0.25, 0.25
    bar2 = np.zeros((5, 5))
    bar2[0, 3] = 1.0
    relevance = np.eye(5)
    relevance = relevance + bar1 @ relevance  # [CLS] row: [1, 0.5, 0, 0.25, 0]; token 3's: [0, 0, 0, 1, 0.25]
    relevance = relevance + bar2 @ relevance  # [CLS] row: its own + 1.0 × token 3's = [1, 0.5, 0, 1.25, 0.25]
    np.testing.assert_allclose(relevance[0], [1.0, 0.5, 0.0, 1.25, 0.25])
    expected = relevance[0, 1:].reshape(2, 2)  # the patch tokens, row-major: [[0.5, 0], [1.25, 0.25]]

    def tensor(array):
        return torch.tensor(array[None], dtype=torch.float32)

    grid = relevance_grid([tensor(a1), tensor(a2)], [tensor(g1), tensor(g2)], prefix=1)
    assert grid.shape == (1, 2, 2)
    np.testing.assert_allclose(grid[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(grid[0].numpy(), [[0.5, 0.0], [1.25, 0.25]], atol=1e-6)

    # Images are independent: a second image whose gradient × attention is nowhere positive has no positive evidence
    # (R = I, so a zero map), and the first image's map does not change.
    batch = [torch.cat([tensor(a), tensor(a)]) for a in (a1, a2)]
    grads = [torch.cat([tensor(g), tensor(-np.abs(g))]) for g in (g1, g2)]
    both = relevance_grid(batch, grads, prefix=1)
    np.testing.assert_allclose(both[0].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(both[1].numpy(), np.zeros((2, 2)))


def test_relevance_grid_rejects_mismatched_layers_and_shapes():
    weights = torch.rand(1, 2, 5, 5)
    with pytest.raises(ValueError, match="2 layers of attention weights but 1 of gradients"):
        relevance_grid([weights, weights], [weights], prefix=1)
    with pytest.raises(ValueError, match="of the same shape"):
        relevance_grid([weights], [torch.rand(1, 2, 5, 4)], prefix=1)


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_relevance_maps_are_label_specific_unit_range_and_keep_no_weight_gradients(family):
    model = tiny_model(family).model
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert RELEVANCE in supported_methods(family)
    pixels = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = explanation_maps(model, pixels, [0, 3], method=RELEVANCE)
    assert maps.shape == (3, 2, SIZE, SIZE)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps.max(axis=(-2, -1)), 1.0).sum() >= 4  # most maps are not flat (a flat one is all zeros)
    assert not np.allclose(maps[:, 0], maps[:, 1], atol=1e-3)  # the two labels' maps differ, unlike rollout's
    rollout = explanation_maps(model, pixels, [0, 3], method=ROLLOUT)
    np.testing.assert_array_equal(rollout[:, 0], rollout[:, 1])
    assert all(p.grad is None for p in model.parameters())  # no weight gradients were kept
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert not model.training


def test_relevance_matches_a_plain_backward_one_image_and_label_at_a_time():
    """The batched, graph-keeping computation equals the obvious one: per image and label, a backward from that
    logit with the attention weights' gradients retained (on a copy, whose weights do collect gradients)."""
    model = tiny_model("vit").model.eval()
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = [4, 1]
    maps = attention_relevance(model, pixels, labels)
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    for image in range(2):
        for column, label in enumerate(labels):
            outputs = reference(pixel_values=pixels[image : image + 1], output_attentions=True)
            for weights in outputs.attentions:
                weights.retain_grad()
            outputs.logits[0, label].backward()
            grid = relevance_grid(
                [w.detach() for w in outputs.attentions], [w.grad for w in outputs.attentions], ROLLOUT_PREFIX["vit"]
            )
            expected = F.interpolate(grid[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            np.testing.assert_allclose(maps[image, column], unit_scale(expected[0, 0].numpy()), atol=1e-5)


def test_relevance_ignores_the_target_layer_and_checks_label_indices():
    model = tiny_model("resnet_vit").model
    pixels = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    plain = explanation_maps(model, pixels, [2], method=RELEVANCE)
    for layer in ("tokens", "cnn"):
        np.testing.assert_allclose(explanation_maps(model, pixels, [2], method=RELEVANCE, layer=layer), plain)
    with pytest.raises(IndexError, match=r"label indices \[7\] are out of range: the model has 5 labels"):
        explanation_maps(model, pixels, [0, 7], method=RELEVANCE)


def test_relevance_refuses_non_finite_maps():
    model = tiny_model("vit").model
    pixels = torch.full((1, 3, SIZE, SIZE), float("nan"))
    with pytest.raises(RuntimeError, match="attention_relevance produced non-finite maps for labels \\[0\\]"):
        attention_relevance(model, pixels, [0])


@pytest.mark.parametrize("family", ["swin", "densenet121"])
def test_relevance_on_a_family_without_cls_attention_names_what_it_supports(family):
    model = tiny_model(family).model
    assert RELEVANCE not in supported_methods(family)
    message = (
        f"attention_relevance does not apply to {family} models \\(they have no \\[CLS\\] attention over a patch "
        f"grid\\); {family} supports: gradcam, gradcam\\+\\+$"
    )
    with pytest.raises(UnsupportedExplanation, match=message):
        explanation_maps(model, torch.zeros(1, 3, SIZE, SIZE), [0], method=RELEVANCE)
    with pytest.raises(UnsupportedExplanation, match=message):
        attention_relevance(model, torch.zeros(1, 3, SIZE, SIZE), [0])


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_relevance_switches_to_eager_attention_only_while_it_runs(family):
    model = tiny_model(family).model
    before = model.config._attn_implementation
    assert before != "eager"
    seen = []
    hook = (
        getattr(model, family)
        .layers[0]
        .attention.register_forward_hook(lambda module, args, output: seen.append(model.config._attn_implementation))
    )
    try:
        explanation_maps(model, torch.randn(1, 3, SIZE, SIZE), [0, 1], method=RELEVANCE)
    finally:
        hook.remove()
    assert seen == ["eager"]  # one forward pass for both labels
    assert model.config._attn_implementation == before


def test_the_default_method_is_attention_relevance_where_it_applies_else_gradcam():
    from chexpert_hf.explain.maps import default_method

    assert {family: default_method(family) for family in ("vit", "deit", "resnet_vit", "swin", "densenet121")} == {
        "vit": "attention_relevance",
        "deit": "attention_relevance",
        "resnet_vit": "attention_relevance",
        "swin": "gradcam",
        "densenet121": "gradcam",
    }
