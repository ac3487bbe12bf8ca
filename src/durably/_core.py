"""The step state machine that both runtime flavours drive. It does no I/O of its own.

A step runs as a generator that yields *commands* (plain data) and receives their answers:

* :class:`ReadHistory` -> ``None`` once the view holds the next page of the workflow's records
* :class:`Write` -> the record now stored (maybe someone else's COMPLETED one)
* :class:`Sleep` -> ``None`` once the wait is over
* :class:`RunAttempt` -> an :class:`AttemptOutcome` (the handler's value or its exception)

The sync runtime answers with blocking calls and threads; the asyncio runtime answers with
awaits; each through a closed table that refuses a command it does not know. Every rule about
replay, attempts, budgets, retries, recording and hooks lives here, once. The generator's
return value is the step's result; failures are raised from it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from ._codec import Codec, decode_stored, encode_result
from ._context import ActiveStep, RunBinding, enter_step, leave_step
from ._errors import (
    ConfigurationError,
    SerializationError,
    StepInterruptedError,
    WorkflowStepError,
)
from ._ids import CallCounter
from ._records import (
    ErrorInfo,
    Pipeline,
    StepContext,
    StepEvent,
    StepRecord,
    StepStatus,
    new_context,
    new_record,
)
from ._registry import Handler
from ._retry import RETRY_AT_ONCE, RetryPolicy, decide_retry
from ._view import WorkflowView

if TYPE_CHECKING:
    import contextvars
    import logging

__all__ = [
    "AttemptOutcome",
    "Handoff",
    "Hooks",
    "ReadHistory",
    "RunAttempt",
    "Sleep",
    "StepHooks",
    "StepMachine",
    "StepPlan",
    "Write",
    "call_handler",
    "durable_step",
    "logger",
    "single_attempt",
    "straight_step",
]

def logger() -> logging.Logger:
    """Return the ``durably`` logger (logging is imported on first use, not at import)."""
    import logging

    return logging.getLogger("durably")


# ---------------------------------------------------------------- hooks


class StepHooks(Protocol):
    """Observers of steps: implement any of the three methods (the others may be missing).

    Each is called with a frozen :class:`~durably.StepEvent`; an exception it raises is logged
    on the ``durably`` logger and ignored, so a hook never fails, repeats or rewrites a step.
    No hook runs when a COMPLETED step is replayed (nothing executed).
    """

    def on_step_start(self, event: StepEvent) -> None:
        """Called before every attempt."""

    def on_step_complete(self, event: StepEvent) -> None:
        """Called after every success, with ``event.result`` set."""

    def on_step_error(self, event: StepEvent) -> None:
        """Called after every failed attempt, with ``event.error`` set."""


_Listener = Callable[[StepEvent], Any]


def _both(first: _Listener | None, second: _Listener | None) -> _Listener | None:
    if first is None or second is None:
        return first or second

    def call_both(event: StepEvent) -> None:
        first(event)
        second(event)

    return call_both


class Hooks:
    """The hooks of one runtime behind one guard: a hook that raises is logged and ignored.

    Built from a :class:`StepHooks` object and/or the three plain callables of the runtime's
    constructor (``on_step_start(step_id, pipeline)``, ``on_step_complete(step_id, result)``,
    ``on_step_error(step_id, error, attempt)``). An event object is built only when a hook is
    set, so steps without hooks pay nothing.
    """

    __slots__ = ("on_complete", "on_error", "on_start", "silent")

    def __init__(
        self,
        hooks: StepHooks | None = None,
        on_start: Callable[[str, Pipeline], Any] | None = None,
        on_complete: Callable[[str, Any], Any] | None = None,
        on_error: Callable[[str, BaseException, int], Any] | None = None,
    ) -> None:
        def adapt(fn: Callable[..., Any] | None, *fields: str) -> _Listener | None:
            if fn is None:
                return None
            return lambda event: fn(event.step_id, *(getattr(event, f) for f in fields))

        self.on_start = _both(getattr(hooks, "on_step_start", None),
                              adapt(on_start, "pipeline"))
        self.on_complete = _both(getattr(hooks, "on_step_complete", None),
                                 adapt(on_complete, "result"))
        self.on_error = _both(getattr(hooks, "on_step_error", None),
                              adapt(on_error, "error", "attempt"))
        self.silent = self.on_start is None and self.on_complete is None \
            and self.on_error is None

    @staticmethod
    def _call(name: str, hook: _Listener, plan: StepPlan, attempt: int, result: Any = None,
              error: BaseException | None = None) -> None:
        event = StepEvent(step_id=plan.step_id, workflow_id=plan.workflow_id,
                          action=plan.action, mode=plan.mode, attempt=attempt,
                          pipeline=plan.pipeline, result=result, error=error)
        try:
            hook(event)
        except Exception:
            logger().exception("durably: %s hook raised for step %s; ignored", name,
                               plan.step_id)

    def started(self, plan: StepPlan, attempt: int) -> None:
        """Report that attempt ``attempt`` of ``plan`` starts."""
        if self.on_start is not None:
            self._call("on_step_start", self.on_start, plan, attempt)

    def completed(self, plan: StepPlan, attempt: int, result: Any) -> None:
        """Report that ``plan`` succeeded with ``result``."""
        if self.on_complete is not None:
            self._call("on_step_complete", self.on_complete, plan, attempt, result=result)

    def failed(self, plan: StepPlan, attempt: int, error: BaseException) -> None:
        """Report that attempt ``attempt`` of ``plan`` raised ``error``."""
        if self.on_error is not None:
            self._call("on_step_error", self.on_error, plan, attempt, error=error)


_SILENT = Hooks()
"""No hooks: what the straight path's handoffs run with (it is taken only without hooks)."""


