"""Turning step records into SQLite rows and back, in one place.

Reading validates what a hand-edited or damaged row could break, so a bad row is a
:class:`~durably.StorageError` naming the step and the field rather than a wrong answer later.
"""

from __future__ import annotations

import json
from typing import Any

from ..._errors import StorageError
from ..._records import ErrorInfo, StepRecord, StepStatus, new_record

__all__ = ["record_to_row", "row_to_record"]

_STATUSES = {status.value: status for status in StepStatus}


def record_to_row(record: StepRecord) -> tuple[Any, ...]:
    """Return ``record`` as a row in ``STEP_COLUMNS`` order (the error as JSON text)."""
    error = None if record.error is None else json.dumps(record.error.to_dict())
    return (
        record.step_id, record.workflow_id, record.action, record.status.value,
        record.result, error, record.attempts, record.created_at, record.started_at,
        record.updated_at, record.completed_at, record.next_attempt_at,
        record.budget_started_at,
    )


def row_to_record(row: tuple[Any, ...], where: str) -> StepRecord:
    """Return the record a row in ``STEP_COLUMNS`` order holds.

    Raises:
        StorageError: the row is not a valid record; names the step, the field and ``where``.
    """
    step_id = row[0]
    try:
        error = None if row[5] is None else ErrorInfo.from_dict(json.loads(row[5]))
        if type(row[6]) is not int or not (row[4] is None or type(row[4]) is str):
            raise TypeError("attempts must be an integer and result text")
        return new_record(
            step_id=step_id, workflow_id=row[1], action=row[2], status=_STATUSES[row[3]],
            result=row[4], error=error, attempts=row[6], created_at=row[7],
            started_at=row[8], updated_at=row[9], completed_at=row[10],
            next_attempt_at=row[11], budget_started_at=row[12],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as problem:
        raise StorageError(
            f"corrupt record for step {step_id!r} in {where}: {problem}",
            path=where, step_id=str(step_id),
        ) from problem
