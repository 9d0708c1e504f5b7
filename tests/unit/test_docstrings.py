"""Every public definition in src/threadsum has a docstring, so the count of undocumented ones cannot grow.

Public: a module-level function or class whose name does not start with ``_``, and a method or
nested class of a public class whose name does not start with ``_`` (so ``__init__`` and other
dunder methods are skipped). Functions nested inside functions are not part of the API and are not
checked. Static reads with ``ast`` only (nothing is imported), well under a second.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "threadsum"
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def undocumented(tree: ast.AST) -> tuple[list[str], int]:
    """Qualified names of public definitions without a docstring, and how many public ones were seen."""
    missing: list[str] = []
    seen = 0

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal seen
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _DEFS) or child.name.startswith("_"):
                continue
            seen += 1
            if ast.get_docstring(child) is None:
                missing.append(prefix + child.name)
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return missing, seen


def test_rule_flags_what_it_should():
    code = '''
def documented():
    """Yes."""

def bare():
    pass

async def bare_async():
    pass

def _private():
    pass

def outer():
    """Yes."""
    def inner():
        pass

class Public:
    def __init__(self):
        pass

    def __repr__(self):
        return ""

    def method(self):
        pass

    @property
    def prop(self):
        """Yes."""

    class Inner:
        def deep(self):
            pass

class _Private:
    def method(self):
        pass
'''
    missing, seen = undocumented(ast.parse(code))
    assert missing == ["bare", "bare_async", "Public", "Public.method", "Public.Inner", "Public.Inner.deep"]
    assert seen == 9


def test_every_public_definition_has_a_docstring():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, f"no sources found under {SRC}"
    problems: list[str] = []
    total = 0
    for path in files:
        missing, seen = undocumented(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        total += seen
        problems += [f"{path.relative_to(SRC)}: {name}" for name in missing]
    assert total > 300, f"only {total} public definitions found; is the walker broken?"
    if problems:
        pytest.fail(f"{len(problems)} public definition(s) without a docstring (one line on what it does; Args with "
                    "units and shapes, Returns, Raises where useful):\n" + "\n".join(problems))
