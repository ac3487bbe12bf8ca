"""SqliteStepStorage specifics: files, modes, bad files, schema, processes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import completed_record as _completed
from conftest import make_record as _record
from durably import (
    ConfigurationError,
    OwnershipLost,
    RunRecord,
    RunStatus,
    SqliteStepStorage,
    StepStatus,
    StorageError,
)
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
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    columns = [row[1] for row in conn.execute("PRAGMA table_info(durably_steps)")]
    assert columns == [
        "seq", "step_id", "workflow_id", "action", "status", "result", "error", "attempts",
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
    """With "full", every write of an outcome (COMPLETED, FAILED) is made on a connection at
    synchronous=FULL, and every write of a marker (RUNNING, RETRYING) at NORMAL."""
    writes: list[tuple[str, int]] = []

    class Spy(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()

            def trace(statement: str) -> None:
                if statement.startswith(("INSERT", "UPDATE")):
                    level = conn.execute("PRAGMA synchronous").fetchone()[0]
                    values = statement.replace("!= 'completed'", "")  # the final-rule guard
                    status = next(s.value for s in StepStatus if f"'{s.value}'" in values)
                    writes.append((status, level))

            conn.set_trace_callback(trace)
            return conn

    store = Spy(tmp_path / "steps.db", durability="full")
    store.set(_record("a"))
    store.set(_completed("a", "1"))
    store.set(_record("b", status=StepStatus.RETRYING, attempts=2))
    store.set(_record("b", status=StepStatus.FAILED, attempts=2))
    assert store.get("a") == _completed("a", "1")
    assert store.get("b") == _record("b", status=StepStatus.FAILED, attempts=2)
    store.close()
    normal, full = 1, 2
    assert {status for status, _ in writes} == {"running", "retrying", "completed", "failed"}
    for status, level in writes:
        assert level == (full if status in ("completed", "failed") else normal), status


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_full_durability_keeps_a_short_log(tmp_path: Path, durability: str) -> None:
    """With "full" the log is checkpointed every 1000 pages, so the fsync of each outcome
    rewrites a short log in place instead of growing it; "normal" lets it grow to 16 MiB."""
    store = SqliteStepStorage(tmp_path / "steps.db", durability=durability)
    result = json.dumps("x" * 8000)  # ~10 pages of log per outcome
    for n in range(300):
        store.set(_completed(f"s{n}", result))
    log_pages = os.path.getsize(tmp_path / "steps.db-wal") // 1024
    assert store.get("s299") == _completed("s299", result)
    store.close()
    if durability == "full":
        assert log_pages < 1100, log_pages  # 1000 pages, plus the commit that crossed them
    else:
        assert log_pages > 2500, log_pages


def test_connect_is_an_extension_point(tmp_path: Path) -> None:
    """A subclass can customise the connection: here a pragma, seen by the storage's reads."""
    opened: list[sqlite3.Connection] = []

    class Tuned(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()
            conn.execute("PRAGMA cache_size = -4321")
            opened.append(conn)
            return conn

    store = Tuned(tmp_path / "steps.db")
    store.set(_record("x"))
    assert store.get("x") == _record("x")
    assert [conn.execute("PRAGMA cache_size").fetchone()[0] for conn in opened] == [-4321]
    store.close()


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    from durably import SqliteStepStorage
    from durably import StepRecord, StepStatus

    def _record(step_id, **fields):
        values = dict(workflow_id="wf", action="Test.step", status=StepStatus.RUNNING,
                      attempts=1, created_at=100.0, started_at=100.0, updated_at=100.0)
        values.update(fields)
        return StepRecord(step_id=step_id, **values)

    def _completed(step_id, result, **fields):
        return _record(step_id, status=StepStatus.COMPLETED, result=result, **fields)

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


# ------------------------------------------------------------------ read-only open


def test_read_only_open_reads_while_another_connection_holds_a_write_transaction(
        tmp_path: Path) -> None:
    """open_readonly works beside a writer in the middle of a transaction, and sees the
    committed state."""
    path = tmp_path / "steps.db"
    writer = SqliteStepStorage(path)
    writer.set(_completed("done", '"yes"'))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE durably_steps SET result = '\"uncommitted\"'")
    try:
        reader = SqliteStepStorage.open_readonly(path)
        assert reader.get("done") == _completed("done", '"yes"')
        assert [r.step_id for r in reader.list()] == ["done"]
        reader.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        writer.close()


def test_read_only_open_refuses_every_write(tmp_path: Path) -> None:
    """set and delete on a read-only store raise StorageError and change nothing."""
    path = tmp_path / "steps.db"
    SqliteStepStorage(path).close()
    reader = SqliteStepStorage.open_readonly(path)
    for write in (lambda: reader.set(_record("x")), lambda: reader.delete("x")):
        with pytest.raises(StorageError, match="read-only"):
            write()
    assert reader.list() == []
    reader.close()


def test_read_only_open_never_creates_or_migrates(tmp_path: Path) -> None:
    """A missing file is not created; an old or foreign file is refused and left as it is."""
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="does not exist"):
        SqliteStepStorage.open_readonly(missing)
    assert not missing.exists()
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE durably_steps (step_id TEXT PRIMARY KEY)")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = old.read_bytes()
    with pytest.raises(StorageError, match="version") as caught:
        SqliteStepStorage.open_readonly(old)
    assert caught.value.path == str(old)
    assert old.read_bytes() == before
    assert not Path(f"{old}-wal").exists()


