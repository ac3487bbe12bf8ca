"""Workflow runs: the run machine, the operations on runs, and what users hold of them.

Like the step machine of ``_core.py``, everything here is written once, as generators that
yield commands (plain data) and never do I/O themselves; each runtime flavour answers them
with blocking calls or with awaits:

* :class:`StoreCall` -> what the storage method returned
* :class:`Pause` -> ``None`` after at most ``seconds`` of real time (sooner when something
  changes in this process: a local run finished, an event was sent)
* :class:`ExecuteRun` -> ``None`` once the claimed run's machine has run in this caller
* :class:`Dispatch` -> ``None`` once the claimed run is handed to this runtime's workers
* :class:`RunBody` -> a :class:`BodyOutcome` (the body's value, or why it stopped)

A run is started once under its id (an idempotency key compared with the input's hash),
claimed with a lease and a fencing token, executed, and finished with a fenced write. See
docs/runs.md for the whole lifecycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Collection, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._codec import Codec, codec_types, decode_text, encode_result
from ._context import DeadlinePassed, RunBinding, RunUnwind, Scope
from ._errors import (
    ConfigurationError,
    OwnershipLost,
    RunCancelledError,
    RunConflictError,
    RunNotFoundError,
    SerializationError,
    StorageError,
    WorkflowFailedError,
)
from ._forks import find_step, fork_history, kept_steps
from ._records import TERMINAL, ErrorInfo, RunRecord, RunStatus, StepRecord, StepStatus
from ._registry import check_text
from ._storage import RunStorage, StepStorage
from ._tags import canonical_json
from ._waits import MISSING, Suspend

__all__ = [
    "BodyOutcome", "Dispatch", "ExecuteRun", "Pause", "RecoveryReport", "RunBody", "RunHost",
    "StoreCall", "WorkflowSpec", "body_outcome", "fresh_run_id", "op_cancel", "op_get_run",
    "op_list_runs", "op_recover", "op_result", "op_resume", "op_run", "op_run_due",
    "op_serve_pass", "op_start", "op_status", "op_steps", "run_machine",
]

# ---------------------------------------------------------------- commands


class StoreCall:
    """Call ``method(*args, **kwargs)`` of the storage; answer: its return value."""

    __slots__ = ("args", "kwargs", "method")

    def __init__(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs


class Pause:
    """Wait up to ``seconds`` of real time, less if something changes in this process."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class ExecuteRun:
    """Execute the claimed run here, in the caller (its lease renewed meanwhile); answer: what
    :func:`run_machine` returns (the run as it ended here, or ``None``)."""

    __slots__ = ("claimed",)

    def __init__(self, claimed: RunRecord) -> None:
        self.claimed = claimed


class Dispatch:
    """Hand the claimed run to this runtime's workers (at most ``max_runs`` at once)."""

    __slots__ = ("claimed",)

    def __init__(self, claimed: RunRecord) -> None:
        self.claimed = claimed


class RunBody:
    """Call the workflow function with the decoded input, as the run ``scope``."""

    __slots__ = ("function", "input", "scope")

    def __init__(self, function: Callable[[Any], Any], input: Any, scope: Scope) -> None:
        self.function = function
        self.input = input
        self.scope = scope


class BodyOutcome:
    """How a body ended: ``value``, or ``error``, or it ``lost`` its run, or it passed its
    ``deadline`` at a step boundary, or it is to ``suspend`` (a long wait)."""

    __slots__ = ("deadline", "error", "lost", "suspend", "value")

    def __init__(self, value: Any = None, error: Exception | None = None, lost: bool = False,
                 deadline: bool = False, suspend: Suspend | None = None) -> None:
        self.value = value
        self.error = error
        self.lost = lost
        self.deadline = deadline
        self.suspend = suspend


def body_outcome(error: BaseException) -> BodyOutcome:
    """What an exception escaping a body means; anything that is not one of ours and not an
    ``Exception`` (KeyboardInterrupt, SystemExit, cancellation) is raised again: it leaves the
    run RUNNING, as a crash would, for another process to recover when the lease runs out."""
    if isinstance(error, OwnershipLost):
        return BodyOutcome(lost=True)
    if isinstance(error, DeadlinePassed):
        return BodyOutcome(deadline=True)
    if isinstance(error, Suspend):
        return BodyOutcome(suspend=error)
    if isinstance(error, RunUnwind):
        raise TypeError(f"no driver answer for {type(error).__name__}") from error
    if isinstance(error, Exception):
        return BodyOutcome(error=error)
    raise error


