"""``PostgresStorage``: steps, runs and inboxes in PostgreSQL, shared by many machines.

Every method is one statement where the rule allows it, so a step costs one round trip per
write. Each guard lives in the statement's ``WHERE``, so READ COMMITTED suffices:

* a fenced step write locks its run's row ``FOR SHARE`` in the same statement, so a claim (an
  ``UPDATE`` of that row) cannot commit between the fence check and the write: either the
  write commits first and the new owner reads it, or the check sees the new fence and writes
  nothing;
* a claim selects due rows ``FOR UPDATE SKIP LOCKED`` and updates them in one statement, so
  many workers claim at once without waiting for each other or taking the same run;
* markers (RUNNING, RETRYING records) and lease renewals commit with ``synchronous_commit``
  off, everything else with it on (see ``durability``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import psycopg

from ..._errors import ConfigurationError, OwnershipLost
from ..._records import StepRecord, StepStatus
from .._base import StepWrite
from .._rows import RUN_COLUMNS, STEP_COLUMNS, batch_rows, record_to_row, row_to_record
from ._connection import Database
from ._runs import RELAXED, RunTables
from ._schema import check_schema_name

__all__ = ["PostgresStorage"]

Conn = psycopg.Connection[Any]

_STEPS = ", ".join(STEP_COLUMNS)
_STEP_VALUES = ", ".join(["%s"] * len(STEP_COLUMNS))
_RUNS = ", ".join(RUN_COLUMNS)
_MARKERS = (StepStatus.RUNNING, StepStatus.RETRYING)
_DURABILITY = ("normal", "full")


class PostgresStorage(RunTables):
    """Step records, workflow runs and their inboxes in a PostgreSQL schema; implements
    ``StepStorage`` and ``RunStorage``, shared by any number of processes on any number of
    machines.

    Args:
        conninfo: a libpq connection string or URL (``postgresql://user@host/db``).
        schema: durably's own PostgreSQL schema (created and migrated at first use, under
            an advisory lock); a lower-case identifier.
        durability: ``"full"`` (the default) commits every outcome, run change and event
            synchronously and only markers (RUNNING, RETRYING) and lease renewals without
            waiting for the WAL flush: a crash of the *server* can lose only the marker of an
            attempt in flight. ``"normal"`` commits everything without waiting: it survives
            any crash of the application, and a server crash can lose the last fraction of a
            second of writes.
        pool_size: the most connections this storage keeps open.
        connect_timeout: seconds to wait for a connection.
        retries: how many times a transient failure (a dropped connection, a server restart,
            a serialization failure) is retried inside the adapter before ``StorageError``.
        readonly: read an existing store only: nothing is created or migrated, and the server
            refuses every write (``StorageError``). The command line reads this way.

    Raises:
        ConfigurationError: a bad option.
        StorageError: the server cannot be reached, or the schema holds tables that are not
            durably's or a newer schema version. Messages name the server without its
            password.
    """

    blocking: ClassVar[bool] = True
    """Calls wait for the network: the asyncio runtime makes them off its event loop."""

    def __init__(self, conninfo: str, *, schema: str = "durably", durability: str = "full",
                 pool_size: int = 10, connect_timeout: float = 10.0, retries: int = 8,
                 readonly: bool = False) -> None:
        if not isinstance(conninfo, str) or not conninfo.strip():
            raise ConfigurationError(f"conninfo must be a connection string or URL, got"
                                     f" {conninfo!r}", field="conninfo")
        if not check_schema_name(schema):
            raise ConfigurationError(f"schema must be a lower-case identifier, got {schema!r}",
                                     field="schema")
        if durability not in _DURABILITY:
            raise ConfigurationError(f"durability must be one of {_DURABILITY}, got"
                                     f" {durability!r}", field="durability")
        for name, value, low in (("pool_size", pool_size, 1), ("retries", retries, 0)):
            if type(value) is not int or value < low:
                raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}",
                                         field=name)
        if type(connect_timeout) not in (int, float) or not 0 < connect_timeout <= 3600:
            raise ConfigurationError(f"connect_timeout must be seconds in (0, 3600], got"
                                     f" {connect_timeout!r}", field="connect_timeout")
        self.schema = schema
        self.durability = durability
        self.readonly = bool(readonly)
        self._db = Database(conninfo, schema, pool_size=pool_size,
                            connect_timeout=float(connect_timeout), retries=retries,
                            readonly=self.readonly)
        self.where = self._db.where
        try:
            if self.readonly:
                self._db.check_version()
            else:
                self._db.migrate()
        except BaseException:
            self._db.close()
            raise
        self._build_statements()

    def __repr__(self) -> str:
        return f"PostgresStorage({self.where})"

    def _build_statements(self) -> None:
        s = self.schema
        updates = ", ".join(f"{name} = excluded.{name}" for name in STEP_COLUMNS[1:])
        # No RETURNING: a write that took place stored exactly the record given, so the
        # record itself is the answer (sparing the row's transfer and decoding per write).
        upsert_tail = (f" ON CONFLICT (step_id) DO UPDATE SET {updates}"
                       f" WHERE {s}.steps.status <> 'completed'")
        owned = (f"EXISTS (SELECT 1 FROM {s}.runs WHERE run_id = %s AND fence = %s AND"
                 " status = 'running' FOR SHARE)")
        self._sql_step_get = f"SELECT {_STEPS} FROM {s}.steps WHERE step_id = %s"
        self._sql_set = {
            False: f"INSERT INTO {s}.steps ({_STEPS}) VALUES ({_STEP_VALUES}){upsert_tail}",
            True: f"INSERT INTO {s}.steps ({_STEPS}) SELECT {_STEP_VALUES} FROM {RELAXED}"
                  f"{upsert_tail}",
        }
        self._sql_record = {
            False: f"INSERT INTO {s}.steps ({_STEPS}) SELECT {_STEP_VALUES} WHERE {owned}"
                   f"{upsert_tail}",
            True: f"INSERT INTO {s}.steps ({_STEPS}) SELECT {_STEP_VALUES} FROM {RELAXED}"
                  f" WHERE {owned}{upsert_tail}",
        }
        self._sql_put = (f"INSERT INTO {s}.steps ({_STEPS}) VALUES ({_STEP_VALUES})"
                         f" ON CONFLICT (step_id) DO UPDATE SET {updates}")
        self._sql_run_get = f"SELECT {_RUNS} FROM {s}.runs WHERE run_id = %s"
        self._sql_fence_of = f"SELECT status, fence FROM {s}.runs WHERE run_id = %s"

    def _relaxed(self, status: StepStatus) -> bool:
        """Whether a write of a record in ``status`` may skip waiting for the WAL flush."""
        return self.durability == "normal" or status in _MARKERS

    def _run_work(self, what: str, work: Callable[[Conn], Any], subject: str | None = None
                  ) -> Any:
        return self._db.run(what, work, subject)

    def _atomic(self, what: str, work: Callable[[Conn], Any], subject: str | None = None
                ) -> Any:
        def in_transaction(conn: Conn) -> Any:
            with conn.transaction():
                return work(conn)

        return self._db.run(what, in_transaction, subject)

    def server_time(self) -> float:
        """Seconds since the epoch on the server's clock: what a runtime built on this
        storage without a ``clock`` reads, so that machines whose clocks disagree agree on
        leases and due times."""
        return self._db.server_time()

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` from a background thread when another process starts a run,
        hands one back or sends an event (LISTEN/NOTIFY): a hint to poll at once."""
        self._db.listen(callback)

    def close(self) -> None:
        """Close the connections. Idempotent."""
        self._db.close()

    # ------------------------------------------------------------------ StepStorage

    def get(self, step_id: str) -> StepRecord | None:
        """Return the record for ``step_id`` or ``None``."""
        row = self._run_work("reading step", lambda conn: conn.execute(
            self._sql_step_get, (step_id,)).fetchone(), step_id)
        return None if row is None else row_to_record(row, self.where)

    def set(self, record: StepRecord) -> StepRecord:
        """Store ``record`` unless a COMPLETED one is stored; return what is stored."""
        params = record_to_row(record, self.where)
        return self._write_step(self._sql_set[self._relaxed(record.status)], params, record)

    def write_steps(self, writes: Sequence[StepWrite]
                    ) -> builtins.list[StepRecord | BaseException]:
        """Make several step writes in one transaction, so that they share one commit (and
        one WAL flush): each ``(record, run_id, fence)`` as ``set(record)`` (``run_id``
        None) or ``record_step(run_id, fence, record)`` would make it, in order. The commit
        waits for its WAL flush unless every write in it is one that ``set`` would relax.

        Returns, for each write, what is stored or the error that write alone met
        (``OwnershipLost``, ``StorageError`` for text the server cannot store).

        Raises:
            StorageError: the server failed; nothing of the batch is written.
        """
        rows = batch_rows((record for record, _, _ in writes), self.where)
        relaxed = all(self._relaxed(record.status) for record, _, _ in writes)

        statements: builtins.list[tuple[str, tuple[Any, ...], Callable[[Conn], None] | None]
                                  | None] = []
        for (_, run_id, fence), row in zip(writes, rows, strict=True):
            if isinstance(row, Exception):
                statements.append(None)
            elif run_id is None:
                statements.append((self._sql_set[False], row, None))
            else:
                statements.append((self._sql_record[False], (*row, run_id, fence),
                                   self._fence_check(run_id, fence)))

        def work(conn: Conn) -> builtins.list[StepRecord | BaseException]:
            results: builtins.list[StepRecord | BaseException] = []
            with conn.transaction():
                # Every upsert in one round trip (a pipeline); only a write that wrote
                # nothing (a COMPLETED record, a stale fence) needs statements of its own.
                with conn.pipeline():
                    if relaxed:
                        conn.execute("SET LOCAL synchronous_commit = off")
                    cursors = [None if statement is None
                               else conn.execute(statement[0], statement[1])
                               for statement in statements]
                for (record, _, _), row, statement, cursor in zip(
                        writes, rows, statements, cursors, strict=True):
                    if isinstance(row, Exception):
                        results.append(row)
                    elif cursor is not None and cursor.rowcount:
                        results.append(record)
                    else:
                        assert statement is not None
                        try:
                            results.append(self._put_step(conn, *statement[:2], record,
                                                          statement[2]))
                        except OwnershipLost as lost:
                            results.append(lost)
            return results

        batch: builtins.list[StepRecord | BaseException] = self._run_work("writing steps",
                                                                          work)
        return batch

    def delete(self, step_id: str) -> bool:
        """Remove the record; return whether there was one."""
        return bool(self._run_work("deleting step", lambda conn: conn.execute(
            f"DELETE FROM {self.schema}.steps WHERE step_id = %s", (step_id,)).rowcount,
            step_id))

    def list(self, workflow_id: str | None = None,
             status: StepStatus | None = None) -> builtins.list[StepRecord]:
        """Return matching records in the order they were first written."""
        clauses, params = [], []
        if workflow_id is not None:
            clauses.append("workflow_id = %s")
            params.append(workflow_id)
        if status is not None:
            clauses.append("status = %s")
            params.append(status.value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._run_work("listing steps", lambda conn: conn.execute(
            f"SELECT {_STEPS} FROM {self.schema}.steps{where} ORDER BY seq", params).fetchall())
        return [row_to_record(row, self.where) for row in rows]

    def history(self, workflow_id: str, after: int | None, limit: int
                ) -> tuple[builtins.list[StepRecord], int | None]:
        """One page of a workflow's records in first-write order after the cursor ``after``;
        returns them and the next page's cursor (``None`` after the last page)."""
        rows = self._run_work("reading history", lambda conn: conn.execute(
            f"SELECT {_STEPS}, seq FROM {self.schema}.steps WHERE workflow_id = %s AND seq > %s"
            " ORDER BY seq LIMIT %s", (workflow_id, -1 if after is None else after, limit)
        ).fetchall())
        records = [row_to_record(tuple(row), self.where) for row in rows]
        return records, (int(rows[-1][-1]) if len(rows) == limit else None)
