"""The ResNet-ViT hybrid, registered with the Auto classes.

``register_for_auto_class`` makes ``save_pretrained`` copy ``configuration_resnet_vit.py`` and
``modeling_resnet_vit.py`` next to the weights and write an ``auto_map``, so a saved model loads anywhere with
``trust_remote_code=True``; the ``AutoConfig.register`` calls let it load without that flag wherever this
package is imported.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_resnet_vit import ResNetViTConfig
from .modeling_resnet_vit import ResNetViTForImageClassification, ResNetViTModel, ResNetViTPreTrainedModel

ResNetViTConfig.register_for_auto_class()
ResNetViTModel.register_for_auto_class("AutoModel")
ResNetViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
AutoConfig.register(ResNetViTConfig.model_type, ResNetViTConfig, exist_ok=True)
AutoModel.register(ResNetViTConfig, ResNetViTModel, exist_ok=True)
AutoModelForImageClassification.register(ResNetViTConfig, ResNetViTForImageClassification, exist_ok=True)

__all__ = ["ResNetViTConfig", "ResNetViTForImageClassification", "ResNetViTModel", "ResNetViTPreTrainedModel"]
