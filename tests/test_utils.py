"""The shared helpers of chexpert_hf.utils: one Markdown table, one duration format."""

import pytest

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


def test_json_safe_turns_nan_and_numpy_values_into_json():
    import json

    import numpy as np

    from chexpert_hf.utils import json_safe

    value = {
        "mean": float("nan"),
        3: np.float64(0.25),
        "n": np.int64(7),
        "ci": np.array([0.1, np.nan]),
        "ok": [1, "a"],
        "z": -np.inf,
    }
    safe = json_safe(value)
    assert safe == {"mean": None, "3": 0.25, "n": 7, "ci": [0.1, None], "ok": [1, "a"], "z": None}
    assert type(safe["n"]) is int and json.loads(json.dumps(safe, allow_nan=False)) == safe
