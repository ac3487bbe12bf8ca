"""The storage protocol: what any backend must do so that durable steps stay correct.

Backends see records whose ``result`` is already a codec string: they never encode, decode or
import the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .._records import StepRecord, StepStatus

__all__ = ["StepStorage", "StepWrite", "batch_writer", "history_reader", "is_blocking",
           "server_time"]

StepWrite = tuple[StepRecord, "str | None", int]
"""One write of a batch (``write_steps``): the record, and the run id and fence it is
written under (``None`` and 0 for a step outside runs, written as ``set`` writes it)."""


@runtime_checkable
class StepStorage(Protocol):
    """Where step records live. Implement these five methods; inheriting is optional.

    Every method may be called from several threads at once. Backends shared between
    processes must keep the same rules across processes. Failures of the store itself are
    raised as :class:`~durably.StorageError` naming what failed. Check an adapter with
    :class:`durably.testing.StorageContract`.

    An adapter may also say whether its calls block, with a class attribute
    ``blocking: bool`` (optional; a storage without it is taken to block). The asyncio
    runtime calls a non-blocking storage directly on its event loop and a blocking one on a
    small thread pool, so that a disk wait or another process's lock never stalls the loop.
    ``InMemoryStepStorage.blocking`` is False; ``SqliteStepStorage.blocking`` is True.

    An adapter may also page a workflow's history: ``history(workflow_id, after, limit)``
    returns up to ``limit`` records in first-write order after the opaque cursor ``after``
    (``None``: from the start), with the cursor of the next page (``None`` after the last).
    Replay then reads as far as it needs, in call order, instead of the whole history at the
    first call (without it, the runtime reads ``list(workflow_id)`` once).

    A blocking adapter may also write several records in one transaction:
    ``write_steps(writes)`` takes a list of :data:`StepWrite` and returns, for each, what is
    stored or the exception that write alone raised, committing the rest together (or
    raises ``StorageError`` and writes none). The asyncio runtime then commits the writes
    its concurrent steps make in one turn of the event loop together, one commit for all
    (``SqliteStepStorage`` and ``PostgresStorage`` have it). A subclass that overrides
    ``set`` or ``record_step`` is written one record at a time, unless it overrides
    ``write_steps`` too.

    An adapter whose processes run on many machines may also offer ``server_time()``: the
    time on the store's own clock, which a runtime built without a ``clock`` then reads, so
    that machines whose clocks disagree still agree on leases and due times (PostgreSQL's).
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

        Ordered by when each record was first written (a per-store sequence: a later ``set``
        of the same step keeps its place; ``created_at`` is not consulted), so a workflow's
        history reads in call order even when every timestamp is equal.
        """
        ...

    def close(self) -> None:
        """Release resources. Idempotent; other methods may fail after it."""
        ...


def batch_writer(storage: object) -> Callable[[list[StepWrite]], list[Any]] | None:
    """The storage's optional ``write_steps`` (see :class:`StepStorage`), or None.

    None also when a subclass changed how one write is made (it overrides ``set`` or
    ``record_step`` below the class that defines ``write_steps``, to encrypt results or
    count writes, say) without changing how a batch is: a batch must never bypass it.
    """
    writer: Callable[[list[StepWrite]], list[Any]] | None = getattr(
        storage, "write_steps", None)
    if not callable(writer):
        return None
    mro = type(storage).__mro__
    owner = next((cls for cls in mro if "write_steps" in cls.__dict__), None)
    for name in ("set", "record_step"):
        defining = next((cls for cls in mro if name in cls.__dict__), None)
        if owner is not None and defining is not None and defining is not owner \
                and issubclass(defining, owner):
            return None
    return writer


def is_blocking(storage: object) -> bool:
    """Whether calls to ``storage`` may block (its optional ``blocking`` attribute; default
    True)."""
    return bool(getattr(storage, "blocking", True))


def server_time(storage: object) -> Callable[[], float] | None:
    """The storage's optional ``server_time()`` (seconds since the epoch on the database's
    clock), which the runtime's default clock reads instead of this machine's; else None."""
    source = getattr(storage, "server_time", None)
    return source if callable(source) else None


HistoryPage = tuple[list[StepRecord], Any]


def history_reader(storage: object) -> Callable[[str, Any, int], HistoryPage]:
    """How the runtime reads a workflow's history: the storage's paged ``history`` when it
    has one, else one ``list(workflow_id)`` as a single, last page."""
    paged = getattr(storage, "history", None)
    if callable(paged):
        return paged  # type: ignore[no-any-return]
    listing = storage.list  # type: ignore[attr-defined]

    def whole(workflow_id: str, after: Any, limit: int) -> HistoryPage:
        return listing(workflow_id=workflow_id), None

    return whole
