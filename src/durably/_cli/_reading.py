"""The commands that look: ``runs``, ``show``, ``steps``, ``step`` (read-only opens)."""

from __future__ import annotations

import collections
import json
from typing import Any

from .._display import age, duration, parse_since, preview, table, utc
from .._errors import ConfigurationError
from .._export import record_dict
from .._forks import find_step, local_id, short_id
from .._records import RunRecord, RunStatus, StepStatus, step_kind
from ._session import (
    NOT_FOUND,
    OK,
    CommandError,
    Session,
    belongs_to_run,
    completed_count,
    each_run,
    lease_text,
    published_values,
    step_json,
    stored_run,
    waiting_text,
)

__all__ = ["cmd_runs", "cmd_show", "cmd_step", "cmd_steps"]


def cmd_runs(session: Session) -> int:
    """List runs: the latest ``--limit`` of those that match, in creation order."""
    args = session.args
    since = None if args.since is None else parse_since(args.since, session.now, "--since")
    limit = args.limit
    if limit < 0:
        raise ConfigurationError("--limit must be >= 0 (0: all)", field="--limit")
    kept: collections.deque[RunRecord] = collections.deque(maxlen=limit or None)
    matched = 0
    for run in each_run(session, status=args.status, workflow=args.workflow):
        if since is not None and run.updated_at < since:
            continue
        if args.stale and not (run.status is RunStatus.RUNNING and run.lease_until is not None
                               and run.lease_until < session.now):
            continue
        matched += 1
        kept.append(run)
    counts = {run.run_id: completed_count(session, run.run_id) for run in kept}
    if session.json:
        session.print_json([{**record_dict(run), "steps_completed": counts[run.run_id]}
                            for run in kept])
        return OK
    if not kept:
        session.print("no runs match")
        return OK
    rows = [[run.run_id, run.workflow, run.status.value.upper(), waiting_text(run, session.now),
             run.owner or "-", lease_text(run, session.now), str(counts[run.run_id]),
             str(run.recovery_count), age(run.updated_at, session.now)] for run in kept]
    session.print(table(["RUN ID", "WORKFLOW", "STATUS", "WAITING", "OWNER", "LEASE", "STEPS",
                         "RECOV", "AGE"], rows, session.width, shrink=(1, 3, 4, 0)))
    if matched > len(kept):
        session.print(f"({matched - len(kept)} earlier runs not shown: --limit 0 shows all)")
    return OK


def _error_lines(error: Any, indent: str) -> list[str]:
    lines = [f"{error.type}: {error.message}"]
    if error.traceback:
        lines += [(indent + line).rstrip() for line in error.traceback.rstrip("\n").splitlines()]
    return lines


