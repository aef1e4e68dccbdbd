"""chexpert_hf.models.tiny: one tiny configuration per model family, shared by tests and speed scripts."""

import pytest

from chexpert_hf.models import FAMILIES
from chexpert_hf.models.tiny import TINY_FAMILIES, tiny_config


def test_every_registered_family_has_a_tiny_config():
    assert set(TINY_FAMILIES) == set(FAMILIES)
    with pytest.raises(KeyError, match="known: vit"):
        tiny_config("vit-huge")


def test_tiny_config_overrides_and_channels():
    config = tiny_config("vit", intermediate_size=64)
    assert config["intermediate_size"] == 64 and config["hidden_size"] == 32
    config["hidden_size"] = 1
    tiny_config("resnet_vit")["backbone_config"]["depths"].append(9)
    assert tiny_config("vit")["hidden_size"] == 32  # every call is a new dict
    assert tiny_config("resnet_vit")["backbone_config"]["depths"] == [1, 1]
    hybrid = tiny_config("resnet_vit", num_channels=1)
    assert hybrid["num_channels"] == 1 and hybrid["backbone_config"]["num_channels"] == 1
    densenet = tiny_config("densenet121", num_channels=1)
    assert "num_channels" not in densenet and densenet["model_args"]["in_chans"] == 1
