import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd

from chexpert_hf.cli.main import build_parser, main


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "chexpert_hf.cli.main", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("synthesize", "prepare", "models"))
    for command in ("synthesize", "prepare"):
        text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "--output" in text and "--num-proc" in text


def test_synthesize_then_prepare(tmp_path, capsys):
    assert main(["synthesize", "--output", str(tmp_path / "raw"), "--num-patients", "5", "--valid-patients", "3",
                 "--test-patients", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "raw" / "CheXpert-v1.0-small"
    assert f"wrote {root}" in out and "lesion boxes" in out
    assert main(["prepare", "--data-dir", str(root), "--output", str(tmp_path / "ready"), "--image-size", "64",
                 "--num-proc", "1", "--frontal-only"]) == 0
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


def test_models_lists_every_family_and_the_readme_table_is_current(capsys):
    from chexpert_hf.models import FAMILIES

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for family, spec in FAMILIES.items():
        for variant in spec.variants:
            assert any(line.split()[:2] == [family, variant] for line in text.splitlines()), (family, variant)
    assert main(["models", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- models-table:start -->\n", "\n<!-- models-table:end -->"
    assert readme[readme.index(start) + len(start):readme.index(end)] == table, (
        "README's model table is stale: replace it with the output of `chexpert-hf models --markdown`"
    )
