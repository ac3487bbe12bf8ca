"""SqliteStepStorage specifics: files, modes, bad files, schema, processes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from durably import ConfigurationError, SqliteStepStorage, StepStatus, StorageError
from durably._contract import _completed, _record
from durably._storage._sqlite import SCHEMA_VERSION

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_database_and_its_journal_files_are_owner_only(tmp_path: Path) -> None:
    """The file is created 0600, and SQLite gives -wal and -shm the same mode."""
    path = tmp_path / "steps.db"
    store = SqliteStepStorage(path)
    store.set(_record("a"))
    assert _mode(path) == 0o600
    for suffix in ("-wal", "-shm"):
        assert _mode(Path(f"{path}{suffix}")) == 0o600
    store.close()


def test_existing_file_mode_is_left_alone(tmp_path: Path) -> None:
    """A database the user created keeps its permissions."""
    path = tmp_path / "shared.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o640)
    SqliteStepStorage(path).close()
    assert _mode(path) == 0o640


def test_database_uses_wal_and_pinned_schema(tmp_path: Path) -> None:
    """WAL journal, user_version and the table layout are what the code promises."""
    path = tmp_path / "steps.db"
    SqliteStepStorage(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    columns = [row[1] for row in conn.execute("PRAGMA table_info(durably_steps)")]
    assert columns == [
        "step_id", "workflow_id", "action", "status", "result", "error", "attempts",
        "created_at", "started_at", "updated_at", "completed_at", "next_attempt_at",
        "budget_started_at",
    ]
    indexes = [row[1] for row in conn.execute("PRAGMA index_list(durably_steps)")]
    assert "durably_steps_by_workflow" in indexes
    conn.close()


def test_records_persist_across_connections(tmp_path: Path) -> None:
    """What one storage object wrote, a new one on the same file reads."""
    path = tmp_path / "steps.db"
    first = SqliteStepStorage(path)
    first.set(_completed("kept", '"yes"'))
    first.close()
    second = SqliteStepStorage(path)
    assert second.get("kept") == _completed("kept", '"yes"')
    second.close()


def test_memory_database_works(tmp_path: Path) -> None:
    """":memory:" needs no file and keeps records for the object's life."""
    store = SqliteStepStorage(":memory:")
    store.set(_record("m"))
    assert store.get("m") == _record("m")
    store.close()