def cmd_show(session: Session) -> int:
    """One run: its record, its steps in order, its inbox and its published values."""
    run = stored_run(session, session.args.run_id)
    store = session.reader()
    steps = store.list(workflow_id=run.run_id)
    events = store.list_events(run.run_id)
    published = published_values(steps)
    if session.json:
        session.print_json({"run": record_dict(run),
                            "steps": [step_json(run.run_id, step) for step in steps],
                            "events": [record_dict(event) for event in events],
                            "published": published})
        return OK
    now, width = session.now, session.width
    fields = [
        ("run", run.run_id), ("workflow", run.workflow),
        ("status", f"{run.status.value.upper()} (updated {age(run.updated_at, now)})"),
        ("input", preview(run.input, width - 14)),
    ]
    if run.result is not None:
        fields.append(("result", preview(run.result, width - 14)))
    if run.status in (RunStatus.PENDING, RunStatus.SUSPENDED):
        fields.append(("waiting", waiting_text(run, now, long=True)))
    fields += [
        ("fence", str(run.fence)),
        ("owner", "-" if run.owner is None else f"{run.owner} (lease {lease_text(run, now)})"
         + ("" if run.lease_until is None else f", until {utc(run.lease_until)}")),
        ("recoveries", f"{run.recovery_count} of {run.max_recoveries}"),
        ("code version", run.code_version or "-"),
        ("parent", run.parent_run_id or "-"), ("forked from", run.forked_from or "-"),
        ("created", f"{utc(run.created_at)} ({age(run.created_at, now)})"),
    ]
    if run.deadline is not None:
        fields.append(("deadline", f"{utc(run.deadline)} ({age(run.deadline, now)})"))
    for name, value in fields:
        session.print(f"{name:<13} {value}")
    if run.error is not None:
        session.print(f"{'error':<13} " + "\n".join(_error_lines(run.error, " " * 14)))
    session.print()
    session.print(f"steps ({len(steps)})")
    if steps:
        rows = []
        for number, step in enumerate(steps, 1):
            ended = step.completed_at if step.completed_at is not None else \
                None if step.status is StepStatus.RUNNING else step.updated_at
            took = "-" if ended is None or step.started_at is None \
                else duration(ended - step.started_at)
            last = "-" if step.error is None else f"{step.error.type}: {step.error.message}"
            rows.append([str(number), short_id(local_id(run.run_id, step.step_id)), step.action,
                         step_kind(step.action), step.status.value, str(step.attempts), took,
                         last])
        session.print(table(["#", "LOCAL ID", "ACTION", "KIND", "STATUS", "ATTEMPTS",
                             "DURATION", "LAST ERROR"], rows, width, shrink=(7, 2)))
    session.print()
    session.print(f"inbox ({len(events)})")
    if events:
        rows = [[event.name, event.key or "-", preview(event.payload, 30),
                 age(event.sent_at, now),
                 "-" if event.consumed_by is None
                 else short_id(local_id(run.run_id, event.consumed_by))]
                for event in events]
        session.print(table(["NAME", "KEY", "DATA", "SENT", "CONSUMED BY"], rows, width,
                            shrink=(2, 1)))
    if published:
        session.print()
        session.print(f"published ({len(published)})")
        for key, stored in published.items():
            session.print(f"  {key} = {preview(stored, width - len(key) - 5)}")
    return OK


def cmd_steps(session: Session) -> int:
    """Steps outside runs (wave 1's workflows)."""
    args = session.args
    run_ids = {run.run_id for run in each_run(session)}
    status = None if args.status is None else StepStatus(args.status)
    steps = [step for step in session.reader().list(workflow_id=args.workflow, status=status)
             if not belongs_to_run(step, run_ids)]
    if session.json:
        session.print_json([step_json(None, step) for step in steps])
        return OK
    if not steps:
        session.print("no steps outside runs match")
        return OK
    rows = [[step.step_id, step.workflow_id, step.action, step.status.value,
             str(step.attempts), age(step.updated_at, session.now)] for step in steps]
    session.print(table(["STEP ID", "WORKFLOW", "ACTION", "STATUS", "ATTEMPTS", "UPDATED"],
                        rows, session.width, shrink=(1, 2)))
    return OK


def cmd_step(session: Session) -> int:
    """One step, by its full id, decoded."""
    step_id = session.args.step_id
    step = session.reader().get(step_id)
    run_id, _, wanted = step_id.partition("/")
    if step is None and wanted and session.reader().get_run(run_id) is not None:
        # RUN_ID/<what fork --from takes>: a short local id, Action.name#k, last-failure
        steps = session.reader().list(workflow_id=run_id)
        step = steps[find_step(run_id, steps, wanted)]
    if step is None:
        raise CommandError(NOT_FOUND, f"no step {step_id!r}")
    if session.json:
        session.print_json(step_json(None, step))
        return OK
    now = session.now
    lines = [("step", step.step_id), ("workflow", step.workflow_id), ("action", step.action),
             ("kind", step_kind(step.action)), ("status", step.status.value),
             ("attempts", str(step.attempts)),
             ("created", f"{utc(step.created_at)} ({age(step.created_at, now)})"),
             ("updated", f"{utc(step.updated_at)} ({age(step.updated_at, now)})")]
    if step.next_attempt_at is not None:
        lines.append(("next attempt", f"{utc(step.next_attempt_at)}"
                                      f" ({age(step.next_attempt_at, now)})"))
    for name, value in lines:
        session.print(f"{name:<13} {value}")
    if step.result is not None:
        try:
            text = json.dumps(json.loads(step.result), indent=2, ensure_ascii=False)
        except ValueError:
            text = step.result
        session.print(f"{'result':<13} " + text.replace("\n", "\n" + " " * 14))
    if step.error is not None:
        session.print(f"{'error':<13} " + "\n".join(_error_lines(step.error, " " * 14)))
    return OK
