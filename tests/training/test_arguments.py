"""Recipes: every file in recipes/ parses into the dataclasses, overrides and bad keys behave, the README lists them."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from chexpert_hf.labels import UNCERTAINTY_POLICIES
from chexpert_hf.models.freeze import POLICIES
from chexpert_hf.training.arguments import RECIPES_DIR, available_recipes, parse_recipe
from chexpert_hf.training.train import main as train_main

# recipe name -> (family, variant, freeze policy)
RECIPES = {
    f"{prefix}_{strategy}": (family, variant, strategy)
    for prefix, family, variant in [
        ("vit", "vit", "base"),
        ("vit_large", "vit", "large"),
        ("swin", "swin", "base"),
        ("deit", "deit", "base"),
        ("resnet_vit", "resnet_vit", "base"),
    ]
    for strategy in ("head", "last_block", "full")
}
RECIPES["densenet121_full"] = ("densenet121", "base", "full")
DEMO_GRID = ("demo_head", "demo_last_block", "demo_full")
EXPECTED = sorted([*RECIPES, "demo", "demo_pretrain", *DEMO_GRID])


def test_the_recipe_set_is_complete():
    assert available_recipes() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_every_recipe_parses_into_consistent_dataclasses(name):
    # GPU recipes ask for bf16 and tf32, which Transformers refuses on a machine without a GPU: parse as on CPU
    recipe = parse_recipe(["--recipe", name, "--use_cpu", "true"])
    model, data, policy, training = recipe.model, recipe.data, recipe.policy, recipe.training
    assert recipe.name == name
    assert training.output_dir == str(Path("outputs") / name)
    assert training.weight_decay == 0.01
    assert training.metric_for_best_model == "mean_auroc"
    assert training.optim.value.startswith("adamw")
    assert policy.uncertainty_policy == "u_mixed"
    assert data.views == "frontal"
    if name in ("demo", "demo_pretrain"):
        assert model.from_scratch and data.data_dir is None and training.use_cpu
        return
    if name in DEMO_GRID:  # fine-tune demo_pretrain's output on another synthetic draw, for other labels
        pretrain = parse_recipe(["--recipe", "demo_pretrain"])
        assert model.model_name_or_path == pretrain.training.output_dir and not model.from_scratch
        assert data.data_dir is None and data.synthetic_seed != pretrain.data.synthetic_seed and training.use_cpu
        assert model.label_names() != pretrain.model.label_names()  # a new head
        assert policy.freeze_policy == name.removeprefix("demo_")
        assert data.cache_features == (policy.freeze_policy == "head")
        return
    family, variant, strategy = RECIPES[name]
    assert (model.family, model.variant, policy.freeze_policy) == (family, variant, strategy)
    assert not model.from_scratch and model.model_name_or_path is None  # the family's pretrained checkpoint
    assert data.augmentation in ("none", "light")  # never a flip: no such option exists
    assert data.cache_features == (strategy == "head")  # a frozen backbone runs once, not once per epoch
    assert training.lr_scheduler_type.value == "cosine" and 0 < training.warmup_steps < 1
    if strategy == "full":
        assert training.learning_rate <= 1e-4
    else:
        assert training.learning_rate > 1e-4  # head-only and last-block train fewer, newer weights: higher rates
    assert training.bf16 and training.per_device_train_batch_size >= 32


def test_recipes_readme_has_one_row_per_recipe_with_its_command():
    text = (RECIPES_DIR / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    named = [re.match(r"\| `([a-z0-9_]+)`", row).group(1) for row in rows]
    assert sorted(named) == EXPECTED
    for row, name in zip(rows, named, strict=True):
        recipe = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
        assert f"--recipe {name}" in row
        assert f"`{recipe['freeze_policy']}`" in row and recipe["family"] in row.lower()


def test_command_line_overrides_the_file_and_yaml_strings_are_typed(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "family: vit\nfrom_scratch: true\nlearning_rate: 1e-4\nnum_train_epochs: 2\nuse_cpu: true\n"
        "config_overrides:\n  hidden_size: 64\n"
    )
    recipe = parse_recipe(["--config", str(path), "--num_train_epochs", "5", "--freeze_policy", "head"])
    assert recipe.training.learning_rate == pytest.approx(1e-4)  # YAML reads 1e-4 as a string
    assert recipe.training.num_train_epochs == 5
    assert recipe.policy.freeze_policy == "head"
    assert recipe.model.config_overrides == {"hidden_size": 64}
    assert recipe.training.output_dir == str(Path("outputs") / "mine")


def test_resolved_recipe_reproduces_the_run(tmp_path):
    recipe = parse_recipe(["--recipe", "demo", "--learning_rate", "0.003", "--output_dir", str(tmp_path / "o")])
    written = tmp_path / "recipe.yaml"
    written.write_text(recipe.to_yaml())
    again = parse_recipe(["--config", str(written)])
    for part in ("model", "data", "policy"):
        assert getattr(again, part) == getattr(recipe, part)
    assert again.training.to_dict() == recipe.training.to_dict()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--recipe", "nope"], ["unknown recipe 'nope'", "vit_head", "demo"]),
        (["--recipe", "demo", "--freeze_policy", "heads"], ["freeze policy 'heads'", *POLICIES]),
        (
            ["--recipe", "demo", "--uncertainty_policy", "u_maybe"],
            ["uncertainty policy 'u_maybe'", *UNCERTAINTY_POLICIES],
        ),
        (["--recipe", "demo", "--family", "vgg"], ["model family 'vgg'", "swin", "densenet121"]),
        (["--recipe", "demo", "--validation_split", "patients:2"], ["validation_split", "patients:<fraction"]),
        (["--recipe", "demo", "--threshold_rule", "sensitivity:2"], ["threshold rule 'sensitivity:2'", "youden"]),
        (["--recipe", "demo", "--recipe", "demo", "--config", "x.yaml"], ["either --recipe NAME or --config"]),
        (["--config", "missing.yaml"], ["missing.yaml does not exist"]),
    ],
)
def test_bad_recipes_end_with_one_line_that_names_the_problem(argv, expected, capsys):
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexpert-hf train: error: ") and err.count("\n") == 1
    for text in expected:
        assert text in err


def test_an_unknown_key_in_a_file_is_named_with_a_hint(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("family: vit\nlearning_rte: 0.1\nfreeze: head\n")
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'learning_rte' (did you mean 'learning_rate'?)" in err and "'freeze'" in err


def test_nested_values_are_refused_except_for_mapping_fields(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("model:\n  family: vit\n")
    with pytest.raises(ValueError, match="recipes are flat"):
        parse_recipe(["--config", str(path)])


def test_abbreviated_flags_are_refused():
    with pytest.raises(ValueError, match="unknown field 'learning_rat'; did you mean 'learning_rate'"):
        parse_recipe(["--recipe", "demo", "--learning_rat", "3"])


@pytest.mark.parametrize(
    "argv",
    [["--learning_rat", "3"], ["--recipe", "demo", "--learning_rat", "3"], ["--recipe", "demo", "--learning-rat=3"]],
)
def test_a_misspelt_flag_is_one_line_with_the_closest_field(argv, capsys):
    """As a misspelt key of a recipe file: not the usage of every field (130 lines), and status 2."""
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err == "chexpert-hf train: error: unknown field 'learning_rat'; did you mean 'learning_rate'?\n"


def test_the_console_script_and_the_recipes_script_report_a_misspelt_flag_alike():
    import subprocess
    import sys

    for command in ([sys.executable, "-m", "chexpert_hf.cli", "train"], [sys.executable, "recipes/train.py"]):
        result = subprocess.run(
            [*command, "--recipe", "demo", "--learning_rat", "3"], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 2, command
        assert result.stderr.strip().splitlines() == [
            "chexpert-hf train: error: unknown field 'learning_rat'; did you mean 'learning_rate'?"
        ], result.stderr


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("views", "lateral", "unknown views 'lateral'; choose one of: frontal, all"),
        ("freeze_policy", "heads", "unknown freeze policy 'heads'; choose one of: head, last_block, full"),
        ("sampling", "uniform", "unknown sampling 'uniform'"),
        ("augmentation", "heavy", "unknown augmentation 'heavy'; choose one of: none, light"),
        ("family", "vgg", "unknown model family 'vgg'"),
    ],
)
def test_file_values_are_checked_by_the_choices_flags_are(key, value, expected, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"family: vit\nuse_cpu: true\n{key}: {value}\n")
    with pytest.raises(ValueError, match=f"{path}: {expected}"):
        parse_recipe(["--config", str(path)])
    with pytest.raises(ValueError, match=f"^{expected}"):  # the same words for the flag
        parse_recipe(["--recipe", "demo", f"--{key}", value])


def test_fields_with_choices_are_literal_typed_and_become_argparse_choices():
    from chexpert_hf.training.arguments import VIEWS, _parser

    actions = {action.dest: action for action in _parser()._actions}
    assert tuple(actions["views"].choices) == VIEWS
    assert tuple(actions["freeze_policy"].choices) == POLICIES
    assert tuple(actions["uncertainty_policy"].choices) == tuple(UNCERTAINTY_POLICIES)
    for dest in ("family", "eval_level", "augmentation", "blank_policy", "sampling"):
        assert actions[dest].choices, dest


def test_help_starts_with_the_recipe_and_the_common_fields(capsys):
    import dataclasses

    from transformers import TrainingArguments

    with pytest.raises(SystemExit):
        parse_recipe(["--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines[0]) < 100 and "--recipe" in lines[0]  # a short usage, not every field
    flags = [line.split()[0] for line in lines if line.startswith("  --")]
    transformers_fields = {f"--{item.name}" for item in dataclasses.fields(TrainingArguments)}
    first = next(index for index, flag in enumerate(flags) if flag in transformers_fields)
    assert flags.index("--recipe") < flags.index("--config") < first
    titles = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert [title.split()[0] for title in titles] == ["recipe:", "most", "model:", "data:", "policies", "Transformers"]
    assert "--data-dir" not in out  # one spelling shown; the other still parses
    assert parse_recipe(["--recipe", "demo", "--data-dir", "x"]).data.data_dir == "x"


def test_help_lists_recipes_and_fields(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--recipe", "vit_head", "--freeze_policy", "--uncertainty_policy", "--sampling", "--data_dir"):
        assert text in out


@pytest.mark.parametrize("family", ["vit", "deit", "swin", "resnet_vit"])
def test_transformer_families_attend_through_sdpa(family):
    """The GPU recipes count on PyTorch's fused attention (their comment says so): it is the default here."""
    from conftest import tiny_model

    assert tiny_model(family).model.config._attn_implementation == "sdpa"


