"""SQLite storage: one table, WAL, safe to share between threads and between processes.

Why the settings are what they are:

* WAL lets readers run beside the one writer and makes a commit one append to the log.
* ``synchronous=NORMAL`` in WAL mode survives any process crash (the log is written before a
  commit returns) but may lose the last commits on power loss; ``durability="full"`` adds an
  fsync to every commit of an outcome (COMPLETED, FAILED). Markers (RUNNING, RETRYING) stay at
  NORMAL: a FULL commit syncs the whole log before it, so no outcome is ever lost and only an
  in-flight attempt's marker can vanish, and only on power loss.
* ``busy_timeout`` makes a writer wait for another process's transaction instead of failing
  with "database is locked".
* A write is an ``UPDATE`` of an existing row or an
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE status != 'completed'``, or the first and, if it
  matched nothing, the second: each statement is atomic on its own and stores the whole
  record, and both ``WHERE`` clauses keep a COMPLETED record final even when another process
  completed it a microsecond earlier. Schema changes run inside
  ``BEGIN IMMEDIATE`` so two processes opening a new file at once cannot both create it.

Extension points for subclasses: :meth:`SqliteStepStorage.connect` (how the connection is
opened) and the ``table`` argument (which table holds the records). Everything that reaches SQL
is a ``?`` parameter, except the table name, which must be a plain identifier.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from .._errors import ConfigurationError, StorageError
from .._records import ErrorInfo, StepRecord, StepStatus, new_record

__all__ = ["SCHEMA_VERSION", "SqliteStepStorage"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DURABILITY = ("normal", "full")
_OUTCOMES = (StepStatus.COMPLETED, StepStatus.FAILED)
_STATUSES = {status.value: status for status in StepStatus}
# Primary result codes (sqlite3 exports them only from Python 3.11).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# Ordered migrations: applying entry i moves the schema from version i to i + 1. Statements are
# formatted with the (validated) table name. Never edit an entry that has shipped; append one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS {table} (
            step_id TEXT PRIMARY KEY NOT NULL,
            workflow_id TEXT NOT NULL,
            action TEXT NOT NULL,
            status TEXT NOT NULL,
            result TEXT,
            error TEXT,
            attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            updated_at REAL NOT NULL,
            completed_at REAL,
            next_attempt_at REAL,
            budget_started_at REAL
        )""",
        # list(workflow_id=...) and loading a workflow's steps read this index in order.
        "CREATE INDEX IF NOT EXISTS {table}_by_workflow"
        " ON {table} (workflow_id, created_at, step_id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "step_id, workflow_id, action, status, result, error, attempts, created_at, started_at,"
    " updated_at, completed_at, next_attempt_at, budget_started_at"
)


def _is_memory(path: str) -> bool:
    return path in (":memory:", "")


def _busy(error: sqlite3.OperationalError) -> bool:
    # sqlite_errorcode exists from Python 3.11; on 3.10 any OperationalError here is retried
    # until the deadline, which is harmless: a real failure repeats and is raised then.
    code = getattr(error, "sqlite_errorcode", None)
    return code is None or code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


