"""``SqliteStepStorage``: step records in SQLite, shared by threads and processes.

A write is an ``UPDATE`` of an existing row or an
``INSERT ... ON CONFLICT DO UPDATE ... WHERE status != 'completed'``, or the first and, if it
matched nothing, the second: each statement is atomic on its own and stores the whole record,
and both ``WHERE`` clauses keep a COMPLETED record final even when another process completed
it a microsecond earlier. Schema changes run inside ``BEGIN IMMEDIATE``.

Extension points for subclasses: :meth:`SqliteStepStorage.connect` (how a connection is
opened) and the ``table`` argument (which table holds the records). Everything that reaches
SQL is a ``?`` parameter, except table names, which must be plain identifiers.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..._errors import ConfigurationError, OwnershipLost, StorageError
from ..._records import StepRecord, StepStatus
from .._base import StepWrite
from .._rows import batch_rows, not_text, record_to_row, row_to_record
from ._connection import (
    busy,
    check_location,
    connect_readonly,
    enable_wal,
    has_table,
    is_memory,
    migrate,
    read_version,
    transaction,
    tune,
)
from ._runs import RunTables
from ._schema import SCHEMA_VERSION, STEP_COLUMNS, TableNames, check_identifier

__all__ = ["MAX_BUSY_TIMEOUT", "SqliteStepStorage"]

_DURABILITY = ("normal", "full")
MAX_BUSY_TIMEOUT = (2**31 - 1) / 1000
"""The longest ``busy_timeout`` SQLite can wait, in seconds; longer values are capped."""
_OUTCOMES = (StepStatus.COMPLETED, StepStatus.FAILED)
_COLUMNS = ", ".join(STEP_COLUMNS)
_PLACEHOLDERS = ", ".join("?" * len(STEP_COLUMNS))


class SqliteStepStorage(RunTables):
    """Step records, workflow runs and their inboxes in one SQLite file. Thread-safe and
    multi-process-safe on one machine; implements ``StepStorage`` and ``RunStorage``.

    Args:
        path: the database file (created with mode 0600 if missing), or ``":memory:"``.
        durability: ``"normal"`` survives any process crash; ``"full"`` also survives power
            loss, at the cost of an fsync per outcome.
        table: the table that holds the step records (a plain identifier); the runs and
            events tables are named after it (``durably_steps``: ``durably_runs``,
            ``durably_events``; ``jobs``: ``jobs_runs``, ``jobs_events``).
        busy_timeout: seconds to wait for another connection's write lock before failing.
        readonly: open an existing store for reading only (see :meth:`open_readonly`).

    Raises:
        ConfigurationError: an unknown ``durability``, a bad ``table`` or ``busy_timeout``.
        StorageError: the directory is missing or read-only, the file is read-only, is not a
            SQLite database, or has a schema newer than this code. The message names the path,
            and the file is left untouched.
    """

    blocking: ClassVar[bool] = True
    """Calls wait for the disk and for other processes' locks: the asyncio runtime makes
    them off its event loop."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        table: str = "durably_steps",
        busy_timeout: float = 30.0,
        readonly: bool = False,
    ) -> None:
        if durability not in _DURABILITY:
            raise ConfigurationError(
                f"durability must be one of {_DURABILITY}, got {durability!r}",
                field="durability")
        if not check_identifier(table):
            raise ConfigurationError(
                f"table must be a plain SQL identifier (letters, digits, _), got {table!r}",
                field="table")
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigurationError(
                f"path must name a database file (or ':memory:', asked for by name), got"
                f" {path!r}: an empty path would be a temporary database that every run"
                " starts afresh", field="path")
        if not isinstance(busy_timeout, (int, float)) or isinstance(busy_timeout, bool) \
                or not busy_timeout >= 0:
            raise ConfigurationError(
                f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}",
                field="busy_timeout")
        self.path = os.fspath(path)
        self.durability = durability
        self.table = table
        # SQLite takes the timeout as a C int of milliseconds: a longer one (or infinity)
        # would overflow into "do not wait at all", so it is capped at the longest SQLite
        # can wait (about 24.8 days).
        self.busy_timeout = min(float(busy_timeout), MAX_BUSY_TIMEOUT)
        self.readonly = bool(readonly)
        self._names = TableNames(table)
        self._lock = threading.RLock()
        self._build_statements()
        self._build_run_statements()
        self._conn: sqlite3.Connection | None = None
        self._outcome_conn: sqlite3.Connection | None = None
        if self.readonly:
            self._conn = self._open_readonly()
        else:
            self._conn = self._open()
        # With "full", outcomes go through a second connection kept at synchronous=FULL, and
        # markers through the first at NORMAL. Switching one connection's pragma back and
        # forth on every write measurably costs more than the second connection.
        self._outcome_conn = self._conn
        if durability == "full" and not self.readonly and not is_memory(self.path):
            self._outcome_conn = self._open_outcome_connection()
        # What busy_timeout the connection really has (connect() may be overridden), so
        # try_now can restore it.
        self._busy_ms = int(self._conn.execute("PRAGMA busy_timeout").fetchone()[0])
        self._waits_off = False  # busy_timeout is 0, left so by try_now (see there)
        self._trying_now = False  # a try_now call is running

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str], *,
                      table: str = "durably_steps") -> SqliteStepStorage:
        """Open an existing store for reading, while other processes may be writing to it.

        Nothing is ever created, migrated or switched (the journal mode stays as it is);
        every write raises :class:`~durably.StorageError`. This is how the command line reads.

        Raises:
            StorageError: the file is missing, is not a durably store of this schema version.
        """
        return cls(path, table=table, readonly=True)

    # ----------------------------------------------------------------- extension point

    def connect(self) -> sqlite3.Connection:
        """Open a connection. Override to add pragmas or functions, or to use another driver.

        The returned connection must be in autocommit mode (``isolation_level=None``) and usable
        from any thread (the storage serialises access with its own lock).
        """
        return sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)

    # ----------------------------------------------------------------- opening

    def _build_statements(self) -> None:
        table = self.table
        self._sql_get = f"SELECT {_COLUMNS} FROM {table} WHERE step_id = ?"
        self._sql_delete = f"DELETE FROM {table} WHERE step_id = ?"
        self._sql_list = f"SELECT {_COLUMNS} FROM {table}"
        updates = ", ".join(f"{name} = excluded.{name}" for name in STEP_COLUMNS[1:])
        # The common write to an existing step changes neither its key nor its indexed columns
        # (workflow_id): an UPDATE of the others leaves the indexes alone, which makes it
        # markedly cheaper than the upsert below. The WHERE makes it miss, and the upsert take
        # over, whenever the workflow would change.
        self._sql_update = (
            f"UPDATE {table} SET action = ?, status = ?, result = ?, error = ?, attempts = ?,"
            " created_at = ?, started_at = ?, updated_at = ?, completed_at = ?,"
            " next_attempt_at = ?, budget_started_at = ?"
            " WHERE step_id = ? AND workflow_id = ? AND status != 'completed'"
        )
        self._sql_upsert = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"
            f" ON CONFLICT (step_id) DO UPDATE SET {updates}"
            f" WHERE {table}.status != 'completed'"
        )

    def _failure(self, error: sqlite3.Error, what: str, step_id: str | None) -> StorageError:
        where = f" for step {step_id}" if step_id is not None else ""
        text = str(error)
        if isinstance(error, sqlite3.OperationalError) and busy(error):
            text += (f": another connection held the write lock for longer than"
                     f" busy_timeout={self.busy_timeout:g} s (nothing was written; raise"
                     " busy_timeout, or find the long transaction)")
        return StorageError(f"{what}{where} in {self.path!r} failed: {text}",
                            path=self.path, step_id=step_id)

    def _open(self) -> sqlite3.Connection:
        if not is_memory(self.path):
            check_location(self.path)
        try:
            conn = self.connect()
        except sqlite3.Error as error:
            raise StorageError(f"cannot open step database {self.path!r}: {error}",
                               path=self.path) from error
        try:
            # Read before writing anything: a garbage file or a newer schema must stay
            # untouched, and switching to WAL rewrites the header.
            version = read_version(conn, self.path)
            present = has_table(conn, self._names.steps)
            if not is_memory(self.path):
                tune(conn, full=False, new_file=version == 0)
                enable_wal(conn, self.busy_timeout)
            else:
                tune(conn, full=False)
            if version < SCHEMA_VERSION or not present:
                migrate(conn, self._names, self.path)
        except sqlite3.Error as error:
            conn.close()
            raise StorageError(f"cannot use step database {self.path!r}: {error}",
                               path=self.path) from error
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        try:
            conn = connect_readonly(self.path, self.busy_timeout)
        except sqlite3.Error as error:
            raise StorageError(f"cannot open step database {self.path!r}: {error}",
                               path=self.path) from error
        try:
            version = read_version(conn, self.path)
            if version != SCHEMA_VERSION or not has_table(conn, self._names.steps):
                raise StorageError(
                    f"step database {self.path!r} is not a durably store of schema version"
                    f" {SCHEMA_VERSION} (it has version {version}); a read-only open never"
                    " creates or migrates one: open it once with SqliteStepStorage(path)",
                    path=self.path)
        except sqlite3.Error as error:
            conn.close()
            raise StorageError(f"cannot read step database {self.path!r}: {error}",
                               path=self.path) from error
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_outcome_connection(self) -> sqlite3.Connection:
        try:
            conn = self.connect()
            tune(conn, full=True)
        except sqlite3.Error as error:
            self.close()
            raise StorageError(f"cannot open step database {self.path!r}: {error}",
                               path=self.path) from error
        return conn

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StorageError(f"step database {self.path!r} is closed", path=self.path)
        if self._waits_off and not self._trying_now:
            # A call that may wait for another connection's lock: give SQLite back its busy
            # timeout, which try_now left at zero.
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
            self._waits_off = False
        return conn

    def _writable(self) -> sqlite3.Connection:
        if self.readonly:
            raise StorageError(f"step database {self.path!r} was opened read-only",
                               path=self.path)
        return self._connection()

    def try_now(self, call: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run ``call(*args)`` at once if it can finish without waiting, else do nothing:
        returns ``(True, its value)``, or ``(False, None)``.

        The asyncio runtime asks this first, on its event loop, and only hands the call to
        a thread when the answer is no: a thread hop costs ~100 µs here, two per step, where
        the statement itself costs tens. Waiting is what must not happen on the loop, so the
        attempt is made only when this storage's lock is free, with SQLite's busy timeout
        at zero for its duration (a write lock held by another connection makes the call
        fail with nothing written, and it is then made off the loop, waiting as usual), and
        never with ``durability="full"`` (its outcomes wait for an fsync). What can still
        take a few milliseconds on the loop is the checkpoint a commit runs every 16 MiB of
        log.
        """
        conn = self._conn
        if conn is None or self._outcome_conn is not conn \
                or not self._lock.acquire(blocking=False):
            return False, None
        try:
            # The timeout stays at zero after the call: an asyncio program makes one on-loop
            # call after another, and setting it twice per call cost ~5 µs of a ~50 µs step.
            # The next call that may wait (through _connection) sets it back first.
            if not self._waits_off:
                conn.execute("PRAGMA busy_timeout = 0")
                self._waits_off = True
            self._trying_now = True
            try:
                return True, call(*args)
            except StorageError as error:
                cause = error.__cause__
                if isinstance(cause, sqlite3.OperationalError) and busy(cause):
                    return False, None  # nothing was written: make it off the loop
                raise
            finally:
                self._trying_now = False
        finally:
            self._lock.release()

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
            except UnicodeEncodeError:
                raise not_text("step_id", step_id, self.path) from None
        return None if row is None else row_to_record(row, self.path)

    def set(self, record: StepRecord) -> StepRecord:
        """Store ``record`` unless a COMPLETED one is stored; return what is stored.

        Raises:
            StorageError: the database failed (names the step id).
        """
        row = record_to_row(record, self.path)
        with self._lock:
            try:
                return self._put(self._writer(record.status in _OUTCOMES), record, row)
            except sqlite3.Error as error:
                raise self._failure(error, "writing", record.step_id) from error

    def _put(self, conn: sqlite3.Connection, record: StepRecord,
             row: tuple[Any, ...]) -> StepRecord:
        """``set``'s statements, on ``conn`` (under the lock)."""
        # A first attempt's marker is almost always a new row: insert it at once. Anything
        # else is almost always an existing row: update it in place first.
        probably_new = record.attempts <= 1 and record.status is StepStatus.RUNNING
        if not probably_new and conn.execute(
            self._sql_update, (*row[2:], row[0], row[1])
        ).rowcount:
            return record
        if conn.execute(self._sql_upsert, row).rowcount:
            return record
        return row_to_record(conn.execute(self._sql_get, (record.step_id,)).fetchone(),
                             self.path)

    def write_steps(self, writes: Sequence[StepWrite]
                    ) -> builtins.list[StepRecord | BaseException]:
        """Make several step writes in one transaction, so that they share one commit (the
        asyncio runtime's group commit). Each ``(record, run_id, fence)`` is written as
        ``set(record)`` would write it (``run_id`` None) or as ``record_step(run_id, fence,
        record)`` would, in order.

        Returns, for each write, what is stored, or the error that write alone met
        (``OwnershipLost`` for a stale fence, ``StorageError`` for text SQLite cannot store),
        which writes nothing of it and leaves the others to commit.

        Raises:
            StorageError: the database failed; nothing of the batch is written.
        """
        rows = batch_rows((record for record, _, _ in writes), self.path)
        results: builtins.list[StepRecord | BaseException] = []
        with self._lock:
            # "full": a batch holding an outcome commits on the connection that syncs it, so
            # the one commit syncs them all.
            conn = self._writer(any(record.status in _OUTCOMES for record, _, _ in writes))
            try:
                with transaction(conn):
                    for (record, run_id, fence), row in zip(writes, rows, strict=True):
                        if isinstance(row, Exception):
                            results.append(row)
                        elif run_id is None:
                            results.append(self._put(conn, record, row))
                        else:
                            try:
                                results.append(
                                    self._put_fenced(conn, run_id, fence, record, row))
                            except OwnershipLost as lost:
                                results.append(lost)
            except sqlite3.Error as error:
                raise self._failure(error, "writing", writes[0][0].step_id
                                    if len(writes) == 1 else None) from error
        return results

    def delete(self, step_id: str) -> bool:
        """Remove the record; return whether there was one."""
        with self._lock:
            try:
                return self._writable().execute(self._sql_delete, (step_id,)).rowcount > 0
            except sqlite3.Error as error:
                raise self._failure(error, "deleting", step_id) from error
            except UnicodeEncodeError:
                raise not_text("step_id", step_id, self.path) from None

    def list(
        self, workflow_id: str | None = None, status: StepStatus | None = None
    ) -> builtins.list[StepRecord]:
        """Return matching records in the order they were first written."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if workflow_id is not None:
            clauses.append("workflow_id = ?")
            params.append(workflow_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = f"{self._sql_list}{where} ORDER BY seq"
        with self._lock:
            try:
                rows = self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise self._failure(error, "listing", None) from error
            except UnicodeEncodeError:
                raise not_text("workflow_id", workflow_id, self.path) from None
        return [row_to_record(row, self.path) for row in rows]

    def history(self, workflow_id: str, after: int | None, limit: int
                ) -> tuple[builtins.list[StepRecord], int | None]:
        """One page of a workflow's records in first-write order, after the cursor ``after``
        (``None``: from the start); returns the records and the cursor of the next page,
        ``None`` when this was the last. Replay reads history this way, page by page, as
        far as it needs it (the optional paging of ``StepStorage``)."""
        sql = (f"SELECT {_COLUMNS}, seq FROM {self._names.steps} INDEXED BY"
               f" {self._names.steps}_by_workflow WHERE workflow_id = ? AND seq > ?"
               " ORDER BY seq LIMIT ?")
        with self._lock:
            try:
                rows = self._connection().execute(
                    sql, (workflow_id, -1 if after is None else after, limit)).fetchall()
            except sqlite3.Error as error:
                raise self._failure(error, "reading history", None) from error
            except UnicodeEncodeError:
                raise not_text("workflow_id", workflow_id, self.path) from None
        records = [row_to_record(row, self.path) for row in rows]
        return records, (rows[-1][-1] if len(rows) == limit else None)

    def close(self) -> None:
        """Close the connections. Idempotent; later calls raise ``StorageError``."""
        with self._lock:
            for conn in {id(c): c for c in (self._conn, self._outcome_conn)
                         if c is not None}.values():
                conn.close()
            self._conn = self._outcome_conn = None

    def __repr__(self) -> str:
        return f"SqliteStepStorage({self.path!r}, durability={self.durability!r})"
