"""The README is the front door: its two commands are what CI and new users run (keep them in step with .ci/run),
it stays short, and it and the docs pages it leads to never point at a file that is not there."""

import re
from pathlib import Path

from conftest import ROOT

README = ROOT / "README.md"
README_MAX_LINES = 200
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def markdown_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(page: Path) -> list[str]:
    """The link targets of ``page`` that point into the repository (no scheme, no pure #anchor), code blocks
    left out: a ``[x](y)`` inside a fence is code, not a link."""
    text = FENCE.sub("", page.read_text())
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_readme_opens_with_install_and_test_commands():
    install, tests = readme_commands()
    assert install == "pip install -e . && accelerate launch recipes/train.py --recipe demo"
    assert tests.startswith('pip install -e ".[dev]"') and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
    assert "ruff check ." in ci


def test_readme_is_a_front_door_of_at_most_200_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into a docs/ page"


def test_every_docs_page_the_readme_links_exists():
    linked = {target.split("#")[0] for target in relative_links(README)}
    pages = sorted(target for target in linked if target.startswith("docs/") and target.endswith(".md"))
    assert pages, "the README links no docs/ page"
    missing = [page for page in pages if not (ROOT / page).is_file()]
    assert not missing, f"README.md links docs pages that do not exist: {missing}"


def test_every_relative_link_in_the_readme_and_docs_resolves_to_a_file_of_the_repository():
    broken = []
    for page in markdown_pages():
        for target in relative_links(page):
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to no file of the repository:\n" + "\n".join(broken)


def test_the_link_check_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "See [a](docs/a.md#x), ![fig](b.png) and [web](https://x.org), [here](#top).\n"
        "```python\nx = d[0](1)\n[not](a/link.md)\n```\n"
    )
    assert relative_links(page) == ["docs/a.md#x", "b.png"]
