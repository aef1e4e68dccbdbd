"""Pretrained starting points of the hybrid: timm's joint weights, or a ResNet and a ViT checkpoint."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTModel

from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.models import build_model, label_config
from chexpert_hf.models.convert import convert_timm_hybrid, resnet_vit_from_parts, resnet_vit_from_timm

timm = pytest.importorskip("timm")
from timm.layers import GroupNormAct, StdConv2dSame  # noqa: E402
from timm.models.resnetv2 import ResNetV2  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from timm.models.vision_transformer_hybrid import HybridEmbed  # noqa: E402

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)


def tiny_timm_hybrid(image_size: int = 32, num_classes: int = 5) -> VisionTransformer:
    """A miniature of timm's vit_base_r50_s16: ResNetV2 (StdConv, GroupNorm, 'same' stem) + ViT, random weights."""
    backbone = ResNetV2(
        layers=(1, 1),
        channels=(16, 32),
        stem_chs=8,
        num_classes=0,
        global_pool="",
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=4),
    )
    model = VisionTransformer(
        img_size=image_size,
        patch_size=1,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=1.5,
        num_classes=num_classes,
        embed_layer=partial(HybridEmbed, backbone=backbone),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # not the init values, so that a swapped weight shows
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def test_timm_hybrid_converts_to_identical_outputs():
    source = tiny_timm_hybrid()
    hybrid = convert_timm_hybrid(source, label_config(COMPETITION_LABELS)).eval()
    assert hybrid.config.backbone_config.model_type == "bit"
    assert hybrid.config.grid_size == source.patch_embed.grid_size[0]
    hybrid.classifier.load_state_dict(source.head.state_dict())  # the head is new; borrow timm's to compare
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hybrid(pixels).logits, source(pixels), rtol=1e-4, atol=1e-5)
        # The [CLS] features agree too, not just the logits.
        features = source.forward_head(source.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(hybrid.resnet_vit(pixels).pooler_output, features, rtol=1e-4, atol=1e-5)


def test_timm_weights_load_through_the_registry_at_another_resolution(monkeypatch):
    source = tiny_timm_hybrid()
    source.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    requested = []

    def create_model(name, pretrained=False, **kwargs):
        requested.append((name, pretrained))
        return source

    monkeypatch.setattr(timm, "create_model", create_model)
    built = build_model("resnet_vit", model_name_or_path="timm/vit_base_r50_s16_224.orig_in21k", image_size=64)
    assert requested == [("hf-hub:timm/vit_base_r50_s16_224.orig_in21k", True)]
    assert built.model.config.image_size == 64 and built.model.config.grid_size == 8
    assert list(built.processor.image_std) == [0.25, 0.25, 0.25]
    assert built.image_size == 64
    converted = built.model.resnet_vit.layers[1].attention.k_proj.weight
    assert torch.equal(converted, source.blocks[1].attn.qkv.weight[32:64])


def test_a_timm_model_that_is_not_a_hybrid_is_refused():
    plain = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=5)
    with pytest.raises(ValueError, match="expected a timm hybrid"):
        convert_timm_hybrid(plain, label_config(COMPETITION_LABELS))
    pooled = tiny_timm_hybrid()
    pooled.global_pool = "avg"
    with pytest.raises(ValueError, match="pooling 'avg'"):
        convert_timm_hybrid(pooled, label_config(COMPETITION_LABELS))


def test_parts_take_the_resnet_stages_and_the_vit_encoder(tmp_path):
    resnet = ResNetForImageClassification(
        ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], embedding_size=8, num_labels=3)
    )
    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=64,
            patch_size=16,
        )
    )
    resnet.save_pretrained(tmp_path / "resnet")
    vit.save_pretrained(tmp_path / "vit")
    built = build_model(
        "resnet_vit",
        model_name_or_path=str(tmp_path / "vit"),
        backbone_name_or_path=str(tmp_path / "resnet"),
        image_size=64,
    )
    model = built.model
    config = model.config
    assert config.backbone_config.model_type == "resnet"
    assert config.backbone_config.depths == [1, 1, 1]  # the unused fourth stage is not built
    assert config.grid_size == 4 and config.layer_norm_eps == vit.config.layer_norm_eps
    backbone = model.resnet_vit.embeddings.backbone.state_dict()
    for name, value in resnet.resnet.state_dict().items():
        if not name.startswith("encoder.stages.3."):
            assert torch.equal(backbone[name], value), name
    encoder = model.resnet_vit.state_dict()
    for name, value in vit.state_dict().items():
        if name.startswith(("layers.", "layernorm.")) or name == "embeddings.cls_token":
            assert torch.equal(encoder[name], value), name
    # ViT-B/16 at 64 px has a 4x4 grid, like the hybrid's stride-16 feature map: positions carry over as they are.
    assert torch.equal(encoder["embeddings.position_embeddings"], vit.embeddings.position_embeddings)
    out = model.train()(torch.randn(2, 3, 64, 64), labels=torch.ones(2, 5))
    out.loss.backward()
    assert model.resnet_vit.embeddings.projection.weight.grad is not None


def test_parts_refuse_a_backbone_that_is_not_a_resnet(tmp_path):
    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=32,
            patch_size=16,
        )
    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="not a ResNet or BiT"):
        resnet_vit_from_parts(str(tmp_path / "vit"), str(tmp_path / "vit"), label_config(COMPETITION_LABELS))


def test_resnet_vit_from_timm_reads_local_folders_through_timm(monkeypatch, tmp_path):
    names = []
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False: names.append(name) or tiny_timm_hybrid())
    resnet_vit_from_timm(str(tmp_path), label_config(COMPETITION_LABELS))
    resnet_vit_from_timm("local-dir:/somewhere", label_config(COMPETITION_LABELS))
    assert names == [f"local-dir:{tmp_path}", "local-dir:/somewhere"]


def test_parts_refuse_an_encoder_missing_weights_and_use_the_backbone_normalisation(tmp_path):
    import json

    from chexpert_hf.models import make_processor

    ResNetForImageClassification(
        ResNetConfig(depths=[1, 1, 1], hidden_sizes=[8, 16, 32], embedding_size=8)
    ).save_pretrained(tmp_path / "resnet")
    make_processor(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).save_pretrained(tmp_path / "resnet")
    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=64,
            patch_size=16,
        )
    ).save_pretrained(tmp_path / "vit")
    built = build_model(
        "resnet_vit", model_name_or_path=str(tmp_path / "vit"), backbone_name_or_path=str(tmp_path / "resnet")
    )
    assert built.image_size == 64  # the encoder's size, not the backbone processor's
    assert list(built.processor.image_mean) == pytest.approx([0.485, 0.456, 0.406])

    config_path = tmp_path / "vit" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"lacks encoder weights: \['layers\.2\."):
        build_model(
            "resnet_vit", model_name_or_path=str(tmp_path / "vit"), backbone_name_or_path=str(tmp_path / "resnet")
        )
