"""The step state machine that both runtime flavours drive. It does no I/O of its own.

A step runs as a generator that yields *commands* (plain data) and receives their answers:

* :class:`Load` -> the stored record or ``None``
* :class:`Write` -> the record now stored (maybe someone else's COMPLETED one)
* :class:`Sleep` -> ``None`` once the wait is over
* :class:`RunAttempt` -> an :class:`AttemptOutcome` (the handler's value or its exception)

The sync runtime answers with blocking calls and threads; the asyncio runtime answers with
awaits. Every rule about replay, attempts, budgets, retries and recording lives here, once.
The generator's return value is the step's result; failures are raised from it.

Hooks are called from here too, through :class:`Hooks`, so every entry point reports the same
events in the same order.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ._codec import Codec
from ._errors import (
    SerializationError,
    StepInterruptedError,
    StorageError,
    WorkflowStepError,
)
from ._ids import CallCounter, idempotency_key
from ._records import ErrorInfo, Pipeline, StepContext, StepRecord, StepStatus
from ._retry import RetryPolicy, decide_retry

__all__ = [
    "AttemptOutcome",
    "Clock",
    "Handler",
    "Hooks",
    "Load",
    "RunAttempt",
    "Sleep",
    "StepPlan",
    "Write",
    "active_step",
    "call_handler",
    "current_step",
    "decode_result",
    "durable_step",
    "single_attempt",
]

logger = logging.getLogger("durably")

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


@dataclass
class ActiveStep:
    """What the context variable holds while a handler runs."""

    context: StepContext
    children: CallCounter
    """Numbers the durable calls this attempt makes (reset at every attempt)."""


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
    return _active.set(ActiveStep(context, CallCounter()))


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
            logger.exception("durably: %s hook raised for step %s; ignored", name, step_id)

    def started(self, step_id: str, pipeline: Pipeline) -> None:
        """Report that an attempt of ``step_id`` starts."""
        if self.on_start is not None:
            self._guard("on_step_start", self.on_start, step_id, pipeline)

    def completed(self, step_id: str, result: Any) -> None:
        """Report that ``step_id`` succeeded with ``result``."""
        if self.on_complete is not None:
            self._guard("on_step_complete", self.on_complete, step_id, result)

    def failed(self, step_id: str, error: BaseException, attempt: int) -> None:
        """Report that attempt ``attempt`` of ``step_id`` raised ``error``."""
        if self.on_error is not None:
            self._guard("on_step_error", self.on_error, step_id, error, attempt)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class Load:
    """Read the stored record of ``step_id``; answer: ``StepRecord | None``."""

    step_id: str


@dataclass(frozen=True)
class Write:
    """Store ``record``; answer: the record now stored."""

    record: StepRecord


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` on the runtime's clock; answer: ``None``."""

    seconds: float


@dataclass(frozen=True)
class RunAttempt:
    """Run the handler once as ``handler(context_value, *args)`` inside ``step``.

    The driver sets ``step`` as the current step while the handler runs, applies ``timeout``
    (real seconds, or ``None``), and answers with an :class:`AttemptOutcome`. A
    ``BaseException`` that is not an ``Exception`` is not an outcome: the driver lets it
    propagate, leaving the record as it is (RUNNING), exactly like a crash.
    """

    handler: Handler
    step: StepContext
    pipeline: Pipeline
    args: tuple[Any, ...]
    timeout: float | None


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt gave: ``value`` on success, else the ``error`` it raised."""

    value: Any = None
    error: Exception | None = None


Command = Load | Write | Sleep | RunAttempt
StepMachine = Generator[Command, Any, Any]


@dataclass(frozen=True)
class StepPlan:
    """Everything the state machine needs to know about one call."""

    step_id: str
    workflow_id: str
    pipeline: Pipeline
    args: tuple[Any, ...]
    resolve: Callable[[], Handler]
    """Returns the handler; raises ``HandlerNotFoundError``. Called only if the step runs."""
    policy: RetryPolicy
    mode: str


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


def _step_context(plan: StepPlan, attempt: int, max_attempts: int) -> StepContext:
    return StepContext(
        workflow_id=plan.workflow_id, step_id=plan.step_id, action=plan.pipeline.action,
        attempt=attempt, max_attempts=max_attempts, mode=plan.mode,
        idempotency_key=idempotency_key(plan.workflow_id, plan.step_id),
    )


def single_attempt(plan: StepPlan, hooks: Hooks) -> StepMachine:
    """Run one unrecorded attempt (``try_`` and ``send``): the handler's own error is raised."""
    handler = plan.resolve()
    step = _step_context(plan, 1, 1)
    hooks.started(plan.step_id, plan.pipeline)
    outcome: AttemptOutcome = yield RunAttempt(handler, step, plan.pipeline, plan.args, None)
    if outcome.error is not None:
        hooks.failed(plan.step_id, outcome.error, 1)
        raise outcome.error
    hooks.completed(plan.step_id, outcome.value)
    return outcome.value


