"""Nothing above ``fastnas/spaces`` names a concrete space in code (docstrings and comments may give examples):
a new space is one module plus its registration (issue "Open the house", shared/DESIGN.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "fastnas"
PATTERN = re.compile(r"nb201|darts|_SearchCell|SuperCell", re.IGNORECASE)
LAYERS = ["metrics", "search", "train", "run"]


def _docstring_nodes(tree: ast.AST) -> set:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def offending(source: str) -> list:
    """``(line, text)`` of every name, attribute, import or non-docstring string naming a space."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    hits = []
    for node in ast.walk(tree):
        texts = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            texts += [a.name for a in node.names] + [getattr(node, "module", None) or ""]
        hits += [(getattr(node, "lineno", 0), t) for t in texts if PATTERN.search(t)]
    return hits


def test_the_check_catches_a_space_name():
    assert offending('from fastnas.spaces.nb201 import X\nif name == "darts": pass\n')
    assert not offending('"""A docstring about NB201."""\n# a comment about DARTS\nx = 1\n')


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_names_no_concrete_space(layer):
    found = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        hits = offending(path.read_text(encoding="utf-8"))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert not found, found