# ---------------------------------------------------------------- what ops need of a runtime


@dataclass(frozen=True)
class WorkflowSpec:
    """A registered workflow: its stored name, function and run options."""

    name: str
    function: Callable[[Any], Any]
    max_recoveries: int = 10
    timeout: float | None = None


class RunHost(Protocol):
    """What the operations read from the runtime that drives them."""

    _runs: RunStorage
    _storage: StepStorage
    _codec: Codec
    executor_id: str
    lease: float
    code_version: str | None

    def _now(self) -> float: ...

    def _workflow_spec(self, name: str) -> WorkflowSpec | None: ...

    def _workflow_names(self) -> list[str]: ...

    def _failure_cause(self, run_id: str) -> BaseException | None: ...

    def _note_failure(self, run_id: str, error: BaseException) -> None: ...


@dataclass(frozen=True)
class RecoveryReport:
    """What ``recover()`` did: lists of run ids.

    Attributes:
        claimed: runs claimed, now executing on this runtime's workers.
        failed: runs made FAILED because their recoveries ran out (``RecoveryLimitError``).
        skipped_unknown: due runs of workflows this process has not registered, left as they
            are for a process that has.
    """

    claimed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped_unknown: list[str] = field(default_factory=list)


Op = Generator[Any, Any, Any]


def fresh_run_id() -> str:
    """A run id for a run started without one: no idempotency."""
    import uuid  # only runs started without an id pay for it (import time: issue 16)

    return "r_" + uuid.uuid4().hex


def _input_hash(host: RunHost, value: Any) -> str:
    text = canonical_json(value, root="input", types=codec_types(host._codec))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _encode_input(host: RunHost, value: Any) -> str:
    try:
        return encode_result(host._codec, value)[0]
    except SerializationError as error:
        raise error.named(path=error.path.replace("value", "input", 1),
                          hint="A run's input is stored: register the type with"
                               " JsonCodec(types=[...]), or pass plain values") from None


# ---------------------------------------------------------------- the run machine


def run_machine(host: RunHost, claimed: RunRecord) -> Op:
    """Execute a claimed run to its end: body, then a fenced outcome. Never raises for the
    body's sake: a failure is recorded; a lost run (taken over, cancelled) writes nothing.

    Returns the run as stored when this machine ended it COMPLETED or FAILED (so that a
    caller waiting for it need not read it back), else ``None``."""
    run_id, fence, runs = claimed.run_id, claimed.fence, host._runs
    spec = host._workflow_spec(claimed.workflow)
    try:
        if spec is None:  # claimed by name only: hand it back to a process that has it
            yield StoreCall(runs.release, run_id, fence, host._now())
            return
        if claimed.deadline is not None and host._now() > claimed.deadline:
            yield from _cancel_for_deadline(host, run_id)
            return
        try:
            value = host._codec.decode(claimed.input)
        except Exception as error:  # an input this code cannot read: the run cannot start
            problem = StorageError(f"the input of run {run_id!r} cannot be decoded: {error}")
            return (yield StoreCall(runs.finish, run_id, fence, RunStatus.FAILED, host._now(),
                                    error=ErrorInfo.from_exception(problem)))
        binding = RunBinding(run_id, fence, claimed.workflow, claimed.deadline)
        scope = Scope(run_id, run=binding)
        if fence == 1 and claimed.forked_from is None:
            # Its first claim ever: no step can have been written yet (every step write is
            # fenced, and fence 1 is ours), so there is no history to read.
            scope.view.fill(())
        outcome: BodyOutcome = yield RunBody(spec.function, value, scope)
        if outcome.lost:
            return
        if outcome.deadline:
            yield from _cancel_for_deadline(host, run_id)
            return
        if outcome.suspend is not None:  # a long wait: release the run until it is due
            yield StoreCall(runs.suspend, run_id, fence, host._now(), outcome.suspend.wake_at,
                            outcome.suspend.waiting_for)
            return
        if outcome.error is not None:
            host._note_failure(run_id, outcome.error)
            return (yield StoreCall(runs.finish, run_id, fence, RunStatus.FAILED, host._now(),
                                    error=ErrorInfo.from_exception(outcome.error)))
        try:
            result = encode_result(host._codec, outcome.value)[0]
        except SerializationError as error:
            named = error.named(path=error.path.replace("value", "result", 1),
                                reason=f"the workflow {claimed.workflow} returned, but its"
                                       f" result cannot be stored: {error.reason}")
            host._note_failure(run_id, named)
            return (yield StoreCall(runs.finish, run_id, fence, RunStatus.FAILED, host._now(),
                                    error=ErrorInfo.from_exception(named)))
        return (yield StoreCall(runs.finish, run_id, fence, RunStatus.COMPLETED, host._now(),
                                result=result))
    except OwnershipLost:
        return None  # cancelled or taken over while finishing: the other owner decides