# ---------------------------------------------------------------- commands
#
# Commands are tiny slotted classes rather than frozen dataclasses: a step creates three or
# four of them, and a frozen dataclass's __init__ costs several times more. Treat them as
# immutable all the same.


class ReadHistory:
    """Add the next page of its workflow's records to ``view``, unless ``view`` no longer
    needs one to answer ``step_id`` (another call read it meanwhile); answer: ``None``."""

    __slots__ = ("step_id", "view")

    def __init__(self, view: WorkflowView, step_id: str) -> None:
        self.view = view
        self.step_id = step_id


class Write:
    """Store ``record``; answer: the record now stored.

    Inside a run (``run`` set) the write is fenced: storage checks, in the same transaction,
    that the run is still RUNNING under ``run.fence``, and raises ``OwnershipLost`` if not.
    """

    __slots__ = ("record", "run")

    def __init__(self, record: StepRecord, run: RunBinding | None = None) -> None:
        self.record = record
        self.run = run


class Sleep:
    """Wait ``seconds`` (always > 0) on the runtime's clock; answer: ``None``.

    ``for_event``: a wait for an event, which the driver may end early when something changes
    in this process (the machine then asks the inbox again). On a fake clock it simply
    advances time.
    """

    __slots__ = ("for_event", "seconds")

    def __init__(self, seconds: float, for_event: bool = False) -> None:
        self.seconds = seconds
        self.for_event = for_event


class RunAttempt:
    """Run attempt ``attempt`` of ``plan``'s step: ``handler(context, *args)``.

    The driver marks the attempt as the current step while the handler runs (see
    :func:`call_handler`), applies ``timeout`` (real seconds, or ``None``), and answers with an
    :class:`AttemptOutcome`. A ``BaseException`` that is not an ``Exception`` is not an
    outcome: the driver lets it propagate, leaving the record as it is (RUNNING), exactly like
    a crash. A driver that can await awaits what an async handler returns; one that cannot
    hands the awaitable back as the value, and the machine refuses it.
    """

    __slots__ = ("args", "attempt", "context", "handler", "plan", "timeout")

    def __init__(self, handler: Handler, plan: StepPlan, attempt: int, context: Any,
                 args: tuple[Any, ...], timeout: float | None) -> None:
        self.handler = handler
        self.plan = plan
        self.attempt = attempt
        self.context = context
        self.args = args
        self.timeout = timeout

    def enter(self) -> contextvars.Token[ActiveStep | None]:
        """Mark this attempt as the running step (``leave_step`` undoes it)."""
        plan = self.plan
        return enter_step(plan, self.attempt, plan.local_id)


