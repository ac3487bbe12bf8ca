"""What every command shares: the options, the store opened read-only or written through a
runtime, output, exit codes, progress lines, and the reading helpers."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TextIO

from .._clock import Clock
from .._codec import JsonCodec, PickleCodec
from .._display import age, duration, parse_since
from .._errors import ConfigurationError, RunNotFoundError
from .._export import record_dict
from .._forks import local_id
from .._records import RunRecord, RunStatus, StepRecord, StepStatus, step_kind, step_of_run
from .._runtime import DurableWorkflowRuntime
from .._storage import RunStorage, StepStorage
from .._storage._sqlite import SCHEMA_VERSION as SQLITE_VERSION
from .._storage._sqlite import SqliteStepStorage
from .._workflows import published_steps
from ..testing import FakeClock

__all__ = [
    "NOT_FOUND", "OK", "USAGE", "WRONG_STATE", "CommandError", "Progress", "Session", "Store",
    "belongs_to_run", "completed_count", "each_run", "lease_text", "many", "published_values",
    "report_done", "step_json", "stored_run", "waiting_text"
]

# The exit codes (docs/operations.md).
OK, NOT_FOUND, USAGE, WRONG_STATE = 0, 1, 2, 3
PAGE = 500


def _moment(text: str) -> float:
    """``--now``: epoch seconds or an ISO time."""
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"[\d.]+[smhd]", text.strip()):
        raise ConfigurationError(f"--now takes an ISO time or epoch seconds, got {text!r}",
                                 field="--now")
    return parse_since(text, 0.0, "--now")


class CommandError(Exception):
    """A command's failure with its exit code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Progress:
    """A progress line on stderr for long exports, imports and deletes: rewritten in place
    on a terminal; elsewhere only the last line is written, once the work is done."""

    def __init__(self, verb: str, total: int, stream: TextIO) -> None:
        self.verb, self.total, self.stream = verb, total, stream
        self.done = 0
        self.shown = total >= 200
        self.live = self.shown and stream.isatty()
        self.every = max(1, total // 50)

    def step(self, count: int = 1) -> None:
        """Count ``count`` more items done."""
        self.done += count
        if self.live and (self.done % self.every == 0 or self.done == self.total):
            self.stream.write(f"\r{self.verb} {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        """Write the last line."""
        if self.shown:
            self.stream.write(("\r" if self.live else "") + f"{self.verb} {self.done}/"
                              f"{self.total}\n")
            self.stream.flush()


class Store(StepStorage, RunStorage, Protocol):
    """What the commands need of a store: both protocols (SQLite's or PostgreSQL's)."""


class Session:
    """One command's view of the store: the options, a read-only storage and a writing
    runtime opened on first use, and where output goes.

    The store is SQLite (``--db PATH``) or PostgreSQL (``--url URL [--schema S]``; the
    ``postgres`` extra is imported only then).
    """

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out, self.err = out, err
        self.json = bool(getattr(args, "json", False))
        self.path: str | None = args.db
        self.url: str | None = args.url
        self.schema: str = args.schema
        self.fixed_now = None if args.now is None else _moment(args.now)
        self.now = time.time() if self.fixed_now is None else self.fixed_now
        self.width = max(shutil.get_terminal_size((100, 24)).columns, 40)
        self.codec_name: str = args.codec
        self._reader: Store | None = None
        self._runtime: DurableWorkflowRuntime | None = None

    @property
    def schema_version(self) -> int:
        """The schema version of the store's kind (what an export's header records)."""
        if self.url is not None:
            from ..postgres import SCHEMA_VERSION as POSTGRES_VERSION

            return POSTGRES_VERSION
        return SQLITE_VERSION

    def open(self, *, readonly: bool = False, create: bool = False) -> Store:
        """A new open of the store: read-only (never creating, migrating or writing), or
        for writing (an existing SQLite file only, unless ``create``)."""
        if self.url is not None:
            from ..postgres import PostgresStorage

            return PostgresStorage(self.url, schema=self.schema, readonly=readonly)
        assert self.path is not None
        if not create and self.path != ":memory:" and not os.path.isfile(self.path):
            raise CommandError(NOT_FOUND, f"no database at {self.path!r} (it is never created"
                                          " by a command that reads it)")
        if readonly:
            return SqliteStepStorage.open_readonly(self.path)
        return SqliteStepStorage(self.path)

    def reader(self) -> Store:
        """The store opened read-only."""
        if self._reader is None:
            self._reader = self.open(readonly=True)
        return self._reader

    def runtime(self) -> DurableWorkflowRuntime:
        """A runtime over a normal open of the existing store (for writes)."""
        if self._runtime is None:
            storage = self.open()
            codec = PickleCodec() if self.codec_name == "pickle" else JsonCodec()
            # --now fixes the moment the command acts at too (reproducible transcripts).
            clock: Clock | None = None if self.fixed_now is None else \
                FakeClock(start=self.fixed_now)
            self._runtime = DurableWorkflowRuntime(storage=storage, codec=codec, clock=clock,
                                                   executor_id=f"cli-{os.getpid()}")
        return self._runtime

    def close(self) -> None:
        """Close what was opened."""
        if self._reader is not None:
            self._reader.close()
        if self._runtime is not None:
            self._runtime.close()

    def print(self, text: str = "") -> None:
        """Write a line of output."""
        self.out.write(text + "\n")

    def print_json(self, value: Any) -> None:
        """Write ``value`` as JSON (stable: fields in record order)."""
        self.out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")




def each_run(session: Session, *, status: str | None = None, workflow: str | None = None,
          ) -> Iterator[RunRecord]:
    """Every run (optionally of a status and a workflow), in creation order, page by page."""
    store = session.reader()
    chosen = None if status is None else RunStatus(status)
    after: str | None = None
    while True:
        page = store.list_runs(status=chosen, workflow=workflow, limit=PAGE, after=after)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].run_id


def stored_run(session: Session, run_id: str) -> RunRecord:
    run = session.reader().get_run(run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    return run


def completed_count(session: Session, run_id: str) -> int:
    return len(session.reader().list(workflow_id=run_id, status=StepStatus.COMPLETED))


def belongs_to_run(step: StepRecord, run_ids: set[str]) -> bool:
    """Whether ``step`` is a step of one of the runs ``run_ids``."""
    return step.workflow_id in run_ids and step_of_run(step, step.workflow_id)


def published_values(steps: Sequence[StepRecord]) -> dict[str, str | None]:
    """The stored text of the latest value of every key the run published."""
    return {key: step.result for key, step in published_steps(steps).items()}


def step_json(run_id: str | None, step: StepRecord) -> dict[str, Any]:
    data = record_dict(step)
    if run_id is not None:
        data["local_id"] = local_id(run_id, step.step_id)
    data["kind"] = step_kind(step.action)
    return data


def waiting_text(run: RunRecord, now: float, *, long: bool = False) -> str:
    if run.status is RunStatus.SUSPENDED and run.waiting_for is not None:
        if run.wake_at is not None and run.wake_at <= now:
            return f"due (event {run.waiting_for})"
        left = "" if run.wake_at is None or not long else \
            f" ({duration(run.wake_at - now)} left)"
        return f"event {run.waiting_for}{left}"
    if run.status in (RunStatus.PENDING, RunStatus.SUSPENDED) and run.wake_at is not None:
        return "due" if run.wake_at <= now else f"wakes {age(run.wake_at, now)}"
    return "-"


def lease_text(run: RunRecord, now: float) -> str:
    if run.status is not RunStatus.RUNNING or run.lease_until is None:
        return "-"
    if run.lease_until < now:
        return "expired"
    return duration(run.lease_until - now)


def many(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def report_done(session: Session, run_id: str, what: str) -> int:
    if session.json:
        session.print_json({"run_id": run_id, what: True})
    else:
        session.print(f"{what} {run_id}")
    return OK
