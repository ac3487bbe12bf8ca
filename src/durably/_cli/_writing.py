"""The commands that act: ``cancel``, ``resume``, ``delete`` (one run or a selection),
``fork``, ``send-event``; through the public runtime API, fenced like any write."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .._display import parse_duration
from .._errors import RunNotFoundError
from .._handles import RunHandle
from .._records import TERMINAL, RunRecord, RunStatus
from ._session import (
    OK,
    USAGE,
    WRONG_STATE,
    CommandError,
    Progress,
    Session,
    each_run,
    many,
    report_done,
    stored_run,
)

__all__ = ["cmd_cancel", "cmd_delete", "cmd_fork", "cmd_resume", "cmd_send_event"]


def _selection(session: Session, verb: str, applies: Callable[[RunRecord], bool]
               ) -> list[RunRecord] | None:
    """The runs a selection (``--status``, ``--workflow``, ``--older-than``) names that the
    change applies to; ``None`` when the command names one run instead."""
    args = session.args
    selecting = args.status is not None or args.workflow is not None \
        or args.older_than is not None
    if args.run_id is not None and selecting:
        raise CommandError(USAGE, f"{verb}: give a run id or a selection (--status,"
                                  " --workflow, --older-than), not both")
    if args.run_id is not None:
        return None
    if not selecting:
        raise CommandError(USAGE, f"{verb}: give a run id, or a selection (--status,"
                                  " --workflow, --older-than) for many runs at once")
    cutoff = None if args.older_than is None else \
        session.now - parse_duration(args.older_than, "--older-than")
    return [run for run in each_run(session, status=args.status, workflow=args.workflow)
            if (cutoff is None or run.updated_at < cutoff) and applies(run)]


def _apply(session: Session, verb: str, done: str, runs: list[RunRecord],
           change: Callable[[str], bool]) -> int:
    """Apply ``change`` to each run of a selection (or list them, with ``--dry-run``)."""
    ids = [run.run_id for run in runs]
    if session.args.dry_run:
        if session.json:
            session.print_json({"dry_run": True, "would_" + verb: ids})
        else:
            session.print(f"would {verb} {many(len(ids), 'run')}" + (":" if ids else ""))
            for run in runs:
                session.print(f"  {run.run_id}  {run.workflow}  {run.status.value.upper()}")
        return OK
    progress = Progress(done, len(ids), session.err)
    changed: list[str] = []
    skipped: list[str] = []
    for run_id in ids:
        (changed if change(run_id) else skipped).append(run_id)
        progress.step()
    progress.finish()
    if session.json:
        session.print_json({"dry_run": False, done: changed, "skipped": skipped})
    else:
        note = f" ({len(skipped)} changed state meanwhile and were left)" if skipped else ""
        session.print(f"{done} {many(len(changed), 'run')}{note}")
    return OK


def _state(run: RunRecord) -> str:
    return run.status.value.upper()


def _change(session: Session, verb: str, done: str, applies: Callable[[RunRecord], bool],
            change: Callable[[RunHandle[Any]], bool], refusal: str) -> int:
    """Change one run (exit 3 with ``refusal`` when its state does not allow it), or each
    run of a selection that ``applies`` to."""
    runs = _selection(session, verb, applies)
    runtime = session.runtime()
    if runs is not None:
        return _apply(session, verb, done, runs,
                      lambda run_id: bool(change(runtime.get_run(run_id))))
    handle = runtime.get_run(session.args.run_id)
    if not change(handle):
        raise CommandError(WRONG_STATE, f"run {handle.run_id!r} is"
                                        f" {_state(handle.status())}: {refusal}")
    return report_done(session, handle.run_id, done)


def cmd_cancel(session: Session) -> int:
    """Cancel one run, or every run of a selection that is not finished."""
    return _change(session, "cancel", "cancelled", lambda run: run.status not in TERMINAL,
                   RunHandle.cancel, "it has finished, there is nothing to cancel")


def cmd_resume(session: Session) -> int:
    """Resume one FAILED or CANCELLED run, or every such run of a selection."""
    resumable = (RunStatus.FAILED, RunStatus.CANCELLED)
    return _change(session, "resume", "resumed", lambda run: run.status in resumable,
                   RunHandle.resume, "only FAILED or CANCELLED runs resume")


def cmd_delete(session: Session) -> int:
    """Delete one run, or the runs of a selection, with their steps and inboxes."""
    runs = _selection(session, "delete", lambda run: True)
    runtime = session.runtime()
    if runs is not None:
        return _apply(session, "delete", "deleted", runs, runtime.delete_run)
    run_id = session.args.run_id
    if session.args.dry_run:
        run = stored_run(session, run_id)
        return _apply(session, "delete", "deleted", [run], runtime.delete_run)
    if not runtime.delete_run(run_id):
        raise RunNotFoundError(run_id)
    return report_done(session, run_id, "deleted")


def cmd_fork(session: Session) -> int:
    """A new run from a run's history before a step."""
    args = session.args
    handle = session.runtime().fork(args.run_id, args.from_step, new_run_id=args.new_id)
    if session.json:
        session.print_json({"run_id": handle.run_id, "forked_from": args.run_id})
    else:
        session.print(handle.run_id)
    return OK


def cmd_send_event(session: Session) -> int:
    """An operator's event (a manual approval)."""
    args = session.args
    try:
        data = json.loads(args.data)
    except ValueError as error:
        raise CommandError(USAGE, f"send-event: the data is not JSON ({error}): quote it,"
                                  """ e.g. '{"by": "ann"}' or '"yes"'""") from None
    sent = session.runtime().send_event(args.run_id, args.name, data, key=args.key)
    if session.json:
        session.print_json({"run_id": args.run_id, "name": args.name, "sent": bool(sent)})
    elif sent:
        session.print(f"sent {args.name} to {args.run_id}")
    else:
        session.print(f"not sent: an event {args.name} with key {args.key!r} is already in"
                      f" the inbox of {args.run_id}")
    return OK
