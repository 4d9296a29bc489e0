"""The shape of the code: one-way imports, light commands, small files and classes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "albumentations")


def test_import_contracts_hold():
    # The layers of search/, "no import cycles" and "trainer never imports search" are in
    # pyproject.toml.
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_runs_context_imports_neither_study_nor_space_at_run_time():
    # The layers contract lets search/context.py name their types in annotations: only there.
    code = "import sys, search.context\nprint(sorted(m for m in sys.modules if m in {!r}))"
    above = ("search.study", "search.space")
    done = subprocess.run(
        [sys.executable, "-c", code.format(above)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_an_import_inside_a_function_closes_a_cycle_too(tmp_path):
    # What "no import cycles" checks: a lazy import does not hide a circle from it.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/__init__.py").write_text("")
    (tmp_path / "pkg/a.py").write_text("def f():\n    from pkg import b\n\n    return b\n")
    (tmp_path / "pkg/b.py").write_text("import pkg.a\n")
    contract = _contracts()["no import cycles, between packages or inside one"]
    (tmp_path / "pyproject.toml").write_text(
        '[tool.importlinter]\nroot_packages = ["pkg"]\n\n[[tool.importlinter.contracts]]\n'
        f'name = "cycles"\ntype = "{contract["type"]}"\nancestors = ["pkg"]\n'
    )
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "No cycles are allowed in pkg" in done.stdout


def test_the_architecture_page_lists_the_layers_of_the_contract():
    page = (ROOT / "docs/architecture.md").read_text()
    section = page.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. `([\w.]+)`", section, flags=re.MULTILINE)
    contract = _contracts()["search/ layers: each imports only those below it"]
    assert listed == contract["layers"]


def test_the_readme_layout_names_the_layers_of_the_contract_in_order():
    readme = (ROOT / "README.md").read_text()
    paragraph = readme.split("\nLayout: ", 1)[1].split("\n\n", 1)[0]
    chain = paragraph.split("in layers, each importing only those below it:", 1)[1]
    named = re.findall(r"`(\w+)(?:\.py)?`(?=\s+[(>])", chain.split("No modules import")[0])
    contract = _contracts()["search/ layers: each imports only those below it"]
    assert ["search." + name for name in named] == contract["layers"]


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["name"]: contract for contract in config["contracts"]}


@pytest.mark.parametrize(
    "code",
    [
        # `hpo --help` builds every verb's parser.
        "from search.cli.main import build_parser; build_parser()",
        # `hpo status` reads the study and prints its table.
        "import search.cli.status",
        # `hpo ui` starts MLflow's server.
        "import search.cli.ui",
    ],
)
def test_light_commands_import_neither_torch_timm_nor_albumentations(code):
    check = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"{code!r} imported {done.stdout.strip()}"


def _sources() -> list[Path]:
    return sorted([*ROOT.glob("search/**/*.py"), *ROOT.glob("trainer/**/*.py")])


def test_no_file_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def test_no_class_over_200_lines():
    big = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                big[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not big, big


def test_tests_share_helpers_through_conftest_and_support_not_each_other():
    """A test module imports no other test module (nor a conftest): shared code is in
    tests/support/, shared fixtures in conftest.py files."""
    crossed = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests"):
                if not node.module.startswith("tests.support"):
                    crossed.append(f"{path.relative_to(ROOT)}: from {node.module}")
            elif isinstance(node, ast.Import):
                crossed += [
                    f"{path.relative_to(ROOT)}: import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("tests") and not alias.name.startswith("tests.support")
                ]
    assert not crossed, crossed
