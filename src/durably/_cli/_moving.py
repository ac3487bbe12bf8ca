"""The commands that move a store: ``export`` (JSON Lines, streamed) and ``import``
(checked whole before anything is written)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, TextIO

from .._export import Export, header, read_export, record_dict, value_fields
from .._records import step_of_run
from ._session import (
    NOT_FOUND,
    OK,
    USAGE,
    WRONG_STATE,
    CommandError,
    Progress,
    Session,
    belongs_to_run,
    each_run,
    many,
    stored_run,
)

__all__ = ["cmd_export", "cmd_import"]


def _decode(session: Session, data: dict[str, Any], kind: str) -> None:
    for name in value_fields(kind):
        text = data.get(name)
        if isinstance(text, str) and session.codec_name == "json":
            with contextlib.suppress(ValueError):  # not JSON: left as stored
                data[name + "_decoded"] = json.loads(text)


def _redact(data: dict[str, Any], kind: str) -> None:
    for name in value_fields(kind):
        if data.get(name) is not None:
            data[name] = None


def cmd_export(session: Session) -> int:
    """The store (or some runs) as JSON Lines."""
    args = session.args
    store = session.reader()
    if args.run_ids:
        runs = [stored_run(session, run_id) for run_id in args.run_ids]
    else:
        runs = list(each_run(session, status=args.status, workflow=args.workflow))
    whole = not args.run_ids and args.status is None and args.workflow is None
    target: TextIO = session.out if args.output in (None, "-") else \
        open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    counts = {"runs": 0, "steps": 0, "events": 0}
    progress = Progress("exported", len(runs), session.err)

    def write(kind: str, record: Any) -> None:
        data = {"type": kind, **record_dict(record)}
        if args.decode:
            _decode(session, data, kind)
        if args.redact:
            _redact(data, kind)
        target.write(json.dumps(data, ensure_ascii=False) + "\n")
        counts[kind + "s"] += 1

    try:
        first = header(schema_version=session.schema_version, codec=session.codec_name,
                       decoded=args.decode, redacted=args.redact)
        target.write(json.dumps(first) + "\n")
        for run in runs:
            write("run", run)
            for step in store.list(workflow_id=run.run_id):
                if step_of_run(step, run.run_id):
                    write("step", step)
            for event in store.list_events(run.run_id):
                write("event", event)
            progress.step()
        if whole:
            run_ids = {run.run_id for run in runs}
            for step in store.list():
                if not belongs_to_run(step, run_ids):
                    write("step", step)
        target.write(json.dumps({"type": "end", **counts}) + "\n")
    finally:
        if target is not session.out:
            target.close()
    progress.finish()
    return OK


def _read_file(name: str) -> list[str]:
    if name == "-":
        return sys.stdin.read().splitlines()
    try:
        with open(name, encoding="utf-8") as file:
            return file.read().splitlines()
    except FileNotFoundError:
        raise CommandError(NOT_FOUND, f"no export file {name!r}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(USAGE, f"cannot read {name!r}: {error}") from None


def cmd_import(session: Session) -> int:
    """Import an export into the store (created if missing); refused whole, before any
    write, if the file is not a complete export or its runs are already in the store."""
    export: Export = read_export(_read_file(session.args.file))
    store = session.open(create=True)
    try:
        taken = [run.run_id for run, _, _ in export.runs if store.get_run(run.run_id)]
        taken += [step.step_id for step in export.steps if store.get(step.step_id)]
        if taken:
            raise CommandError(WRONG_STATE, f"the store already holds {len(taken)} of the"
                                            f" export's runs and steps ({', '.join(taken[:3])}"
                                            f"{'...' if len(taken) > 3 else ''}): nothing"
                                            " was imported")
        progress = Progress("imported", len(export.runs), session.err)
        for run, steps, events in export.runs:
            if not store.insert_run(run, steps, events):
                raise CommandError(WRONG_STATE, f"run {run.run_id!r} appeared in the store"
                                                " during the import; the runs before it were"
                                                " imported")
            progress.step()
        for step in export.steps:
            store.set(step)
        progress.finish()
    finally:
        store.close()
    counts = export.counts
    if session.json:
        session.print_json({"imported": counts})
    else:
        session.print(f"imported {many(counts['runs'], 'run')}, {many(counts['steps'], 'step')}"
                      f" and {many(counts['events'], 'event')}")
    return OK
