"""Turning records into rows and back, in one place, for every SQL backend (SQLite and
PostgreSQL store the same columns, in the same order), and the SQL both backends share to
select runs.

Reading validates what a hand-edited or damaged row could break, so a bad row is a
:class:`~durably.StorageError` naming the step and the field rather than a wrong answer later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .._errors import StorageError
from .._records import (
    ErrorInfo,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    new_record,
)

__all__ = ["EVENT_COLUMNS", "HELD", "RUN_COLUMNS", "STEP_COLUMNS", "WAKING", "batch_rows",
           "not_text", "record_to_row", "row_to_event", "row_to_record", "row_to_run",
           "run_filter", "run_to_row"]

# The columns of a step row, in the order rows are read and written.
STEP_COLUMNS = (
    "step_id", "workflow_id", "action", "status", "result", "error", "attempts", "created_at",
    "started_at", "updated_at", "completed_at", "next_attempt_at", "budget_started_at",
)
RUN_COLUMNS = (
    "run_id", "workflow", "status", "input", "input_hash", "result", "error", "code_version",
    "owner", "lease_until", "fence", "recovery_count", "max_recoveries", "parent_run_id",
    "forked_from", "deadline", "wake_at", "waiting_for", "created_at", "updated_at",
    "completed_at",
)
EVENT_COLUMNS = ("seq", "run_id", "name", "key", "payload", "sent_at", "consumed_by",
                 "consumed_at")

_new_object = object.__new__

_STATUSES = {status.value: status for status in StepStatus}
_TEXT_FIELDS = ("step_id", "workflow_id", "action")


def not_text(field: str, value: object, where: str) -> StorageError:
    """The error for a string a database cannot store (a lone surrogate is not UTF-8)."""
    return StorageError(f"{field} {value!r} is not valid UTF-8 text and cannot be stored in"
                        f" {where}", path=where)


def record_to_row(record: StepRecord, where: str) -> tuple[Any, ...]:
    """Return ``record`` as a row in ``STEP_COLUMNS`` order (the error as JSON text).

    Raises:
        StorageError: an id, workflow or action is not valid UTF-8 text (names the field).
    """
    for field in _TEXT_FIELDS:
        value = getattr(record, field)
        if not value.isascii():  # the common case costs one C call per field
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise not_text(field, value, where) from None
    error = None if record.error is None else json.dumps(record.error.to_dict())
    return (
        record.step_id, record.workflow_id, record.action, record.status.value,
        record.result, error, record.attempts, record.created_at, record.started_at,
        record.updated_at, record.completed_at, record.next_attempt_at,
        record.budget_started_at,
    )


def batch_rows(records: Iterable[StepRecord], where: str
               ) -> list[tuple[Any, ...] | StorageError]:
    """``record_to_row`` of each record of a batch (``write_steps``), or the error that
    record's text gives: that write's own answer, which does not stop the others."""
    rows: list[tuple[Any, ...] | StorageError] = []
    for record in records:
        try:
            rows.append(record_to_row(record, where))
        except StorageError as error:
            rows.append(error)
    return rows


def _time(row: tuple[Any, ...], index: int, field: str, required: bool) -> None:
    value = row[index]
    if value is None and not required:
        return
    if type(value) is not float and type(value) is not int:
        raise TypeError(f"{field} must be a number of seconds"
                        + ("" if required else " or NULL") + f", not {value!r}")


def row_to_record(row: tuple[Any, ...], where: str) -> StepRecord:
    """Return the record a row in ``STEP_COLUMNS`` order holds.

    Raises:
        StorageError: the row is not a valid record; names the step, the field and ``where``.
    """
    step_id = row[0]
    try:
        error = None if row[5] is None else ErrorInfo.from_dict(json.loads(row[5]))
        status = _STATUSES.get(row[3])
        if status is None:
            raise ValueError(f"unknown status {row[3]!r}")
        if type(row[6]) is not int or row[6] < 0:
            raise TypeError(f"attempts must be an integer >= 0, not {row[6]!r}")
        if not (row[4] is None or type(row[4]) is str):
            raise TypeError(f"result must be text, not {type(row[4]).__name__}")
        if status is StepStatus.COMPLETED and row[4] is None:
            raise TypeError("a COMPLETED record must hold its result")
        for index, field in ((1, "workflow_id"), (2, "action")):
            if type(row[index]) is not str:
                raise TypeError(f"{field} must be text, not {row[index]!r}")
        for index, field, required in ((7, "created_at", True), (8, "started_at", False),
                                       (9, "updated_at", True), (10, "completed_at", False),
                                       (11, "next_attempt_at", False),
                                       (12, "budget_started_at", False)):
            _time(row, index, field, required)
        return new_record(
            step_id=step_id, workflow_id=row[1], action=row[2], status=status,
            result=row[4], error=error, attempts=row[6], created_at=row[7],
            started_at=row[8], updated_at=row[9], completed_at=row[10],
            next_attempt_at=row[11], budget_started_at=row[12],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as problem:
        raise StorageError(
            f"corrupt record for step {step_id!r} in {where}: {problem}",
            path=where, step_id=str(step_id),
        ) from problem


# ---------------------------------------------------------------- runs and events

_RUN_STATUSES = {status.value: status for status in RunStatus}

# What makes a run due, as SQL both backends share: a run WAKING is due at its wake_at, one
# HELD when its lease_until has passed. Each backend has a partial index on each condition,
# and a query can read a partial index only when its WHERE repeats the index's condition, so
# the due and expiry scans use these same texts.
WAKING = "status IN ('pending', 'suspended')"
HELD = "status = 'running'"


def run_filter(runs: str, mark: str, *, status: RunStatus | None, workflow: str | None,
               after: str | None, due: float | None) -> tuple[str, list[Any]]:
    """Return the WHERE clause (``""`` for none) and its parameters that select the runs
    ``RunStorage.list_runs`` asks for, from the table named ``runs``; ``mark`` is the
    backend's parameter placeholder (``?`` or ``%s``)."""
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        clauses.append(f"status = {mark}")
        params.append(status.value)
    if workflow is not None:
        clauses.append(f"workflow = {mark}")
        params.append(workflow)
    if after is not None:
        # An unknown cursor selects nothing rather than everything.
        clauses.append(f"seq > coalesce((SELECT seq FROM {runs} WHERE run_id = {mark}),"
                       " 9223372036854775807)")
        params.append(after)
    if due is not None:
        clauses.append(f"(({WAKING} AND wake_at <= {mark}) OR ({HELD} AND lease_until < {mark}))")
        params.extend((due, due))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def run_to_row(run: RunRecord) -> tuple[Any, ...]:
    """Return ``run`` as a row in ``RUN_COLUMNS`` order (the error as JSON text)."""
    error = None if run.error is None else json.dumps(run.error.to_dict())
    return (
        run.run_id, run.workflow, run.status.value, run.input, run.input_hash, run.result,
        error, run.code_version, run.owner, run.lease_until, run.fence, run.recovery_count,
        run.max_recoveries, run.parent_run_id, run.forked_from, run.deadline, run.wake_at,
        run.waiting_for, run.created_at, run.updated_at, run.completed_at,
    )


