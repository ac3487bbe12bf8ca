"""Dicts behind a lock: the default storage, for tests and for work that needs no durability.

Implements both :class:`~durably.StepStorage` and :class:`~durably.RunStorage` over one
store, so runs, their steps and their inboxes live together.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar

from .._errors import OwnershipLost, RecoveryLimitError, RunClosedError, RunNotFoundError
from .._records import (
    TERMINAL,
    ErrorInfo,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)

__all__ = ["InMemoryStepStorage", "due_key", "recovery_limit_error"]

_RUNNING, _PENDING, _SUSPENDED = RunStatus.RUNNING, RunStatus.PENDING, RunStatus.SUSPENDED


def due_key(run: RunRecord, now: float) -> float | None:
    """When ``run`` became claimable, if it is claimable at ``now`` (else ``None``)."""
    if run.status in (_PENDING, _SUSPENDED):
        if run.wake_at is not None and run.wake_at <= now:
            return run.wake_at
    elif run.status is _RUNNING and run.lease_until is not None and run.lease_until < now:
        return run.lease_until
    return None


def recovery_limit_error(run_id: str, recoveries: int) -> ErrorInfo:
    """The error recorded on a run whose takeovers ran out."""
    return ErrorInfo.from_exception(RecoveryLimitError(run_id, recoveries),
                                    with_traceback=False)


class InMemoryStepStorage:
    """Keeps records in dicts for the life of the object. Thread-safe; not durable.

    Records are frozen dataclasses, so handing the stored objects out keeps them values.
    Subclasses may wrap any method with ``super()`` calls.
    """

    blocking: ClassVar[bool] = False
    """Calls are dict operations: the asyncio runtime makes them on its event loop."""

    def __init__(self) -> None:
        self._records: dict[str, StepRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, builtins.list[EventRecord]] = {}
        self._event_seq = itertools.count(1)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ StepStorage

    def get(self, step_id: str) -> StepRecord | None:
        """Return the record for ``step_id`` or ``None``."""
        return self._records.get(step_id)

    def set(self, record: StepRecord) -> StepRecord:
        """Store ``record`` unless a COMPLETED one is stored; return what is stored."""
        with self._lock:
            return self._set(record)

    def _set(self, record: StepRecord) -> StepRecord:
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
        """Remove every record, run and event."""
        with self._lock:
            self._records.clear()
            self._runs.clear()
            self._events.clear()

    def close(self) -> None:
        """Nothing to release; the records stay readable."""

    # ------------------------------------------------------------------ RunStorage

    def _owned(self, run_id: str, fence: int) -> RunRecord:
        run = self._runs.get(run_id)
        if run is None or run.status is not _RUNNING or run.fence != fence:
            raise OwnershipLost(run_id, fence)
        return run

    def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``record`` unless its id exists; return (stored run, created)."""
        with self._lock:
            stored = self._runs.get(record.run_id)
            if stored is not None:
                return stored, False
            self._runs[record.run_id] = record
            return record, True

    def claim(self, executor_id: str, now: float, lease: float, *, run_id: str | None = None,
              limit: int | None = None, workflows: Collection[str] | None = None,
              code_versions: Collection[str | None] | None = None
              ) -> builtins.list[RunRecord]:
        """Claim due runs (see ``RunStorage.claim``)."""
        with self._lock:
            candidates = ([self._runs[run_id]] if run_id in self._runs else []) \
                if run_id is not None else builtins.list(self._runs.values())
            due = []
            for order, run in enumerate(candidates):
                key = due_key(run, now)
                if key is None:
                    continue
                if workflows is not None and run.workflow not in workflows:
                    continue
                if code_versions is not None and run.code_version not in code_versions:
                    continue
                due.append((key, order, run))
            due.sort(key=lambda item: (item[0], item[1]))
            if limit is not None:
                due = due[:limit]
            claimed = []
            for _, _, run in due:
                takeover = run.status is _RUNNING
                recoveries = run.recovery_count + (1 if takeover else 0)
                if takeover and recoveries > run.max_recoveries:
                    updated = dataclasses.replace(
                        run, status=RunStatus.FAILED, owner=None, lease_until=None,
                        error=recovery_limit_error(run.run_id, run.recovery_count),
                        updated_at=now, completed_at=now)
                else:
                    updated = dataclasses.replace(
                        run, status=_RUNNING, owner=executor_id, lease_until=now + lease,
                        fence=run.fence + 1, recovery_count=recoveries, wake_at=None,
                        waiting_for=None, updated_at=now)
                self._runs[run.run_id] = updated
                claimed.append(updated)
            return claimed

    def renew(self, executor_id: str, leases: Mapping[str, int], now: float,
              lease: float) -> builtins.set[str]:
        """Extend the leases ``executor_id`` still holds; return the ids renewed."""
        renewed: builtins.set[str] = builtins.set()
        with self._lock:
            for run_id, fence in leases.items():
                run = self._runs.get(run_id)
                if run is not None and run.status is _RUNNING and run.fence == fence \
                        and run.owner == executor_id:
                    self._runs[run_id] = dataclasses.replace(run, lease_until=now + lease)
                    renewed.add(run_id)
        return renewed

    def record_step(self, run_id: str, fence: int, record: StepRecord) -> StepRecord:
        """Check the run's fence, then store the step as ``set`` does."""
        with self._lock:
            self._owned(run_id, fence)
            return self._set(record)

    def finish(self, run_id: str, fence: int, status: RunStatus, now: float, *,
               result: str | None = None, error: ErrorInfo | None = None) -> RunRecord:
        """Fenced: end the run as ``status``."""
        with self._lock:
            run = self._owned(run_id, fence)
            done = dataclasses.replace(run, status=status, result=result, error=error,
                                       owner=None, lease_until=None, updated_at=now,
                                       completed_at=now, wake_at=None, waiting_for=None)
            self._runs[run_id] = done
            return done

    def suspend(self, run_id: str, fence: int, now: float, wake_at: float | None,
                waiting_for: str | None) -> RunRecord:
        """Fenced: SUSPENDED until ``wake_at`` or an event ``waiting_for``."""
        with self._lock:
            run = self._owned(run_id, fence)
            if waiting_for is not None and self._unconsumed(run_id, waiting_for, wake_at):
                wake_at = now  # the event is already here: due at once
            suspended = dataclasses.replace(run, status=_SUSPENDED, owner=None,
                                            lease_until=None, wake_at=wake_at,
                                            waiting_for=waiting_for, updated_at=now)
            self._runs[run_id] = suspended
            return suspended

    def release(self, run_id: str, fence: int, now: float) -> bool:
        """Hand a run back (PENDING, due now) if it is RUNNING under ``fence``."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.status is not _RUNNING or run.fence != fence:
                return False
            self._runs[run_id] = dataclasses.replace(
                run, status=_PENDING, owner=None, lease_until=None, wake_at=now,
                updated_at=now)
            return True

    def cancel(self, run_id: str, now: float, error: ErrorInfo | None = None) -> bool:
        """CANCELLED, fence bumped, unless terminal or missing."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.status in TERMINAL:
                return False
            self._runs[run_id] = dataclasses.replace(
                run, status=RunStatus.CANCELLED, fence=run.fence + 1, owner=None,
                lease_until=None, wake_at=None, waiting_for=None, error=error,
                updated_at=now, completed_at=now)
            return True

    def resume(self, run_id: str, now: float) -> bool:
        """CANCELLED or FAILED back to PENDING, due now, with a fresh recovery budget."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.status not in (RunStatus.CANCELLED, RunStatus.FAILED):
                return False
            self._runs[run_id] = dataclasses.replace(
                run, status=_PENDING, recovery_count=0, error=None, wake_at=now,
                completed_at=None, updated_at=now)
            return True

    def restart_run(self, run_id: str, now: float,
                    drop: Collection[str]) -> RunRecord | None:
        """Drop steps, give back their events, and make the run PENDING (see RunStorage)."""
        dropped = builtins.set(drop)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            for step_id in dropped:
                stored = self._records.get(step_id)
                if stored is not None and stored.workflow_id == run_id:
                    del self._records[step_id]
            self._events[run_id] = [
                dataclasses.replace(event, consumed_by=None, consumed_at=None)
                if event.consumed_by in dropped else event
                for event in self._events.get(run_id, ())]
            restarted = dataclasses.replace(
                run, status=_PENDING, fence=run.fence + 1, owner=None, lease_until=None,
                result=None, error=None, recovery_count=0, wake_at=now, waiting_for=None,
                updated_at=now, completed_at=None)
            self._runs[run_id] = restarted
            return restarted

    def insert_run(self, record: RunRecord, steps: Sequence[StepRecord],
                   events: Sequence[EventRecord]) -> bool:
        """Insert a run with its steps and events unless its id exists (see RunStorage)."""
        with self._lock:
            if record.run_id in self._runs:
                return False
            self._runs[record.run_id] = record
            for step in steps:
                self._records[step.step_id] = step
            self._events[record.run_id] = [
                dataclasses.replace(event, seq=next(self._event_seq), run_id=record.run_id)
                for event in events]
            return True

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the run, or ``None``."""
        return self._runs.get(run_id)

    def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None,
                  limit: int | None = 100, after: str | None = None,
                  due: float | None = None) -> builtins.list[RunRecord]:
        """Return runs in creation order, filtered (see ``RunStorage.list_runs``)."""
        with self._lock:
            runs = builtins.list(self._runs.values())
        if after is not None:
            ids = [run.run_id for run in runs]
            runs = runs[ids.index(after) + 1:] if after in ids else []
        chosen = [run for run in runs
                  if (status is None or run.status is status)
                  and (workflow is None or run.workflow == workflow)
                  and (due is None or due_key(run, due) is not None)]
        return chosen if limit is None else chosen[:limit]

    def delete_run(self, run_id: str) -> bool:
        """Delete the run with its steps and events."""
        with self._lock:
            existed = self._runs.pop(run_id, None) is not None
            self._events.pop(run_id, None)
            for step_id in [s for s, r in self._records.items() if r.workflow_id == run_id]:
                del self._records[step_id]
            return existed

    def next_wake_at(self, workflows: Collection[str] | None = None) -> float | None:
        """The earliest time at which a run (of ``workflows``) becomes due, or ``None``."""
        with self._lock:
            times = [run.wake_at if run.status in (_PENDING, _SUSPENDED) else run.lease_until
                     for run in self._runs.values() if run.status not in TERMINAL
                     and (workflows is None or run.workflow in workflows)]
        present = [t for t in times if t is not None]
        return min(present) if present else None

    # ------------------------------------------------------------------ events

    def _unconsumed(self, run_id: str, name: str,
                    deadline: float | None) -> EventRecord | None:
        for event in self._events.get(run_id, ()):
            if event.name == name and event.consumed_by is None and (
                    deadline is None or event.sent_at <= deadline):
                return event
        return None

    def add_event(self, run_id: str, name: str, key: str | None, payload: str,
                  now: float) -> bool:
        """Put an event in the inbox (see ``RunStorage.add_event``)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            inbox = self._events.setdefault(run_id, [])
            if key is not None and any(e.name == name and e.key == key for e in inbox):
                return False  # a repeat, even to a finished run: still harmless
            if run.status in TERMINAL:
                raise RunClosedError(run_id, run.status.value)
            inbox.append(EventRecord(seq=next(self._event_seq), run_id=run_id, name=name,
                                     key=key, payload=payload, sent_at=now))
            if run.status is _SUSPENDED and run.waiting_for == name:
                wake_at = now if run.wake_at is None else min(run.wake_at, now)
                self._runs[run_id] = dataclasses.replace(run, wake_at=wake_at, updated_at=now)
            return True

    def consume_event(self, run_id: str, fence: int, name: str, deadline: float | None,
                      record: StepRecord) -> tuple[EventRecord | None, StepRecord]:
        """Fenced: consume the oldest matching event and complete ``record`` with it."""
        with self._lock:
            self._owned(run_id, fence)
            stored = self._records.get(record.step_id)
            if stored is not None and stored.status is StepStatus.COMPLETED:
                return None, stored
            event = self._unconsumed(run_id, name, deadline)
            if event is None:
                return None, stored if stored is not None else record
            consumed = dataclasses.replace(event, consumed_by=record.step_id,
                                           consumed_at=record.updated_at)
            inbox = self._events[run_id]
            inbox[inbox.index(event)] = consumed
            done = dataclasses.replace(record, status=StepStatus.COMPLETED,
                                       result=event.payload, error=None,
                                       completed_at=record.updated_at)
            self._records[record.step_id] = done
            return consumed, done

    def list_events(self, run_id: str) -> builtins.list[EventRecord]:
        """Return the run's inbox in the order events were sent."""
        with self._lock:
            return builtins.list(self._events.get(run_id, ()))