def _cancel_for_deadline(host: RunHost, run_id: str) -> Op:
    # The error's message is the reason RunCancelledError will give.
    yield StoreCall(host._runs.cancel, run_id, host._now(),
                    ErrorInfo(type="RunCancelledError", module="durably",
                              message="it passed its deadline"))


# ---------------------------------------------------------------- starting and waiting


def op_start(host: RunHost, name: str, value: Any, run_id: str | None, *,
             parent_run_id: str | None = None, dispatch: bool = True) -> Op:
    """Create the run (or find it), and claim and dispatch it if it is due here.

    Returns ``(stored run, claimed run or None)``; with ``dispatch`` the claimed run is
    handed to the workers, else the caller executes it.
    """
    run_id = fresh_run_id() if run_id is None else check_text(run_id, "run_id")
    input_text = _encode_input(host, value)
    input_hash = _input_hash(host, value)
    spec = host._workflow_spec(name)
    now = host._now()
    record = RunRecord(
        run_id=run_id, workflow=name, status=RunStatus.PENDING, input=input_text,
        input_hash=input_hash, code_version=host.code_version,
        max_recoveries=spec.max_recoveries if spec is not None else 10,
        parent_run_id=parent_run_id,
        deadline=now + spec.timeout if spec is not None and spec.timeout else None,
        wake_at=now, created_at=now, updated_at=now)
    stored, created = yield StoreCall(host._runs.create_run, record)
    if not created:
        if stored.workflow != name:
            raise RunConflictError(run_id, workflow=stored.workflow, requested=name,
                                   reason=f"it is a run of {stored.workflow!r}, not {name!r}")
        if stored.input_hash != input_hash:
            raise RunConflictError(run_id, workflow=stored.workflow, requested=name,
                                   reason="it was started with another input")
    claimed = None
    if spec is not None and stored.status is RunStatus.PENDING:
        # start() commits the new run before it claims it: a starter that dies in between
        # leaves a PENDING run for recover().
        got = yield StoreCall(host._runs.claim, host.executor_id, host._now(), host.lease,
                              run_id=run_id)
        claimed = next((run for run in got if run.status is RunStatus.RUNNING), None)
        if claimed is not None and dispatch:
            yield Dispatch(claimed)
            claimed = None
    return stored, claimed


def op_run(host: RunHost, name: str, value: Any, run_id: str | None,
           timeout: float | None, parent_run_id: str | None = None) -> Op:
    """Start the run and wait for its result, executing it in the caller when it claims it."""
    stored, claimed = yield from op_start(host, name, value, run_id,
                                          parent_run_id=parent_run_id, dispatch=False)
    if claimed is not None:
        ended = yield ExecuteRun(claimed)
        if ended is not None:  # it ended here: its outcome is known without a read
            return _outcome_of(host, ended)
    return (yield from op_result(host, stored.run_id, timeout, claim_when_due=True))


def _outcome_of(host: RunHost, run: RunRecord) -> Any:
    """A terminal run's result, or its error raised."""
    if run.status is RunStatus.COMPLETED:
        return decode_text(host._codec, run.result or "null", f"the result of run {run.run_id}")
    if run.status is RunStatus.FAILED:
        raise WorkflowFailedError(run.run_id, run.error) from host._failure_cause(run.run_id)
    raise RunCancelledError(run.run_id, run.error.message if run.error is not None
                            else "it was cancelled")