def row_to_run(row: tuple[Any, ...], where: str) -> RunRecord:
    """Return the run a row in ``RUN_COLUMNS`` order holds.

    Raises:
        StorageError: the row is not a valid run; names the run and the field.
    """
    run_id = row[0]
    try:
        status = _RUN_STATUSES.get(row[2])
        if status is None:
            raise ValueError(f"unknown status {row[2]!r}")
        for index, field in ((10, "fence"), (11, "recovery_count"), (12, "max_recoveries")):
            if type(row[index]) is not int or row[index] < 0:
                raise TypeError(f"{field} must be an integer >= 0, not {row[index]!r}")
        for index, field in ((1, "workflow"), (3, "input"), (4, "input_hash")):
            if type(row[index]) is not str:
                raise TypeError(f"{field} must be text, not {row[index]!r}")
        for index, field, required in ((9, "lease_until", False), (15, "deadline", False),
                                       (16, "wake_at", False), (18, "created_at", True),
                                       (19, "updated_at", True), (20, "completed_at", False)):
            _time(row, index, field, required)
        error = None if row[6] is None else ErrorInfo.from_dict(json.loads(row[6]))
        # Filled in one call, not through the frozen dataclass's __init__ (one setattr per
        # field): every claim and outcome reads a run back. Equal to RunRecord(**fields).
        run: RunRecord = _new_object(RunRecord)
        run.__dict__.update(zip(RUN_COLUMNS, row, strict=True))
        run.__dict__.update(status=status, error=error)
        return run
    except (ValueError, KeyError, TypeError, AttributeError) as problem:
        raise StorageError(f"corrupt run {run_id!r} in {where}: {problem}",
                           path=where) from problem


def row_to_event(row: tuple[Any, ...], where: str) -> EventRecord:
    """Return the event a row in ``EVENT_COLUMNS`` order holds.

    Raises:
        StorageError: the row is not a valid event.
    """
    try:
        if type(row[0]) is not int or type(row[4]) is not str:
            raise TypeError("seq must be an integer and payload text")
        _time(row, 5, "sent_at", True)
        _time(row, 7, "consumed_at", False)
        return EventRecord(seq=row[0], run_id=row[1], name=row[2], key=row[3],
                           payload=row[4], sent_at=row[5], consumed_by=row[6],
                           consumed_at=row[7])
    except (ValueError, TypeError) as problem:
        raise StorageError(f"corrupt event {row[0]!r} of run {row[1]!r} in {where}:"
                           f" {problem}", path=where) from problem