# ------------------------------------------------------------------ migration from version 1

V1_TABLE = """CREATE TABLE durably_steps (
    step_id TEXT PRIMARY KEY NOT NULL, workflow_id TEXT NOT NULL, action TEXT NOT NULL,
    status TEXT NOT NULL, result TEXT, error TEXT, attempts INTEGER NOT NULL,
    created_at REAL NOT NULL, started_at REAL, updated_at REAL NOT NULL, completed_at REAL,
    next_attempt_at REAL, budget_started_at REAL)"""


def test_a_version_1_file_opens_with_its_steps_intact_and_in_first_write_order(
        tmp_path: Path) -> None:
    """Wave 1's schema is migrated in place: every record kept, in the order it was written
    (its rowid order), whatever the ids and timestamps say."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.execute(V1_TABLE)
    conn.execute("CREATE INDEX durably_steps_by_workflow ON durably_steps"
                 " (workflow_id, created_at, step_id)")
    rows = [("zz", 5.0, "completed", '"a"'), ("aa", 1.0, "failed", None),
            ("mm", 3.0, "running", None)]
    for step_id, created, status, result in rows:
        conn.execute("INSERT INTO durably_steps VALUES (?, 'wf', 'A.b', ?, ?, NULL, 1, ?, ?,"
                     " ?, NULL, NULL, ?)", (step_id, status, result, created, created,
                                              created, created))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteStepStorage(path)
    records = store.list(workflow_id="wf")
    assert [(r.step_id, r.status.value, r.result, r.created_at) for r in records] == [
        (step_id, status, result, created) for step_id, created, status, result in rows]
    store.set(_record("new", workflow_id="wf", created_at=0.0))
    assert [r.step_id for r in store.list(workflow_id="wf")] == ["zz", "aa", "mm", "new"]
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_due_scans_read_only_the_partial_indexes(tmp_path: Path) -> None:
    """claim, run_due's filtered claim, next_wake_at and list_runs(due=) find due runs through
    the partial due/expiry indexes (never a scan of every suspended run), with or without a
    workflow filter: their cost does not grow with runs that are not due."""
    statements: list[str] = []

    class Traced(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()
            conn.set_trace_callback(statements.append)
            return conn

    store = Traced(tmp_path / "steps.db")
    store.claim("w", 1000.0, 10.0)
    store.claim("w", 1000.0, 10.0, workflows=["A.a", "B.b"], code_versions=[None])
    store.next_wake_at()
    store.next_wake_at(workflows=["A.a"])
    scans = [sql for sql in statements if "wake_at <=" in sql or "ORDER BY wake_at" in sql]
    assert len(scans) == 4
    plans = []
    for sql in scans:
        conn = sqlite3.connect(tmp_path / "steps.db")
        plans.append(" | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)))
        conn.close()
    for plan in plans:
        assert "durably_runs_by_status" not in plan and "durably_runs_by_workflow" not in plan
        assert "SCAN durably_runs" not in plan
        assert "durably_runs_due" in plan or "durably_runs_expiry" in plan, plan
    store.close()


def _traced(tmp_path: Path, statements: list[tuple[str, int]],
            durability: str = "normal") -> SqliteStepStorage:
    """A store whose connections log (statement, synchronous level) for writes."""

    class Traced(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()

            def trace(statement: str) -> None:
                if statement.startswith(("BEGIN", "COMMIT", "INSERT", "UPDATE")):
                    level = conn.execute("PRAGMA synchronous").fetchone()[0]
                    statements.append((statement.split()[0], level))

            conn.set_trace_callback(trace)
            return conn

    return Traced(tmp_path / "steps.db", durability=durability)


def test_write_steps_makes_a_batch_in_one_transaction(tmp_path: Path) -> None:
    """write_steps writes every record as set() would, in one BEGIN ... COMMIT: a COMPLETED
    record stays final and is handed back in its place."""
    statements: list[tuple[str, int]] = []
    store = _traced(tmp_path, statements)
    store.set(_completed("done", '"first"'))
    statements.clear()
    results = store.write_steps([(_record("a"), None, 0), (_completed("b", '"2"'), None, 0),
                                 (_completed("done", '"second"'), None, 0)])
    assert results == [_record("a"), _completed("b", '"2"'), _completed("done", '"first"')]
    kinds = [kind for kind, _ in statements]
    assert kinds[0] == "BEGIN" and kinds[-1] == "COMMIT"
    assert kinds.count("BEGIN") == 1 and kinds.count("COMMIT") == 1
    assert store.get("a") == _record("a") and store.get("done") == _completed("done", '"first"')
    store.close()


def test_write_steps_answers_each_write_and_commits_the_rest(tmp_path: Path) -> None:
    """A stale fence and text SQLite cannot store are that write's own errors: it writes
    nothing, and the other writes of the batch commit."""
    store = SqliteStepStorage(tmp_path / "steps.db")
    store.create_run(RunRecord(run_id="r", workflow="A.b", status=RunStatus.PENDING,
                               input="1", input_hash="h", wake_at=0.0))
    (claimed,) = store.claim("w", 1.0, 60.0)
    mine = _record("r/1", workflow_id="r")
    stale = _record("r/2", workflow_id="r")
    bad = _record("bad\udc80")
    results = store.write_steps([(mine, "r", claimed.fence), (stale, "r", claimed.fence + 1),
                                 (bad, None, 0), (_record("plain"), None, 0)])
    assert results[0] == mine and results[3] == _record("plain")
    assert isinstance(results[1], OwnershipLost)
    assert isinstance(results[2], StorageError) and "step_id" in str(results[2])
    assert store.get("r/1") == mine and store.get("plain") == _record("plain")
    assert store.get("r/2") is None
    store.close()


def test_write_steps_with_full_durability_syncs_the_batch_once(tmp_path: Path) -> None:
    """With "full", a batch holding an outcome is written on the FULL connection: one
    commit, one fsync for every write in it; a batch of markers stays at NORMAL."""
    statements: list[tuple[str, int]] = []
    store = _traced(tmp_path, statements, durability="full")
    store.write_steps([(_record("a"), None, 0), (_record("b"), None, 0)])
    markers = list(statements)
    statements.clear()
    store.write_steps([(_completed("a", "1"), None, 0), (_record("c"), None, 0)])
    normal, full = 1, 2
    assert {level for _, level in markers} == {normal}
    assert {level for _, level in statements} == {full}
    assert [kind for kind, _ in statements].count("COMMIT") == 1
    store.close()


def test_a_finish_after_an_on_loop_call_waits_for_another_writer(tmp_path: Path) -> None:
    """try_now leaves SQLite's busy timeout at zero between on-loop calls; every write that
    may wait (here a run's finish, made off the loop) gives it back first, so it waits for
    another connection's write lock instead of failing with "database is locked"."""
    store = SqliteStepStorage(tmp_path / "steps.db")
    store.create_run(RunRecord(run_id="r", workflow="A.b", status=RunStatus.PENDING,
                               input="1", input_hash="h", wake_at=0.0))
    (claimed,) = store.claim("w", 1.0, 60.0)
    assert store.try_now(store.record_step, "r", claimed.fence,
                         _record("r/1", workflow_id="r")) == (True, _record("r/1",
                                                                            workflow_id="r"))
    other = sqlite3.connect(tmp_path / "steps.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        finished = store.finish("r", claimed.fence, RunStatus.COMPLETED, 2.0, result="1")
    finally:
        release.join()
        other.close()
    assert finished.status is RunStatus.COMPLETED
    store.close()
