"""The test suite itself: every test written runs."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path


def redefined(source: str) -> list[str]:
    """Names a module (or a class in it) defines more than once at its top level: in Python the
    later definition silently replaces the earlier one, so a test whose name is taken again
    never runs."""
    tree = ast.parse(source)
    found = []
    for body, prefix in [(tree.body, "")] + [(n.body, f"{n.name}.") for n in tree.body if isinstance(n, ast.ClassDef)]:
        names = Counter(n.name for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
        found += [prefix + name for name, count in names.items() if count > 1]
    return found


def test_the_checker_finds_a_test_defined_twice() -> None:
    source = "def test_a():\n    pass\n\ndef test_b():\n    pass\n\ndef test_a():\n    pass\n"
    assert redefined(source) == ["test_a"]
    assert redefined("class T:\n    def test_x(self): ...\n    def test_x(self): ...\n") == ["T.test_x"]
    assert redefined("def test_a(): ...\ndef test_b(): ...\n") == []


def test_no_test_module_defines_a_name_twice() -> None:
    """A shadowed test hid a regression for releases (lowered brows squeezed thin in fear)."""
    modules = sorted(Path(__file__).parent.glob("*.py"))
    assert len(modules) > 10
    twice = {m.name: names for m in modules if (names := redefined(m.read_text(encoding="utf-8")))}
    assert not twice, twice
