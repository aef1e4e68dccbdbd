"""The habits CI and the pre-commit hooks enforce: the commit-message rule, and the checks .ci/run runs."""

import importlib.util
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

spec = importlib.util.spec_from_file_location("check_commit_message", ROOT / ".ci" / "check_commit_message.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

BODY = "\n\nThe body says why the change is made.\n"


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("x" * 72 + BODY, None),
        ("x" * 73 + BODY, "the subject is 73 characters; at most 72"),
        ("Fix the sampler\nno blank line\nthen the body\n", "the subject must be followed by a blank line"),
        ("Fix the sampler\n", "the message has no body: say why the change is made"),
        ("# only a comment\n\n", "the message has no subject line"),
        ("Fix the sampler" + BODY + "# Please enter the commit message (a comment Git strips)\n", None),
    ],
)
def test_the_commit_message_rule(message, problem):
    assert check.problems(message) == ([] if problem is None else [problem])


def test_the_hook_names_the_file_and_fails(tmp_path):
    message = tmp_path / "COMMIT_EDITMSG"
    message.write_text("y" * 80 + BODY)
    result = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "check_commit_message.py"), str(message)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"{message}: the subject is 80 characters; at most 72"


def test_ci_and_the_hooks_run_the_same_ruff_checks():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "ruff check ." in ci and "ruff format --check ." in ci
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    entries = {hook["id"]: hook["entry"] for hook in hooks}
    assert entries["ruff-check"].startswith("ruff check") and entries["ruff-format"].startswith("ruff format --check")
    assert entries["commit-message"] == "python .ci/check_commit_message.py"
