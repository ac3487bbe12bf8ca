"""Sleeps and event waits as step kinds: machines that yield commands, like ``durable_step``.

A sleep or a wait is a step of its run (action ``durably.sleep:<name>`` or
``durably.wait:<event>``) whose id hashes its name and occurrence, never its duration. Its
record keeps, from its first execution on, the time it ends (``next_attempt_at``): the wake
time of a sleep, the deadline of a wait. Neither a restart nor a change of the duration in code
moves it.

* Due (or, for a wait, an event is there): the step completes and the body goes on.
* Ending within ``suspend_after``: it waits inline (the run keeps its lease).
* Ending later: the machine raises :class:`Suspend`; the body unwinds, and the run becomes
  SUSPENDED until that time (or until an event for the wait arrives). When it is due, any
  worker executes the body again from the top: completed steps replay, and this one completes.

Commands (besides ``ReadHistory``, ``Write`` and ``Sleep`` of ``_core``):

* :class:`Consume` -> ``(event or None, stored step)``: the fenced storage call that consumes
  the oldest matching event and completes the wait step in one transaction.
* :class:`Sleep` with ``for_event``: the driver may end the wait early when something arrives
  in this process (it polls again); with a fake clock it simply advances time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

from ._codec import Codec, decode_stored
from ._context import RunBinding, RunUnwind
from ._core import ReadHistory, Sleep, StepPlan, Write
from ._errors import WaitTimeoutError
from ._records import ErrorInfo, StepRecord, StepStatus, new_record

__all__ = ["EVENT_POLL", "MISSING", "Consume", "Suspend", "sleep_step", "wait_step"]

COMPLETED, RUNNING = StepStatus.COMPLETED, StepStatus.RUNNING

StepMachine = Generator[Any, Any, Any]

# How long one inline wait for an event lasts before the inbox is asked again: events sent
# by other processes are found by polling (a send in this process wakes the wait at once).
EVENT_POLL = 0.25


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""No default given (``wait_for_event`` and ``published`` raise instead of returning one)."""


class Suspend(RunUnwind):
    """Internal: unwinds the body so that the run becomes SUSPENDED until ``wake_at`` (or
    an event ``waiting_for``)."""

    def __init__(self, wake_at: float | None, waiting_for: str | None) -> None:
        super().__init__(wake_at, waiting_for)
        self.wake_at = wake_at
        self.waiting_for = waiting_for


class Consume:
    """Consume the oldest event ``name`` sent by ``deadline`` and complete ``record`` with it;
    answer: ``(event or None, stored step)``."""

    __slots__ = ("deadline", "name", "record", "run")

    def __init__(self, run: RunBinding, name: str, deadline: float | None,
                 record: StepRecord) -> None:
        self.run = run
        self.name = name
        self.deadline = deadline
        self.record = record


def _begin(plan: StepPlan) -> StepMachine:
    """The record of a wait step as the view knows it (reading the history if needed)."""
    view = plan.view
    assert view is not None and plan.run is not None, "a wait belongs to a run"
    while view.needs(plan.step_id):
        yield ReadHistory(view, plan.step_id)
    return view.take(plan.step_id)


def _ends_at(plan: StepPlan, stored: StepRecord | None, now: float,
             ends_at: float | None) -> StepMachine:
    """The recorded end of the wait (frozen at its first execution): write the first record
    if there is none."""
    if stored is not None and stored.status is RUNNING:
        return stored.next_attempt_at
    first = new_record(step_id=plan.step_id, workflow_id=plan.workflow_id, action=plan.action,
                       status=RUNNING, attempts=1, created_at=now, started_at=now,
                       updated_at=now, next_attempt_at=ends_at, budget_started_at=now)
    written = yield Write(first, plan.run)
    assert plan.view is not None
    plan.view.note(written)
    if written.status is COMPLETED:  # completed by another owner meanwhile
        return written
    return written.next_attempt_at


