"""The tree's layering: ``workers/`` drives the library in ``cdp/``, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of_workers(path: Path) -> list[tuple[int, bool]]:
    """(line, at module level) of each import of ``workers`` in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if any(name == "workers" or name.startswith("workers.") for name in names):
            found.append((node.lineno, id(node) in top))
    return found


def test_nothing_in_cdp_imports_workers_but_the_cli_dispatch_lazily() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted((ROOT / "cdp").rglob("*.py"))
        if (hits := imports_of_workers(path))
    }
    assert set(found) == {"cdp/cli.py"}, found
    assert all(not top for _, top in found["cdp/cli.py"]), found
