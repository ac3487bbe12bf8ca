"""Every ```python block in README.md and docs/*.md runs (sqlite-utils style). A ```py block
is shown, not run: it needs something the tests cannot assume (a PostgreSQL server at the
address it names)."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
DOCS = [path for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        if BLOCK.search(path.read_text())]


def test_docs_have_runnable_examples() -> None:
    """The guard against a regex that silently matches nothing."""
    assert sum(len(BLOCK.findall(path.read_text())) for path in DOCS) >= 5


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks of one file run in order, in one namespace, in an empty directory."""
    blocks = BLOCK.findall(path.read_text())
    monkeypatch.chdir(tmp_path)
    # A real module, so that classes defined in a block (dataclasses) find their module.
    module = types.ModuleType(f"docs_{path.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{path.name} block {number}", "exec")
        exec(code, namespace)
    runtime = namespace.get("runtime")
    close = getattr(runtime, "close", None)
    if callable(close):
        close()
    assert os.getcwd() == str(tmp_path)
