"""The run storage protocol: what a backend must do so that workflow runs stay correct.

Beside :class:`~durably.StepStorage` (so adapters that only store steps keep working). Every
method is one transaction. Times come in as arguments from the runtime's clock, so a
``FakeClock`` drives leases too (a PostgreSQL backend may use the server's clock instead).
Backends see encoded text only. Check an adapter with ``durably.testing.RunStorageContract``.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from .._records import ErrorInfo, EventRecord, RunRecord, RunStatus, StepRecord

__all__ = ["RunStorage"]


@runtime_checkable
class RunStorage(Protocol):
    """Where workflow runs, their fenced step writes and their inboxes live.

    A run is leased by one owner at a time. Every write a run makes is *fenced*: it names the
    run and the fencing token (``fence``) its owner got when it claimed the run, and the
    backend checks, in the same transaction as the write, that the run is still RUNNING under
    that fence. If not, nothing is written and :class:`~durably.OwnershipLost` is raised: a
    paused or partitioned owner can never write after a takeover or a cancel.
    """

    def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``record`` unless a run with its id exists; return (stored run, created).

        Atomic: of concurrent creations of one id, exactly one returns ``created=True``; the
        others get the stored run back. An existing run is never changed.
        """
        ...

    def claim(self, executor_id: str, now: float, lease: float, *, run_id: str | None = None,
              limit: int | None = None, workflows: Collection[str] | None = None,
              code_versions: Collection[str | None] | None = None) -> list[RunRecord]:
        """Claim due runs for ``executor_id``; return them as stored after the claim.

        Due: PENDING or SUSPENDED with ``wake_at <= now``, or RUNNING with
        ``lease_until < now`` (an expired lease; a live lease is never touched). A claim sets
        ``status=RUNNING``, ``owner``, ``lease_until = now + lease`` and ``fence + 1``. Taking
        over an expired lease counts a recovery; when that would exceed ``max_recoveries`` the
        run is made FAILED with a ``RecoveryLimitError`` instead, and returned FAILED (not
        claimed). ``run_id`` restricts the claim to one run; ``workflows`` and
        ``code_versions`` to those values; ``limit`` caps how many, earliest due first.
        Concurrent claimers never get the same run.
        """
        ...

    def renew(self, executor_id: str, leases: Mapping[str, int], now: float,
              lease: float) -> builtins.set[str]:
        """Extend to ``now + lease`` the leases ``executor_id`` still holds.

        ``leases`` maps run ids to the fence each was claimed with; a run is renewed only if it
        is RUNNING under that owner and fence. Returns the ids renewed.
        """
        ...

    def record_step(self, run_id: str, fence: int, record: StepRecord) -> StepRecord:
        """The fenced form of ``StepStorage.set``: check the run, then write the step.

        In one transaction: if the run is not RUNNING under ``fence``, raise ``OwnershipLost``
        and write nothing; otherwise store ``record`` exactly as ``set`` would (a COMPLETED
        step is final: the stored one is returned instead).
        """
        ...

    def finish(self, run_id: str, fence: int, status: RunStatus, now: float, *,
               result: str | None = None, error: ErrorInfo | None = None) -> RunRecord:
        """Fenced: end the run as ``status`` (COMPLETED, FAILED or CANCELLED).

        Sets ``result`` or ``error``, ``completed_at``; clears the owner and lease. Raises
        ``OwnershipLost`` (nothing written) if the run is not RUNNING under ``fence``.
        """
        ...

    def suspend(self, run_id: str, fence: int, now: float, wake_at: float | None,
                waiting_for: str | None) -> RunRecord:
        """Fenced: make the run SUSPENDED until ``wake_at`` (``None``: until an event), waiting
        for ``waiting_for``; release its lease. Raises ``OwnershipLost`` as ``finish`` does.

        An event for ``waiting_for`` that is already in the inbox makes it due at once.
        """
        ...

    def release(self, run_id: str, fence: int, now: float) -> bool:
        """Hand a run back: PENDING, due now, owner and lease cleared, no recovery counted.

        Only if it is RUNNING under ``fence``; returns whether it was released.
        """
        ...

    def cancel(self, run_id: str, now: float, error: ErrorInfo | None = None) -> bool:
        """Move a run that is not terminal to CANCELLED and bump its fence (so its owner's next
        write is refused); clear its lease. Returns False for a terminal or missing run."""
        ...

    def resume(self, run_id: str, now: float) -> bool:
        """Move a CANCELLED or FAILED run back to PENDING, due now, with a fresh recovery
        budget and no error. Returns False if there was nothing to resume."""
        ...

    def restart_run(self, run_id: str, now: float,
                    drop: Collection[str]) -> RunRecord | None:
        """Start a run over from a step, in one transaction: delete its steps ``drop`` (step
        ids), give back the events they consumed (unconsumed again, in their places), and
        make the run PENDING and due now, with its fence bumped (a live owner's next write is
        refused), no owner, lease, result or error, and a fresh recovery budget.

        Returns the run as stored after, or ``None`` if there is no such run.
        """
        ...

    def insert_run(self, record: RunRecord, steps: Sequence[StepRecord],
                   events: Sequence[EventRecord]) -> bool:
        """Insert a run together with its history (a fork's copy, an import), in one
        transaction; return False, writing nothing, if a run with its id exists.

        Steps are stored as given, in the order given (their first-write order). Events keep
        their keys, times and consumption, and get new sequence numbers in the order given.
        """
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the run, or ``None``."""
        ...

    def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None,
                  limit: int | None = 100, after: str | None = None,
                  due: float | None = None) -> list[RunRecord]:
        """Return runs in creation order, filtered.

        ``after`` is a run id: only runs created after it (a cursor for paging). ``due`` is a
        time: only runs claimable then (see ``claim``). ``limit=None`` returns all.
        """
        ...

    def delete_run(self, run_id: str) -> bool:
        """Delete the run with its steps and its events; return whether it existed."""
        ...

    def next_wake_at(self, workflows: Collection[str] | None = None) -> float | None:
        """The earliest time at which a run (of ``workflows``, when given) becomes due: a
        ``wake_at`` of a PENDING or SUSPENDED run, or the ``lease_until`` of a RUNNING one;
        ``None`` if there is none."""
        ...

    def add_event(self, run_id: str, name: str, key: str | None, payload: str,
                  now: float) -> bool:
        """Put an event in the run's inbox; return False (storing nothing) for a key already
        used by an event of that name.

        Raises ``RunNotFoundError`` for an unknown run and ``RunClosedError`` for a terminal
        one (a repeated key still returns False: a repeat is harmless whenever it comes). An
        event for a SUSPENDED run waiting for ``name`` makes the run due now.
        """
        ...

    def consume_event(self, run_id: str, fence: int, name: str, deadline: float | None,
                      record: StepRecord) -> tuple[EventRecord | None, StepRecord]:
        """Fenced: the oldest unconsumed event ``name`` sent at or before ``deadline`` (any,
        when ``None``) is marked consumed by ``record.step_id``, and ``record`` is stored
        COMPLETED with the event's payload as its result, in one transaction.

        Returns (the event, the stored step); with no such event, (None, the stored step as
        it was, or ``record`` unchanged if none) and nothing is written. A step already
        COMPLETED is returned as it is and nothing is consumed.
        """
        ...

    def list_events(self, run_id: str) -> list[EventRecord]:
        """Return the run's inbox in the order events were sent."""
        ...
