"""The step state machine that both runtime flavours drive. It does no I/O of its own.

A step runs as a generator that yields *commands* (plain data) and receives their answers:

* :class:`Write` -> the record now stored (maybe someone else's COMPLETED one)
* :class:`Sleep` -> ``None`` once the wait is over
* :class:`RunAttempt` -> an :class:`AttemptOutcome` (the handler's value or its exception)

The driver finds the step's record before it starts the machine (a replay then costs no round
trip at all). The sync runtime answers with blocking calls and threads; the asyncio
runtime answers with awaits. Every rule about replay, attempts, budgets, retries and
recording lives here, once. The generator's return value is the step's result; failures are
raised from it.

Hooks are called from here too, through :class:`Hooks`, so every entry point reports the same
events in the same order.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from ._codec import Codec, JsonCodec
from ._errors import (
    SerializationError,
    StepInterruptedError,
    StorageError,
    WorkflowStepError,
)
from ._ids import CallCounter
from ._records import (
    ErrorInfo,
    Pipeline,
    StepContext,
    StepRecord,
    StepStatus,
    new_context,
    new_record,
)
from ._retry import RetryPolicy, decide_retry

__all__ = [
    "NOT_COMPLETED",
    "AttemptOutcome",
    "Clock",
    "Handler",
    "Hooks",
    "RunAttempt",
    "Sleep",
    "StepPlan",
    "Write",
    "active_step",
    "call_handler",
    "completed_value",
    "current_step",
    "decode_result",
    "durable_step",
    "encode_result",
    "logger",
    "single_attempt",
]

if TYPE_CHECKING:
    import logging


def logger() -> logging.Logger:
    """Return the ``durably`` logger (logging is imported on first use, not at import)."""
    import logging

    return logging.getLogger("durably")

Handler = Callable[..., Any]


class Clock(Protocol):
    """Where time comes from: ``now()`` in seconds since the epoch, and ``sleep(seconds)``.

    The asyncio runtime also accepts a clock whose ``sleep`` returns an awaitable.
    """

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> Any:
        """Wait ``seconds`` (or return an awaitable that does)."""
        ...


# ---------------------------------------------------------------- the running step


class ActiveStep:
    """What the context variable holds while a handler runs."""

    __slots__ = ("_children", "context")

    def __init__(self, context: StepContext) -> None:
        self.context = context
        self._children: CallCounter | None = None

    @property
    def children(self) -> CallCounter:
        """Numbers the durable calls this attempt makes (a new attempt starts a new one).

        Made on first use: most handlers make no durable calls of their own.
        """
        if self._children is None:
            self._children = CallCounter()
        return self._children


_active: contextvars.ContextVar[ActiveStep | None] = contextvars.ContextVar(
    "durably_active_step", default=None
)


def current_step() -> StepContext | None:
    """Return the :class:`StepContext` of the handler running in this thread or task.

    Returns ``None`` outside a handler.
    """
    active = _active.get()
    return None if active is None else active.context


def active_step() -> ActiveStep | None:
    """Return the running step with its child counter (used to scope nested calls)."""
    return _active.get()


def enter_step(context: StepContext) -> contextvars.Token[ActiveStep | None]:
    """Mark ``context`` as the running step; return the token that :func:`leave_step` takes."""
    return _active.set(ActiveStep(context))


def leave_step(token: contextvars.Token[ActiveStep | None]) -> None:
    """Undo :func:`enter_step`."""
    _active.reset(token)


# ---------------------------------------------------------------- hooks


class Hooks:
    """The three hooks behind one guard: a hook that raises is logged and changes nothing."""

    __slots__ = ("on_complete", "on_error", "on_start")

    def __init__(
        self,
        on_start: Callable[[str, Pipeline], Any] | None = None,
        on_complete: Callable[[str, Any], Any] | None = None,
        on_error: Callable[[str, BaseException, int], Any] | None = None,
    ) -> None:
        self.on_start = on_start
        self.on_complete = on_complete
        self.on_error = on_error

    @staticmethod
    def _guard(name: str, hook: Callable[..., Any], step_id: str, *args: Any) -> None:
        try:
            hook(step_id, *args)
        except Exception:
            logger().exception("durably: %s hook raised for step %s; ignored", name, step_id)

    def started(self, plan: StepPlan) -> None:
        """Report that an attempt of ``plan`` starts (its Pipeline is built only if needed)."""
        if self.on_start is not None:
            self._guard("on_step_start", self.on_start, plan.step_id, plan.pipeline)

    def completed(self, step_id: str, result: Any) -> None:
        """Report that ``step_id`` succeeded with ``result``."""
        if self.on_complete is not None:
            self._guard("on_step_complete", self.on_complete, step_id, result)

    def failed(self, step_id: str, error: BaseException, attempt: int) -> None:
        """Report that attempt ``attempt`` of ``step_id`` raised ``error``."""
        if self.on_error is not None:
            self._guard("on_step_error", self.on_error, step_id, error, attempt)


# ---------------------------------------------------------------- commands
#
# Commands are tiny slotted classes rather than frozen dataclasses: a step creates three or
# four of them, and a frozen dataclass's __init__ costs several times more. Treat them as
# immutable all the same.


class Write:
    """Store ``record``; answer: the record now stored."""

    __slots__ = ("record",)

    def __init__(self, record: StepRecord) -> None:
        self.record = record


class Sleep:
    """Wait ``seconds`` on the runtime's clock; answer: ``None``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class RunAttempt:
    """Run the handler once as ``handler(context, *args)`` inside ``step``.

    The driver sets ``step`` as the current step while the handler runs, applies ``timeout``
    (real seconds, or ``None``), and answers with an :class:`AttemptOutcome`. A
    ``BaseException`` that is not an ``Exception`` is not an outcome: the driver lets it
    propagate, leaving the record as it is (RUNNING), exactly like a crash.
    """

    __slots__ = ("args", "context", "handler", "step", "timeout")

    def __init__(self, handler: Handler, step: StepContext, context: Any,
                 args: tuple[Any, ...], timeout: float | None) -> None:
        self.handler = handler
        self.step = step
        self.context = context
        self.args = args
        self.timeout = timeout


