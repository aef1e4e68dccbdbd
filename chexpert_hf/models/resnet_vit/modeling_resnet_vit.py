"""The ResNet-ViT hybrid: ResNet feature-map cells become the tokens of a ViT encoder.

Self-contained: this file is copied next to the weights by ``save_pretrained`` and may import only torch,
transformers and ``configuration_resnet_vit``.  The encoder's parameter names follow transformers 5's ViT
(``layers.N.attention.q_proj``, ``layernorm_before``, ``mlp.fc1`` ...), so ViT weights map onto it by prefix.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoBackbone, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_resnet_vit import ResNetViTConfig


class ResNetViTEmbeddings(nn.Module):
    """Backbone feature map → 1×1 (or patch_size) projection → [CLS] + tokens + position embeddings."""

    def __init__(self, config: ResNetViTConfig):
        super().__init__()
        self.backbone = AutoBackbone.from_config(config.backbone_config)
        channels = self.backbone.channels[-1]
        self.projection = nn.Conv2d(channels, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.image_size = config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.backbone(pixel_values).feature_maps[-1]
        tokens = self.projection(features).flatten(2).transpose(1, 2)
        if tokens.shape[1] + 1 != self.position_embeddings.shape[1]:
            raise ValueError(
                f"input of {tuple(pixel_values.shape[-2:])} pixels gives {tokens.shape[1]} tokens, but the model "
                f"was built for {self.image_size}x{self.image_size} ({self.position_embeddings.shape[1] - 1} tokens)"
            )
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, tokens], dim=1) + self.position_embeddings)


class ResNetViTAttention(nn.Module):
    def __init__(self, config: ResNetViTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.config = config

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        batch, length, width = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        query = heads(self.q_proj(hidden_states))
        key = heads(self.k_proj(hidden_states))
        value = heads(self.v_proj(hidden_states))
        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        if output_attentions or self.config._attn_implementation == "eager":
            # The fused kernel does not return the attention map, which rollout and inspection need.
            weights = torch.softmax(query @ key.transpose(-1, -2) * self.head_dim**-0.5, dim=-1)
            context = F.dropout(weights, p=dropout, training=self.training) @ value
        else:
            context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, width)
        return self.output_dropout(self.o_proj(context)), weights


class ResNetViTMLP(nn.Module):
    def __init__(self, config: ResNetViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation(self.fc1(hidden_states))))


class ResNetViTLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block, as in ViT."""

    def __init__(self, config: ResNetViTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ResNetViTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ResNetViTMLP(config)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attended, weights = self.attention(self.layernorm_before(hidden_states), output_attentions)
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.layernorm_after(hidden_states))
        return hidden_states, weights


class ResNetViTPreTrainedModel(PreTrainedModel):
    config_class = ResNetViTConfig
    config: ResNetViTConfig
    base_model_prefix = "resnet_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # the attention calls F.scaled_dot_product_attention unless eager or maps are asked for
    _no_split_modules = ["ResNetViTEmbeddings", "ResNetViTLayer"]
    # get_input_embeddings() (transformers' lookup: self.embeddings.<name>, else the base model's) is the patch
    # projection, as ViT's is its patch_embeddings; accelerate's FSDP2 shards it as a unit of its own.
    _input_embed_layer = "projection"
    # The forward takes no **kwargs, so the Trainer must not pass loss keyword arguments.
    accepts_loss_kwargs = False

    def save_pretrained(self, *args, **kwargs):
        # FSDP2 turns a sharded model's class into a subclass defined in torch (FSDPResNetViT...); saved as it is,
        # the copied code files and the auto_map would be torch's. Save under this file's class (FSDP's own
        # methods are not needed to write a given or plain state dict).
        own = next(cls for cls in type(self).__mro__ if cls.__module__ == __name__)
        sharded, self.__class__ = self.__class__, own
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = sharded

    def _init_weights(self, module):
        # The backbone is a PreTrainedModel of its own and initialises itself; this sees only the hybrid's modules.
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ResNetViTEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)


class ResNetViTModel(ResNetViTPreTrainedModel):
    def __init__(self, config: ResNetViTConfig):
        super().__init__(config)
        self.embeddings = ResNetViTEmbeddings(config)
        self.layers = nn.ModuleList([ResNetViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels, the model expects {self.config.num_channels}"
            )
        pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values)
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, output_attentions)
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if output_attentions:
                all_attentions.append(weights)
        sequence = self.layernorm(hidden_states)
        pooled = sequence[:, 0]
        hidden_tuple = tuple(all_hidden) if output_hidden_states else None
        attention_tuple = tuple(all_attentions) if output_attentions else None
        if not return_dict:
            return tuple(x for x in (sequence, pooled, hidden_tuple, attention_tuple) if x is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence, pooler_output=pooled, hidden_states=hidden_tuple, attentions=attention_tuple
        )


class ResNetViTForImageClassification(ResNetViTPreTrainedModel):
    def __init__(self, config: ResNetViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet_vit = ResNetViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.resnet_vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        if not return_dict:
            rest = tuple(x for x in (outputs.hidden_states, outputs.attentions) if x is not None)
            return ((loss, logits) if loss is not None else (logits,)) + rest
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["ResNetViTModel", "ResNetViTForImageClassification", "ResNetViTPreTrainedModel"]
