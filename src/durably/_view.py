"""What a runtime knows of one workflow's records: read as replay needs them, answered from
memory.

A runtime reads its workflow's records page by page, in first-write order (call order), as far
as its calls need them: the drivers answer the machine's :class:`~durably._core.ReadHistory`
command by adding the next page. The first page is small, so the first call of a workflow
with a long history costs about what a short workflow's first call costs; pages then grow, so
a long replay needs few reads. A call whose record is not among the pages read so far reads
on until it finds it or the history ends (a new step at the end of a replay costs no read).

The view stays small: a COMPLETED record is forgotten as soon as it has been replayed, and a
record this runtime completes is never kept. Neither is needed again, because COMPLETED is
final in every storage: a later call for such a step writes its marker, the storage hands the
completed record back, and the machine returns its result without running the handler. What
the view keeps are unfinished records (RUNNING, RETRYING, FAILED), so that a call that comes
back to such a step continues its budget, and the part of the page read ahead of the calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from ._records import StepRecord, StepStatus

__all__ = ["FIRST_PAGE", "LAST_PAGE", "WorkflowView"]

_COMPLETED = StepStatus.COMPLETED
FIRST_PAGE = 32
"""Records in the first page of history: about a short workflow's whole history."""
LAST_PAGE = 4096
"""The largest page: pages double from FIRST_PAGE up to this."""


class WorkflowView:
    """The records of one workflow id, as far as one runtime needs them.

    Attributes:
        workflow_id: whose records these are (``StepRecord.workflow_id``).
        lock: held by a sync driver while it reads a page, so threads share one read.
        loading: a driver's marker for a read in flight (the asyncio driver keeps a future
            here, so concurrent first calls share one read).
        cursor: where the next page starts (the storage's opaque cursor; ``None`` before
            the first page).
        page: how many records to ask for next.
    """

    __slots__ = ("_done", "_records", "cursor", "loading", "lock", "page", "workflow_id")

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self._records: dict[str, StepRecord] | None = None
        self._done = False
        self.cursor: Any = None
        self.page = FIRST_PAGE
        self.lock = threading.Lock()
        self.loading: Any = None

    @property
    def loaded(self) -> bool:
        """Whether the first page of history has been read."""
        return self._records is not None

    def needs(self, step_id: str) -> bool:
        """Whether more history must be read before ``step_id`` can be answered: nothing is
        read yet, or the step is not among the records read and more remain."""
        records = self._records
        return records is None or (not self._done and step_id not in records)

    def add_page(self, records: Iterable[StepRecord], cursor: Any) -> None:
        """Take the next page read from storage; ``cursor`` is where the one after starts
        (``None``: this was the last page). A record this runtime has written meanwhile
        wins over the page's copy."""
        known = self._records
        if known is None:
            known = self._records = {}
        for record in records:
            known.setdefault(record.step_id, record)
        self.cursor = cursor
        self._done = cursor is None
        self.page = min(self.page * 2, LAST_PAGE)

    def fill(self, records: Iterable[StepRecord]) -> None:
        """Take the whole history at once (only when nothing was read yet)."""
        if self._records is None:
            self.add_page(records, None)

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
