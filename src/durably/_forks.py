"""Forks and restarts: which part of a run's history a new execution keeps.

Both start from a step named by the operator (``from_step``) and keep the history *before* it:
the steps that had COMPLETED by the time that step was first written, in call order. The step
itself and everything after it execute again. ``fork`` copies the kept history into a new run
(the source is unchanged); ``restart`` deletes the rest of the history in place.

A step is named by its full id (``run/s1_...``), its local id (``s1_...``, ``s1_...#2``) or
the start of one (``show`` prints 12 hex digits: ``s1_a39601e49ef8``, ``s1_0fd821643cd6#1``;
the ``#n`` must be given), ``Action.name#k`` (the k-th step of that action in call order,
counted from 1; ``#1`` may be left out) or ``last-failure`` (the last FAILED step).

Why "completed before the step was first written" and not "listed before it": a step that
calls other steps is written (RUNNING) before its children and completed after them. Forking
from a child must not keep the parent's recorded result, or the child would never run again;
the parent completed after the child started, so it is not kept. (With a clock that never
advances, a parent and its child have the same times, and the parent is kept.)

Pure functions of records: no storage, no runtime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ._errors import StepNotFoundError
from ._ids import SCHEME_PREFIX
from ._records import EventRecord, RunRecord, RunStatus, StepRecord, StepStatus

__all__ = ["LAST_FAILURE", "find_step", "fork_history", "kept_steps", "local_id", "short_id"]

LAST_FAILURE = "last-failure"
SHORT = 12  # hex digits of a short local id: a clash needs ~16 million steps in one run


def local_id(run_id: str, step_id: str) -> str:
    """A run's step id without the run's prefix (what ``show`` prints)."""
    prefix = run_id + "/"
    return step_id[len(prefix):] if step_id.startswith(prefix) else step_id


def find_step(run_id: str, steps: Sequence[StepRecord], from_step: str) -> int:
    """The index in ``steps`` (call order) of the step ``from_step`` names.

    Raises:
        StepNotFoundError: no step matches.
    """
    if from_step == LAST_FAILURE:
        for index in range(len(steps) - 1, -1, -1):
            if steps[index].status is StepStatus.FAILED:
                return index
        raise StepNotFoundError(run_id, from_step, "no step of it FAILED")
    for index, step in enumerate(steps):
        if from_step in (step.step_id, local_id(run_id, step.step_id)):
            return index
    if from_step.startswith(SCHEME_PREFIX):
        return _by_prefix(run_id, steps, from_step)
    action, _, number = from_step.rpartition("#")
    if not action or not number.isdigit():
        action, number = from_step, "1"
    occurrence = int(number)
    if occurrence >= 1:
        matching = [index for index, step in enumerate(steps) if step.action == action]
        if occurrence <= len(matching):
            return matching[occurrence - 1]
    raise StepNotFoundError(
        run_id, from_step, "name it by its full id, the local id `show` prints,"
        " Action.name#k (k counted from 1) or last-failure")


def short_id(local: str) -> str:
    """A local id as ``show`` prints it: the hash cut to 12 hex digits, its ``#n`` kept."""
    digest, mark, number = local.partition("#")
    return digest[: len(SCHEME_PREFIX) + SHORT] + mark + number


def _by_prefix(run_id: str, steps: Sequence[StepRecord], wanted: str) -> int:
    """The one step whose local id starts with ``wanted``'s hash part and has its ``#n``."""
    digest, _, number = wanted.partition("#")
    found = []
    for index, step in enumerate(steps):
        own_digest, _, own_number = local_id(run_id, step.step_id).partition("#")
        if own_digest.startswith(digest) and own_number == number:
            found.append(index)
    if len(found) == 1:
        return found[0]
    raise StepNotFoundError(run_id, wanted, "that prefix names several steps: give more of it"
                            if found else "no local id starts so")


def kept_steps(steps: Sequence[StepRecord], cut: int) -> list[StepRecord]:
    """The steps kept when executing again from ``steps[cut]``: those listed before it that
    had COMPLETED by the time it was first written."""
    started = steps[cut].created_at
    return [step for step in steps[:cut]
            if step.status is StepStatus.COMPLETED and step.completed_at is not None
            and step.completed_at <= started]


def fork_history(source: RunRecord, steps: Sequence[StepRecord],
                 events: Sequence[EventRecord], cut: int, new_run_id: str,
                 now: float) -> tuple[RunRecord, list[StepRecord], list[EventRecord]]:
    """The new run, its copied steps and its inbox, for a fork of ``source`` from
    ``steps[cut]``.

    The fork has the source's workflow, input, code version and recovery budget; it is
    PENDING and due now, records ``forked_from``, and has no deadline (the source's was a
    moment in time, likely past). Its inbox holds every event of the source with its key
    (so a repeated delivery is still refused): consumed by the fork's copy of the step that
    consumed it, or unconsumed when that step is not kept (the fork's own wait takes it).
    """
    kept = kept_steps(steps, cut)
    prefix = new_run_id + "/"
    renamed = {step.step_id: prefix + local_id(source.run_id, step.step_id) for step in kept}
    copies = [dataclasses.replace(step, step_id=renamed[step.step_id],
                                  workflow_id=new_run_id) for step in kept]
    inbox = [dataclasses.replace(
        event, run_id=new_run_id, consumed_by=renamed.get(event.consumed_by or ""),
        consumed_at=event.consumed_at if event.consumed_by in renamed else None)
        for event in events]
    run = RunRecord(run_id=new_run_id, workflow=source.workflow, status=RunStatus.PENDING,
                    input=source.input, input_hash=source.input_hash,
                    code_version=source.code_version, max_recoveries=source.max_recoveries,
                    forked_from=source.run_id, wake_at=now, created_at=now, updated_at=now)
    return run, copies, inbox
