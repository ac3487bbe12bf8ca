"""docs/operations.md's transcripts are real: every ``$ python -m durably ...`` line of its
```console blocks runs, in order, on the store tests/ops_workload.py builds, and prints what
the page shows under it.

    DURABLY_REGENERATE_DOCS=1 python -m pytest tests/test_operations_doc.py   # rewrite them

The check leaves out the lines of a traceback (they name files and differ between Python
versions), so the page may shorten them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ops_workload import build

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "operations.md"
BLOCK = re.compile(r"^```console\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
NOW = "2026-12-01T10:15:00+00:00"
TRACEBACK = re.compile(r"^ {14}.*$\n?", re.MULTILINE)  # the continuation of an error field


def _run(line: str, cwd: Path) -> str:
    """What the command prints (stdout, then stderr), and its exit status if not 0."""
    command, _, pipe = line.partition(" | ")
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "durably"], line
    done = subprocess.run([sys.executable, "-m", "durably", "--now", NOW, *argv[3:]],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "COLUMNS": "100"})
    out = done.stdout
    if pipe:
        head = shlex.split(pipe)
        assert head[:2] == ["head", "-n"], line
        out = "".join(out.splitlines(keepends=True)[: int(head[2])])
    text = out + done.stderr
    if done.returncode:
        text += f"(exit status {done.returncode})\n"
    return text


def _transcript(block: str, cwd: Path) -> str:
    lines = [line for line in block.splitlines() if line.startswith("$ ")]
    return "".join(f"{line}\n{_run(line[2:], cwd)}" for line in lines)


def _comparable(text: str) -> str:
    return TRACEBACK.sub("", text)


def _shortened(text: str) -> str:
    """A transcript as the page shows it: each traceback cut to its first and last lines."""
    def cut(match: re.Match[str]) -> str:
        lines = match.group(0).splitlines(keepends=True)
        return lines[0] + " " * 16 + "...\n" + lines[-1] if len(lines) > 3 else match.group(0)

    return re.sub(r"(?:^ {14}Traceback.*\n)(?:^ {14}.*\n)*", cut, text, flags=re.MULTILINE)


def test_the_transcripts_are_what_the_commands_print(tmp_path: Path) -> None:
    build(tmp_path / "orders.db")
    page = PAGE.read_text()
    blocks = BLOCK.findall(page)
    assert len(blocks) >= 8
    actual = [_transcript(block, tmp_path) for block in blocks]
    if os.environ.get("DURABLY_REGENERATE_DOCS"):
        parts = iter(actual)
        PAGE.write_text(BLOCK.sub(lambda _: f"```console\n{_shortened(next(parts))}```\n",
                                  page))
        return
    for shown, printed in zip(blocks, actual, strict=True):
        assert _comparable(shown) == _comparable(printed)
