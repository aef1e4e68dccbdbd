import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
from conftest import ROOT

from chexpert_hf.cli.main import build_parser, main


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "chexpert_hf.cli.main", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("synthesize", "prepare", "models"))
    for command in ("synthesize", "prepare"):
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "--output" in text and "--num_proc" in text  # the one spelling the help shows


def test_synthesize_then_prepare(tmp_path, capsys):
    assert (
        main(
            [
                "synthesize",
                "--output",
                str(tmp_path / "raw"),
                "--num-patients",
                "5",
                "--valid-patients",
                "3",
                "--test-patients",
                "2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    root = tmp_path / "raw" / "CheXpert-v1.0-small"
    assert f"wrote {root}" in out and "lesion boxes" in out
    assert (
        main(
            [
                "prepare",
                "--data-dir",
                str(root),
                "--output",
                str(tmp_path / "ready"),
                "--image-size",
                "64",
                "--num-proc",
                "1",
                "--frontal-only",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    dataset = datasets.load_from_disk(str(tmp_path / "ready"))
    frontal = (pd.read_csv(root / "train.csv")["Frontal/Lateral"] == "Frontal").sum()
    assert len(dataset["train"]) == frontal
    assert f"train: {frontal:>7,} images" in out and "0 row(s) skipped" in out


def test_errors_are_one_line_and_name_the_problem(tmp_path, capsys):
    assert main(["prepare", "--data-dir", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexpert-hf prepare: error: ") and str(tmp_path) in err and "train.csv" in err
    assert not (tmp_path / "out").exists()


def test_strict_failure_in_a_worker_is_one_line(tmp_path, capsys):
    root = tmp_path / "raw" / "CheXpert-v1.0-small"
    assert main(["synthesize", "--output", str(tmp_path / "raw"), "--num-patients", "4", "--valid-patients", "2"]) == 0
    victim = next((root / "train").glob("*/*/view1_frontal.jpg"))
    victim.write_bytes(b"")
    capsys.readouterr()
    code = main(["prepare", "--data-dir", str(root), "--output", str(tmp_path / "out"), "--strict", "--num-proc", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("chexpert-hf prepare: error: ")
    assert victim.relative_to(root.parent).as_posix() in err and "empty file (0 bytes)" in err
    assert not (tmp_path / "out").exists()


def test_models_lists_every_family_and_the_docs_table_is_current(capsys):
    from chexpert_hf.models import FAMILIES

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for family, spec in FAMILIES.items():
        for variant in spec.variants:
            assert any(line.split()[:2] == [family, variant] for line in text.splitlines()), (family, variant)
    assert main(["models", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    page = (ROOT / "docs" / "models.md").read_text()
    start, end = "<!-- models-table:start -->\n", "\n<!-- models-table:end -->"
    assert page[page.index(start) + len(start) : page.index(end)] == table, (
        "docs/models.md's model table is stale: replace it with the output of `chexpert-hf models --markdown`"
    )


# --- the command line itself: one file per command, one spelling per option, one line per error -----------------

DOCS = {
    "synthesize": "data",
    "prepare": "data",
    "evaluate": "evaluation",
    "compare": "evaluation",
    "predict": "evaluation",
    "explain": "explain",
    "push": "hub",
    "models": "models",
    "benchmark": "benchmark",
    "train": "training",
}
# the least each command needs to parse
MINIMAL = {
    "synthesize": ["--output", "o"],
    "prepare": ["--data_dir", "d", "--output", "o"],
    "evaluate": [],
    "compare": ["a.csv", "b.csv"],  # with --data_dir, the other spelling checked below, the command parses
    "predict": ["--model", "m", "image.png"],
    "explain": ["--model", "m", "--output", "o"],
    "push": ["folder", "--repo_id", "me/model"],
    "models": [],
    "benchmark": ["--recipes", "demo"],
}


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


def test_every_command_has_a_one_sentence_help_and_points_at_its_docs_page():
    action = build_parser()._subparsers._group_actions[0]
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(helps) == set(DOCS)
    for name, parser in _subparsers().items():
        assert helps[name].endswith(".") and helps[name].count(". ") == 0, name
        assert parser.description.rstrip().endswith(f"Docs: docs/{DOCS[name]}.md"), name


def test_help_prints_percent_signs_once():
    text = _subparsers()["evaluate"].format_help()
    assert "95% confidence intervals" in text and "%%" not in text
    for name, parser in _subparsers().items():
        assert "%%" not in parser.format_help(), name


def _sample(action) -> list[str]:
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(list(action.choices)[-1])]
    return {int: ["3"], float: ["1.5"]}.get(action.type, ["value"])


def test_every_old_spelling_still_parses_to_the_same_value():
    checked = 0
    for name, parser in _subparsers().items():
        if name == "train":
            continue
        for action in parser._actions:
            spellings = [option for option in action.option_strings if option.startswith("--")]
            if len(spellings) < 2:
                continue
            parsed = [
                getattr(build_parser().parse_args([name, *MINIMAL[name], spelling, *_sample(action)]), action.dest)
                for spelling in spellings
            ]
            assert all(value == parsed[0] for value in parsed) and parsed[0] not in (None, False), (name, spellings)
            assert "_" in spellings[0] or "-" not in spellings[0][2:], spellings  # the first is the one taught
            checked += 1
    assert checked >= 20
    # the data folder had three spellings across commands; each is accepted wherever a data folder is taken
    for name in ("prepare", "evaluate", "explain", "compare"):
        for spelling in ("--data_dir", "--data-dir", "--data"):
            args = build_parser().parse_args([name, *MINIMAL[name], spelling, "folder"])
            assert str(args.data_dir) == "folder", (name, spelling)


def test_help_shows_one_spelling_per_option():
    text = _subparsers()["prepare"].format_help()
    assert "--data_dir DATA_DIR" in text and "--data-dir" not in text and "--num-proc" not in text


def test_an_unknown_option_is_one_line_with_the_closest(capsys):
    assert main(["evaluate", "--modle", "x"]) == 2
    assert capsys.readouterr().err == "chexpert-hf evaluate: error: unknown option '--modle'; did you mean '--model'?\n"


def _saved_model(folder: Path) -> Path:
    from conftest import tiny_model

    built = tiny_model("vit")
    built.model.save_pretrained(folder)
    built.processor.save_pretrained(folder)
    return folder


def test_what_predict_writes_evaluate_scores(synthetic_root, tmp_path, capsys):
    model = _saved_model(tmp_path / "model")
    images = sorted(str(path.resolve()) for path in (synthetic_root / "valid").rglob("*.jpg"))
    predictions = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(model), *images, "--output", str(predictions), "--device", "cpu"]) == 0
    assert pd.read_csv(predictions)["Path"].iloc[0].startswith("/")  # absolute, as given
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(predictions),
                "--groundtruth",
                str(synthetic_root / "valid.csv"),
                "--bootstrap",
                "0",
                "--output",
                str(tmp_path / "report"),
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert (tmp_path / "report" / "metrics.json").is_file()


def test_a_path_like_model_that_does_not_exist_is_no_such_folder(tmp_path, monkeypatch, capsys):
    from chexpert_hf.evaluation.inference import _looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    image = tmp_path / "x.png"
    image.write_bytes(b"unused")
    for name in ("outputs/dmeo", "./dmeo", "runs/a/b", "~/no-such-model-here"):
        assert main(["predict", "--model", name, str(image)]) == 2
        assert capsys.readouterr().err == f"chexpert-hf predict: error: no such folder: {name}\n"
    assert not _looks_like_path("google/vit-base-patch16-224-in21k") and not _looks_like_path("vit-base")


def test_predict_errors_start_their_own_line_after_the_progress_bar(tmp_path, capsys):
    model = _saved_model(tmp_path / "model")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["predict", "--model", str(model), str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "predicting" in err  # the bar was drawn
    assert any(line.startswith("chexpert-hf predict: error: ") and "broken.jpg" in line for line in err.splitlines())


def test_training_on_a_prepared_set_without_a_train_split_is_one_line(prepared_dir, tmp_path, capsys):
    import yaml

    from chexpert_hf.training.train import main as train_main

    only_validation = tmp_path / "validation-only"
    datasets.DatasetDict({"validation": datasets.load_from_disk(str(prepared_dir))["validation"]}).save_to_disk(
        str(only_validation)
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "family": "vit",
                "from_scratch": True,
                "image_size": 32,
                "data_dir": str(only_validation),
                "use_cpu": True,
                "report_to": "none",
                "output_dir": str(tmp_path / "out"),
                "config_overrides": {
                    "hidden_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "intermediate_size": 37,
                    "patch_size": 8,
                },
            }
        )
    )
    assert train_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexpert-hf train: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(only_validation) in err and "no train split" in err and "its splits are: validation" in err
