"""A change to the code that determines results must come with a decision about NUMERICS_VERSION."""

from __future__ import annotations

from pathlib import Path

from benchmark import numerics
from benchmark.config import RunConfig


def test_code_that_determines_results_is_fingerprinted():
    found = numerics.fingerprint()
    assert found == numerics.FINGERPRINT, (
        f"code that determines results changed ({', '.join(numerics.SOURCES)}; fingerprint {found}, recorded "
        f"{numerics.FINGERPRINT}). If any stored number could move, bump NUMERICS_VERSION in benchmark/numerics.py "
        f"(stored runs then become stale); either way set FINGERPRINT = {found!r} there."
    )


def test_fingerprint_ignores_comments_and_docstrings_but_not_code(tmp_path):
    def tree(code: str) -> Path:
        root = tmp_path / str(abs(hash(code)))
        (root / "algorithms").mkdir(parents=True)
        (root / "algorithms" / "m.py").write_text(code)
        return root

    plain = numerics.fingerprint(tree("def f(x):\n    return x + 1\n"))
    documented = numerics.fingerprint(tree('"""Module."""\n\n\ndef f(x):  # adds\n    """Adds one."""\n    return x + 1\n'))
    changed = numerics.fingerprint(tree("def f(x):\n    return x + 2\n"))
    assert plain == documented != changed


def test_the_run_id_depends_on_the_numerics_version(monkeypatch):
    before = RunConfig().run_id
    monkeypatch.setattr(numerics, "NUMERICS_VERSION", numerics.NUMERICS_VERSION + 1)
    assert RunConfig().run_id != before
