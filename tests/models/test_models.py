"""The model registry: every family builds, trains, saves and loads back through the real from_pretrained path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, TINY_SIZE, tiny_model
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
)

from chexpert_hf.data.transforms import to_float
from chexpert_hf.labels import CHEXPERT_LABELS, COMPETITION_LABELS
from chexpert_hf.models import (
    FAMILIES,
    MODELS,
    build_model,
    classifier,
    input_channels,
    resize_position_embeddings,
)

pytestmark = pytest.mark.usefixtures("seeded")  # every test from the same random state (conftest)

FAMILY_NAMES = sorted(MODELS)


def test_registry_holds_every_family_with_a_tiny_test_config():
    assert set(MODELS) == {"vit", "swin", "deit", "resnet_vit", "densenet121"}
    assert set(TINY_CONFIGS) == set(MODELS)
    assert set(FAMILIES["vit"].variants) == {"base", "large"}
    assert set(FAMILIES["swin"].variants) == {"tiny", "base"}
    with pytest.raises(KeyError, match="known: vit, swin, deit, resnet_vit, densenet121"):
        build_model("vit-huge")
    with pytest.raises(KeyError, match="known: base, large"):
        build_model("vit", variant="huge", from_scratch=True)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("labels", [COMPETITION_LABELS, CHEXPERT_LABELS[::-1]], ids=["competition", "all14"])
def test_head_is_multi_label_and_named_for_the_label_set(family, labels):
    model = tiny_model(family, labels=labels).model.eval()
    config = model.config
    assert config.problem_type == "multi_label_classification"
    assert [config.id2label[i] for i in range(len(labels))] == list(labels)
    assert config.label2id == {name: i for i, name in enumerate(labels)}
    assert classifier(model).out_features == len(labels)
    assert model(torch.randn(2, 3, TINY_SIZE, TINY_SIZE)).logits.shape == (2, len(labels))


def _labels(batch: int, count: int) -> torch.Tensor:
    return torch.arange(batch * count).reshape(batch, count).remainder(2).float()


def _assert_every_parameter_has_a_gradient(model):
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forward_backward_on_grey_radiographs_and_rgb_images(family):
    built = tiny_model(family)
    model, processor = built.model.train(), built.processor
    assert input_channels(model) == 3
    # One-channel uint8 radiographs, as the data pipeline delivers them, replicated to the model's 3 channels.
    grey = torch.randint(0, 256, (3, 1, TINY_SIZE, TINY_SIZE), dtype=torch.uint8)
    pixels = to_float(grey, processor.image_mean, processor.image_std, channels=input_channels(model))
    out = model(pixel_values=pixels, labels=_labels(3, 5))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    _assert_every_parameter_has_a_gradient(model)
    # Three-channel images of another size through the model's own processor.
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)) for _ in range(2)]
    inputs = processor(images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, TINY_SIZE, TINY_SIZE)
    model.zero_grad()
    model(**inputs, labels=_labels(2, 5)).loss.backward()
    _assert_every_parameter_has_a_gradient(model)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_channel_models_take_radiographs_as_they_are(family):
    built = tiny_model(family, one_channel=True)
    model, processor = built.model.train(), built.processor
    assert input_channels(model) == 1
    grey = torch.randint(0, 256, (2, 1, TINY_SIZE, TINY_SIZE), dtype=torch.uint8)
    model(
        pixel_values=to_float(grey, processor.image_mean, processor.image_std, channels=1), labels=_labels(2, 5)
    ).loss.backward()
    _assert_every_parameter_has_a_gradient(model)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 40), dtype=np.uint8))
    assert processor([image], return_tensors="pt")["pixel_values"].shape == (1, 1, TINY_SIZE, TINY_SIZE)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_then_auto_class_and_registry_load_give_identical_logits(family, tmp_path):
    built = tiny_model(family)
    model = built.model.eval()
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        expected = model(pixels).logits
    model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)

    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    rebuilt = build_model(family, model_name_or_path=str(tmp_path), image_size=TINY_SIZE)
    assert rebuilt.source == str(tmp_path)
    assert list(rebuilt.processor.image_mean) == list(built.processor.image_mean)
    with torch.no_grad():
        assert torch.equal(loaded(pixels).logits, expected)
        assert torch.equal(rebuilt.model.eval()(pixels).logits, expected)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_checkpoint_for_other_labels_keeps_its_body_and_gets_a_new_head(family, tmp_path):
    model = tiny_model(family).model
    model.save_pretrained(tmp_path)
    head = {name: p.detach().clone() for name, p in classifier(model).named_parameters()}
    body = {name: p.detach().clone() for name, p in model.named_parameters() if name.split(".")[-2] != "classifier"}

    fourteen = build_model(family, model_name_or_path=str(tmp_path), labels=CHEXPERT_LABELS, image_size=TINY_SIZE).model
    assert classifier(fourteen).out_features == 14
    reordered = build_model(
        family, model_name_or_path=str(tmp_path), labels=COMPETITION_LABELS[::-1], image_size=TINY_SIZE
    ).model
    assert reordered.config.id2label[0] == COMPETITION_LABELS[-1]
    assert not torch.equal(classifier(reordered).weight, head["weight"])  # same shape, other meaning: reset
    for other in (fourteen, reordered):
        params = dict(other.named_parameters())
        for name, value in body.items():
            assert torch.equal(params[name], value), name


def test_loading_refuses_a_checkpoint_of_another_family(tmp_path):
    tiny_model("swin").model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'swin' checkpoint; family 'vit' loads 'vit'"):
        build_model("vit", model_name_or_path=str(tmp_path))


def test_loading_refuses_a_checkpoint_missing_body_weights(tmp_path):
    tiny_model("vit").model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 3  # the third block has no weights in the file
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing .*vit\.layers\.2\."):
        build_model("vit", model_name_or_path=str(tmp_path))


def test_argument_mistakes_are_errors(tmp_path):
    with pytest.raises(ValueError, match="from_scratch"):
        build_model("vit", from_scratch=True, model_name_or_path=str(tmp_path))
    with pytest.raises(ValueError, match="config_overrides"):
        build_model("vit", model_name_or_path=str(tmp_path), config_overrides={"hidden_size": 8})
    with pytest.raises(ValueError, match="resnet_vit"):
        build_model("vit", model_name_or_path=str(tmp_path), backbone_name_or_path=str(tmp_path))
    with pytest.raises(ValueError, match="unknown CheXpert label .Hernia."):
        build_model("vit", from_scratch=True, labels=["Edema", "Hernia"])


def test_deit_trains_from_a_distilled_checkpoint(tmp_path):
    config = DeiTConfig(**TINY_CONFIGS["deit"], image_size=TINY_SIZE, num_labels=10)
    teacher = DeiTForImageClassificationWithTeacher(config)
    teacher.save_pretrained(tmp_path)
    built = build_model("deit", model_name_or_path=str(tmp_path), image_size=TINY_SIZE)
    model = built.model
    assert type(model) is DeiTForImageClassification
    source = teacher.state_dict()
    for name, value in model.deit.state_dict().items():
        assert torch.equal(value, source[f"deit.{name}"]), name
    model.train()(torch.randn(2, 3, TINY_SIZE, TINY_SIZE), labels=_labels(2, 5)).loss.backward()
    assert model.deit.embeddings.distillation_token.grad is not None


@pytest.mark.parametrize("family", ["vit", "deit", "resnet_vit"])
def test_a_new_resolution_interpolates_position_embeddings(family, tmp_path):
    model = tiny_model(family).model
    key = f"{model.base_model_prefix}.embeddings.position_embeddings"
    with torch.no_grad():
        model.get_parameter(key).normal_(generator=torch.Generator().manual_seed(0))  # DeiT starts them at zero
    model.save_pretrained(tmp_path)
    prefix = FAMILIES[family].position_prefix
    old = model.state_dict()[key]
    larger = build_model(family, model_name_or_path=str(tmp_path), image_size=2 * TINY_SIZE).model.eval()
    new = larger.state_dict()[key]
    old_grid = int((old.shape[1] - prefix) ** 0.5)
    assert new.shape == (1, prefix + (2 * old_grid) ** 2, old.shape[2])
    assert larger.config.image_size == 2 * TINY_SIZE
    assert torch.equal(new[:, :prefix], old[:, :prefix])
    # Interpolated, not re-initialised: pooling the doubled grid back gives the original positions.
    grid = new[:, prefix:].reshape(1, 2 * old_grid, 2 * old_grid, -1).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(1, old_grid**2, -1)
    correlation = np.corrcoef(pooled.flatten().numpy(), old[:, prefix:].flatten().numpy())[0, 1]
    # For i.i.d. positions this is tr(A) / sqrt(n tr(A A^T)) of the linear map A (bicubic 4 → 8, then 2x2 means):
    # 0.989 (0.986 at the lowest over 2,000 draws); positions drawn afresh would give about 0.
    assert correlation > 0.95
    with torch.no_grad():
        assert larger(torch.randn(1, 3, 2 * TINY_SIZE, 2 * TINY_SIZE)).logits.shape == (1, 5)
    with pytest.raises(ValueError):
        larger(torch.randn(1, 3, TINY_SIZE, TINY_SIZE))


def test_swin_changes_resolution_without_touching_weights(tmp_path):
    model = tiny_model("swin").model
    model.save_pretrained(tmp_path)
    larger = build_model("swin", model_name_or_path=str(tmp_path), image_size=48).model.eval()
    assert larger.config.image_size == 48
    for name, value in model.state_dict().items():
        assert torch.equal(larger.state_dict()[name], value), name
    with torch.no_grad():
        assert larger(torch.randn(1, 3, 48, 48)).logits.shape == (1, 5)


def test_resize_position_embeddings_keeps_an_unchanged_grid_and_rejects_a_non_square_one():
    table = torch.randn(1, 1 + 16, 8)
    assert resize_position_embeddings(table, 1, 4) is table
    with pytest.raises(ValueError, match="not a square grid"):
        resize_position_embeddings(torch.randn(1, 1 + 15, 8), 1, 4)


def test_the_hybrid_loads_with_remote_code_where_chexpert_hf_cannot_be_imported(tmp_path):
    built = tiny_model("resnet_vit")
    model = built.model.eval()
    folder = tmp_path / "hybrid"
    model.save_pretrained(folder)
    code_files = sorted(p.name for p in folder.glob("*.py"))
    assert code_files == ["configuration_resnet_vit.py", "modeling_resnet_vit.py"]
    for name in code_files:
        assert "chexpert_hf" not in (folder / name).read_text()
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        torch.save({"pixels": pixels, "logits": model(pixels).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["chexpert_hf"] = None  # every import of the package now fails
        try:
            import chexpert_hf  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("chexpert_hf was importable")
        import torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        expected = torch.load(sys.argv[2])
        assert "chexpert_hf" not in type(model).__module__, type(model).__module__
        with torch.no_grad():
            assert torch.equal(model(expected["pixels"]).logits, expected["logits"])
        print("loaded", type(model).__module__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(tmp_path / "expected.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded transformers_modules" in result.stdout


def test_every_family_and_variant_builds_at_full_size():
    from chexpert_hf.models.freeze import policy_table

    rows = {(row["family"], row["variant"]): row for row in policy_table()}
    assert set(rows) == {(f, v) for f, family in FAMILIES.items() for v in family.variants}
    # Published sizes of the backbones (14-label head): ViT-B/16 86M, ViT-L/16 303M, Swin-T 28M, DenseNet-121 7M.
    assert 85e6 < rows["vit", "base"]["total"] < 87e6
    assert 302e6 < rows["vit", "large"]["total"] < 305e6
    assert 27e6 < rows["swin", "tiny"]["total"] < 29e6
    assert 6.5e6 < rows["densenet121", "base"]["total"] < 7.5e6
    for row in rows.values():
        assert row["head"] < row["last_block"] < row["full"] == row["total"]


def test_hybrid_attention_paths_agree_and_checkpointing_changes_no_gradient(tmp_path):
    model = tiny_model("resnet_vit").model.eval()
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        fused = model(pixels).logits
        out = model(pixels, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.logits, fused)
    tokens = model.config.grid_size**2 + 1
    assert [a.shape for a in out.attentions] == [(2, 4, tokens, tokens)] * 2
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, tokens))
    assert len(out.hidden_states) == 3
    model.save_pretrained(tmp_path)
    eager = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(pixels).logits, fused)

    labels = _labels(2, 5)
    model.train()
    model(pixels, labels=labels).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and model.resnet_vit.layers[0].gradient_checkpointing
    model(pixels, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], msg=name)


_STRIDE_16_BIT = {
    **TINY_CONFIGS["resnet_vit"]["backbone_config"],
    "depths": [1, 1, 1],
    "hidden_sizes": [16, 16, 32],
    "out_features": ["stage3"],
}


@pytest.mark.parametrize(
    ("family", "overrides", "tokens_at_320"),
    [
        ("vit", dict(TINY_CONFIGS["vit"], patch_size=16), 1 + 20 * 20),
        ("deit", dict(TINY_CONFIGS["deit"], patch_size=16), 2 + 20 * 20),
        ("resnet_vit", dict(TINY_CONFIGS["resnet_vit"], backbone_config=_STRIDE_16_BIT), 1 + 20 * 20),
        ("swin", dict(TINY_CONFIGS["swin"], window_size=7), None),  # 80x80 patches: padded to the 7x7 windows
    ],
)
def test_a_224_checkpoint_runs_at_320(family, overrides, tokens_at_320, tmp_path):
    built = build_model(family, from_scratch=True, config_overrides=overrides, image_size=224)
    built.model.save_pretrained(tmp_path)
    model = build_model(family, model_name_or_path=str(tmp_path), image_size=320).model.eval()
    if tokens_at_320:
        table = model.state_dict()[f"{model.base_model_prefix}.embeddings.position_embeddings"]
        assert table.shape[1] == tokens_at_320
    with torch.no_grad():
        assert model(torch.randn(1, 3, 320, 320)).logits.shape == (1, 5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_checkpoint_keeps_its_own_resolution_unless_asked(family, tmp_path):
    built = tiny_model(family, image_size=48)
    built.model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)
    again = build_model(family, model_name_or_path=str(tmp_path))
    assert again.image_size == 48
    assert getattr(again.model.config, "image_size", 48) == 48
    for name, value in built.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value), name


def test_resizing_keeps_frozen_flags_and_module_modes():
    from chexpert_hf.models import with_image_size
    from chexpert_hf.models.freeze import apply_freeze_policy

    model = tiny_model("vit").model.train()
    apply_freeze_policy(model, "vit", "head")
    model.vit.layers[0].eval()
    resized = with_image_size(model, FAMILIES["vit"], 64)
    assert resized.config.image_size == 64
    assert [n for n, p in resized.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    assert resized.training and not resized.vit.layers[0].training and resized.vit.layers[1].training


def test_swin_with_absolute_positions_is_not_resized_silently(tmp_path):
    overrides = dict(TINY_CONFIGS["swin"], use_absolute_embeddings=True)
    build_model("swin", from_scratch=True, config_overrides=overrides, image_size=TINY_SIZE).model.save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="position_embeddings cannot be resized"):
        build_model("swin", model_name_or_path=str(tmp_path), image_size=48)


def test_the_hybrid_config_refuses_backbones_with_another_stride():
    from huggingface_hub.errors import StrictDataclassClassValidationError as Invalid

    from chexpert_hf.models.resnet_vit import ResNetViTConfig

    backbone = TINY_CONFIGS["resnet_vit"]["backbone_config"]
    with pytest.raises(Invalid, match="output_stride=8"):
        ResNetViTConfig(backbone_config=dict(backbone, output_stride=8))
    resnet = {
        "model_type": "resnet",
        "depths": [1, 1, 1],
        "hidden_sizes": [8, 16, 32],
        "embedding_size": 8,
        "out_features": ["stage3"],
        "downsample_in_first_stage": True,
    }
    with pytest.raises(Invalid, match="downsample_in_first_stage"):
        ResNetViTConfig(backbone_config=resnet)
    with pytest.raises(Invalid, match=r"out_features must be \['stage2'\]"):
        ResNetViTConfig(backbone_config=dict(backbone, out_features=["stage1"]))


@pytest.mark.slow
@pytest.mark.parametrize(("family", "variant"), [(f, v) for f, spec in FAMILIES.items() for v in spec.variants])
def test_full_size_models_run_forward_and_backward_on_cpu(family, variant):
    """Real tensors at full size (test_every_family_and_variant_builds_at_full_size covers the shapes fast)."""
    model = build_model(family, variant=variant, from_scratch=True, labels=CHEXPERT_LABELS).model.train()
    out = model(pixel_values=torch.randn(1, 3, 224, 224), labels=_labels(1, 14))
    out.loss.backward()
    assert out.logits.shape == (1, 14) and torch.isfinite(out.loss)
    assert classifier(model).weight.grad is not None
