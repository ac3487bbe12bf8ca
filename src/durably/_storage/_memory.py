"""A dict behind a lock: the default storage, for tests and for work that needs no durability."""

from __future__ import annotations

import builtins
import threading
from typing import ClassVar

from .._records import StepRecord, StepStatus

__all__ = ["InMemoryStepStorage"]


class InMemoryStepStorage:
    """Keeps records in a dict for the life of the object. Thread-safe; not durable.

    Records are frozen dataclasses, so handing the stored objects out keeps them values.
    Subclasses may wrap any method with ``super()`` calls.
    """

    blocking: ClassVar[bool] = False
    """Calls are dict operations: the asyncio runtime makes them on its event loop."""

    def __init__(self) -> None:
        self._records: dict[str, StepRecord] = {}
        self._lock = threading.Lock()

    def get(self, step_id: str) -> StepRecord | None:
        """Return the record for ``step_id`` or ``None``."""
        return self._records.get(step_id)

    def set(self, record: StepRecord) -> StepRecord:
        """Store ``record`` unless a COMPLETED one is stored; return what is stored."""
        with self._lock:
            stored = self._records.get(record.step_id)
            if stored is not None and stored.status is StepStatus.COMPLETED:
                return stored
            self._records[record.step_id] = record
            return record

    def delete(self, step_id: str) -> bool:
        """Remove the record; return whether there was one."""
        with self._lock:
            return self._records.pop(step_id, None) is not None

    def list(
        self, workflow_id: str | None = None, status: StepStatus | None = None
    ) -> builtins.list[StepRecord]:
        """Return matching records in the order they were first written.

        (A dict keeps its keys in insertion order, and replacing a value keeps its place.)
        """
        with self._lock:
            records = builtins.list(self._records.values())
        return [
            record for record in records
            if (workflow_id is None or record.workflow_id == workflow_id)
            and (status is None or record.status is status)
        ]

    def clear(self) -> None:
        """Remove every record."""
        with self._lock:
            self._records.clear()

    def close(self) -> None:
        """Nothing to release; the records stay readable."""
