"""The package's layout is its data flow: each folder is one stage, and a module imports only its own stage and
earlier ones, so a reader can follow the flow one way and a change to a late stage cannot break an early one."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "chexpert_hf"
# Earliest first; the shared top-level modules (the vocabulary every stage uses) rank before them all.
STAGES = ["data", "models", "evaluation", "hub", "training", "explain", "benchmark", "cli"]
SHARED = ("labels", "utils", "outputs")
STANDALONE = PACKAGE / "models" / "resnet_vit"  # ships inside checkpoints: loads without chexpert_hf installed


def stage_rank(module: str) -> int:
    """``chexpert_hf.training.trainer`` → 1 + the index of ``training``; a shared module → 0; ``chexpert_hf``
    itself ranks with the last stage (its ``__init__`` may export names from any stage; only the CLI imports it)."""
    parts = module.split(".")
    if len(parts) < 2:
        return len(STAGES)
    if parts[1] in SHARED:
        return 0
    assert parts[1] in STAGES, f"chexpert_hf.{parts[1]} belongs to no stage: add it to STAGES in {__file__}"
    return 1 + STAGES.index(parts[1])


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of a chexpert_hf module in ``path`` (a file of the package at
    ``root``), relative ones resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("chexpert_hf")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.startswith("chexpert_hf"):
                found.append((node.lineno, base))
    return found


MODULES = sorted(path for path in PACKAGE.rglob("*.py") if STANDALONE not in path.parents)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_a_later_stage(path):
    own = stage_rank(module_name(path))
    later = [f"line {line}: {module}" for line, module in imported_modules(path) if stage_rank(module) > own]
    assert not later, f"{path.relative_to(PACKAGE.parent)} imports a later stage: {'; '.join(later)}"


def test_the_shared_modules_import_no_stage():
    for name in SHARED:
        imports = [module for _, module in imported_modules(PACKAGE / f"{name}.py")]
        assert all(module.split(".")[1] in SHARED for module in imports), (name, imports)


def test_the_hybrid_imports_nothing_from_the_package():
    """configuration_/modeling_resnet_vit.py are copied into every hybrid checkpoint and loaded with
    trust_remote_code where chexpert_hf is not installed: only relative imports within their folder."""
    for path in STANDALONE.glob("*.py"):
        tree = ast.parse(path.read_text())
        absolute = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and not getattr(node, "level", 0)
            and "chexpert_hf" in ast.unparse(node)
        ]
        relative_out = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 1]
        assert not absolute and not relative_out, (path.name, absolute, relative_out)


def test_a_later_import_is_caught(tmp_path):
    """The check itself: in a data module, an absolute import of the training stage is later, a relative import of
    the labels is not."""
    probe = tmp_path / "chexpert_hf" / "data" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from chexpert_hf.training.trainer import CheXpertTrainer\nfrom ..labels import LABELS\n")
    parsed = [module for _, module in imported_modules(probe, tmp_path / "chexpert_hf")]
    assert parsed == ["chexpert_hf.training.trainer", "chexpert_hf.labels"]
    own = stage_rank(module_name(probe, tmp_path / "chexpert_hf"))
    assert stage_rank(parsed[0]) > own >= stage_rank(parsed[1])


def test_the_package_exports_resolve_and_load_lazily():
    """Every name ``chexpert_hf`` exports is where it says; importing the package alone loads no stage (the CLI's
    start-up and ``--help`` stay quick)."""
    import subprocess
    import sys

    import chexpert_hf

    for name in chexpert_hf.__all__:
        assert getattr(chexpert_hf, name) is not None, name
    code = (
        "import sys, chexpert_hf; loaded = sorted(m for m in sys.modules if m.startswith('chexpert_hf.') "
        "or m == 'torch'); print(loaded)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        chexpert_hf.no_such_name  # noqa: B018


def test_the_tests_mirror_the_stage_folders():
    """``tests/<stage>/`` for each stage folder of the package (and ``tests/scripts/`` for launched programs):
    a test of ``chexpert_hf/<stage>/...`` is found beside the other tests of that stage, not at the top level."""
    tests = ROOT / "tests"
    folders = {path.name for path in tests.iterdir() if path.is_dir() and not path.name.startswith((".", "_"))}
    assert folders - {"scripts"} == set(STAGES)
    staged = {path.stem for path in PACKAGE.glob("*/*.py")} - {path.stem for path in PACKAGE.glob("*.py")}
    for path in tests.glob("test_*.py"):  # the top level: shared modules and the repository itself
        stem = path.stem.removeprefix("test_")
        assert stem not in STAGES, f"{path.name} tests a stage: move it into tests/{stem}/"
        assert stem not in staged, f"{path.name} tests a module of a stage folder: move it beside that stage's tests"
