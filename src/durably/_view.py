"""What a runtime knows of one workflow's records: read once, answered from memory.

A runtime reads its workflow's records in one query at its first durable call (the drivers
answer the machine's :class:`~durably._core.ReadHistory` command by filling the view). After
that, replays are answered from memory and a new step needs no read before its first write.

The view stays small: a COMPLETED record is forgotten as soon as it has been replayed, and a
record this runtime completes is never kept. Neither is needed again, because COMPLETED is
final in every storage: a later call for such a step writes its marker, the storage hands the
completed record back, and the machine returns its result without running the handler. What
the view keeps are unfinished records (RUNNING, RETRYING, FAILED), so that a call that comes
back to such a step continues its budget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from ._records import StepRecord, StepStatus

__all__ = ["WorkflowView"]

_COMPLETED = StepStatus.COMPLETED


class WorkflowView:
    """The records of one workflow id, as far as one runtime needs them.

    Attributes:
        workflow_id: whose records these are (``StepRecord.workflow_id``).
        lock: held by a sync driver while it reads the history, so threads share one read.
        loading: a driver's marker for a read in flight (the asyncio driver keeps a future
            here, so concurrent first calls share one read).
    """

    __slots__ = ("_records", "loading", "lock", "workflow_id")

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self._records: dict[str, StepRecord] | None = None
        self.lock = threading.Lock()
        self.loading: Any = None

    @property
    def loaded(self) -> bool:
        """Whether the history has been read."""
        return self._records is not None

    def fill(self, records: Iterable[StepRecord]) -> None:
        """Take the history read from storage (only the first fill counts)."""
        if self._records is None:
            self._records = {record.step_id: record for record in records}

    def take(self, step_id: str) -> StepRecord | None:
        """Return what is known of ``step_id``; a COMPLETED record is handed out only once."""
        records = self._records
        if records is None:
            return None
        record = records.get(step_id)
        if record is not None and record.status is _COMPLETED:
            del records[step_id]
        return record

    def note(self, record: StepRecord) -> None:
        """Keep the view current with a record just written (or handed back) by storage."""
        records = self._records
        if records is None:
            return
        if record.status is _COMPLETED:
            records.pop(record.step_id, None)
        else:
            records[record.step_id] = record
