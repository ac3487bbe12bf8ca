"""``RunStorage`` for PostgreSQL: runs, fenced step writes and inboxes, in the schema's
``runs`` and ``events`` tables (mixed into :class:`PostgresStorage`; see ``_store`` for the
rules every statement keeps)."""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import psycopg

from ..._errors import OwnershipLost, RunClosedError, RunNotFoundError, StorageError
from ..._records import (
    TERMINAL,
    ErrorInfo,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from .._memory import recovery_limit_error
from .._rows import (
    EVENT_COLUMNS,
    HELD,
    RUN_COLUMNS,
    STEP_COLUMNS,
    WAKING,
    record_to_row,
    row_to_event,
    row_to_record,
    row_to_run,
    run_filter,
    run_to_row,
)

__all__ = ["RunTables", "error_text"]

Conn = psycopg.Connection[Any]

_RUNS = ", ".join(RUN_COLUMNS)
_EVENTS = ", ".join(EVENT_COLUMNS)
_STEPS = ", ".join(STEP_COLUMNS)
_RUN_VALUES = ", ".join(["%s"] * len(RUN_COLUMNS))
_TERMINAL = [status.value for status in TERMINAL]
# A statement that commits without waiting for its WAL flush: set_config(..., true) applies
# to the statement's own transaction, and a FROM item is evaluated before the write.
RELAXED = "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"


def error_text(error: ErrorInfo | None) -> str | None:
    """An error as the text column holds it."""
    return None if error is None else json.dumps(error.to_dict())


class RunTables:
    """The ``RunStorage`` half of :class:`PostgresStorage` (statements built there)."""

    schema: str
    where: str
    _sql_run_get: str
    _sql_fence_of: str
    _sql_step_get: str
    _sql_set: dict[bool, str]
    _sql_put: str
    _sql_record: dict[bool, str]

    def _relaxed(self, status: StepStatus) -> bool:
        raise NotImplementedError

    def _run_work(self, what: str, work: Callable[[Conn], Any], subject: str | None = None
                  ) -> Any:
        raise NotImplementedError

    def _atomic(self, what: str, work: Callable[[Conn], Any], subject: str | None = None
                ) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ runs

    def _get_run(self, conn: Conn, run_id: str) -> RunRecord | None:
        row = conn.execute(self._sql_run_get, (run_id,)).fetchone()
        return None if row is None else row_to_run(row, self.where)

    def _check_owned(self, conn: Conn, run_id: str, fence: int) -> None:
        row = conn.execute(self._sql_fence_of, (run_id,)).fetchone()
        if row is None or row[0] != RunStatus.RUNNING.value or row[1] != fence:
            raise OwnershipLost(run_id, fence)

    def _fence_check(self, run_id: str, fence: int) -> Callable[[Conn], None]:
        """``_check_owned`` for ``run_id`` and ``fence``, as a step write's ``refused``."""
        def refused(conn: Conn) -> None:
            self._check_owned(conn, run_id, fence)
        return refused

    def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``record`` unless its id exists; return (stored run, created)."""
        def work(conn: Conn) -> tuple[RunRecord, bool]:
            created = conn.execute(
                f"INSERT INTO {self.schema}.runs ({_RUNS}) VALUES ({_RUN_VALUES})"
                " ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
                run_to_row(record)).fetchone()
            if created is not None:
                return record, True
            stored = self._get_run(conn, record.run_id)
            if stored is None:  # deleted between the two statements: insert again
                return work(conn)
            return stored, False

        result: tuple[RunRecord, bool] = self._run_work("creating run", work, record.run_id)
        return result

    def claim(self, executor_id: str, now: float, lease: float, *, run_id: str | None = None,
              limit: int | None = None, workflows: Collection[str] | None = None,
              code_versions: Collection[str | None] | None = None
              ) -> builtins.list[RunRecord]:
        """Claim due runs (see ``RunStorage.claim``) in one statement: the due rows are
        locked ``FOR UPDATE SKIP LOCKED`` and updated together."""
        s = self.schema
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = [now, now]
        if run_id is not None:
            clauses.append("run_id = %s")
            params.append(run_id)
        if workflows is not None:
            clauses.append("workflow = ANY(%s)")
            params.append(builtins.list(workflows))
        if code_versions is not None:
            versions = [v for v in code_versions if v is not None]
            wanted = ["code_version = ANY(%s)"] if versions else []
            if versions:
                params.append(versions)
            if None in code_versions:
                wanted.append("code_version IS NULL")
            clauses.append("(" + " OR ".join(wanted or ["false"]) + ")")
        where = "".join(" AND " + clause for clause in clauses)
        params.append(limit)
        claimed_columns = ", ".join(f"c.{name}" for name in RUN_COLUMNS)
        nulls = ", ".join(["NULL"] * len(RUN_COLUMNS))
        # Expired leases past their recoveries are locked and reported, not claimed: they
        # are failed below with the error their run deserves.
        sql = (
            f"WITH due AS (SELECT run_id, seq, status = 'running' AS takeover,"
            f" status = 'running' AND recovery_count >= max_recoveries AS spent,"
            f" CASE WHEN status = 'running' THEN lease_until ELSE wake_at END AS due_at"
            f" FROM {s}.runs WHERE (({WAKING} AND wake_at <= %s)"
            f" OR ({HELD} AND lease_until < %s)){where}"
            f" ORDER BY due_at, seq LIMIT %s FOR UPDATE SKIP LOCKED),"
            f" claimed AS (UPDATE {s}.runs r SET status = 'running', owner = %s,"
            f" lease_until = %s, fence = r.fence + 1,"
            f" recovery_count = r.recovery_count + due.takeover::int, wake_at = NULL,"
            f" waiting_for = NULL, updated_at = %s FROM due"
            f" WHERE r.run_id = due.run_id AND NOT due.spent RETURNING r.*)"
            f" SELECT NULL::text, {claimed_columns}, due.due_at, due.seq"
            f" FROM claimed c JOIN due ON due.run_id = c.run_id"
            f" UNION ALL SELECT run_id, {nulls}, due_at, seq FROM due WHERE spent"
            f" ORDER BY {len(RUN_COLUMNS) + 2}, {len(RUN_COLUMNS) + 3}")
        params += [executor_id, now + lease, now]

        def work(conn: Conn) -> builtins.list[Any]:
            return conn.execute(sql, params).fetchall()

        rows = self._run_work("claiming runs", work, run_id)
        claimed = [row_to_run(tuple(row[1:-2]), self.where) for row in rows if row[0] is None]
        for spent in (row[0] for row in rows if row[0] is not None):
            failed = self._fail_spent(spent, now)
            if failed is not None:
                claimed.append(failed)
        return claimed

    def _fail_spent(self, run_id: str, now: float) -> RunRecord | None:
        """FAIL an expired run that has used up its recoveries (if it still is one)."""
        def work(conn: Conn) -> Any:
            stored = self._get_run(conn, run_id)
            if stored is None:
                return None
            error = error_text(recovery_limit_error(run_id, stored.recovery_count))
            return conn.execute(
                f"UPDATE {self.schema}.runs SET status = 'failed', owner = NULL,"
                " lease_until = NULL, error = %s, updated_at = %s, completed_at = %s"
                " WHERE run_id = %s AND status = 'running' AND lease_until < %s"
                f" AND recovery_count >= max_recoveries RETURNING {_RUNS}",
                (error, now, now, run_id, now)).fetchone()

        row = self._atomic("failing run", work, run_id)
        return None if row is None else row_to_run(row, self.where)

    def renew(self, executor_id: str, leases: Mapping[str, int], now: float,
              lease: float) -> builtins.set[str]:
        """Extend the leases ``executor_id`` still holds; return the ids renewed."""
        if not leases:
            return set()
        ids, fences = builtins.list(leases), builtins.list(leases.values())

        def work(conn: Conn) -> builtins.list[Any]:
            return conn.execute(
                f"UPDATE {self.schema}.runs r SET lease_until = %s"
                f" FROM unnest(%s::text[], %s::bigint[]) AS held(run_id, fence), {RELAXED}"
                " WHERE r.run_id = held.run_id AND r.fence = held.fence AND r.owner = %s"
                " AND r.status = 'running' RETURNING r.run_id",
                (now + lease, ids, fences, executor_id)).fetchall()

        return {row[0] for row in self._run_work("renewing leases", work)}

    def record_step(self, run_id: str, fence: int, record: StepRecord) -> StepRecord:
        """Fenced ``set``: one statement that checks the fence, locks the run's row against
        a concurrent claim and writes the step."""
        params = (*record_to_row(record, self.where), run_id, fence)
        sql = self._sql_record[self._relaxed(record.status)]

        return self._write_step(sql, params, record, self._fence_check(run_id, fence))

    def _write_step(self, sql: str, params: Sequence[Any], record: StepRecord,
                    refused: Callable[[Conn], None] | None = None) -> StepRecord:
        """Run an upsert of ``record`` that writes nothing over a COMPLETED record (or under
        a stale fence); return what is stored. A write that took place stored ``record``
        itself; when none did, ``refused(conn)`` raises if the fence is stale, and the
        stored (COMPLETED) record is read back (or, deleted meanwhile, written again)."""
        stored: StepRecord = self._run_work(
            "writing step", lambda conn: self._put_step(conn, sql, params, record, refused),
            record.step_id)
        return stored

    def _put_step(self, conn: Conn, sql: str, params: Sequence[Any], record: StepRecord,
                  refused: Callable[[Conn], None] | None) -> StepRecord:
        """``_write_step``'s statements, on ``conn``."""
        while not conn.execute(sql, params).rowcount:
            if refused is not None:
                refused(conn)
            row = conn.execute(self._sql_step_get, (record.step_id,)).fetchone()
            if row is not None:
                return row_to_record(row, self.where)
        return record

    def finish(self, run_id: str, fence: int, status: RunStatus, now: float, *,
               result: str | None = None, error: ErrorInfo | None = None) -> RunRecord:
        """Fenced: end the run as ``status``."""
        def work(conn: Conn) -> Any:
            row = conn.execute(
                f"UPDATE {self.schema}.runs SET status = %s, result = %s, error = %s,"
                " owner = NULL, lease_until = NULL, wake_at = NULL, waiting_for = NULL,"
                " updated_at = %s, completed_at = %s WHERE run_id = %s AND fence = %s"
                f" AND status = 'running' RETURNING {_RUNS}",
                (status.value, result, error_text(error), now, now, run_id, fence)).fetchone()
            if row is not None:
                return row
            stored = self._get_run(conn, run_id)
            # Finished by this very call before its reply was lost (a retried attempt).
            if stored is not None and stored.fence == fence and stored.status is status \
                    and stored.completed_at == now:
                return conn.execute(self._sql_run_get, (run_id,)).fetchone()
            raise OwnershipLost(run_id, fence)

        return row_to_run(self._run_work("finishing run", work, run_id), self.where)

    def suspend(self, run_id: str, fence: int, now: float, wake_at: float | None,
                waiting_for: str | None) -> RunRecord:
        """Fenced: SUSPENDED until ``wake_at`` or an event ``waiting_for`` (due at once if
        that event is already in the inbox)."""
        s = self.schema

        def work(conn: Conn) -> Any:
            row = conn.execute(
                f"UPDATE {s}.runs SET status = 'suspended', owner = NULL, lease_until = NULL,"
                " wake_at = CASE WHEN %s::text IS NOT NULL AND EXISTS (SELECT 1 FROM"
                f" {s}.events e WHERE e.run_id = %s AND e.name = %s AND e.consumed_by IS NULL"
                " AND (%s::double precision IS NULL OR e.sent_at <= %s)) THEN %s ELSE %s END,"
                " waiting_for = %s, updated_at = %s WHERE run_id = %s AND fence = %s"
                f" AND status = 'running' RETURNING {_RUNS}",
                (waiting_for, run_id, waiting_for, wake_at, wake_at, now, wake_at, waiting_for,
                 now, run_id, fence)).fetchone()
            if row is None:
                stored = self._get_run(conn, run_id)
                if stored is not None and stored.fence == fence \
                        and stored.status is RunStatus.SUSPENDED and stored.updated_at == now:
                    return conn.execute(self._sql_run_get, (run_id,)).fetchone()
                raise OwnershipLost(run_id, fence)
            return row

        return row_to_run(self._run_work("suspending run", work, run_id), self.where)

    def release(self, run_id: str, fence: int, now: float) -> bool:
        """Hand a run back (PENDING, due now) if it is RUNNING under ``fence``."""
        return bool(self._run_work("releasing run", lambda conn: conn.execute(
            f"UPDATE {self.schema}.runs SET status = 'pending', owner = NULL,"
            " lease_until = NULL, wake_at = %s, updated_at = %s"
            " WHERE run_id = %s AND fence = %s AND status = 'running'",
            (now, now, run_id, fence)).rowcount, run_id))

    def cancel(self, run_id: str, now: float, error: ErrorInfo | None = None) -> bool:
        """CANCELLED, fence bumped, unless terminal or missing."""
        return bool(self._run_work("cancelling run", lambda conn: conn.execute(
            f"UPDATE {self.schema}.runs SET status = 'cancelled', fence = fence + 1,"
            " owner = NULL, lease_until = NULL, wake_at = NULL, waiting_for = NULL,"
            " error = %s, updated_at = %s, completed_at = %s WHERE run_id = %s"
            " AND status <> ALL(%s)", (error_text(error), now, now, run_id, _TERMINAL)
        ).rowcount, run_id))

    def resume(self, run_id: str, now: float) -> bool:
        """CANCELLED or FAILED back to PENDING, due now, with a fresh recovery budget."""
        return bool(self._run_work("resuming run", lambda conn: conn.execute(
            f"UPDATE {self.schema}.runs SET status = 'pending', recovery_count = 0,"
            " error = NULL, wake_at = %s, completed_at = NULL, updated_at = %s"
            " WHERE run_id = %s AND status IN ('cancelled', 'failed')",
            (now, now, run_id)).rowcount, run_id))

    def restart_run(self, run_id: str, now: float,
                    drop: Collection[str]) -> RunRecord | None:
        """Drop steps, give back their events, and make the run PENDING (see RunStorage)."""
        s, dropped = self.schema, builtins.list(drop)

        def work(conn: Conn) -> Any:
            if self._get_run(conn, run_id) is None:
                return None
            conn.execute(f"DELETE FROM {s}.steps WHERE workflow_id = %s AND step_id = ANY(%s)",
                         (run_id, dropped))
            conn.execute(f"UPDATE {s}.events SET consumed_by = NULL, consumed_at = NULL"
                         " WHERE run_id = %s AND consumed_by = ANY(%s)", (run_id, dropped))
            return conn.execute(
                f"UPDATE {s}.runs SET status = 'pending', fence = fence + 1, owner = NULL,"
                " lease_until = NULL, result = NULL, error = NULL, recovery_count = 0,"
                " wake_at = %s, waiting_for = NULL, updated_at = %s, completed_at = NULL"
                f" WHERE run_id = %s RETURNING {_RUNS}", (now, now, run_id)).fetchone()

        row = self._atomic("restarting run", work, run_id)
        return None if row is None else row_to_run(row, self.where)

    def insert_run(self, record: RunRecord, steps: Sequence[StepRecord],
                   events: Sequence[EventRecord]) -> bool:
        """Insert a run with its steps and events unless its id exists (see RunStorage)."""
        s = self.schema
        step_rows = [record_to_row(step, self.where) for step in steps]
        event_rows = [(record.run_id, e.name, e.key, e.payload, e.sent_at, e.consumed_by,
                       e.consumed_at) for e in events]

        def work(conn: Conn) -> bool:
            if self._get_run(conn, record.run_id) is not None:
                return False
            with conn.cursor() as cursor:
                # Events before the run: the wake trigger finds no run to change.
                cursor.executemany(
                    f"INSERT INTO {s}.events (run_id, name, key, payload, sent_at,"
                    " consumed_by, consumed_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    event_rows)
                cursor.execute(f"INSERT INTO {s}.runs ({_RUNS}) VALUES ({_RUN_VALUES})",
                               run_to_row(record))
                cursor.executemany(self._sql_put, step_rows)
            return True

        return bool(self._atomic("inserting run", work, record.run_id))

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the run, or ``None``."""
        result: RunRecord | None = self._run_work(
            "reading run", lambda conn: self._get_run(conn, run_id), run_id)
        return result

    def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None,
                  limit: int | None = 100, after: str | None = None,
                  due: float | None = None) -> builtins.list[RunRecord]:
        """Return runs in creation order, filtered (see ``RunStorage.list_runs``)."""
        s = self.schema
        where, params = run_filter(f"{s}.runs", "%s", status=status, workflow=workflow,
                                   after=after, due=due)
        params.append(limit)
        rows = self._run_work("listing runs", lambda conn: conn.execute(
            f"SELECT {_RUNS} FROM {s}.runs{where} ORDER BY seq LIMIT %s", params).fetchall())
        return [row_to_run(row, self.where) for row in rows]

    def delete_run(self, run_id: str) -> bool:
        """Delete the run with its steps and events."""
        s = self.schema

        def work(conn: Conn) -> bool:
            conn.execute(f"DELETE FROM {s}.steps WHERE workflow_id = %s", (run_id,))
            conn.execute(f"DELETE FROM {s}.events WHERE run_id = %s", (run_id,))
            return bool(conn.execute(f"DELETE FROM {s}.runs WHERE run_id = %s",
                                     (run_id,)).rowcount)

        return bool(self._atomic("deleting run", work, run_id))

    def next_wake_at(self, workflows: Collection[str] | None = None) -> float | None:
        """The earliest time at which a run (of ``workflows``) becomes due, or ``None``."""
        s = self.schema
        where = "" if workflows is None else " AND workflow = ANY(%(workflows)s)"
        params = {"workflows": None if workflows is None else builtins.list(workflows)}
        row = self._run_work("reading wake times", lambda conn: conn.execute(
            f"SELECT least((SELECT min(wake_at) FROM {s}.runs WHERE status IN ('pending',"
            f" 'suspended'){where}), (SELECT min(lease_until) FROM {s}.runs"
            f" WHERE status = 'running'{where}))", params).fetchone())
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------------------------ events

    def add_event(self, run_id: str, name: str, key: str | None, payload: str,
                  now: float) -> bool:
        """Put an event in the inbox (see ``RunStorage.add_event``): one statement, and the
        schema's trigger makes a SUSPENDED run waiting for ``name`` due."""
        s = self.schema

        def work(conn: Conn) -> bool:
            if conn.execute(
                    f"INSERT INTO {s}.events (run_id, name, key, payload, sent_at)"
                    " SELECT %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM"
                    f" {s}.runs WHERE run_id = %s AND status <> ALL(%s))"
                    " ON CONFLICT (run_id, name, key) DO NOTHING",
                    (run_id, name, key, payload, now, run_id, _TERMINAL)).rowcount:
                return True
            if key is not None and conn.execute(
                    f"SELECT 1 FROM {s}.events WHERE run_id = %s AND name = %s AND key = %s",
                    (run_id, name, key)).fetchone() is not None:
                return False  # a repeat, even to a finished run: still harmless
            row = conn.execute(self._sql_fence_of, (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            if row[0] in _TERMINAL:
                raise RunClosedError(run_id, row[0])
            return work(conn)  # reopened meanwhile: again

        return bool(self._run_work("sending event", work, run_id))

    def consume_event(self, run_id: str, fence: int, name: str, deadline: float | None,
                      record: StepRecord) -> tuple[EventRecord | None, StepRecord]:
        """Fenced: consume the oldest matching event and complete ``record`` with it."""
        s = self.schema

        def work(conn: Conn) -> tuple[EventRecord | None, StepRecord]:
            if conn.execute(f"SELECT 1 FROM {s}.runs WHERE run_id = %s AND fence = %s AND"
                            " status = 'running' FOR SHARE", (run_id, fence)).fetchone() is None:
                raise OwnershipLost(run_id, fence)
            row = conn.execute(self._sql_step_get, (record.step_id,)).fetchone()
            stored = None if row is None else row_to_record(row, self.where)
            if stored is not None and stored.status is StepStatus.COMPLETED:
                return None, stored
            found = conn.execute(
                f"SELECT {_EVENTS} FROM {s}.events WHERE run_id = %s AND name = %s"
                " AND consumed_by IS NULL AND (%s::double precision IS NULL OR sent_at <= %s)"
                " ORDER BY seq LIMIT 1 FOR UPDATE", (run_id, name, deadline, deadline)
            ).fetchone()
            if found is None:
                return None, stored if stored is not None else record
            event = row_to_event(found, self.where)
            at = record.updated_at
            conn.execute(f"UPDATE {s}.events SET consumed_by = %s, consumed_at = %s"
                         " WHERE seq = %s", (record.step_id, at, event.seq))
            done = dataclasses.replace(record, status=StepStatus.COMPLETED,
                                       result=event.payload, error=None, completed_at=at)
            if not conn.execute(self._sql_set[False], record_to_row(done, self.where)).rowcount:
                raise StorageError(f"the wait step {record.step_id!r} completed twice",
                                   path=self.where, step_id=record.step_id)
            return dataclasses.replace(event, consumed_by=record.step_id, consumed_at=at), done

        result: tuple[EventRecord | None, StepRecord] = self._atomic(
            "consuming event", work, record.step_id)
        return result

    def list_events(self, run_id: str) -> builtins.list[EventRecord]:
        """Return the run's inbox in the order events were sent."""
        rows = self._run_work("listing events", lambda conn: conn.execute(
            f"SELECT {_EVENTS} FROM {self.schema}.events WHERE run_id = %s ORDER BY seq",
            (run_id,)).fetchall(), run_id)
        return [row_to_event(row, self.where) for row in rows]
