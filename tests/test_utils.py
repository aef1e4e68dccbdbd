"""The shared helpers of chexpert_hf.utils and chexpert_hf.models.tiny: one Markdown table, one duration format, one
tiny configuration per model family."""

import pytest

from chexpert_hf.models import FAMILIES
from chexpert_hf.models.tiny import TINY_FAMILIES, tiny_config
from chexpert_hf.utils import format_duration, markdown_table


def test_markdown_table_spaced_and_tight_rules():
    assert markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "| --- | --- |", "| 1 | 2 |"]
    assert markdown_table(["a", "b", "c"], [["x", "", "z"]], "lrc", tight_rule=True) == [
        "| a | b | c |",
        "|---|---:|:---:|",
        "| x |  | z |",
    ]


def test_a_short_row_ends_in_empty_cells():
    assert markdown_table(["a", "b", "c"], [["mean", "0.9"]], "lrr")[-1] == "| mean | 0.9 | |"


@pytest.mark.parametrize(
    ("header", "rows", "align"),
    [(["a"], [["1", "2"]], None), (["a"], [[]], None), (["a", "b"], [], "l"), (["a"], [], "x")],
)
def test_markdown_table_refuses_a_misshapen_table(header, rows, align):
    with pytest.raises(ValueError):
        markdown_table(header, rows, align)


def test_format_duration_lives_in_utils():
    assert format_duration(207.4) == "3 min 27 s"
    assert format_duration(None, missing="—") == "—"


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
