"""The storage protocol: what any backend must do so that durable steps stay correct.

Backends see records whose ``result`` is already a codec string: they never encode, decode or
import the runtime.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._records import StepRecord, StepStatus

__all__ = ["StepStorage"]


@runtime_checkable
class StepStorage(Protocol):
    """Where step records live. Implement these five methods; inheriting is optional.

    Every method may be called from several threads at once. Backends shared between
    processes must keep the same rules across processes. Failures of the store itself are
    raised as :class:`~durably.StorageError` naming what failed. Check an adapter with
    :class:`durably.testing.StorageContract`.
    """

    def get(self, step_id: str) -> StepRecord | None:
        """Return the stored record for ``step_id``, or ``None`` if there is none.

        The record is a value: nothing the caller does with it changes what is stored.
        A row that cannot be turned back into a record raises ``StorageError`` naming the id.
        """
        ...

    def set(self, record: StepRecord) -> StepRecord:
        """Insert or replace the record with ``record.step_id``; return what is now stored.

        Atomic. If the stored record is ``COMPLETED`` it is final: it is left as it is and
        returned instead (so of two writers racing to complete a step, the first wins and the
        second learns the winner's result). Writing the same record twice is harmless.
        """
        ...

    def delete(self, step_id: str) -> bool:
        """Remove the record; return ``True`` if there was one, ``False`` otherwise."""
        ...

    def list(
        self, workflow_id: str | None = None, status: StepStatus | None = None
    ) -> list[StepRecord]:
        """Return the records matching both filters (``None`` matches all).

        Ordered by ``created_at``, then ``step_id``.
        """
        ...

    def close(self) -> None:
        """Release resources. Idempotent; other methods may fail after it."""
        ...
