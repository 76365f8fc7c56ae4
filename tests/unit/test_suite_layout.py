"""The test suites stand alone: helpers live in ``tests/support`` or a suite's own
``conftest.py``; no suite imports another suite's ``conftest`` or any test module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

TESTS = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_no_suite_reaches_into_another() -> None:
    offences: list[str] = []
    for path in sorted(TESTS.rglob("*.py")):
        relative = path.relative_to(TESTS)
        suite = relative.parts[0] if len(relative.parts) > 1 else ""
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] != "tests" or len(parts) < 3:
                continue
            other, leaf = parts[1], parts[-1]
            if leaf.startswith("test_"):
                offences.append(f"{relative}: imports the test module {module}")
            elif leaf == "conftest" and other != suite:
                offences.append(f"{relative}: imports another suite's {module}")
    assert offences == []
