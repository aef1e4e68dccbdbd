"""The README's two commands are what CI and new users run: keep them in step with .ci/run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_install_and_test_commands():
    install, tests = readme_commands()
    assert install == "pip install -e . && accelerate launch recipes/train.py --recipe demo"
    assert tests.startswith('pip install -e ".[dev]"') and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
    assert "ruff check ." in ci
