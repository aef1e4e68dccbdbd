"""Configuration of the ResNet-ViT hybrid (R50+ViT-B/16 of Dosovitskiy et al., 2021).

Self-contained: this file is copied next to the weights by ``save_pretrained`` and may import only torch,
transformers and ``modeling_resnet_vit``.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

# The backbone of the paper's R50+ViT-B/16: a BiT-style ResNet-50 (weight-standardised convolutions, GroupNorm,
# "same" padding) cut after its third stage, whose stage depths are (3, 4, 9) instead of ResNet-50's (3, 4, 6)
# so that the network keeps ResNet-50's depth.  This is also the layout of timm's ``vit_base_r50_s16_*`` weights.
_DEFAULT_BACKBONE = {
    "depths": [3, 4, 9],
    "hidden_sizes": [256, 512, 1024],
    "out_features": ["stage3"],
    "global_padding": "same",
    "layer_type": "bottleneck",
    "embedding_dynamic_padding": True,
}
SUPPORTED_BACKBONES = ("bit", "resnet")


@strict
class ResNetViTConfig(PreTrainedConfig):
    r"""
    A ResNet whose last feature map is cut into tokens for a ViT encoder.

    backbone_config (`dict` or `PreTrainedConfig`, *optional*):
        The complete configuration of the convolutional backbone: a `BitConfig` (model type ``"bit"``, the layout
        of the paper and of timm's jointly pretrained weights, the default) or a `ResNetConfig` (``"resnet"``,
        e.g. from ``microsoft/resnet-50``).  Its ``out_features`` must name its last stage; stages after the one
        used should be left out of ``depths``, since they would be built and never run.  Stored in full, so that
        loading never looks a backbone up by name.
    hidden_size (`int`, defaults to 768): width of the tokens and of the encoder.
    num_hidden_layers (`int`, defaults to 12): transformer blocks in the encoder.
    num_attention_heads (`int`, defaults to 12): attention heads per block.
    intermediate_size (`int`, defaults to 3072): width of each block's MLP.
    hidden_act (`str`, defaults to ``"gelu"``): activation of the MLP.
    hidden_dropout_prob (`float`, defaults to 0.0): dropout after the embeddings, attention and MLP outputs.
    attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention weights.
    initializer_range (`float`, defaults to 0.02): std of the truncated normal used for new weights.
    layer_norm_eps (`float`, defaults to 1e-6): epsilon of the LayerNorms (1e-6 as in the original hybrid).
    image_size (`int`, defaults to 224): input resolution; fixes the number of position embeddings.
    patch_size (`int`, defaults to 1): size, in backbone feature-map cells, of one token (1 in the paper).
    num_channels (`int`, defaults to 3): channels of the input images.
    qkv_bias (`bool`, defaults to `True`): whether the query, key and value projections have a bias.
    """

    model_type = "resnet_vit"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="bit", init_kwargs=_DEFAULT_BACKBONE),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 1
    num_channels: int = 3
    qkv_bias: bool = True

    def validate_architecture(self):
        backbone = self.backbone_config
        if backbone.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"backbone_config has model_type {backbone.model_type!r}; supported: {', '.join(SUPPORTED_BACKBONES)}"
            )
        last_stage = f"stage{len(backbone.depths)}"
        if list(backbone.out_features) != [last_stage]:
            raise ValueError(
                f"backbone_config.out_features must be [{last_stage!r}] (the last of its {len(backbone.depths)} "
                f"stages), got {backbone.out_features}; drop unused stages from depths instead"
            )
        # grid_size assumes the standard layout: stride 4 in the stem, 2 in every stage after the first.
        if getattr(backbone, "downsample_in_first_stage", False):
            raise ValueError("backbone_config.downsample_in_first_stage=True is not supported (it changes the stride)")
        if getattr(backbone, "output_stride", 32) != 32:
            raise ValueError(
                f"backbone_config.output_stride={backbone.output_stride} is not supported (dilated stages); use 32"
            )
        if backbone.num_channels != self.num_channels:
            raise ValueError(
                f"backbone_config.num_channels ({backbone.num_channels}) differs from "
                f"num_channels ({self.num_channels})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.patch_size < 1 or self.image_size < 1:
            raise ValueError(f"image_size and patch_size must be positive, got {self.image_size}, {self.patch_size}")

    @property
    def backbone_stride(self) -> int:
        """Downsampling of the backbone's output: 4 in the stem, then 2 per stage after the first."""
        return 4 * 2 ** (len(self.backbone_config.depths) - 1)

    @property
    def grid_size(self) -> int:
        """Tokens per side: every strided layer of the backbone rounds up, the token convolution rounds down."""
        side = self.image_size
        for _ in range(self.backbone_stride.bit_length() - 1):
            side = -(-side // 2)
        return side // self.patch_size


__all__ = ["ResNetViTConfig"]