def test_without_a_checkout_the_recipes_folder_of_the_current_directory_is_used(tmp_path, monkeypatch):
    import chexpert_hf.training.arguments as configs

    monkeypatch.setattr(configs, "RECIPES_DIR", tmp_path / "site-packages-has-none")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no recipes found .* source checkout"):
        parse_recipe(["--recipe", "demo"])
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("family: deit\nuse_cpu: true\n")
    assert available_recipes() == ["mine"]
    assert parse_recipe(["--recipe", "mine"]).model.family == "deit"


def test_yaml_scalars_given_to_text_fields_become_text(tmp_path):
    path = tmp_path / "scalars.yaml"
    path.write_text("family: vit\nuse_cpu: true\nlabels: Edema\npos_weight: 3\nresume_from_checkpoint: true\n")
    recipe = parse_recipe(["--config", str(path)])
    assert recipe.policy.pos_weight == "3" and recipe.training.resume_from_checkpoint == "true"
    # the resolved recipe describes the run, not how it was started: running it again must not resume it
    assert "resume_from_checkpoint" not in recipe.to_yaml()


@pytest.fixture
def restore_tf32():
    yield
    from chexpert_hf.training.arguments import set_tf32

    set_tf32(False)


def _precision_getters() -> tuple:
    """What library code reads (Inductor's autotuning among them): torch's legacy getters and the new flags."""
    import torch

    return (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.fp32_precision,
    )


@pytest.mark.parametrize(
    "fields", [{"tf32": True}, {"tf32": False}, {"torch_compile": True, "bf16": True}]
)  # Transformers then enables TF32
def test_tf32_leaves_every_precision_getter_readable(fields, monkeypatch, restore_tf32):
    """On an Ampere+ GPU with torch >= 2.9, Transformers' own TF32 switch uses torch's new precision API, after which
    torch's legacy getters raise ("a mix of the legacy and new APIs"); the training arguments set it one way."""
    import torch
    import transformers.training_args

    from chexpert_hf.training.arguments import CheXpertTrainingArguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(transformers.training_args, "is_torch_tf32_available", lambda: True)
    args = CheXpertTrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **fields)
    matmul, legacy_matmul, cudnn, new_matmul = _precision_getters()
    enabled = fields.get("tf32", True)
    assert args.tf32 == fields.get("tf32")  # the recipe's value is kept (recipe.yaml, the card)
    assert (matmul, legacy_matmul, cudnn) == (("high", True, True) if enabled else ("highest", False, False))
    assert new_matmul == ("tf32" if enabled else "ieee")
