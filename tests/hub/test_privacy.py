"""One set of privacy patterns (chexpert_hf.hub.privacy): what the model card refuses, the publishing audit refuses
too, and a near miss passes both."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_info

from chexpert_hf.hub.model_card import build_model_card
from chexpert_hf.hub.privacy import KNOWN_TOKEN, PATH, PATIENT, TOKEN, find_leaks, first_leak
from chexpert_hf.hub.push import PublishError, audit_folder, scrub

TWENTY = "a1B2c3D4e5" * 2  # 20 characters: the shortest token refused

# (kind, a text every caller must refuse)
REFUSED = [
    (TOKEN, f"hf_{TWENTY}"),
    (TOKEN, f"pushed with xhf_{TWENTY}"),  # inside a word: still a Hugging Face token
    (TOKEN, f"api_{TWENTY}"),
    (TOKEN, f"key sk-{TWENTY[:10]}-{TWENTY[10:]}"),
    (TOKEN, f"ghp_{TWENTY}"),
    (TOKEN, f"gho_{TWENTY}"),
    (PATIENT, "train/patient00001/study1"),
    (PATIENT, "Patient7"),  # any number of digits, any case
    (PATH, "/data/CheXpert-v1.0-small"),
    (PATH, "prepared from /data/CheXpert-v1.0-small at 320 px"),
    (PATH, "C:\\runs\\vit_full"),
    (PATH, "D:/runs/vit_full"),
    (PATH, "~/checkpoints/vit"),
    (PATH, "output_dir=/srv/runs/vit"),
]

# near misses: every caller lets them through
PASSED = [
    f"hf_{TWENTY[:19]}",  # 19 characters
    f"api_{TWENTY[:19]}",
    f"sk-{TWENTY[:19]}",
    f"ghp_{TWENTY[:19]}",
    "risk-adjusted-probability-scores",  # "sk-" inside a word is not a key
    "patient-level split",  # "patient" without digits
    "patients: 64540",
    "https://huggingface.co/someone/vit",  # a URL's path
    "Family / variant",  # a slash between words
    "recipes/demo.yaml",  # a relative path
]


def _refused_by_card(text: str) -> bool:
    try:
        build_model_card(make_info(dataset_description=text))
    except ValueError as error:
        assert "dataset_description" in str(error)
        return True
    return False


def _refused_by_audit(text: str, tmp_path: Path) -> bool:
    folder = tmp_path / "audited"
    folder.mkdir(exist_ok=True)
    (folder / "metrics.md").write_text(f"# scores\n{text}\n")
    try:
        audit_folder(folder)
    except PublishError as error:
        assert "metrics.md" in str(error)
        return True
    return False


@pytest.mark.parametrize(("kind", "text"), REFUSED)
def test_every_caller_refuses_each_pattern(kind, text, tmp_path):
    assert first_leak(text).kind == kind
    assert _refused_by_card(text)
    assert _refused_by_audit(text, tmp_path)


@pytest.mark.parametrize("text", PASSED)
def test_every_caller_lets_a_near_miss_through(text, tmp_path):
    assert find_leaks(text) == []
    assert not _refused_by_card(text)
    assert not _refused_by_audit(text, tmp_path)


@pytest.mark.parametrize(
    "text",
    [text for _, text in REFUSED]
    + [
        "someone/Patient12345-model",
        "vit_patient00001",
        f"token: hf_{'Z9y8X7w6V5' * 3}",
        f"/home/someone/run hf_{TWENTY}",
    ],
)
def test_a_text_the_card_refuses_the_push_refuses(text, tmp_path):
    assert _refused_by_card(text)
    assert _refused_by_audit(text, tmp_path)


def test_leaks_name_their_line_and_the_token_in_use_comes_first():
    text = f"# run\nworst: train/patient12345/study1\nfrom /data/x\nkey hf_{TWENTY}\n"
    leaks = find_leaks(text)
    assert [(leak.kind, leak.line) for leak in leaks] == [(TOKEN, 4), (PATH, 3), (PATIENT, 2)]
    assert [leak.kind for leak in find_leaks(text, tokens=[f"hf_{TWENTY}"])][0] == KNOWN_TOKEN
    assert all(TWENTY not in leak.describe() for leak in leaks)


def test_a_card_field_with_a_path_and_a_token_is_refused_without_quoting_the_token():
    with pytest.raises(ValueError, match="access token") as error:
        build_model_card(make_info(dataset_description=f"/data/x hf_{TWENTY}"))
    assert TWENTY not in str(error.value)


def test_a_field_that_is_a_path_as_a_whole_is_refused():
    # "/" or a UNC share holds no path word, but as a whole value it is a path
    for value in ("/", "\\\\server\\share\\vit"):
        assert first_leak(value) is None
        assert first_leak(value, value=True).kind == PATH
        assert _refused_by_card(value)


def test_binary_text_is_scanned_for_this_machine_only():
    # bytes of a pickle that look like " /x" mean nothing; a real path of this machine still counts
    assert find_leaks("\x20/Qb", machine_paths=(), any_path=False) == []
    assert find_leaks("\x20/Qb", machine_paths=())[0].kind == PATH
    assert (
        find_leaks("x /tmp/run", machine_paths=(), any_path=False)[0]
        .describe()
        .startswith("an absolute path of this machine")
    )


def test_a_recipe_comment_that_would_stop_the_audit_is_dropped(tmp_path):
    from chexpert_hf.hub.push import _write_recipe

    source = tmp_path / "recipe.yaml"
    source.write_text("# demo recipe\n# prepared from /data/CheXpert\nlearning_rate: 0.001\n")
    _write_recipe(source, tmp_path / "staged.yaml")
    staged = (tmp_path / "staged.yaml").read_text()
    assert "# demo recipe" in staged and "/data/CheXpert" not in staged
    assert scrub({"data_dir": "/data/CheXpert"}) == {"data_dir": "CheXpert"}
