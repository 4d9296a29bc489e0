"""The shape of the code: one-way imports, light commands, small files and classes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "albumentations")


def test_import_contracts_hold():
    # The layers of search/ and "trainer never imports search" are in pyproject.toml.
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


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
