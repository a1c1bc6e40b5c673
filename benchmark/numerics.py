"""The version of the code that determines a run's numbers, which every run id includes.

A run id hashes the settings; the settings alone do not say which code turned them into numbers. Every change
that can move a stored number (algorithms, models, losses, data reading and generation, episode sampling,
evaluation) bumps ``NUMERICS_VERSION``, so a stored run from other code gets another id: it is found as stale,
never served as today's answer. ``tests/test_numerics.py`` guards the bump: it fails whenever the fingerprint of
that code (its syntax tree without comments and docstrings) differs from ``FINGERPRINT``, and its message says
what to do.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

NUMERICS_VERSION = 3
FINGERPRINT = "d8338a4e876321e3"

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (
    "algorithms", "tasks", "benchmark/runner.py", "benchmark/references.py", "benchmark/observations.py",
    "benchmark/validation.py", "benchmark/evaluation.py",
)


def source_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = root / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    return files


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def fingerprint(root: Path = ROOT) -> str:
    """sha256 over the code that determines results, blind to comments, docstrings and formatting."""
    digest = hashlib.sha256()
    for path in source_files(root):
        tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(ast.dump(tree, include_attributes=False).encode() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def current_fingerprint() -> str:
    """:func:`fingerprint` of the code this process runs, computed once: what keys the caches of derived numbers."""
    return fingerprint()
