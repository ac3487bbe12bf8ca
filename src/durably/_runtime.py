"""DurableWorkflowRuntime: the sync flavour. It answers the state machine's commands with
blocking storage calls, ``clock.sleep`` and, for timed attempts, a worker thread.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from ._clock import Clock, SystemClock
from ._context import RunBinding, enter_run, leave_run
from ._core import (
    AttemptOutcome,
    Handoff,
    ReadHistory,
    RunAttempt,
    Sleep,
    StepMachine,
    StepPlan,
    Write,
    call_handler,
    logger,
    straight_step,
)
from ._errors import StepTimeoutError, StorageError
from ._handles import RunHandle, Worker, Workflow
from ._records import Pipeline, RunRecord, StepRecord
from ._retry import RetryPolicy
from ._runtime_base import RuntimeBase, check_poll
from ._step import StepFunction
from ._storage import server_time
from ._threads import Family
from ._waits import EVENT_POLL, Consume
from ._workflows import (
    BodyOutcome,
    Dispatch,
    ExecuteRun,
    Pause,
    RunBody,
    StoreCall,
    body_outcome,
    op_serve_pass,
    run_machine,
)

__all__ = ["DurableWorkflowRuntime"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - a workflow's input


class DurableWorkflowRuntime(RuntimeBase):
    """Runs actions at three durability levels: ``send``, ``try_`` and ``do``.

    Args:
        storage: where step records live (default: a new :class:`InMemoryStepStorage`).
        retry_policy: the default policy of ``do`` (default: ``RetryPolicy()``).
        workflow_id: scopes step ids (default ``"default"``).
        on_step_start: ``hook(step_id, pipeline)`` before every attempt.
        on_step_complete: ``hook(step_id, result)`` after every success.
        on_step_error: ``hook(step_id, error, attempt)`` after every failed attempt.
        hooks: a :class:`StepHooks` object whose methods receive a :class:`StepEvent`
            (with, or instead of, the three callables above).
        clock: ``now()`` and ``sleep()`` (default: wall-clock time; tests use ``FakeClock``).
        codec: turns results into text and back (default: :class:`JsonCodec`).

    Hooks never break a step: one that raises is logged and ignored. The runtime is a context
    manager; leaving it calls :meth:`close`.
    """

    _accepts_async = False

    def _default_clock(self) -> Clock:
        return SystemClock(server_time(self._storage))

    def _new_family(self) -> Family:
        return Family(self.max_runs, self.lease / 3)

    def _finished(self, value: Any) -> Any:
        return value

    def _then(self, result: Any, after: Callable[[Any], Any]) -> Any:
        return after(result)

    def _handle(self, run_id: str) -> RunHandle[Any]:
        return RunHandle(self, run_id)

    def _op_handler(self, make_op: Callable[[], Any], post: Callable[[Any], Any]) -> Any:
        return lambda _data: post(self._drive(make_op()))

    # ------------------------------------------------------------ the three levels

    @overload
    def try_(self, action: Callable[[T], R], data: T, *, step_id: str | None = None) -> R: ...

    @overload
    def try_(self, action: str, data: Any = None, *, step_id: str | None = None) -> Any: ...

    def try_(self, action: Any, data: Any = None, *, step_id: str | None = None) -> Any:
        """Run ``action(data)`` once, store nothing, and return its value.

        Raises:
            HandlerNotFoundError: no handler is registered for ``action``.
            Exception: whatever the handler raised, unwrapped.
        """
        return self._once(self._plan_try(action, data, (), step_id))

    @overload
    def do(self, action: Callable[[T], R], data: T, *, retry: RetryPolicy | None = None,
           step_id: str | None = None) -> R: ...

    @overload
    def do(self, action: str, data: Any = None, *, retry: RetryPolicy | None = None,
           step_id: str | None = None) -> Any: ...

    def do(
        self,
        action: Any,
        data: Any = None,
        *,
        retry: RetryPolicy | None = None,
        step_id: str | None = None,
    ) -> Any:
        """Run ``action(data)`` as a durable step and return its (decoded) result.

        A step that completed before (in this process or any earlier one) returns its recorded
        result without running. Failures are retried by ``retry`` (default: the runtime's
        policy); an interrupted step resumes its attempt budget and its retry schedule. A call
        that raises gives its call number back, so calling again continues the same step.

        Args:
            action: a registered action name (``"Domain.method"``), a ``@step`` function, or
                a callable with a stable name (``module:qualname``; a lambda needs
                ``step_id=``).
            data: the handler's single argument; hashed into the step id.
            retry: a policy for this call only.
            step_id: your own key for the step.

        Raises:
            WorkflowStepError: the step gave up; chained to the last cause.
            HandlerNotFoundError: no handler for ``action`` (nothing is recorded).
            SerializationError: ``data`` cannot be hashed, or the result cannot be encoded.
            ConfigurationError: a callable without a stable name, or a bad option.
            TypeError: ``data`` does not fit the handler's parameters (not retried).
            StorageError: the store failed.
        """
        return self._durable(self._plan_do(action, data, (), retry, step_id))

    @overload
    def step(self, name: Callable[P, R], *,
             retry: RetryPolicy | None = None) -> StepFunction[P, R]: ...

    @overload
    def step(self, name: str | None = None, *, retry: RetryPolicy | None = None
             ) -> Callable[[Callable[P, R]], StepFunction[P, R]]: ...

    def step(self, name: Any = None, *, retry: RetryPolicy | None = None) -> Any:
        """Decorator: register a function as an action, and make each call a durable step.

        ``@runtime.step("Payment.charge")`` (or ``@runtime.step()`` / ``@runtime.step``, named
        ``module:qualname``) returns a :class:`StepFunction`: ``charge(card, 12.5)`` is
        recorded, retried by ``retry`` (default: the runtime's policy) and replayed, with any
        positional and keyword arguments; ``charge.try_(...)`` makes one unrecorded attempt;
        ``charge.__wrapped__`` is the plain function.

        Raises:
            ConfigurationError: a bad name, or a function without a stable name and no name
                given (a lambda, a local function).
        """
        return self._step_decorator(name, retry, StepFunction)

    def execute_step(
        self,
        step_id: str,
        pipeline: Pipeline,
        args: Sequence[Any] = (),
        mode: str = "do",
        *,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Run ``pipeline``'s action as ``handler(pipeline.context, *args)`` under ``step_id``.

        The low-level entry the three levels share. ``step_id`` is used as it is (the caller
        owns its scoping). ``mode`` is ``"do"``, ``"try"`` or ``"send"`` (background; returns
        ``None``).

        Raises:
            ValueError: an unknown mode (a :class:`ConfigurationError`).
            HandlerNotFoundError: no handler for the action (at once, in every mode).
        """
        return self._execute(self._plan_execute(step_id, pipeline, args, mode, retry))

    # ------------------------------------------------------------ lifecycle

    def workflow(self, name: str, *, max_recoveries: int = 10, timeout: float | None = None
                 ) -> Callable[[Callable[[I], R]], Workflow[I, R]]:
        """Decorator: register a workflow under ``name`` (stored with every run: keep it
        stable) and return a :class:`Workflow` (``start``, ``run``, call).

        Args:
            name: the workflow's name, ``"Domain.name"``.
            max_recoveries: takeovers of an expired lease allowed before the run FAILS with
                ``RecoveryLimitError`` (a run executes at most ``1 + max_recoveries`` times).
            timeout: seconds from start after which the run is CANCELLED at its next step.

        Raises:
            ConfigurationError: a bad name or option, a name taken by another function, an
                ``async def`` (it needs the asyncio runtime), or a storage without runs.
        """
        return self._workflow_decorator(name, max_recoveries, timeout, Workflow)

    def serve(self, poll: float = 1.0) -> None:
        """Work as a worker: claim due runs and execute them, until :meth:`close` is called
        (from another thread or a signal handler) or KeyboardInterrupt; then hand back the
        runs not finished, as ``close()`` does. Waits at most ``poll`` seconds between
        claims (less when a run is due sooner, or something changes in this process)."""
        stop = threading.Event()
        try:
            self._serve(poll, stop)
        except KeyboardInterrupt:
            pass
        finally:
            if not self._family.closed:  # close() has handed them back already
                self._hand_back()

    def start_worker(self, poll: float = 1.0) -> Worker:
        """Run :meth:`serve`'s loop in a background thread; ``worker.stop()`` ends it."""
        stop = threading.Event()
        thread = threading.Thread(target=self._serve, args=(poll, stop),
                                  name="durably-worker", daemon=True)

        def stop_worker(timeout: float | None) -> None:
            stop.set()
            self._family.notify()
            thread.join(timeout)
            self._hand_back()

        thread.start()
        return Worker(stop_worker, thread.is_alive)

    def _serve(self, poll: float, stop: threading.Event) -> None:
        poll = check_poll(poll)
        family: Family = self._family
        self._listen_for_wakeups()
        while not (family.closed or stop.is_set()):
            try:
                wait = self._drive(op_serve_pass(self, family.capacity(), poll))
            except StorageError:
                if family.closed:
                    return  # close() (a signal handler's, say) closed the storage mid-pass
                logger().exception("durably: a worker pass failed; trying again")
                wait = poll
            if not (family.closed or stop.is_set()):
                family.wait(wait)

    def _hand_back(self) -> None:
        self._family.hand_back(self.shutdown_timeout, self._release)

    def _release(self, run_id: str, fence: int) -> None:
        try:
            self._runs.release(run_id, fence, self._now())
        except Exception:  # closing anyway: the lease will run out and another takes it
            logger().exception("durably: could not hand back run %s", run_id)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for in-flight ``send`` deliveries; ``False`` if ``timeout`` passed first.

        Do not call it from inside a subscriber: it would wait for itself.
        """
        family: Family = self._family
        return family.deliveries.flush(timeout)

    def close(self) -> None:
        """Stop claiming runs, wait up to ``shutdown_timeout`` for the runs executing here and
        hand the others back (PENDING, no recovery counted), wait for deliveries, and close
        the storage. Idempotent.

        Runtimes made by :meth:`for_workflow` share the storage, so closing one closes it for
        all of them.
        """
        family: Family = self._family
        if not family.closed:
            family.closed = True
            family.notify()
            self._hand_back()
            family.shutdown()
        family.deliveries.flush(None)
        family.deliveries.close()
        self._storage.close()

    def __enter__(self) -> DurableWorkflowRuntime:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ driving the core

    def _dispatch(self, plan: StepPlan) -> None:
        def deliver() -> None:
            try:
                self._once(plan)
            except Exception:
                logger().exception("durably: %s delivery %s failed", plan.action,
                                   plan.step_id)

        try:
            self._family.deliveries.submit(deliver)
        except RuntimeError:
            logger().warning("durably: %s sent after close(); dropped", plan.action)

    def _durable(self, plan: StepPlan) -> Any:
        # The straight path when nothing it skips can happen (see _core.straight_step).
        if self._hooks.silent and plan.policy.timeout is None:
            result = straight_step(plan, self._codec, self._clock.now, self._store)
            if type(result) is Handoff:
                return self._drive(result.machine)
            return result
        return super()._durable(plan)

    def _drive(self, machine: StepMachine) -> Any:
        answers = _ANSWERS
        reply: Any = None
        try:
            while True:
                command = machine.send(reply)
                answer = answers.get(type(command))
                if answer is None:
                    raise TypeError(f"DurableWorkflowRuntime cannot answer {command!r}")
                reply = answer(self, command)
        except StopIteration as done:
            return done.value
        finally:
            machine.close()

    def _store_call(self, command: StoreCall) -> Any:
        return command.method(*command.args, **command.kwargs)

    def _pause(self, command: Pause) -> None:
        self._family.wait(command.seconds)

    def _execute_run(self, command: ExecuteRun) -> RunRecord | None:
        claimed = command.claimed
        family: Family = self._family
        family.track(claimed.run_id, claimed.fence, self._renew)
        try:
            ended: RunRecord | None = self._drive(run_machine(self, claimed))
            return ended
        finally:
            family.untrack(claimed.run_id)

    def _dispatch_run(self, command: Dispatch) -> None:
        claimed = command.claimed
        self._family.submit_run(claimed.run_id, claimed.fence,
                                lambda: self._execute_run(ExecuteRun(claimed)), self._release)

    def _run_body(self, command: RunBody) -> BodyOutcome:
        token = enter_run(command.scope)
        try:
            return BodyOutcome(value=command.function(command.input))
        except BaseException as error:
            return body_outcome(error)
        finally:
            leave_run(token)

    def _renew(self, leases: dict[str, int]) -> set[str]:
        return self._runs.renew(self.executor_id, leases, self._now(), self.lease)

    def _read_history(self, command: ReadHistory) -> None:
        view = command.view
        with view.lock:  # threads needing the same page at once share one read
            if view.needs(command.step_id):
                records, cursor = self._history(view.workflow_id, view.cursor, view.page)
                view.add_page(records, cursor)

    def _write(self, command: Write) -> StepRecord:
        return self._store(command.record, command.run)

    def _store(self, record: StepRecord, run: RunBinding | None) -> StepRecord:
        if run is None:
            return self._storage.set(record)
        return self._runs.record_step(run.run_id, run.fence, record)

    def _sleep(self, command: Sleep) -> None:
        if command.for_event and isinstance(self._clock, SystemClock):
            # Real time: wait on this process's notifications, so a local send_event ends
            # the wait at once (events from other processes are found by the next poll).
            self._family.wait(min(command.seconds, EVENT_POLL))
        else:
            self._clock.sleep(command.seconds)

    def _consume(self, command: Consume) -> Any:
        run = command.run
        return self._runs.consume_event(run.run_id, run.fence, command.name, command.deadline,
                                        command.record)

    def _attempt(self, command: RunAttempt) -> AttemptOutcome:
        if command.timeout is None:
            return call_handler(command)
        # A sync handler cannot be interrupted: it runs in a daemon thread that is abandoned at
        # the deadline. Its late result lands in a box nobody reads, so it is never recorded.
        box: list[Any] = []
        context = contextvars.copy_context()

        def run() -> None:
            try:
                box.append(context.run(call_handler, command))
            except BaseException as error:  # relayed to the caller below
                box.append(error)

        worker = threading.Thread(target=run, daemon=True,
                                  name=f"durably-attempt-{command.plan.step_id}")
        worker.start()
        worker.join(command.timeout)
        if not box:
            return AttemptOutcome(error=StepTimeoutError(command.plan.step_id, command.timeout))
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        outcome: AttemptOutcome = result
        return outcome


# The closed table of answers: a command of another type is refused, never misread.
_ANSWERS: dict[type, Callable[[DurableWorkflowRuntime, Any], Any]] = {
    ReadHistory: DurableWorkflowRuntime._read_history,
    Write: DurableWorkflowRuntime._write,
    Sleep: DurableWorkflowRuntime._sleep,
    RunAttempt: DurableWorkflowRuntime._attempt,
    StoreCall: DurableWorkflowRuntime._store_call,
    Pause: DurableWorkflowRuntime._pause,
    ExecuteRun: DurableWorkflowRuntime._execute_run,
    Dispatch: DurableWorkflowRuntime._dispatch_run,
    RunBody: DurableWorkflowRuntime._run_body,
    Consume: DurableWorkflowRuntime._consume,
}

