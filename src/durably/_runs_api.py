"""The workflow-run half of what both runtime flavours share (a mixin of ``RuntimeBase``).

``@runtime.workflow``, ``start``, ``get_run``, ``list_runs``, ``recover`` and ``run_due``,
and what run handles call: each builds an operation of ``_workflows.py`` and hands it to the
flavour's driver, so the sync and asyncio runtimes share every rule about runs.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from ._clock import Clock
from ._codec import Codec, encode_result
from ._context import Scope, active_scope, current_step
from ._errors import ConfigurationError, SerializationError
from ._records import RunStatus
from ._registry import Registry, callable_name, check_text, is_async_callable, validate_action_name
from ._retry import MAX_SECONDS
from ._storage import RunStorage, StepStorage
from ._waits import MISSING, sleep_step, wait_step
from ._workflows import (
    WorkflowSpec,
    op_cancel,
    op_delete,
    op_events,
    op_fork,
    op_get_run,
    op_list_runs,
    op_published,
    op_recover,
    op_restart,
    op_result,
    op_resume,
    op_run,
    op_run_due,
    op_send_event,
    op_start,
    op_status,
    op_steps,
)

__all__ = ["RunsApi", "check_seconds"]


def _duration(value: object, name: str, *, positive: bool = False) -> float:
    """A wait's duration: seconds or a ``timedelta``; >= 0 (> 0 when ``positive``)."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    return check_seconds(value, name, positive=positive)


def _encode_payload(codec: Codec, data: Any) -> str:
    try:
        return encode_result(codec, data)[0]
    except SerializationError as error:
        raise error.named(path=error.path.replace("value", "data", 1),
                          hint="An event's data is stored: register the type with"
                               " JsonCodec(types=[...]), or send plain values") from None