def sleep_step(plan: StepPlan, codec: Codec, now: Callable[[], float], wake_at: float,
               suspend_after: float) -> StepMachine:
    """Sleep until ``wake_at`` (as recorded at the step's first execution)."""
    try:
        stored = yield from _begin(plan)
        if stored is not None and stored.status is COMPLETED:
            return None
        if stored is None and wake_at <= now():
            ends: Any = wake_at  # already due: nothing to freeze, one write completes it
        else:
            ends = yield from _ends_at(plan, stored, now(), wake_at)
            if isinstance(ends, StepRecord):
                return None
        assert ends is not None
        remaining = ends - now()
        if remaining > 0:
            if remaining > suspend_after:
                raise Suspend(ends, None)
            yield Sleep(remaining)
        t = now()
        done = new_record(step_id=plan.step_id, workflow_id=plan.workflow_id,
                          action=plan.action, status=COMPLETED, result=codec.encode(None),
                          attempts=1, created_at=t if stored is None else stored.created_at,
                          started_at=t, updated_at=t, completed_at=t, next_attempt_at=ends,
                          budget_started_at=t)
        written = yield Write(done, plan.run)
        assert plan.view is not None
        plan.view.note(written)
        return None
    except BaseException:
        plan.give_back()
        raise


def wait_step(plan: StepPlan, codec: Codec, now: Callable[[], float], event: str,
              deadline: float | None, default: Any, suspend_after: float) -> StepMachine:
    """Wait for event ``event`` until ``deadline`` (as recorded at the first execution)."""
    run = plan.run
    assert run is not None
    try:
        stored = yield from _begin(plan)
        if stored is not None and stored.status is COMPLETED:
            return _outcome(codec, stored, run.run_id, event, default)
        started = now()
        # The deadline as recorded, or (first execution) as it will be recorded: an event
        # already in the inbox completes the step in one transaction, with nothing to freeze.
        ends = stored.next_attempt_at if stored is not None and stored.status is RUNNING \
            else deadline
        frozen = stored is not None and stored.status is RUNNING
        created_at = started if stored is None else stored.created_at
        while True:
            t = now()
            attempt = new_record(step_id=plan.step_id, workflow_id=plan.workflow_id,
                                 action=plan.action, status=RUNNING, attempts=1,
                                 created_at=created_at, started_at=t, updated_at=t,
                                 next_attempt_at=ends, budget_started_at=t)
            _, written = yield Consume(run, event, ends, attempt)
            assert plan.view is not None
            plan.view.note(written)
            if written.status is COMPLETED:  # this event, or one consumed by another owner
                return _outcome(codec, written, run.run_id, event, default)
            if not frozen:  # no event yet: record the deadline now, before any waiting
                recorded = yield from _ends_at(plan, stored, started, deadline)
                if isinstance(recorded, StepRecord):
                    return _outcome(codec, recorded, run.run_id, event, default)
                ends, frozen = recorded, True
            # Over only when the inbox was read at or after the deadline (``t`` is from before
            # that read): an event sent by the deadline is never timed out.
            if ends is not None and t >= ends:
                t = now()
                timed_out = new_record(
                    step_id=plan.step_id, workflow_id=plan.workflow_id, action=plan.action,
                    status=COMPLETED, result=codec.encode(None), attempts=1,
                    created_at=created_at, started_at=t, updated_at=t,
                    completed_at=t, next_attempt_at=ends, budget_started_at=t,
                    error=ErrorInfo.from_exception(
                        WaitTimeoutError(run.run_id, event, ends), with_traceback=False))
                written = yield Write(timed_out, run)
                plan.view.note(written)
                return _outcome(codec, written, run.run_id, event, default)
            t = now()
            if ends is not None and t >= ends:
                continue  # the deadline passed during that read: read once more, then end
            window = suspend_after - (t - started)
            if window <= 0:
                raise Suspend(ends, event)
            if ends is not None:
                window = min(window, ends - t)
            yield Sleep(window, for_event=True)
    except BaseException:
        plan.give_back()
        raise


def _outcome(codec: Codec, record: StepRecord, run_id: str, event: str, default: Any) -> Any:
    """A completed wait's answer: the event's data, or its timeout (default, or raised)."""
    error = record.error
    if error is not None and error.type == "WaitTimeoutError":
        if default is not MISSING:
            return default
        deadline = record.next_attempt_at
        raise WaitTimeoutError(run_id, event, math.nan if deadline is None else deadline)
    return decode_stored(codec, record)
