"""``RunStorage`` for SQLite: runs, fenced step writes and inboxes, in the steps' file.

Each method is one transaction (``BEGIN IMMEDIATE`` where it reads before it writes), or one
statement. The fenced step write is a single statement: the fence check is an ``EXISTS`` in
the same ``UPDATE`` / ``INSERT ... SELECT`` that writes the step, so no other writer can come
between the check and the write, and the common case costs no extra round trip.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..._errors import OwnershipLost, RunClosedError, RunNotFoundError, StorageError
from ..._records import (
    TERMINAL,
    ErrorInfo,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    new_record,
)
from .._memory import recovery_limit_error
from .._rows import (
    record_to_row,
    row_to_event,
    row_to_record,
    row_to_run,
    run_filter,
    run_to_row,
)
from ._connection import transaction
from ._schema import EVENT_COLUMNS, HELD, RUN_COLUMNS, STEP_COLUMNS, WAKING, TableNames

__all__ = ["RunTables"]

_T = TypeVar("_T")
_RUN_COLUMNS = ", ".join(RUN_COLUMNS)
_EVENT_COLUMNS = ", ".join(EVENT_COLUMNS)
_STEP_COLUMNS = ", ".join(STEP_COLUMNS)
_RUN_PLACEHOLDERS = ", ".join("?" * len(RUN_COLUMNS))
_STEP_PLACEHOLDERS = ", ".join("?" * len(STEP_COLUMNS))
_TERMINAL = tuple(status.value for status in TERMINAL)
_OUTCOMES = (StepStatus.COMPLETED, StepStatus.FAILED)
_TERMINAL_MARKS = ", ".join("?" * len(_TERMINAL))


# UPDATE ... RETURNING (SQLite 3.35+) turns a fenced update and the read of its result into
# one statement; older libraries use a transaction of two.
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)


def _marks(count: int) -> str:
    """``?, ?, ?``: placeholders for an ``IN`` list of ``count`` values."""
    return ", ".join("?" * count)


class RunTables:
    """The run methods of ``SqliteStepStorage`` (a mixin: it uses the storage's connections,
    lock and table names)."""

    path: str
    _names: TableNames
    _lock: threading.RLock
    _outcome_conn: sqlite3.Connection | None

    def _writable(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _failure(self, error: sqlite3.Error, what: str, step_id: str | None) -> StorageError:
        raise NotImplementedError

    # ------------------------------------------------------------------ statements

    def _build_run_statements(self) -> None:
        runs, steps = self._names.runs, self._names.steps
        self._due_index = f"INDEXED BY {runs}_due"
        self._expiry_index = f"INDEXED BY {runs}_expiry"
        owned = f"EXISTS (SELECT 1 FROM {runs} WHERE run_id = ? AND fence = ? AND" \
                " status = 'running')"
        updates = ", ".join(f"{name} = excluded.{name}" for name in STEP_COLUMNS[1:])
        self._sql_run_get = f"SELECT {_RUN_COLUMNS} FROM {runs} WHERE run_id = ?"
        self._sql_run_insert = (
            f"INSERT INTO {runs} ({_RUN_COLUMNS}) VALUES ({_RUN_PLACEHOLDERS})"
            " ON CONFLICT (run_id) DO NOTHING")
        self._sql_fenced_update = (
            f"UPDATE {steps} SET action = ?, status = ?, result = ?, error = ?, attempts = ?,"
            " created_at = ?, started_at = ?, updated_at = ?, completed_at = ?,"
            " next_attempt_at = ?, budget_started_at = ?"
            f" WHERE step_id = ? AND workflow_id = ? AND status != 'completed' AND {owned}")
        self._sql_fenced_upsert = (
            f"INSERT INTO {steps} ({_STEP_COLUMNS}) SELECT {_STEP_PLACEHOLDERS} WHERE {owned}"
            f" ON CONFLICT (step_id) DO UPDATE SET {updates}"
            f" WHERE {steps}.status != 'completed'")
        self._sql_step_get = f"SELECT {_STEP_COLUMNS} FROM {steps} WHERE step_id = ?"
        self._sql_step_upsert = (
            f"INSERT INTO {steps} ({_STEP_COLUMNS}) VALUES ({_STEP_PLACEHOLDERS})"
            f" ON CONFLICT (step_id) DO UPDATE SET {updates}")
        self._sql_fence_of = f"SELECT status, fence FROM {runs} WHERE run_id = ?"
        self._sql_event_take = (
            f"UPDATE {self._names.events} SET consumed_by = ?, consumed_at = ? WHERE seq = ?"
            f" AND {owned} AND NOT EXISTS (SELECT 1 FROM {steps} WHERE step_id = ?"
            " AND status = 'completed')")
        self._sql_finish = (
            f"UPDATE {runs} SET status = ?, result = ?, error = ?, owner = NULL,"
            " lease_until = NULL, wake_at = NULL, waiting_for = NULL, updated_at = ?,"
            " completed_at = ? WHERE run_id = ? AND fence = ? AND status = 'running'")
        events = self._names.events
        self._sql_event_insert = (
            f"INSERT INTO {events} (run_id, name, key, payload, sent_at) SELECT ?, ?, ?, ?, ?"
            f" WHERE EXISTS (SELECT 1 FROM {runs} WHERE run_id = ? AND status NOT IN"
            f" ({_TERMINAL_MARKS})) ON CONFLICT (run_id, name, key) DO NOTHING")
        self._sql_event_keyed = (
            f"SELECT 1 FROM {events} WHERE run_id = ? AND name = ? AND key = ?")
        self._sql_claim_one = (
            f"UPDATE {runs} SET status = 'running', owner = ?, lease_until = ?,"
            " fence = fence + 1, recovery_count = recovery_count + (status = 'running'),"
            " wake_at = NULL, waiting_for = NULL, updated_at = ? WHERE run_id = ? AND ("
            "(status IN ('pending', 'suspended') AND wake_at <= ?) OR (status = 'running'"
            " AND lease_until < ? AND recovery_count < max_recoveries))")

    # ------------------------------------------------------------------ helpers

    def _run(self, conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
        row = conn.execute(self._sql_run_get, (run_id,)).fetchone()
        return None if row is None else row_to_run(row, self.path)

    def _updated(self, conn: sqlite3.Connection, sql: str, params: tuple[Any, ...],
                 run_id: str) -> tuple[Any, ...]:
        """Run an ``UPDATE`` of one run and return its row as it now is."""
        if _RETURNING:
            row = conn.execute(sql + f" RETURNING {_RUN_COLUMNS}", params).fetchone()
        else:
            conn.execute(sql, params)
            row = conn.execute(self._sql_run_get, (run_id,)).fetchone()
        assert row is not None
        return tuple(row)

    def _check_owned(self, conn: sqlite3.Connection, run_id: str, fence: int) -> None:
        row = conn.execute(self._sql_fence_of, (run_id,)).fetchone()
        if row is None or row[0] != RunStatus.RUNNING.value or row[1] != fence:
            raise OwnershipLost(run_id, fence)

    @contextmanager
    def _guarded(self, what: str, subject: str | None = None) -> Iterator[None]:
        """Turn SQLite's errors into ``StorageError`` naming the operation and the path."""
        try:
            yield
        except sqlite3.Error as error:
            raise self._failure(error, what, subject) from error

    def _writer(self, outcome: bool) -> sqlite3.Connection:
        """The connection a write is made on (under the lock): for an ``outcome`` the one
        that syncs it with "full", else the store's own; always through ``_writable``, which
        refuses a read-only store and gives back the busy timeout ``try_now`` left at zero."""
        conn = self._writable()
        if outcome and self._outcome_conn is not None:
            return self._outcome_conn
        return conn

    def _atomic(self, what: str, work: Callable[[sqlite3.Connection], _T], *,
                outcome: bool = False, subject: str | None = None) -> _T:
        """Run ``work(conn)`` inside ``BEGIN IMMEDIATE`` (on the outcome connection when
        ``outcome``, so that "full" durability syncs it)."""
        with self._lock, self._guarded(what, subject):
            conn = self._writer(outcome)
            with transaction(conn):
                return work(conn)

    # ------------------------------------------------------------------ runs

    def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``record`` unless its id exists; return (stored run, created)."""
        with self._lock, self._guarded("creating run", record.run_id):
            conn = self._writable()
            if conn.execute(self._sql_run_insert, run_to_row(record)).rowcount:
                return record, True
            stored = self._run(conn, record.run_id)
        if stored is None:  # deleted between the two statements: try again
            return self.create_run(record)
        return stored, False

    def claim(self, executor_id: str, now: float, lease: float, *, run_id: str | None = None,
              limit: int | None = None, workflows: Collection[str] | None = None,
              code_versions: Collection[str | None] | None = None
              ) -> builtins.list[RunRecord]:
        """Claim due runs (see ``RunStorage.claim``), in one transaction."""
        if run_id is not None and workflows is None and code_versions is None:
            fast = self._claim_one(executor_id, now, lease, run_id)
            if fast is not None:
                return fast
        runs = self._names.runs
        clauses, params = [], []
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        if workflows is not None:
            marks = _marks(len(workflows))
            clauses.append(f"workflow IN ({marks})")
            params.extend(workflows)
        if code_versions is not None:
            versions = [v for v in code_versions if v is not None]
            marks = _marks(len(versions))
            wanted = [f"code_version IN ({marks})"] if versions else []
            if None in code_versions:
                wanted.append("code_version IS NULL")
            clauses.append("(" + " OR ".join(wanted or ["0"]) + ")")
            params.extend(versions)
        where = "".join(" AND " + clause for clause in clauses)
        # The candidates, by the two partial indexes: only what deciding a claim needs.
        select = (
            "SELECT run_id, status, recovery_count, max_recoveries FROM ("
            f" SELECT run_id, status, recovery_count, max_recoveries, seq, wake_at AS due"
            f" FROM {runs} {self._due_index} WHERE {WAKING} AND wake_at <= ?{where}"
            f" UNION ALL SELECT run_id, status, recovery_count, max_recoveries, seq,"
            f" lease_until AS due FROM {runs} {self._expiry_index} WHERE {HELD}"
            f" AND lease_until < ?{where}) ORDER BY due, seq LIMIT ?")
        cap = -1 if limit is None else int(limit)  # SQLite: a negative LIMIT is no limit
        claim_sql = (
            f"UPDATE {runs} SET status = 'running', owner = ?, lease_until = ?,"
            " fence = fence + 1, recovery_count = ?, wake_at = NULL, waiting_for = NULL,"
            " updated_at = ? WHERE run_id = ?")
        fail_sql = (
            f"UPDATE {runs} SET status = 'failed', owner = NULL, lease_until = NULL,"
            " error = ?, updated_at = ?, completed_at = ? WHERE run_id = ?")

        def work(conn: sqlite3.Connection) -> builtins.list[RunRecord]:
            rows = conn.execute(select, (now, *params, now, *params, cap)).fetchall()
            claimed = []
            for run_id, status, recovery_count, max_recoveries in rows:
                takeover = status == RunStatus.RUNNING.value
                recoveries = recovery_count + (1 if takeover else 0)
                if takeover and recoveries > max_recoveries:
                    error = json.dumps(recovery_limit_error(run_id, recovery_count).to_dict())
                    row = self._updated(conn, fail_sql, (error, now, now, run_id), run_id)
                else:
                    row = self._updated(conn, claim_sql, (executor_id, now + lease, recoveries,
                                                          now, run_id), run_id)
                claimed.append(row_to_run(row, self.path))
            return claimed

        return self._atomic("claiming runs", work)

    def _claim_one(self, executor_id: str, now: float, lease: float,
                   run_id: str) -> builtins.list[RunRecord] | None:
        """Claiming one run by id (what ``start`` and a waiting ``run()`` do): one ``UPDATE``
        whose ``WHERE`` is the whole "is it due?" rule, instead of a transaction. Returns
        ``None`` when only the general path can decide (a takeover past the recovery limit,
        which must fail the run)."""
        with self._lock, self._guarded("claiming run", run_id):
            conn = self._writable()
            if conn.execute(self._sql_claim_one, (executor_id, now + lease, now, run_id, now,
                                                   now)).rowcount:
                stored = self._run(conn, run_id)
                return [] if stored is None else [stored]
            row = conn.execute(self._sql_fence_of, (run_id,)).fetchone()
        if row is not None and row[0] == RunStatus.RUNNING.value:
            return None  # maybe expired past its recoveries: the general path fails it
        return []

    def renew(self, executor_id: str, leases: Mapping[str, int], now: float,
              lease: float) -> builtins.set[str]:
        """Extend the leases ``executor_id`` still holds; return the ids renewed."""
        runs = self._names.runs

        def work(conn: sqlite3.Connection) -> builtins.set[str]:
            renewed: builtins.set[str] = builtins.set()
            for run_id, fence in leases.items():
                if conn.execute(
                        f"UPDATE {runs} SET lease_until = ? WHERE run_id = ? AND fence = ?"
                        " AND owner = ? AND status = 'running'",
                        (now + lease, run_id, fence, executor_id)).rowcount:
                    renewed.add(run_id)
            return renewed

        return self._atomic("renewing leases", work) if leases else set()

    def record_step(self, run_id: str, fence: int, record: StepRecord) -> StepRecord:
        """Check the run's fence and write the step, in one statement."""
        row = record_to_row(record, self.path)
        with self._lock:
            try:  # what _guarded does, without a generator: two of these per step of a run
                return self._put_fenced(self._writer(record.status in _OUTCOMES), run_id,
                                        fence, record, row)
            except sqlite3.Error as error:
                raise self._failure(error, "writing", record.step_id) from error

    def _put_fenced(self, conn: sqlite3.Connection, run_id: str, fence: int,
                    record: StepRecord, row: tuple[Any, ...]) -> StepRecord:
        """``record_step``'s statements, on ``conn`` (under the lock)."""
        probably_new = record.attempts <= 1 and record.status is StepStatus.RUNNING
        if not probably_new and conn.execute(
                self._sql_fenced_update, (*row[2:], row[0], row[1], run_id, fence)
        ).rowcount:
            return record
        if conn.execute(self._sql_fenced_upsert, (*row, run_id, fence)).rowcount:
            return record
        # Nothing was written: either the fence is stale or the step is COMPLETED.
        self._check_owned(conn, run_id, fence)
        stored = conn.execute(self._sql_step_get, (record.step_id,)).fetchone()
        return row_to_record(stored, self.path)

    def finish(self, run_id: str, fence: int, status: RunStatus, now: float, *,
               result: str | None = None, error: ErrorInfo | None = None) -> RunRecord:
        """Fenced: end the run as ``status``."""
        text = None if error is None else json.dumps(error.to_dict())
        params = (status.value, result, text, now, now, run_id, fence)
        if _RETURNING:  # one statement: the fenced update hands the run back
            with self._lock, self._guarded("finishing run", run_id):
                row = self._writer(True).execute(self._sql_finish + f" RETURNING {_RUN_COLUMNS}",
                                   params).fetchone()
            if row is None:
                raise OwnershipLost(run_id, fence)
            return row_to_run(row, self.path)

        def work(conn: sqlite3.Connection) -> RunRecord:
            if not conn.execute(self._sql_finish, params).rowcount:
                raise OwnershipLost(run_id, fence)
            stored = self._run(conn, run_id)
            assert stored is not None
            return stored

        return self._atomic("finishing run", work, outcome=True, subject=run_id)

    def suspend(self, run_id: str, fence: int, now: float, wake_at: float | None,
                waiting_for: str | None) -> RunRecord:
        """Fenced: SUSPENDED until ``wake_at`` or an event ``waiting_for``."""
        runs = self._names.runs

        def work(conn: sqlite3.Connection) -> RunRecord:
            self._check_owned(conn, run_id, fence)
            due = wake_at
            if waiting_for is not None and self._first_unconsumed(
                    conn, run_id, waiting_for, wake_at) is not None:
                due = now  # the event is already here
            conn.execute(
                f"UPDATE {runs} SET status = 'suspended', owner = NULL, lease_until = NULL,"
                " wake_at = ?, waiting_for = ?, updated_at = ? WHERE run_id = ?",
                (due, waiting_for, now, run_id))
            stored = self._run(conn, run_id)
            assert stored is not None
            return stored

        return self._atomic("suspending run", work, subject=run_id)

    def release(self, run_id: str, fence: int, now: float) -> bool:
        """Hand a run back (PENDING, due now) if it is RUNNING under ``fence``."""
        with self._lock, self._guarded("releasing run", run_id):
            return bool(self._writable().execute(
                f"UPDATE {self._names.runs} SET status = 'pending', owner = NULL,"
                " lease_until = NULL, wake_at = ?, updated_at = ?"
                " WHERE run_id = ? AND fence = ? AND status = 'running'",
                (now, now, run_id, fence)).rowcount)

    def cancel(self, run_id: str, now: float, error: ErrorInfo | None = None) -> bool:
        """CANCELLED, fence bumped, unless terminal or missing."""
        text = None if error is None else json.dumps(error.to_dict())
        with self._lock, self._guarded("cancelling run", run_id):
            return bool(self._writable().execute(
                f"UPDATE {self._names.runs} SET status = 'cancelled', fence = fence + 1,"
                " owner = NULL, lease_until = NULL, wake_at = NULL, waiting_for = NULL,"
                " error = ?, updated_at = ?, completed_at = ? WHERE run_id = ?"
                f" AND status NOT IN ({_TERMINAL_MARKS})",
                (text, now, now, run_id, *_TERMINAL)).rowcount)

    def resume(self, run_id: str, now: float) -> bool:
        """CANCELLED or FAILED back to PENDING, due now, with a fresh recovery budget."""
        with self._lock, self._guarded("resuming run", run_id):
            return bool(self._writable().execute(
                f"UPDATE {self._names.runs} SET status = 'pending', recovery_count = 0,"
                " error = NULL, wake_at = ?, completed_at = NULL, updated_at = ?"
                " WHERE run_id = ? AND status IN ('cancelled', 'failed')",
                (now, now, run_id)).rowcount)

    def restart_run(self, run_id: str, now: float,
                    drop: Collection[str]) -> RunRecord | None:
        """Drop steps, give back their events, and make the run PENDING (see RunStorage)."""
        names = self._names
        dropped = [(step_id, run_id) for step_id in drop]

        def work(conn: sqlite3.Connection) -> RunRecord | None:
            if self._run(conn, run_id) is None:
                return None
            conn.executemany(f"DELETE FROM {names.steps} WHERE step_id = ? AND workflow_id = ?",
                             dropped)
            conn.executemany(f"UPDATE {names.events} SET consumed_by = NULL,"
                             " consumed_at = NULL WHERE consumed_by = ? AND run_id = ?", dropped)
            row = self._updated(conn, (
                f"UPDATE {names.runs} SET status = 'pending', fence = fence + 1, owner = NULL,"
                " lease_until = NULL, result = NULL, error = NULL, recovery_count = 0,"
                " wake_at = ?, waiting_for = NULL, updated_at = ?, completed_at = NULL"
                " WHERE run_id = ?"), (now, now, run_id), run_id)
            return row_to_run(row, self.path)

        return self._atomic("restarting run", work, subject=run_id)

    def insert_run(self, record: RunRecord, steps: Sequence[StepRecord],
                   events: Sequence[EventRecord]) -> bool:
        """Insert a run with its steps and events unless its id exists (see RunStorage)."""
        names = self._names
        step_rows = [record_to_row(step, self.path) for step in steps]
        event_rows = [(record.run_id, e.name, e.key, e.payload, e.sent_at, e.consumed_by,
                       e.consumed_at) for e in events]

        def work(conn: sqlite3.Connection) -> bool:
            if self._run(conn, record.run_id) is not None:
                return False
            # Events before the run: the wake trigger finds no run to change, so the run is
            # stored exactly as given.
            conn.executemany(
                f"INSERT INTO {names.events} (run_id, name, key, payload, sent_at, consumed_by,"
                " consumed_at) VALUES (?, ?, ?, ?, ?, ?, ?)", event_rows)
            conn.execute(self._sql_run_insert, run_to_row(record))
            conn.executemany(self._sql_step_upsert, step_rows)
            return True

        return self._atomic("inserting run", work, subject=record.run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the run, or ``None``."""
        with self._lock, self._guarded("reading run", run_id):
            return self._run(self._connection(), run_id)

    def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None,
                  limit: int | None = 100, after: str | None = None,
                  due: float | None = None) -> builtins.list[RunRecord]:
        """Return runs in creation order, filtered (see ``RunStorage.list_runs``)."""
        runs = self._names.runs
        where, params = run_filter(runs, "?", status=status, workflow=workflow, after=after,
                                   due=due)
        params.append(-1 if limit is None else int(limit))
        with self._lock, self._guarded("listing runs"):
            rows = self._connection().execute(
                f"SELECT {_RUN_COLUMNS} FROM {runs}{where} ORDER BY seq LIMIT ?", params
            ).fetchall()
        return [row_to_run(row, self.path) for row in rows]

    def delete_run(self, run_id: str) -> bool:
        """Delete the run with its steps and events."""
        names = self._names

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute(f"DELETE FROM {names.steps} WHERE workflow_id = ?", (run_id,))
            conn.execute(f"DELETE FROM {names.events} WHERE run_id = ?", (run_id,))
            return bool(conn.execute(f"DELETE FROM {names.runs} WHERE run_id = ?",
                                     (run_id,)).rowcount)

        return self._atomic("deleting run", work, subject=run_id)

    def next_wake_at(self, workflows: Collection[str] | None = None) -> float | None:
        """The earliest time at which a run (of ``workflows``) becomes due, or ``None``."""
        runs = self._names.runs
        where: str = ""
        params: tuple[str, ...] = ()
        if workflows is not None:
            marks = _marks(len(workflows))
            where, params = f" AND workflow IN ({marks})", tuple(workflows)
        with self._lock, self._guarded("reading wake times"):
            conn = self._connection()
            waking = conn.execute(
                f"SELECT wake_at FROM {runs} {self._due_index} WHERE {WAKING}"
                f" AND wake_at IS NOT NULL{where} ORDER BY wake_at LIMIT 1", params).fetchone()
            expiring = conn.execute(
                f"SELECT lease_until FROM {runs} {self._expiry_index} WHERE {HELD}"
                f" AND lease_until IS NOT NULL{where} ORDER BY lease_until LIMIT 1",
                params).fetchone()
        present = [row[0] for row in (waking, expiring) if row is not None]
        return min(present) if present else None

    # ------------------------------------------------------------------ events

    def _first_unconsumed(self, conn: sqlite3.Connection, run_id: str, name: str,
                          deadline: float | None) -> EventRecord | None:
        sql = (f"SELECT {_EVENT_COLUMNS} FROM {self._names.events} WHERE run_id = ?"
               " AND name = ? AND consumed_by IS NULL")
        params: builtins.list[Any] = [run_id, name]
        if deadline is not None:
            sql += " AND sent_at <= ?"
            params.append(deadline)
        row = conn.execute(sql + " ORDER BY seq LIMIT 1", params).fetchone()
        return None if row is None else row_to_event(row, self.path)

    def add_event(self, run_id: str, name: str, key: str | None, payload: str,
                  now: float) -> bool:
        """Put an event in the inbox (see ``RunStorage.add_event``).

        One statement: the insert happens only while the run is open, the unique key drops a
        repeat, and the schema's trigger makes a SUSPENDED run waiting for ``name`` due. Only
        when nothing was inserted is the run read, to tell a repeat from a missing or closed run.
        """
        with self._lock, self._guarded("sending event", run_id):
            conn = self._writable()
            if conn.execute(self._sql_event_insert,
                            (run_id, name, key, payload, now, run_id, *_TERMINAL)).rowcount:
                return True
            if key is not None and conn.execute(self._sql_event_keyed,
                                                (run_id, name, key)).fetchone() is not None:
                return False  # a repeat, even to a finished run: still harmless
            row = conn.execute(self._sql_fence_of, (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        if row[0] in _TERMINAL:
            raise RunClosedError(run_id, row[0])
        return self.add_event(run_id, name, key, payload, now)  # reopened meanwhile: again

    def consume_event(self, run_id: str, fence: int, name: str, deadline: float | None,
                      record: StepRecord) -> tuple[EventRecord | None, StepRecord]:
        """Fenced: consume the oldest matching event and complete ``record`` with it."""
        def work(conn: sqlite3.Connection) -> tuple[EventRecord | None, StepRecord]:
            event = self._first_unconsumed(conn, run_id, name, deadline)
            at, step_id = record.updated_at, record.step_id
            # The common case in two statements: the UPDATE itself takes the event only
            # while the run is ours and the step is not COMPLETED.
            if event is not None and conn.execute(
                    self._sql_event_take, (step_id, at, event.seq, run_id, fence, step_id)
            ).rowcount:
                done = new_record(
                    step_id=step_id, workflow_id=record.workflow_id, action=record.action,
                    status=StepStatus.COMPLETED, result=event.payload, error=None,
                    attempts=record.attempts, created_at=record.created_at,
                    started_at=record.started_at, updated_at=at, completed_at=at,
                    next_attempt_at=record.next_attempt_at,
                    budget_started_at=record.budget_started_at)
                conn.execute(self._sql_step_upsert, record_to_row(done, self.path))
                taken = EventRecord(seq=event.seq, run_id=event.run_id, name=event.name,
                                    key=event.key, payload=event.payload,
                                    sent_at=event.sent_at, consumed_by=step_id,
                                    consumed_at=at)
                return taken, done
            # Nothing taken: the fence is stale (raised here), the step is already COMPLETED
            # (returned as it is), or there is no such event yet.
            self._check_owned(conn, run_id, fence)
            row = conn.execute(self._sql_step_get, (step_id,)).fetchone()
            return None, record if row is None else row_to_record(row, self.path)

        return self._atomic("consuming event", work, outcome=True, subject=record.step_id)

    def list_events(self, run_id: str) -> builtins.list[EventRecord]:
        """Return the run's inbox in the order events were sent."""
        with self._lock, self._guarded("listing events", run_id):
            rows = self._connection().execute(
                f"SELECT {_EVENT_COLUMNS} FROM {self._names.events} WHERE run_id = ?"
                " ORDER BY seq", (run_id,)).fetchall()
        return [row_to_event(row, self.path) for row in rows]