class AttemptOutcome:
    """What one attempt gave: ``value`` on success, else the ``error`` it raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value = value
        self.error = error


Command = Write | Sleep | RunAttempt
StepMachine = Generator[Command, Any, Any]


class StepPlan:
    """Everything the state machine needs to know about one call.

    A plain class with slots, whose :class:`Pipeline` is built only when something asks for
    it: a replay (the hot path) needs neither.
    """

    __slots__ = ("_handler", "_lookup", "_pipeline", "action", "args", "context",
                 "context_hash", "mode", "policy", "step_id", "workflow_id")

    def __init__(
        self,
        step_id: str,
        workflow_id: str,
        action: str,
        context: Any,
        args: tuple[Any, ...],
        policy: RetryPolicy,
        mode: str,
        handler: Handler | None = None,
        lookup: Callable[[str], Handler] | None = None,
        context_hash: str | None = None,
        pipeline: Pipeline | None = None,
    ) -> None:
        self.step_id = step_id
        self.workflow_id = workflow_id
        self.action = action
        self.context = context
        self.args = args
        self.policy = policy
        self.mode = mode
        self._handler = handler
        self._lookup = lookup
        self.context_hash = context_hash
        self._pipeline = pipeline

    def resolve(self) -> Handler:
        """Return the handler (given, or looked up by action name); called only if the step
        runs. Raises ``HandlerNotFoundError`` for an unknown action."""
        if self._handler is not None:
            return self._handler
        assert self._lookup is not None, "a plan has a handler or a lookup"
        return self._lookup(self.action)

    @property
    def pipeline(self) -> Pipeline:
        """The call as a :class:`Pipeline` (what hooks and handlers see)."""
        if self._pipeline is None:
            self._pipeline = Pipeline(tuple(self.action.split(".")), self.context,
                                      self.context_hash)
        return self._pipeline


COMPLETED, FAILED = StepStatus.COMPLETED, StepStatus.FAILED
RUNNING, RETRYING = StepStatus.RUNNING, StepStatus.RETRYING


class _NotCompleted:
    """The marker :func:`completed_value` returns for a step that must run."""


NOT_COMPLETED: Any = _NotCompleted()


def completed_value(codec: Codec, stored: StepRecord | None) -> Any:
    """The replay rule: the decoded result of a COMPLETED record, else :data:`NOT_COMPLETED`.

    Drivers call it on the record they load before starting :func:`durable_step` (which
    applies the same rule), so a replay costs no generator at all.
    """
    if stored is not None and stored.status is COMPLETED:
        return decode_result(codec, stored)
    return NOT_COMPLETED


def encode_result(codec: Codec, value: Any) -> tuple[str, bool]:
    """Encode a handler's value; also say whether decoding it would give ``value`` back as is.

    True only for the JSON codec and plain JSON values (dict, list, str, int, finite float,
    bool, None), whose decoded copy is equal and of the same types: the runtime then returns
    the handler's own object instead of decoding what it just encoded.
    """
    if type(codec) is JsonCodec:
        return codec.encode_checked(value)
    return codec.encode(value), False


def decode_result(codec: Codec, record: StepRecord) -> Any:
    """Return the decoded result of a COMPLETED record.

    Raises:
        StorageError: the stored text cannot be decoded; names the step id.
    """
    try:
        return codec.decode(record.result)  # type: ignore[arg-type]
    except Exception as error:
        raise StorageError(
            f"stored result of step {record.step_id} cannot be decoded: {error}",
            step_id=record.step_id,
        ) from error


def single_attempt(plan: StepPlan, hooks: Hooks) -> StepMachine:
    """Run one unrecorded attempt (``try_`` and ``send``): the handler's own error is raised."""
    handler = plan.resolve()
    step = new_context(plan.workflow_id, plan.step_id, plan.action, 1, 1, plan.mode)
    hooks.started(plan)
    outcome: AttemptOutcome = yield RunAttempt(handler, step, plan.context, plan.args, None)
    if outcome.error is not None:
        hooks.failed(plan.step_id, outcome.error, 1)
        raise outcome.error
    hooks.completed(plan.step_id, outcome.value)
    return outcome.value