def check_seconds(value: object, name: str, *, positive: bool) -> float:
    """A duration option: a number of seconds (> 0, or >= 0), at most ``MAX_SECONDS``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not (value > 0 if positive else value >= 0) or value > MAX_SECONDS:
        rule = "> 0" if positive else ">= 0"
        raise ConfigurationError(
            f"{name} must be a number of seconds {rule} and at most {MAX_SECONDS:g},"
            f" got {value!r}", field=name)
    return float(value)


class RunsApi:
    """Workflow runs, for both flavours. Needs the base's storage, registry, clock and
    driver."""

    _accepts_async: ClassVar[bool]
    _runs: RunStorage
    _storage: StepStorage
    _codec: Codec
    _registry: Registry
    _clock: Clock
    _family: Any
    executor_id: str
    lease: float
    code_version: str | None
    suspend_after: float

    def _drive(self, machine: Any) -> Any:
        raise NotImplementedError

    def _durable(self, plan: Any) -> Any:
        raise NotImplementedError

    def _plan_do(self, action: object, data: Any, args: tuple[Any, ...], retry: Any,
                 step_id: str | None, *, handler: Any = None,
                 roots: tuple[str, str] = ("data", "args")) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------ workflow runs

    def _workflow_decorator(self, name: str, max_recoveries: int, timeout: float | None,
                            make: Callable[..., Any]) -> Callable[[Callable[..., Any]], Any]:
        """The body of each flavour's ``workflow()``: check, register, wrap."""
        validate_action_name(name)
        self._runs.get_run  # noqa: B018 - a storage without runs is refused here, not later
        if not isinstance(max_recoveries, int) or isinstance(max_recoveries, bool) \
                or max_recoveries < 0:
            raise ConfigurationError(
                f"max_recoveries must be an int >= 0, got {max_recoveries!r}",
                field="max_recoveries")
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout", positive=True)

        def decorate(function: Callable[..., Any]) -> Any:
            if not callable(function):
                raise ConfigurationError(f"@workflow needs a function, got {function!r}",
                                         field="function")
            if is_async_callable(function) is not self._accepts_async:
                raise ConfigurationError(
                    f"workflow {name!r}: {callable_name(function)} must be "
                    + ("an async def in the AsyncDurableWorkflowRuntime" if self._accepts_async
                       else "a plain function in the sync DurableWorkflowRuntime (an async"
                            " def needs AsyncDurableWorkflowRuntime)"), field="function")
            spec = WorkflowSpec(name, function, max_recoveries, timeout)
            self._registry.register_workflow(name, spec)
            return make(self, spec)

        return decorate

    def _handle(self, run_id: str) -> Any:
        """This flavour's handle of ``run_id``."""
        raise NotImplementedError

    def _op_handler(self, make_op: Callable[[], Any], post: Callable[[Any], Any]) -> Any:
        """A step handler that drives ``make_op()`` and returns ``post(its value)``."""
        raise NotImplementedError

    def _then(self, result: Any, after: Callable[[Any], Any]) -> Any:
        """``after(result)``; in the asyncio flavour, awaited first (and after's value too)."""
        raise NotImplementedError

    def _in_run(self) -> Scope | None:
        scope = active_scope()
        return scope if scope is not None and scope.run is not None else None

    def _child_step(self, name: str, value: Any, run_id: str | None) -> Any:
        """Start a child run as a step of the running parent; the step's value is its id."""
        parent = self._in_run()
        assert parent is not None and parent.run is not None
        parent_id = parent.run.run_id

        def make_op() -> Any:
            step = current_step()
            child_id = run_id if run_id is not None else step.step_id  # type: ignore[union-attr]
            return op_start(self, name, value, child_id, parent_run_id=parent_id)

        handler = self._op_handler(make_op, lambda started: started[0].run_id)
        data = value if run_id is None else {"input": value, "run_id": run_id}
        return self._durable(self._plan_do(f"durably.start:{name}", data, (), None, None,
                                           handler=handler))

    def _start_run(self, name: str, value: Any, run_id: str | None) -> Any:
        if self._in_run() is not None:
            return self._then(self._child_step(name, value, run_id), self._handle)
        return self._then(self._drive(op_start(self, name, value, run_id)),
                          lambda started: self._handle(started[0].run_id))

    def _run_run(self, name: str, value: Any, run_id: str | None,
                 timeout: float | None) -> Any:
        if self._in_run() is not None:
            return self._then(
                self._child_step(name, value, run_id),
                lambda child_id: self._drive(op_result(self, child_id, timeout,
                                                       claim_when_due=True)))
        return self._drive(op_run(self, name, value, run_id, timeout))

    def _run_status(self, run_id: str) -> Any:
        return self._drive(op_status(self, run_id))

    def _run_result(self, run_id: str, timeout: float | None) -> Any:
        return self._drive(op_result(self, check_text(run_id, "run_id"), timeout))

    def _run_steps(self, run_id: str) -> Any:
        return self._drive(op_steps(self, run_id))

    def _run_cancel(self, run_id: str) -> Any:
        return self._drive(op_cancel(self, run_id))

    def _run_resume(self, run_id: str) -> Any:
        return self._then(self._drive(op_resume(self, run_id)), self._nudged)

    def _nudged(self, value: Any) -> Any:
        """Wake this process's waiting workers and callers (something became due)."""
        self._family.notify()
        return value

    # What operations read (the RunHost protocol of _workflows.py).

    def _now(self) -> float:
        return self._clock.now()

    def _workflow_spec(self, name: str) -> WorkflowSpec | None:
        spec: WorkflowSpec | None = self._registry.workflow(name)
        return spec

    def _workflow_names(self) -> list[str]:
        return self._registry.workflow_names()

    def _failure_cause(self, run_id: str) -> BaseException | None:
        cause: BaseException | None = self._family.failures.get(run_id)
        return cause

    def _note_failure(self, run_id: str, error: BaseException) -> None:
        failures = self._family.failures
        failures[run_id] = error
        while len(failures) > 256:  # keep the causes of recent failures only
            failures.pop(next(iter(failures)))

    # ------------------------------------------------------------ durable waiting

    def _run_scope(self, what: str) -> Scope:
        scope = self._in_run()
        if scope is None:
            raise ConfigurationError(
                f"runtime.{what}() is durable only inside a workflow run (call it from a"
                " @runtime.workflow body): outside one, nothing would record it, and a restart"
                " would lose it", field="run")
        return scope

    def sleep(self, seconds: float | dt.timedelta, *, name: str | None = None) -> Any:
        """Inside a run, sleep durably for ``seconds`` (or a ``timedelta``).

        The wake time is recorded at the first execution and frozen: neither a restart nor a
        change of ``seconds`` in code moves it. A sleep longer than ``suspend_after``
        suspends the run (its lease and its thread are released) until it is due. The step's
        id hashes ``name`` (default ``"sleep"``) and its occurrence, never the duration.

        Raises:
            ConfigurationError: outside a run, or a negative or non-finite duration.
        """
        duration = _duration(seconds, "seconds")
        return self._sleep_until(lambda now: now + duration, name)

    def sleep_until(self, when: float | dt.datetime, *, name: str | None = None) -> Any:
        """Inside a run, sleep durably until ``when``: seconds since the epoch, or an aware
        ``datetime`` (a naive one is refused: its moment would depend on the machine)."""
        if isinstance(when, dt.datetime):
            if when.tzinfo is None or when.utcoffset() is None:
                raise ConfigurationError(
                    f"sleep_until needs an aware datetime (with tzinfo), got {when!r}",
                    field="when")
            wake = when.timestamp()
        elif isinstance(when, (int, float)) and not isinstance(when, bool) \
                and math.isfinite(when):
            wake = float(when)
        else:
            raise ConfigurationError(
                f"sleep_until takes epoch seconds or an aware datetime, got {when!r}",
                field="when")
        return self._sleep_until(lambda now: wake, name)

    def _sleep_until(self, wake_at: Callable[[float], float], name: str | None) -> Any:
        self._run_scope("sleep")
        label = "sleep" if name is None else check_text(name, "name")
        plan = self._plan_do(f"durably.sleep:{label}", None, (), None, None)
        return self._drive(sleep_step(plan, self._codec, self._clock.now,
                                      wake_at(self._clock.now()), self.suspend_after))

    def wait_for_event(self, name: str, *, timeout: float | dt.timedelta | None = None,
                       default: Any = MISSING) -> Any:
        """Inside a run, wait for the event ``name`` sent to this run and return its data.

        Events sent before the wait are kept and satisfy it at once; each wait consumes the
        oldest unconsumed event of its name, exactly once (consuming it and recording the
        step are one fenced transaction). The deadline (``now + timeout``) is recorded at the
        first execution and frozen; an event sent at or before it wins, even when processed
        later. Past it, the wait returns ``default`` or raises ``WaitTimeoutError``. A wait
        longer than ``suspend_after`` suspends the run until the event or the deadline.

        Raises:
            WaitTimeoutError: the deadline passed and no ``default`` was given.
            ConfigurationError: outside a run, a bad name, or a ``timeout`` <= 0.
        """
        self._run_scope("wait_for_event")
        event = check_text(name, "name")
        limit = None if timeout is None else _duration(timeout, "timeout", positive=True)
        plan = self._plan_do(f"durably.wait:{event}", None, (), None, None)
        now = self._clock.now()
        return self._drive(wait_step(plan, self._codec, self._clock.now, event,
                                     None if limit is None else now + limit, default,
                                     self.suspend_after))

    def publish(self, key: str, value: Any) -> Any:
        """Inside a run, publish ``value`` under ``key`` for others to read while the run goes
        on (``handle.published(key)``). A durable step: the latest value per key wins, and a
        replay publishes nothing new.

        Raises:
            SerializationError: the value cannot be encoded.
        """
        self._run_scope("publish")
        label = check_text(key, "key")
        plan = self._plan_do(f"durably.publish:{label}", None, (), None, None,
                             handler=lambda _data: value)
        return self._then(self._durable(plan), lambda _result: None)

    def send_event(self, run_id: str, name: str, data: Any = None, *,
                   key: str | None = None) -> Any:
        """Send the event ``name`` with ``data`` to a run's inbox; return True, or False when
        ``key`` was already used for this event name (nothing is stored then).

        Use the sender's delivery id as ``key`` (a webhook's event id) so that a repeated
        delivery is stored once. Inside a run, the send is a step keyed by its calling step,
        so a replay never sends twice. Sending to a SUSPENDED run waiting for ``name`` makes it
        due at once (and wakes this process's workers).

        Raises:
            RunNotFoundError: there is no such run.
            RunClosedError: the run is COMPLETED, FAILED or CANCELLED.
            SerializationError: ``data`` cannot be encoded (nothing is stored).
            ConfigurationError: a bad run id, name or key.
        """
        target = check_text(run_id, "run_id")
        event = check_text(name, "name")
        if key is not None:
            key = check_text(key, "key")
        payload = _encode_payload(self._codec, data)
        if self._in_run() is not None:
            def make_op() -> Any:
                step = current_step()
                own_key = key if key is not None else step.step_id  # type: ignore[union-attr]
                return op_send_event(self, target, event, own_key, payload)

            handler = self._op_handler(make_op, lambda sent: sent)
            plan = self._plan_do(f"durably.send:{event}", [target, payload, key], (), None,
                                 None, handler=handler)
            return self._then(self._durable(plan), self._nudged)
        return self._then(self._drive(op_send_event(self, target, event, key, payload)),
                          self._nudged)

    def _run_events(self, run_id: str) -> Any:
        return self._drive(op_events(self, run_id))

    def _run_published(self, run_id: str, key: str | None, timeout: float | None,
                       default: Any) -> Any:
        return self._drive(op_published(self, run_id, key, timeout, default))

    def start(self, name: str, input: Any = None, *, run_id: str | None = None) -> Any:
        """Start a run of the workflow registered (here or in another process) as ``name``.

        A workflow this process has not registered is created PENDING for a worker that has
        it. Returns a run handle (awaited, in the asyncio flavour).

        Raises:
            RunConflictError: ``run_id`` is taken by another workflow or another input.
            SerializationError: the input cannot be encoded (nothing is written).
        """
        return self._start_run(validate_action_name(name), input, run_id)

    def get_run(self, run_id: str) -> Any:
        """Return the handle of an existing run.

        Raises:
            RunNotFoundError: there is no such run.
        """
        return self._then(self._drive(op_get_run(self, run_id)),
                          lambda run: self._handle(run.run_id))

    def fork(self, run_id: str, from_step: str, *, new_run_id: str | None = None) -> Any:
        """Start a new run with ``run_id``'s workflow and input that keeps its history before
        ``from_step`` and executes from there (the source is unchanged); return its handle.

        ``from_step`` is a step's full id, its local id (as ``python -m durably show``
        prints it), ``"Action.name#k"`` (the k-th step of that action, counted from 1) or
        ``"last-failure"``. Kept are the steps that had COMPLETED when that step was first
        written; the fork's inbox has the source's events (those consumed by steps not kept
        are unconsumed again). The new run is PENDING: a worker, ``recover()`` or
        ``run_due()`` executes it. Without ``new_run_id`` a fresh id is made.

        Raises:
            RunNotFoundError: no run ``run_id``.
            StepNotFoundError: ``from_step`` names no step of it.
            RunConflictError: ``new_run_id`` is taken.
        """
        return self._then(self._drive(op_fork(self, run_id, from_step, new_run_id)),
                          lambda run: self._nudged(self._handle(run.run_id)))

    def restart(self, run_id: str, from_step: str) -> Any:
        """Execute the run again from ``from_step`` (named as for :meth:`fork`), in place:
        the steps from there on are deleted, the events they consumed are given back, and
        the run becomes PENDING with a fresh recovery budget and a bumped fence (an owner
        still executing it is refused at its next write). Works in any status. Returns the
        run's handle.

        Raises:
            RunNotFoundError: no such run.
            StepNotFoundError: ``from_step`` names no step of it.
        """
        return self._then(self._drive(op_restart(self, run_id, from_step)),
                          lambda run: self._nudged(self._handle(run.run_id)))

    def delete_run(self, run_id: str) -> Any:
        """Delete the run with its steps and its inbox, whatever its status (an owner still
        executing it is refused at its next write); False if there was no such run."""
        return self._drive(op_delete(self, run_id))

    def list_runs(self, status: RunStatus | str | None = None, workflow: str | None = None,
                  limit: int | None = 100, after: str | None = None) -> Any:
        """Return stored runs (``RunRecord``) in creation order, filtered; ``after`` is the
        last run id of the previous page."""
        return self._drive(op_list_runs(self, status, workflow, limit, after))

    def recover(self, *, code_versions: Collection[str | None] | None = None) -> Any:
        """Claim every run that needs it (due PENDING and SUSPENDED runs, expired leases) and
        execute them on this runtime's workers; call it at start-up. Never touches a live
        lease, so it is harmless from many processes at once. Returns a ``RecoveryReport``.

        Args:
            code_versions: only runs started by these code versions (``None``: all).
        """
        return self._drive(op_recover(self, code_versions))

    def run_due(self, limit: int | None = None) -> Any:
        """Claim up to ``limit`` due runs and execute each in the calling thread until it
        completes, fails or suspends; return how many ran (cron jobs, tests)."""
        return self._drive(op_run_due(self, limit))

