"""The storage security review, as tests: parameterized SQL only, no pickle unless opted in,
nothing from stored data is ever evaluated. (Owner-only files: test_storage_sqlite.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from durably import JsonCodec, PickleCodec
from durably.testing import create_test_runtime

SRC = Path(__file__).resolve().parents[1] / "src" / "durably"
SQLITE = sorted((SRC / "_storage" / "_sqlite").glob("*.py"))

# Names that may be interpolated into SQL text: the validated table name, fixed column lists,
# clause fragments made of them, and an integer schema version.
SQL_SAFE_NAMES = {
    "table", "_COLUMNS", "_PLACEHOLDERS", "updates", "name", "where", "SCHEMA_VERSION",
    "self._sql_list", "self.table",
    # run and event tables: validated names derived from the table name, fixed column lists,
    # placeholder lists and clauses built only from those
    "runs", "steps", "events", "names.steps", "names.runs", "names.events",
    "self._names.runs", "self._names.steps", "self._names.events", "owned", "marks",
    "_RUN_COLUMNS", "_EVENT_COLUMNS", "_STEP_COLUMNS", "_RUN_PLACEHOLDERS",
    "_STEP_PLACEHOLDERS", "_TERMINAL_MARKS",
    # the partial indexes' fixed conditions and their INDEXED BY clauses (validated names)
    "WAKING", "HELD", "self._due_index", "self._expiry_index",
    # an integer SQLite itself reported (PRAGMA busy_timeout), formatted with :d
    "self._busy_ms",
}


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_sql_text_only_interpolates_identifiers_never_values() -> None:
    """Every f-string in the SQLite backend interpolates only identifiers from an allowlist;
    values always travel as ? parameters."""
    interpolated: set[str] = set()
    nodes = [node for path in SQLITE for node in ast.walk(ast.parse(path.read_text()))]
    for node in nodes:
        if isinstance(node, ast.JoinedStr):
            text = "".join(part.value for part in node.values
                           if isinstance(part, ast.Constant) and isinstance(part.value, str))
            if not re.search(r"\b(SELECT|INSERT|DELETE|UPDATE|CREATE|PRAGMA|ORDER BY)\b", text):
                continue  # not SQL (our SQL keywords are upper case; messages are not)
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    interpolated.add(ast.unparse(part.value))
    assert interpolated, "the check found no SQL f-strings: is it still looking?"
    assert interpolated <= SQL_SAFE_NAMES, interpolated - SQL_SAFE_NAMES


def test_hostile_ids_and_values_are_stored_as_data(tmp_path: Path) -> None:
    """SQL in step ids, actions and results is stored verbatim and executes nothing."""
    from durably import SqliteStepStorage

    runtime = create_test_runtime(storage=SqliteStepStorage(tmp_path / "s.db"))
    hostile = "x'); DROP TABLE durably_steps; --"
    runtime.register("A.b", lambda data: hostile)
    assert runtime.do("A.b", hostile, step_id=hostile) == hostile
    assert [r.step_id for r in runtime.storage.list()] == ["test/" + hostile]
    runtime.close()


def test_pickle_is_used_only_by_the_opt_in_codec() -> None:
    """No module but the codec imports pickle, and the default codec is JSON."""
    importers = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "")]
                if any(name and name.split(".")[0] in ("pickle", "marshal", "shelve")
                       for name in names):
                    importers.append(path.name)
    assert set(importers) == {"_codec.py"}
    assert isinstance(create_test_runtime().codec, JsonCodec)


def test_nothing_is_evaluated() -> None:
    """No eval, exec, compile or dynamic import anywhere in the package."""
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                if isinstance(node.func, ast.Name):
                    name = node.func.id
                    assert name not in {"eval", "exec", "compile", "__import__"}, path.name
                elif isinstance(node.func, ast.Attribute):
                    assert node.func.attr != "import_module", path.name


@pytest.mark.parametrize(
    "text",
    [
        '{"__durably__":"os.system","v":"echo pwned"}',
        '{"__durably__":"__import__","v":"os"}',
        '{"__durably__":"pickle","v":"gASVAAAAAAAAAAA="}',
        '{"__durably__":"tuple","v":[1],"extra":"field"}',
    ],
)
def test_stored_tags_map_to_fixed_constructors_only(text: str) -> None:
    """A stored tag names one of a fixed set of constructors; anything else is refused."""
    with pytest.raises(ValueError):
        JsonCodec().decode(text)


def test_pickle_codec_is_documented_as_unsafe() -> None:
    """The opt-in says what it risks."""
    assert "Unsafe" in (PickleCodec.__doc__ or "")