def durable_step(
    plan: StepPlan,
    codec: Codec,
    hooks: Hooks,
    now: Callable[[], float],
    stored: StepRecord | None,
) -> StepMachine:
    """Run one durable step (``do``) to its end, as DESIGN.md section 6 describes.

    ``stored`` is the step's record as the driver knows it (``None`` if there is none); any
    write may still hand back a COMPLETED record someone else wrote, and then that result is
    returned. Returns the decoded result. Raises ``WorkflowStepError`` when the step
    gives up, ``SerializationError`` for an unencodable result, ``HandlerNotFoundError`` for an
    unknown action, and lets storage errors through.
    """
    replayed = completed_value(codec, stored)
    if replayed is not NOT_COMPLETED:
        return replayed  # the handler is not run, not even looked up
    handler = plan.resolve()
    step_id = plan.step_id
    workflow_id = plan.workflow_id
    action = plan.action
    policy = plan.policy

    # Where the budget stands: a FAILED (or missing) step starts afresh; RUNNING and RETRYING
    # mean an attempt was interrupted or a wait was cut short, so the same budget continues.
    created_at: float | None = None  # of a new record: the time of its first write, below
    budget_started_at = 0.0  # of a fresh budget: the start of attempt 1, below


    if stored is None or stored.status is FAILED:
        attempts = 0
        if stored is not None:
            created_at = stored.created_at
        error_info = None if stored is None else stored.error
        started_at: float | None = None
    else:
        t = now()
        attempts, created_at = stored.attempts, stored.created_at
        budget_started_at = stored.budget_started_at if stored.budget_started_at is not None else t
        error_info, started_at = stored.error, stored.started_at
        if attempts >= policy.max_attempts:
            interrupted = StepInterruptedError(step_id, attempts)
            written = yield Write(_failed(stored, interrupted, t))
            if written.status is COMPLETED:
                return decode_result(codec, written)
            raise WorkflowStepError(
                step_id, attempts=attempts, cause=interrupted, action=action,
                reason="was interrupted during its last attempt",
            ) from interrupted
        if stored.status is RETRYING and stored.next_attempt_at is not None:
            remaining = stored.next_attempt_at - t
            if remaining > 0:
                yield Sleep(remaining)

    while True:
        attempts += 1
        started_at = t = now()
        if attempts == 1:
            budget_started_at = t
        if created_at is None:
            created_at = t
        record = new_record(step_id, workflow_id, action, RUNNING, None, error_info, attempts,
                            created_at, t, t, None, None, budget_started_at)
        written = yield Write(record)
        if written.status is COMPLETED:  # another process or thread finished it
            return decode_result(codec, written)

        if hooks.on_start is not None:  # (checked here too: no call at all when unset)
            hooks.started(plan)
        outcome: AttemptOutcome = yield RunAttempt(
            handler, new_context(workflow_id, step_id, action, attempts, policy.max_attempts,
                                 plan.mode),
            plan.context, plan.args, policy.timeout,
        )
        error = outcome.error
        if error is None:
            try:
                encoded, same_value = encode_result(codec, outcome.value)
            except SerializationError as problem:
                named = SerializationError(
                    problem.reason, type_name=problem.type_name,
                    path=problem.path.replace("value", "result", 1), step_id=step_id,
                )
                hooks.failed(step_id, named, attempts)
                written = yield Write(_failed(record, named, now()))
                if written.status is COMPLETED:  # another process finished it meanwhile
                    return decode_result(codec, written)
                raise named from None
            t = now()
            mine = new_record(step_id, workflow_id, action, COMPLETED, encoded, None, attempts,
                              created_at, started_at, t, t, None, budget_started_at)
            written = yield Write(mine)
            # What a replay will return: our own value when decoding would only copy it.
            result = (outcome.value if same_value and written is mine
                      else decode_result(codec, written))
            if hooks.on_complete is not None:
                hooks.completed(step_id, result)
            return result

        hooks.failed(step_id, error, attempts)
        t = now()
        decision = decide_retry(
            policy, attempts=attempts, error=error, now=t,
            budget_started_at=budget_started_at, workflow_id=workflow_id, step_id=step_id,
        )
        if not decision.retry:
            written = yield Write(_failed(record, error, t))
            if written.status is COMPLETED:
                return decode_result(codec, written)
            raise WorkflowStepError(
                step_id, attempts=attempts, cause=error, action=action,
                reason=f"failed after {attempts} attempt{'s' if attempts != 1 else ''}"
                f" ({decision.reason})",
            ) from error
        error_info = ErrorInfo.from_exception(error, with_traceback=False)
        if decision.delay > 0:
            # The wait is part of the schedule: record it, so that a crash during it resumes
            # the rest of it. A retry with no wait goes straight to the next attempt's RUNNING
            # marker, which carries this error and counts attempts just the same.
            written = yield Write(new_record(
                step_id, workflow_id, action, RETRYING, None, error_info, attempts, created_at,
                started_at, t, None, t + decision.delay, budget_started_at))
            if written.status is COMPLETED:
                return decode_result(codec, written)
            yield Sleep(decision.delay)


def _failed(record: StepRecord, error: BaseException, t: float) -> StepRecord:
    """``record`` (the budget as it stands) turned FAILED at ``t``, with ``error`` and its
    traceback."""
    return new_record(record.step_id, record.workflow_id, record.action, FAILED, None,
                      ErrorInfo.from_exception(error), record.attempts, record.created_at,
                      record.started_at, t, None, None, record.budget_started_at)


def call_handler(command: RunAttempt) -> AttemptOutcome:
    """Call the handler of ``command`` as the current step; capture an ``Exception``.

    A ``BaseException`` that is not an ``Exception`` propagates. The value is returned as it
    is, even when it is awaitable: a driver that cannot await decides what that means.
    """
    token = enter_step(command.step)
    try:
        value = command.handler(command.context, *command.args)
    except Exception as error:
        return AttemptOutcome(error=error)
    finally:
        leave_step(token)
    return AttemptOutcome(value=value)