class SqliteStepStorage:
    """Step records in one SQLite table. Thread-safe and multi-process-safe on one machine.

    Args:
        path: the database file (created with mode 0600 if missing), or ``":memory:"``.
        durability: ``"normal"`` survives any process crash; ``"full"`` also survives power
            loss, at the cost of an fsync per outcome.
        table: the table that holds the records (a plain identifier).
        busy_timeout: seconds to wait for another connection's write lock before failing.

    Raises:
        ConfigurationError: an unknown ``durability``, a bad ``table`` or ``busy_timeout``.
        StorageError: the directory is missing or read-only, the file is read-only, is not a
            SQLite database, or has a schema newer than this code. The message names the path,
            and the file is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        table: str = "durably_steps",
        busy_timeout: float = 30.0,
    ) -> None:
        if durability not in _DURABILITY:
            raise ConfigurationError(
                f"durability must be one of {_DURABILITY}, got {durability!r}", field="durability"
            )
        if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
            raise ConfigurationError(
                f"table must be a plain SQL identifier (letters, digits, _), got {table!r}",
                field="table",
            )
        if not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise ConfigurationError(
                f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}",
                field="busy_timeout",
            )
        self.path = os.fspath(path)
        self.durability = durability
        self.table = table
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.RLock()
        self._build_statements()
        if not _is_memory(self.path):
            self._check_location()
        self._conn: sqlite3.Connection | None = self._open()
        # With "full", outcomes go through a second connection kept at synchronous=FULL, and
        # markers through the first at NORMAL. Switching one connection's pragma back and
        # forth on every write measurably costs more than the second connection.
        self._outcome_conn: sqlite3.Connection | None = self._conn
        if durability == "full" and not _is_memory(self.path):
            self._outcome_conn = self._open_outcome_connection()

    # ----------------------------------------------------------------- extension point

    def connect(self) -> sqlite3.Connection:
        """Open the connection. Override to add pragmas or functions, or to use another driver.

        The returned connection must be in autocommit mode (``isolation_level=None``) and usable
        from any thread (the storage serialises access with its own lock).
        """
        return sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )

    # ----------------------------------------------------------------- opening

    def _build_statements(self) -> None:
        table = self.table
        self._sql_get = f"SELECT {_COLUMNS} FROM {table} WHERE step_id = ?"
        self._sql_delete = f"DELETE FROM {table} WHERE step_id = ?"
        self._sql_list = f"SELECT {_COLUMNS} FROM {table}"
        updates = ", ".join(
            f"{name} = excluded.{name}" for name in _COLUMNS.replace(" ", "").split(",")[1:]
        )
        # The common write to an existing step changes neither its key nor its indexed columns
        # (workflow_id, created_at): an UPDATE of the others leaves the index alone, which makes
        # it markedly cheaper than the upsert below. The WHERE makes it miss, and the upsert
        # take over, whenever those columns would change.
        self._sql_update = (
            f"UPDATE {table} SET action = ?, status = ?, result = ?, error = ?, attempts = ?,"
            " started_at = ?, updated_at = ?, completed_at = ?, next_attempt_at = ?,"
            " budget_started_at = ?"
            " WHERE step_id = ? AND workflow_id = ? AND created_at = ? AND status != 'completed'"
        )
        self._sql_upsert = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (step_id) DO UPDATE SET {updates}"
            f" WHERE {table}.status != 'completed'"
        )

    def _check_location(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StorageError(
                f"cannot open step database {self.path!r}: directory {directory!r} does not exist",
                path=self.path,
            )
        # Mode bits as well as access(): root passes access() on anything, but a file or
        # directory whose owner made it read-only is meant to stay unwritten.
        if not os.access(directory, os.W_OK) or not os.stat(directory).st_mode & 0o222:
            raise StorageError(
                f"cannot open step database {self.path!r}: directory {directory!r} is read-only"
                " (SQLite creates its -wal and -shm files beside the database)",
                path=self.path,
            )
        try:
            fd = os.open(
                self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IRUSR | stat.S_IWUSR
            )
        except FileExistsError:
            if not os.access(self.path, os.W_OK) or not os.stat(self.path).st_mode & 0o222:
                raise StorageError(
                    f"cannot open step database {self.path!r}: the file is read-only",
                    path=self.path,
                ) from None
        except OSError as error:
            raise StorageError(
                f"cannot create step database {self.path!r}: {error}", path=self.path
            ) from error
        else:
            os.close(fd)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = self.connect()
        except sqlite3.Error as error:
            raise StorageError(f"cannot open step database {self.path!r}: {error}",
                               path=self.path) from error
        try:
            # Read before writing anything: a garbage file or a newer schema must stay untouched,
            # and switching to WAL rewrites the header.
            version, has_table = self._read_schema(conn)
            if not _is_memory(self.path):
                # A step's write dirties a few pages of different b-trees (the hashed step id
                # scatters it); small pages make each WAL frame, and so each commit, cheaper.
                # It only takes effect on a new, empty file.
                conn.execute("PRAGMA page_size = 1024")
                self._enable_wal(conn)
            self._tune(conn, full=False)
            if version < SCHEMA_VERSION or not has_table:
                self._migrate(conn)
        except sqlite3.Error as error:
            conn.close()
            raise StorageError(f"cannot use step database {self.path!r}: {error}",
                               path=self.path) from error
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _tune(conn: sqlite3.Connection, *, full: bool) -> None:
        conn.execute("PRAGMA synchronous = FULL" if full else "PRAGMA synchronous = NORMAL")
        # Checkpoint after 16 MiB of log rather than SQLite's default 1000 pages (1 MiB at
        # our page size): each checkpoint syncs the database file, and a larger log lets
        # many commits to the same pages collapse into one copy. The log is truncated back
        # to that size after a checkpoint, so disk use stays bounded.
        conn.execute("PRAGMA wal_autocheckpoint = 16384")
        conn.execute("PRAGMA journal_size_limit = 16777216")

    def _open_outcome_connection(self) -> sqlite3.Connection:
        try:
            conn = self.connect()
            self._tune(conn, full=True)
        except sqlite3.Error as error:
            self.close()
            raise StorageError(f"cannot open step database {self.path!r}: {error}",
                               path=self.path) from error
        return conn

    def _read_schema(self, conn: sqlite3.Connection) -> tuple[int, bool]:
        """Return (schema version, whether our table exists); refuse a newer schema."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"step database {self.path!r} has schema version {version}, newer than the"
                f" {SCHEMA_VERSION} this version of durably knows; upgrade durably",
                path=self.path,
            )
        row = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table,)
        ).fetchone()
        return version, bool(row[0])

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # The switch to WAL answers SQLITE_BUSY at once, without calling the busy handler, when
        # another process is opening the same new file: retry it until busy_timeout.
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as error:
                if not _busy(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            version, has_table = self._read_schema(conn)
            # A table added to a file that already holds another durably table starts from 0.
            start = version if has_table else 0
            for statements in _MIGRATIONS[start:]:
                for statement in statements:
                    conn.execute(statement.format(table=self.table))
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ----------------------------------------------------------------- rows

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"step database {self.path!r} is closed", path=self.path)
        return self._conn

    def _failure(self, error: sqlite3.Error, what: str, step_id: str | None) -> StorageError:
        where = f" for step {step_id}" if step_id is not None else ""
        return StorageError(f"{what}{where} in {self.path!r} failed: {error}",
                            path=self.path, step_id=step_id)

    def _record_to_row(self, record: StepRecord) -> tuple[Any, ...]:
        error = None if record.error is None else json.dumps(record.error.to_dict())
        return (
            record.step_id, record.workflow_id, record.action, record.status.value,
            record.result, error, record.attempts, record.created_at, record.started_at,
            record.updated_at, record.completed_at, record.next_attempt_at,
            record.budget_started_at,
        )

    def _row_to_record(self, row: tuple[Any, ...]) -> StepRecord:
        step_id = row[0]
        try:
            error = None if row[5] is None else ErrorInfo.from_dict(json.loads(row[5]))
            if type(row[6]) is not int or not (row[4] is None or type(row[4]) is str):
                raise TypeError("attempts must be an integer and result text")
            return new_record(step_id, row[1], row[2], _STATUSES[row[3]], row[4], error, row[6],
                              row[7], row[8], row[9], row[10], row[11], row[12])
        except (ValueError, KeyError, TypeError, AttributeError) as problem:
            raise StorageError(
                f"corrupt record for step {step_id!r} in {self.path!r}: {problem}",
                path=self.path, step_id=str(step_id),
            ) from problem

    # ----------------------------------------------------------------- StepStorage

    def get(self, step_id: str) -> StepRecord | None:
        """Return the record for ``step_id`` or ``None``.

        Raises:
            StorageError: the database failed or the row is corrupt (names the step id).
        """
        with self._lock:
            try:
                row = self._connection().execute(self._sql_get, (step_id,)).fetchone()
            except sqlite3.Error as error:
                raise self._failure(error, "reading", step_id) from error
        return None if row is None else self._row_to_record(row)

    def set(self, record: StepRecord) -> StepRecord:
        """Store ``record`` unless a COMPLETED one is stored; return what is stored.

        Raises:
            StorageError: the database failed (names the step id).
        """
        row = self._record_to_row(record)
        # A first attempt's marker is almost always a new row: insert it at once. Anything
        # else is almost always an existing row: update it in place first.
        probably_new = record.attempts <= 1 and record.status is StepStatus.RUNNING
        with self._lock:
            conn = self._connection()
            if record.status in _OUTCOMES and self._outcome_conn is not None:
                conn = self._outcome_conn
            try:
                if not probably_new and conn.execute(
                    self._sql_update, (*row[2:7], *row[8:], row[0], row[1], row[7])
                ).rowcount:
                    return record
                if conn.execute(self._sql_upsert, row).rowcount:
                    return record
                stored = conn.execute(self._sql_get, (record.step_id,)).fetchone()
            except sqlite3.Error as error:
                raise self._failure(error, "writing", record.step_id) from error
        return self._row_to_record(stored)

    def delete(self, step_id: str) -> bool:
        """Remove the record; return whether there was one."""
        with self._lock:
            try:
                return self._connection().execute(self._sql_delete, (step_id,)).rowcount > 0
            except sqlite3.Error as error:
                raise self._failure(error, "deleting", step_id) from error

    def list(
        self, workflow_id: str | None = None, status: StepStatus | None = None
    ) -> builtins.list[StepRecord]:
        """Return matching records ordered by ``created_at``, then ``step_id``."""
        clauses: builtins.list[str] = []
        params: builtins.list[str] = []
        if workflow_id is not None:
            clauses.append("workflow_id = ?")
            params.append(workflow_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = f"{self._sql_list}{where} ORDER BY created_at, step_id"
        with self._lock:
            try:
                rows = self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise self._failure(error, "listing", None) from error
        return [self._row_to_record(row) for row in rows]

    def close(self) -> None:
        """Close the connections. Idempotent; later calls raise ``StorageError``."""
        with self._lock:
            for conn in {id(c): c for c in (self._conn, getattr(self, "_outcome_conn", None))
                         if c is not None}.values():
                conn.close()
            self._conn = self._outcome_conn = None

    def __repr__(self) -> str:
        return f"SqliteStepStorage({self.path!r}, durability={self.durability!r})"