def durable_step(
    plan: StepPlan, codec: Codec, hooks: Hooks, now: Callable[[], float]
) -> StepMachine:
    """Run one durable step (``do``) to its end, as DESIGN.md section 6 describes.

    Returns the decoded result. Raises ``WorkflowStepError`` when the step gives up,
    ``SerializationError`` for an unencodable result, ``HandlerNotFoundError`` for an unknown
    action, and lets storage errors through.
    """
    step_id = plan.step_id
    policy = plan.policy
    stored: StepRecord | None = yield Load(step_id)
    if stored is not None and stored.status is StepStatus.COMPLETED:
        return decode_result(codec, stored)
    handler = plan.resolve()

    # Where the budget stands: a FAILED (or missing) step starts afresh; RUNNING and RETRYING
    # mean an attempt was interrupted or a wait was cut short, so the same budget continues.
    t = now()
    if stored is None or stored.status is StepStatus.FAILED:
        record = StepRecord(
            step_id=step_id, workflow_id=plan.workflow_id, action=plan.pipeline.action,
            status=StepStatus.RUNNING, attempts=0, created_at=t, updated_at=t,
            error=None if stored is None else stored.error,
        )
    else:
        record = stored
        if record.attempts >= policy.max_attempts:
            interrupted = StepInterruptedError(step_id, record.attempts)
            stored = yield Write(_failed(record, interrupted, now()))
            if stored.status is StepStatus.COMPLETED:
                return decode_result(codec, stored)
            raise WorkflowStepError(
                step_id, attempts=record.attempts, cause=interrupted,
                action=plan.pipeline.action, reason="was interrupted during its last attempt",
            ) from interrupted
        if record.status is StepStatus.RETRYING and record.next_attempt_at is not None:
            remaining = record.next_attempt_at - t
            if remaining > 0:
                yield Sleep(remaining)

    while True:
        t = now()
        attempt = record.attempts + 1
        record = replace(
            record, status=StepStatus.RUNNING, attempts=attempt, started_at=t, updated_at=t,
            next_attempt_at=None,
            budget_started_at=(record.budget_started_at
                               if attempt > 1 and record.budget_started_at is not None else t),
        )
        stored = yield Write(record)
        if stored.status is StepStatus.COMPLETED:  # another process or thread finished it
            return decode_result(codec, stored)

        hooks.started(step_id, plan.pipeline)
        outcome: AttemptOutcome = yield RunAttempt(
            handler, _step_context(plan, attempt, policy.max_attempts), plan.pipeline,
            plan.args, policy.timeout,
        )
        error = outcome.error
        if error is None:
            try:
                encoded = codec.encode(outcome.value)
            except SerializationError as problem:
                named = SerializationError(
                    problem.reason, type_name=problem.type_name,
                    path=problem.path.replace("value", "result", 1), step_id=step_id,
                )
                hooks.failed(step_id, named, attempt)
                yield Write(_failed(record, named, now()))
                raise named from None
            t = now()
            stored = yield Write(replace(
                record, status=StepStatus.COMPLETED, result=encoded, error=None,
                updated_at=t, completed_at=t,
            ))
            result = decode_result(codec, stored)
            hooks.completed(step_id, result)
            return result

        hooks.failed(step_id, error, attempt)
        t = now()
        decision = decide_retry(
            policy, attempts=attempt, error=error, now=t,
            budget_started_at=t if record.budget_started_at is None else record.budget_started_at,
            workflow_id=plan.workflow_id, step_id=step_id,
        )
        if not decision.retry:
            stored = yield Write(_failed(record, error, t))
            if stored.status is StepStatus.COMPLETED:
                return decode_result(codec, stored)
            raise WorkflowStepError(
                step_id, attempts=attempt, cause=error, action=plan.pipeline.action,
                reason=f"failed after {attempt} attempt{'s' if attempt != 1 else ''}"
                f" ({decision.reason})",
            ) from error
        record = replace(
            record, status=StepStatus.RETRYING, error=ErrorInfo.from_exception(error),
            updated_at=t, next_attempt_at=t + decision.delay,
        )
        stored = yield Write(record)
        if stored.status is StepStatus.COMPLETED:
            return decode_result(codec, stored)
        if decision.delay > 0:
            yield Sleep(decision.delay)


def _failed(record: StepRecord, error: BaseException, t: float) -> StepRecord:
    return replace(
        record, status=StepStatus.FAILED, error=ErrorInfo.from_exception(error),
        updated_at=t, next_attempt_at=None,
    )


def call_handler(command: RunAttempt) -> AttemptOutcome:
    """Call the handler of ``command`` as the current step; capture an ``Exception``.

    A ``BaseException`` that is not an ``Exception`` propagates. The value is returned as it
    is, even when it is awaitable: a driver that cannot await decides what that means.
    """
    token = enter_step(command.step)
    try:
        value = command.handler(command.pipeline.context, *command.args)
    except Exception as error:
        return AttemptOutcome(error=error)
    finally:
        leave_step(token)
    return AttemptOutcome(value=value)