class AttemptOutcome:
    """What one attempt gave: ``value`` on success, else the ``error`` it raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value = value
        self.error = error


Command = ReadHistory | Write | Sleep | RunAttempt
StepMachine = Generator[Command, Any, Any]


class StepPlan:
    """Everything the state machine needs to know about one call.

    A slotted class whose :class:`Pipeline` is built only when something asks for it: a replay
    (the hot path) needs neither it nor the handler.

    Args:
        step_id: the step's id.
        workflow_id: what the record's ``workflow_id`` is.
        action: the action name.
        context: the handler's first argument.
        args: the handler's other arguments.
        policy: the retry policy in force.
        mode: ``"do"``, ``"try"`` or ``"send"``.
        view: the records the runtime knows (``do`` only).
        handler: the handler, when the caller passed a callable.
        lookup: finds the handler by name, when ``handler`` is None (only if the step runs).
        context_hash: the call's hash, for the :class:`Pipeline`.
        pipeline: the call, when the caller built it.
        counter: the counter that numbered this call (``None`` for an explicit id).
        number: the number it gave (the ``#n`` of the id).
        run: the run the step belongs to (its writes are fenced), or ``None``.
        local_id: the id within the scope, without a run's prefix (default: ``step_id``).
    """

    __slots__ = ("_handler", "_lookup", "_pipeline", "action", "args", "context",
                 "context_hash", "counter", "local_id", "mode", "number", "policy", "run",
                 "step_id", "view", "workflow_id")

    def __init__(
        self, *, step_id: str, workflow_id: str, action: str, context: Any,
        args: tuple[Any, ...], policy: RetryPolicy, mode: str, view: WorkflowView | None = None,
        handler: Handler | None = None, lookup: Callable[[str], Handler] | None = None,
        context_hash: str | None = None, pipeline: Pipeline | None = None,
        counter: CallCounter | None = None, number: int = 0, run: RunBinding | None = None,
        local_id: str | None = None,
    ) -> None:
        self.counter = counter
        self.number = number
        self.run = run
        self.local_id = step_id if local_id is None else local_id
        self.step_id = step_id
        self.workflow_id = workflow_id
        self.action = action
        self.context = context
        self.args = args
        self.policy = policy
        self.mode = mode
        self.view = view
        self._handler = handler
        self._lookup = lookup
        self.context_hash = context_hash
        self._pipeline = pipeline

    def give_back(self) -> None:
        """Return this call's number to its counter (the call raised; see durable_step)."""
        if self.counter is not None and self.context_hash is not None:
            self.counter.give_back(self.context_hash, self.number)

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

    def attempt_context(self, attempt: int) -> StepContext:
        """The :class:`StepContext` that ``current_step()`` gives during ``attempt``."""
        return new_context(workflow_id=self.workflow_id, step_id=self.step_id,
                           action=self.action, attempt=attempt,
                           max_attempts=self.policy.max_attempts, mode=self.mode)


COMPLETED, FAILED = StepStatus.COMPLETED, StepStatus.FAILED
RUNNING, RETRYING = StepStatus.RUNNING, StepStatus.RETRYING

# Values of these types are never awaitable: the common case skips inspect's checks.
_PLAIN_VALUES = frozenset({dict, list, str, int, float, bool, tuple, type(None)})


def _refuse_awaitable(plan: StepPlan, outcome: AttemptOutcome) -> AttemptOutcome:
    """An attempt that gave back an awaitable ran a sync handler that returned a coroutine in
    a runtime that cannot await it: a programming error, never retried."""
    value = outcome.value
    if type(value) in _PLAIN_VALUES or not inspect.isawaitable(value):
        return outcome
    if inspect.iscoroutine(value):
        value.close()  # never awaited: close it so Python does not warn later
    return AttemptOutcome(error=ConfigurationError(
        f"the handler of {plan.action!r} returned an awaitable; the sync"
        " DurableWorkflowRuntime cannot await it. Use AsyncDurableWorkflowRuntime, or make"
        " the handler return a plain value.",
        field="handler",
    ))


def single_attempt(plan: StepPlan, hooks: Hooks) -> StepMachine:
    """Run one unrecorded attempt (``try_`` and ``send``): the handler's own error is raised."""
    handler = plan.resolve()
    hooks.started(plan, 1)
    outcome: AttemptOutcome = yield RunAttempt(handler, plan, 1, plan.context, plan.args, None)
    if outcome.error is None and type(outcome.value) not in _PLAIN_VALUES:
        outcome = _refuse_awaitable(plan, outcome)
    if outcome.error is not None:
        hooks.failed(plan, 1, outcome.error)
        raise outcome.error
    hooks.completed(plan, 1, outcome.value)
    return outcome.value


def durable_step(
    plan: StepPlan, codec: Codec, hooks: Hooks, now: Callable[[], float], *,
    resume: StepRecord | None = None, ran: AttemptOutcome | None = None,
) -> StepMachine:
    """Run one durable step (``do``) to its end.

    1. The record, as the view knows it: COMPLETED -> its decoded result (the handler is not
       run, not even looked up). FAILED or none -> a fresh budget. RUNNING or RETRYING -> an
       interrupted attempt or wait: the same budget continues, counting that attempt.
    2. Before each attempt a RUNNING marker; after it COMPLETED, RETRYING (with the wait) or
       FAILED. Any write may hand back a COMPLETED record someone else wrote: its result is
       returned.
    3. A call that raises (whatever it raises, including a driver's error or cancellation that
       closes the machine) gives its call number back, so that the next identical call
       continues this step instead of opening the next one: a program that catches the error
       and calls again must not run the step under a new id that a re-run would not reach.

    ``resume`` (the straight path's handoff, see :func:`straight_step`): the unfinished record
    already taken from the view, so no history is read; with ``ran``, the outcome of the
    attempt whose RUNNING marker ``resume`` is.

    Raises ``WorkflowStepError`` when the step gives up, ``SerializationError`` for an
    unencodable result, ``HandlerNotFoundError`` for an unknown action, ``TypeError`` when the
    arguments do not fit the handler, and lets storage errors through.
    """
    try:
        view = plan.view
        assert view is not None, "a durable plan has a view"
        stored = resume
        if stored is None:
            while view.needs(plan.step_id):  # history is read as far as this call needs
                yield ReadHistory(view, plan.step_id)
            stored = view.take(plan.step_id)
            if stored is not None and stored.status is COMPLETED:
                return decode_stored(codec, stored)
        return (yield from _run_budget(plan, view, stored, codec, hooks, now, ran))
    except BaseException:
        plan.give_back()
        raise


class Handoff:
    """What :func:`straight_step` returns when the call needs the machine after all: the
    driver drives ``machine`` instead, as it would have from the start."""

    __slots__ = ("machine",)

    def __init__(self, machine: StepMachine) -> None:
        self.machine = machine


def straight_step(
    plan: StepPlan, codec: Codec, now: Callable[[], float],
    store: Callable[[StepRecord, RunBinding | None], StepRecord],
) -> Any:
    """The common path of :func:`durable_step`, straight-line: no generator, no commands.

    A hot-path trick, kept here beside the machine it shortcuts. A driver that answers
    commands with plain blocking calls may call this instead of driving ``durable_step``,
    but only when nothing it skips could happen: no hooks are set and the policy has no
    timeout (the caller checks both). ``store(record, run)`` is the driver's answer to
    :class:`Write`. It does what the machine does on its busiest roads:

    * a replay (a COMPLETED record in the view) returns the decoded result;
    * a new step writes its RUNNING marker, runs the handler, writes COMPLETED;
    * a failed attempt that the policy retries at once (``decide_retry``, the machine's own
      decision) writes the next attempt's marker, which carries the error, and runs again.

    At the first sign of anything else (history to read, an unfinished record, a failure
    that gives up, waits or may be a call that does not fit, an awaitable or unencodable
    result) it returns a :class:`Handoff` to the machine, entered at exactly that point
    (``durable_step``'s ``resume`` and ``ran``), so every other rule about retries, failures
    and refusals stays in one place. tests/test_straight.py runs each case both ways and
    compares records, results, errors and sleeps.
    """
    view = plan.view
    assert view is not None, "a durable plan has a view"
    step_id = plan.step_id
    try:
        if view.needs(step_id):
            return Handoff(durable_step(plan, codec, _SILENT, now))
        stored = view.take(step_id)
        if stored is not None:
            if stored.status is COMPLETED:
                return decode_stored(codec, stored)
            return Handoff(durable_step(plan, codec, _SILENT, now, resume=stored))
        handler = plan.resolve()
        run = plan.run
        created = started = now()
        attempts, error_info = 1, None
        while True:
            marker = new_record(step_id=step_id, workflow_id=plan.workflow_id,
                                action=plan.action, status=RUNNING, error=error_info,
                                attempts=attempts, created_at=created, started_at=started,
                                updated_at=started, budget_started_at=created)
            written = store(marker, run)
            view.note(written)
            if written.status is COMPLETED:  # another process or thread finished it
                return decode_stored(codec, written)
            token = enter_step(plan, attempts, plan.local_id)
            try:
                value = handler(plan.context, *plan.args)
            except Exception as error:
                # The machine's decision, made here only to take its commonest answer, "at
                # once"; any other (give up, wait, a TypeError that may be the call's own)
                # is the machine's to carry out, and it decides again from the same facts.
                t = now()
                decision = None if type(error) is TypeError else decide_retry(
                    plan.policy, attempts=attempts, error=error, now=t,
                    budget_started_at=created, workflow_id=plan.workflow_id, step_id=step_id)
                if decision is not RETRY_AT_ONCE:
                    return Handoff(durable_step(plan, codec, _SILENT, now, resume=marker,
                                                ran=AttemptOutcome(error=error)))
                # As the machine does: no RETRYING record for a retry without a wait; the
                # next marker carries the error and counts the attempt.
                error_info = ErrorInfo.from_exception(error, with_traceback=False)
                attempts += 1
                started = now()
                continue
            finally:
                leave_step(token)
            break
        if type(value) not in _PLAIN_VALUES:  # maybe awaitable, maybe not encodable
            return Handoff(durable_step(plan, codec, _SILENT, now, resume=marker,
                                        ran=AttemptOutcome(value=value)))
        try:
            encoded, same_value = encode_result(codec, value)
        except SerializationError:
            return Handoff(durable_step(plan, codec, _SILENT, now, resume=marker,
                                        ran=AttemptOutcome(value=value)))
        t = now()
        mine = new_record(step_id=step_id, workflow_id=plan.workflow_id, action=plan.action,
                          status=COMPLETED, result=encoded, attempts=attempts,
                          created_at=created, started_at=started, updated_at=t, completed_at=t,
                          budget_started_at=created)
        written = store(mine, run)
        view.note(written)
        return value if same_value and written is mine else decode_stored(codec, written)
    except BaseException:
        plan.give_back()  # as durable_step does: see its point 3
        raise


def _does_not_fit(handler: Handler, context: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``handler(context, *args)`` cannot even bind its arguments: then a TypeError
    came from the call itself, not from inside the handler."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # no signature to ask (some builtins): assume it fits
        return False
    try:
        signature.bind(context, *args)
    except TypeError:
        return True
    return False


def _run_budget(
    plan: StepPlan, view: WorkflowView, stored: StepRecord | None, codec: Codec, hooks: Hooks,
    now: Callable[[], float], ran: AttemptOutcome | None = None,
) -> StepMachine:
    """The attempts of a step that must run, from the budget its record says.

    ``ran``: the outcome of the attempt whose RUNNING marker ``stored`` is, which has just
    run (the straight path hands over here; see :func:`straight_step`): the machine goes on
    from that outcome as if it had run the attempt itself.
    """
    handler = plan.resolve()
    step_id = plan.step_id
    workflow_id, action, policy, run = plan.workflow_id, plan.action, plan.policy, plan.run

    def record(status: StepStatus, t: float, **fields: Any) -> StepRecord:
        """This step's record at ``t``: the budget as it stands, in ``status``."""
        return new_record(step_id=step_id, workflow_id=workflow_id, action=action,
                          status=status, attempts=attempts, created_at=created_at,
                          started_at=started_at, updated_at=t,
                          budget_started_at=budget_started_at, **fields)

    def written_back(written: StepRecord) -> StepRecord:
        view.note(written)
        return written

    # Where the budget stands: a FAILED (or missing) step starts afresh; RUNNING and RETRYING
    # mean an attempt was interrupted or a wait was cut short, so the same budget continues.
    t = now()
    created_at = t if stored is None else stored.created_at
    started_at = None if stored is None else stored.started_at
    error_info = None if stored is None else stored.error
    attempts, budget_started_at = 0, t
    if ran is not None:
        assert stored is not None and stored.budget_started_at is not None, "a marker"
        attempts, budget_started_at = stored.attempts, stored.budget_started_at
    elif stored is not None and stored.status is not FAILED:
        attempts = stored.attempts
        if stored.budget_started_at is not None:
            budget_started_at = stored.budget_started_at
        if attempts >= policy.max_attempts:
            return (yield from _give_up(
                record(FAILED, t), StepInterruptedError(step_id, attempts), codec, view,
                "its last attempt was interrupted", run))
        if stored.status is RETRYING and stored.next_attempt_at is not None:
            # What is left of the recorded wait, but never more than one delay may be: the
            # process that recorded it may have had a clock ahead of ours.
            remaining = min(stored.next_attempt_at - t, policy.max_delay)
            if remaining > 0:
                yield Sleep(remaining)
        elapsed = now() - budget_started_at
        if policy.max_elapsed is not None and elapsed > policy.max_elapsed:
            # The budget's time ran out while the step was interrupted (a crash, a long
            # outage): the next attempt would start past max_elapsed, so none starts.
            reason = f"max_elapsed={policy.max_elapsed:g} s had passed when it resumed"
            return (yield from _give_up(
                record(FAILED, now()), StepInterruptedError(step_id, attempts, reason=reason),
                codec, view, reason, run))

    while True:
        if ran is None:
            attempts += 1
            started_at = t = now()
            if attempts == 1:
                budget_started_at = t
            # The two records of every step are spelled out rather than built by record():
            # this is the hot path, and a keyword call with ** costs measurably more.
            marker = new_record(step_id=step_id, workflow_id=workflow_id, action=action,
                                status=RUNNING, error=error_info, attempts=attempts,
                                created_at=created_at, started_at=t, updated_at=t,
                                budget_started_at=budget_started_at)
            written = yield Write(marker, run)
            view.note(written)
            if written.status is COMPLETED:  # another process or thread finished it
                return decode_stored(codec, written)

            if hooks.on_start is not None:
                hooks.started(plan, attempts)
            outcome: AttemptOutcome = yield RunAttempt(handler, plan, attempts, plan.context,
                                                       plan.args, policy.timeout)
        else:
            outcome, ran = ran, None
        if outcome.error is None and type(outcome.value) not in _PLAIN_VALUES:
            outcome = _refuse_awaitable(plan, outcome)
        error = outcome.error
        if error is None:
            try:
                encoded, same_value = encode_result(codec, outcome.value)
            except SerializationError as problem:
                named = problem.named(
                    path=problem.path.replace("value", "result", 1), step_id=step_id,
                    action=action,
                    reason=f"the handler of {action} ran, but its result cannot be stored:"
                           f" {problem.reason}",
                    hint="Register the type with JsonCodec(types=[...]), return a plain value"
                         " (e.g. dataclasses.asdict(...)), or use another codec",
                )
                hooks.failed(plan, attempts, named)
                written = written_back((yield Write(run=run, record=record(
                    FAILED, now(), error=ErrorInfo.from_exception(named)))))
                if written.status is COMPLETED:  # another process finished it meanwhile
                    return decode_stored(codec, written)
                raise named from None
            t = now()
            mine = new_record(step_id=step_id, workflow_id=workflow_id, action=action,
                              status=COMPLETED, result=encoded, attempts=attempts,
                              created_at=created_at, started_at=started_at, updated_at=t,
                              completed_at=t, budget_started_at=budget_started_at)
            written = yield Write(mine, run)
            view.note(written)
            # What a replay will return: our own value when decoding would only copy it.
            result = (outcome.value if same_value and written is mine
                      else decode_stored(codec, written))
            if hooks.on_complete is not None:
                hooks.completed(plan, attempts, result)
            return result

        if hooks.on_error is not None:
            hooks.failed(plan, attempts, error)
        t = now()
        if type(error) is TypeError and _does_not_fit(handler, plan.context, plan.args):
            # A programming error, not a failure: another attempt cannot fix it.
            written = written_back((yield Write(run=run, record=record(
                FAILED, t, error=ErrorInfo.from_exception(error)))))
            if written.status is COMPLETED:
                return decode_stored(codec, written)
            raise error
        decision = decide_retry(
            policy, attempts=attempts, error=error, now=t,
            budget_started_at=budget_started_at, workflow_id=workflow_id, step_id=step_id,
        )
        if not decision.retry:
            written = written_back((yield Write(run=run, record=record(
                FAILED, t, error=ErrorInfo.from_exception(error)))))
            if written.status is COMPLETED:
                return decode_stored(codec, written)
            raise WorkflowStepError(step_id, attempts=attempts, cause=error, action=action,
                                    workflow_id=workflow_id, reason=decision.reason) from error
        error_info = ErrorInfo.from_exception(error, with_traceback=False)
        if decision.delay > 0:
            # The wait is part of the schedule: record it, so that a crash during it resumes
            # the rest of it. A retry with no wait goes straight to the next attempt's RUNNING
            # marker, which carries this error and counts attempts just the same.
            written = written_back((yield Write(run=run, record=record(
                RETRYING, t, error=error_info, next_attempt_at=t + decision.delay))))
            if written.status is COMPLETED:
                return decode_stored(codec, written)
            yield Sleep(decision.delay)


def _give_up(record: StepRecord, cause: StepInterruptedError, codec: Codec, view: WorkflowView,
             reason: str, run: RunBinding | None) -> StepMachine:
    """Record ``record`` (FAILED) with ``cause`` and raise WorkflowStepError from it (or return
    the result of a COMPLETED record someone else wrote meanwhile)."""
    failed = dataclasses.replace(record, error=ErrorInfo.from_exception(cause))
    written = yield Write(failed, run)
    view.note(written)
    if written.status is COMPLETED:
        return decode_stored(codec, written)
    raise WorkflowStepError(record.step_id, attempts=record.attempts, cause=cause,
                            action=record.action, workflow_id=record.workflow_id,
                            reason=reason) from cause


def call_handler(command: RunAttempt) -> AttemptOutcome:
    """Call the handler of ``command`` as the current step; capture an ``Exception``.

    A ``BaseException`` that is not an ``Exception`` propagates. The value is returned as it
    is, even when it is awaitable: a driver that can await does so itself.
    """
    token = command.enter()
    try:
        value = command.handler(command.context, *command.args)
    except Exception as error:
        return AttemptOutcome(error=error)
    finally:
        leave_step(token)
    return AttemptOutcome(value=value)