def op_result(host: RunHost, run_id: str, timeout: float | None, *,
              claim_when_due: bool = False) -> Op:
    """Wait until the run is terminal; return its result or raise its error.

    With ``claim_when_due`` (a blocked ``run()`` caller), a run that becomes due while
    waited for (its owner died, its sleep ended) is claimed and executed here.

    Raises:
        TimeoutError: ``timeout`` seconds of real time passed first.
    """
    limit = None if timeout is None else time.monotonic() + timeout
    pause = 0.005
    while True:
        run = yield StoreCall(host._runs.get_run, run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        if run.status in TERMINAL:
            return _outcome_of(host, run)
        if claim_when_due and host._workflow_spec(run.workflow) is not None:
            got = yield StoreCall(host._runs.claim, host.executor_id, host._now(), host.lease,
                                  run_id=run_id)
            claimed = next((r for r in got if r.status is RunStatus.RUNNING), None)
            if claimed is not None:
                yield ExecuteRun(claimed)
                continue
            if got:  # made FAILED by the recovery limit
                continue
        if limit is not None and time.monotonic() >= limit:
            raise TimeoutError(f"run {run_id!r} did not finish within {timeout} s"
                               f" (it is {run.status.value})")
        wait = pause if limit is None else min(pause, max(0.0, limit - time.monotonic()))
        yield Pause(wait)
        pause = min(pause * 2, 0.5)


# ---------------------------------------------------------------- handles' operations


def op_get_run(host: RunHost, run_id: str) -> Op:
    """The stored run; RunNotFoundError if there is none."""
    run = yield StoreCall(host._runs.get_run, check_text(run_id, "run_id"))
    if run is None:
        raise RunNotFoundError(run_id)
    return run


op_status = op_get_run


def op_steps(host: RunHost, run_id: str) -> Op:
    """The run's step records, in call order."""
    yield from op_get_run(host, run_id)
    return (yield StoreCall(host._storage.list, workflow_id=run_id))


def op_cancel(host: RunHost, run_id: str) -> Op:
    """Cancel the run (False if it is terminal); RunNotFoundError if there is none."""
    yield from op_get_run(host, run_id)
    return (yield StoreCall(host._runs.cancel, run_id, host._now()))


def op_resume(host: RunHost, run_id: str) -> Op:
    """Resume a CANCELLED or FAILED run (False if there was nothing to resume)."""
    yield from op_get_run(host, run_id)
    return (yield StoreCall(host._runs.resume, run_id, host._now()))


def op_fork(host: RunHost, run_id: str, from_step: str, new_run_id: str | None) -> Op:
    """A new run with the source's input that keeps its history before ``from_step``
    (see ``_forks``); the source is unchanged. Returns the new run as stored.

    Raises:
        RunNotFoundError: no source run.
        StepNotFoundError: ``from_step`` names no step of it.
        RunConflictError: ``new_run_id`` is taken.
    """
    source = yield from op_get_run(host, run_id)
    target = fresh_run_id() if new_run_id is None else check_text(new_run_id, "new_run_id")
    steps = yield StoreCall(host._storage.list, workflow_id=source.run_id)
    cut = find_step(source.run_id, steps, check_text(from_step, "from_step"))
    events = yield StoreCall(host._runs.list_events, source.run_id)
    now = host._now()
    run, copies, inbox = fork_history(source, steps, events, cut, target, now)
    spec = host._workflow_spec(source.workflow)
    if spec is not None and spec.timeout:
        run = dataclasses.replace(run, deadline=now + spec.timeout)
    if not (yield StoreCall(host._runs.insert_run, run, copies, inbox)):
        raise RunConflictError(target, workflow=source.workflow, requested=source.workflow,
                               reason="the id of a fork must be new")
    return run


def op_restart(host: RunHost, run_id: str, from_step: str) -> Op:
    """Execute the run again from ``from_step``, in place: its history from there on is
    deleted, the events those steps consumed are given back, and the run is PENDING with a
    bumped fence. Returns the run as stored.

    Raises:
        RunNotFoundError: no such run.
        StepNotFoundError: ``from_step`` names no step of it.
    """
    run = yield from op_get_run(host, run_id)
    steps = yield StoreCall(host._storage.list, workflow_id=run.run_id)
    cut = find_step(run.run_id, steps, check_text(from_step, "from_step"))
    kept = {step.step_id for step in kept_steps(steps, cut)}
    drop = [step.step_id for step in steps if step.step_id not in kept]
    restarted = yield StoreCall(host._runs.restart_run, run.run_id, host._now(), drop)
    if restarted is None:
        raise RunNotFoundError(run_id)
    return restarted


def op_delete(host: RunHost, run_id: str) -> Op:
    """Delete the run with its steps and inbox; False if there was none."""
    return (yield StoreCall(host._runs.delete_run, check_text(run_id, "run_id")))


def op_list_runs(host: RunHost, status: RunStatus | str | None, workflow: str | None,
                 limit: int | None, after: str | None) -> Op:
    """The stored runs, filtered, in creation order."""
    if status is not None and not isinstance(status, RunStatus):
        try:
            status = RunStatus(status)
        except ValueError:
            raise ConfigurationError(f"status must be a RunStatus, got {status!r}",
                                     field="status") from None
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(f"limit must be an int >= 0 or None, got {limit!r}",
                                 field="limit")
    return (yield StoreCall(host._runs.list_runs, status=status, workflow=workflow,
                            limit=limit, after=after))


# ---------------------------------------------------------------- events and published values


def op_send_event(host: RunHost, run_id: str, name: str, key: str | None, payload: str) -> Op:
    """Put an event in a run's inbox; True, or False for a repeated key."""
    return (yield StoreCall(host._runs.add_event, run_id, name, key, payload, host._now()))


def op_events(host: RunHost, run_id: str) -> Op:
    """The run's inbox."""
    yield from op_get_run(host, run_id)
    return (yield StoreCall(host._runs.list_events, run_id))


def published_steps(steps: Sequence[StepRecord]) -> dict[str, StepRecord]:
    """The publish step that holds the latest value of every key a run published (its
    publish steps, in call order; the command line shows their stored text)."""
    latest: dict[str, StepRecord] = {}
    for step in steps:
        if step.status is StepStatus.COMPLETED and step.action.startswith(PUBLISH):
            latest[step.action[len(PUBLISH):]] = step
    return latest


def _published(host: RunHost, steps: list[StepRecord]) -> dict[str, Any]:
    """The latest value of every key a run published, decoded."""
    return {key: decode_text(host._codec, step.result or "null",
                             f"published value of step {step.step_id}")
            for key, step in published_steps(steps).items()}


PUBLISH = "durably.publish:"


def op_published(host: RunHost, run_id: str, key: str | None, timeout: float | None,
                 default: Any) -> Op:
    """One published value (waiting up to ``timeout`` for it), or all of them (``key`` None).

    Raises:
        TimeoutError: the time ran out and no default was given.
        KeyError: the run finished without publishing ``key`` and no default was given.
    """
    limit = None if timeout is None else time.monotonic() + timeout
    pause = 0.005
    while True:
        run = yield from op_get_run(host, run_id)
        steps = yield StoreCall(host._storage.list, workflow_id=run_id)
        values = _published(host, steps)
        if key is None:
            return values
        if key in values:
            return values[key]
        if run.status in TERMINAL or (limit is not None and time.monotonic() >= limit):
            if default is not MISSING:
                return default
            if run.status in TERMINAL:
                raise KeyError(f"run {run_id!r} finished without publishing {key!r}")
            raise TimeoutError(f"run {run_id!r} did not publish {key!r} within {timeout} s")
        wait = pause if limit is None else min(pause, max(0.0, limit - time.monotonic()))
        yield Pause(wait)
        pause = min(pause * 2, 0.5)


# ---------------------------------------------------------------- recovery and workers


def op_recover(host: RunHost, code_versions: Collection[str | None] | None) -> Op:
    """Claim every due run of a registered workflow and dispatch it; report what was found."""
    names = host._workflow_names()
    now = host._now()
    report = RecoveryReport()
    claimed = yield StoreCall(host._runs.claim, host.executor_id, now, host.lease,
                              workflows=names, code_versions=code_versions)
    for run in claimed:
        if run.status is RunStatus.RUNNING:
            report.claimed.append(run.run_id)
            yield Dispatch(run)
        else:
            report.failed.append(run.run_id)
    due = yield StoreCall(host._runs.list_runs, due=now, limit=1000)
    known = set(names)
    report.skipped_unknown.extend(run.run_id for run in due if run.workflow not in known)
    return report


def op_run_due(host: RunHost, limit: int | None) -> Op:
    """Claim up to ``limit`` due runs and execute each here; return how many ran."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(f"limit must be an int >= 0 or None, got {limit!r}",
                                 field="limit")
    claimed = yield StoreCall(host._runs.claim, host.executor_id, host._now(), host.lease,
                              limit=limit, workflows=host._workflow_names())
    executed = 0
    for run in claimed:
        if run.status is RunStatus.RUNNING:
            yield ExecuteRun(run)
            executed += 1
    return executed


def op_serve_pass(host: RunHost, capacity: int, poll: float) -> Op:
    """One pass of a worker loop: claim up to ``capacity`` due runs and dispatch them; return
    how long to wait before the next pass (at most ``poll``)."""
    if capacity > 0:
        claimed = yield StoreCall(host._runs.claim, host.executor_id, host._now(),
                                  host.lease, limit=capacity,
                                  workflows=host._workflow_names())
        for run in claimed:
            if run.status is RunStatus.RUNNING:
                yield Dispatch(run)
        if len(claimed) >= capacity:
            return 0.0  # there may be more: come back at once
    wake = yield StoreCall(host._runs.next_wake_at, host._workflow_names())
    if wake is None:
        return poll
    return max(0.0, min(poll, wake - host._now()))