def test_custom_table_name_and_two_tables_in_one_file(tmp_path: Path) -> None:
    """The table name is an extension point; two tables in one file stay apart."""
    path = tmp_path / "steps.db"
    one = SqliteStepStorage(path, table="alpha")
    two = SqliteStepStorage(path, table="beta")
    one.set(_record("x"))
    assert two.get("x") is None and one.get("x") is not None
    one.close()
    two.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"durability": "extra"}, "durability"),
        ({"table": "steps; DROP TABLE x"}, "table"),
        ({"table": "1abc"}, "table"),
        ({"busy_timeout": -1}, "busy_timeout"),
    ],
)
def test_bad_options_raise_configuration_error(tmp_path: Path, kwargs: dict[str, object],
                                               field: str) -> None:
    """Unknown durability, unsafe table names and negative timeouts are refused."""
    with pytest.raises(ConfigurationError) as caught:
        SqliteStepStorage(tmp_path / "x.db", **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert not (tmp_path / "x.db").exists()


def test_garbage_file_is_refused_and_untouched(tmp_path: Path) -> None:
    """A file that is not SQLite raises StorageError naming it, and keeps its bytes."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError, match=r"notes\.db") as caught:
        SqliteStepStorage(path)
    assert caught.value.path == str(path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_newer_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    """A database from a newer durably raises StorageError and is not modified."""
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="newer") as caught:
        SqliteStepStorage(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A path in a directory that does not exist names the directory."""
    with pytest.raises(StorageError, match="does not exist"):
        SqliteStepStorage(tmp_path / "nowhere" / "steps.db")


def test_read_only_file_is_refused_at_construction(tmp_path: Path) -> None:
    """A database file without write permission raises StorageError naming it."""
    path = tmp_path / "steps.db"
    SqliteStepStorage(path).close()
    os.chmod(path, 0o400)
    try:
        with pytest.raises(StorageError, match="read-only") as caught:
            SqliteStepStorage(path)
        assert caught.value.path == str(path)
    finally:
        os.chmod(path, 0o600)


def test_read_only_directory_is_refused_at_construction(tmp_path: Path) -> None:
    """A directory where SQLite cannot create its journal files is refused."""
    directory = tmp_path / "locked"
    directory.mkdir()
    os.chmod(directory, 0o500)
    try:
        with pytest.raises(StorageError, match="read-only"):
            SqliteStepStorage(directory / "steps.db")
    finally:
        os.chmod(directory, 0o700)


def test_corrupt_row_raises_storage_error_naming_the_step(tmp_path: Path) -> None:
    """A row with an unknown status or broken error JSON is a StorageError, not a crash."""
    path = tmp_path / "steps.db"
    store = SqliteStepStorage(path)
    store.set(_record("bad-status"))
    store.set(_record("bad-error"))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE durably_steps SET status = 'exploded' WHERE step_id = 'bad-status'")
    conn.execute("UPDATE durably_steps SET error = '{not json' WHERE step_id = 'bad-error'")
    conn.commit()
    conn.close()
    for step_id in ("bad-status", "bad-error"):
        with pytest.raises(StorageError, match=step_id) as caught:
            store.get(step_id)
        assert caught.value.step_id == step_id
    with pytest.raises(StorageError):
        store.list()
    store.close()


def test_closed_storage_raises_storage_error(tmp_path: Path) -> None:
    """Using a closed storage is a StorageError; closing twice is fine."""
    store = SqliteStepStorage(tmp_path / "steps.db")
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.get("x")


def test_full_durability_syncs_outcomes_and_not_markers(tmp_path: Path) -> None:
    """With "full", outcomes are written at synchronous=FULL and markers at NORMAL."""
    seen: list[tuple[str, int]] = []

    class Spy(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()

            def trace(statement: str) -> None:
                if statement.startswith(("INSERT", "UPDATE")):
                    level = spy_levels[id(conn)]
                    seen.append((statement.split()[0], level))

            conn.set_trace_callback(trace)
            return conn

    spy_levels: dict[int, int] = {}
    store = Spy(tmp_path / "steps.db", durability="full")
    for conn in {store._conn, store._outcome_conn}:
        assert conn is not None
        spy_levels[id(conn)] = conn.execute("PRAGMA synchronous").fetchone()[0]
    store.set(_record("a"))
    store.set(_completed("a", "1"))
    store.set(_record("b", status=StepStatus.RETRYING, attempts=2))
    store.set(_record("b", status=StepStatus.FAILED, attempts=2))
    store.close()
    # 1 = NORMAL, 2 = FULL: the markers (RUNNING, RETRYING; the latter tries an UPDATE, then
    # inserts) at NORMAL, the outcomes (COMPLETED, FAILED) at FULL.
    assert seen == [("INSERT", 1), ("UPDATE", 2), ("UPDATE", 1), ("INSERT", 1), ("UPDATE", 2)]


def test_connect_is_an_extension_point(tmp_path: Path) -> None:
    """A subclass can customise the connection (here: an extra SQL function)."""

    class WithFunction(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()
            conn.create_function("shout", 1, lambda text: str(text).upper())
            return conn

    store = WithFunction(tmp_path / "steps.db")
    assert store._connection().execute("SELECT shout('hi')").fetchone()[0] == "HI"
    store.close()


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    from durably import SqliteStepStorage
    from durably._contract import _completed, _record
    index = int(sys.argv[1])
    store = SqliteStepStorage(sys.argv[2])
    answers = {{}}
    for n in range(30):
        store.set(_record(f"p{{index}}-{{n}}", workflow_id=f"w{{index}}"))
        store.set(_completed(f"p{{index}}-{{n}}", str(n), workflow_id=f"w{{index}}"))
        answers[f"shared-{{n}}"] = store.set(_completed(f"shared-{{n}}", f'"p{{index}}"')).result
    store.close()
    import json
    print(json.dumps(answers))
    """
)


@pytest.mark.slow
def test_processes_share_one_file_without_losing_or_disagreeing(tmp_path: Path) -> None:
    """Processes opening a new file at once all succeed, lose nothing and agree on winners."""
    path = tmp_path / "shared.db"
    script = WRITER.format(src=SRC)
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(index), str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(6)
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outputs.append(json.loads(out))
    store = SqliteStepStorage(path)
    for n in range(30):
        stored = store.get(f"shared-{n}")
        assert stored is not None
        assert {answers[f"shared-{n}"] for answers in outputs} == {stored.result}
    for index in range(6):
        assert len(store.list(workflow_id=f"w{index}", status=StepStatus.COMPLETED)) == 30
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
