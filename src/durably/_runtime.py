"""DurableWorkflowRuntime: the sync flavour. It answers the state machine's commands with
blocking storage calls, ``clock.sleep`` and, for timed attempts, a worker thread.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._clock import Clock, SystemClock
from ._core import (
    AttemptOutcome,
    ReadHistory,
    RunAttempt,
    Sleep,
    StepMachine,
    StepPlan,
    Write,
    call_handler,
    logger,
)
from ._errors import StepTimeoutError
from ._records import Pipeline, StepRecord
from ._retry import RetryPolicy
from ._runtime_base import RuntimeBase
from ._step import StepFunction

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["DurableWorkflowRuntime"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Deliveries:
    """The background work of ``send``: a small thread pool and a count of what is in flight."""

    def __init__(self, workers: int = 4) -> None:
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._idle = threading.Condition()
        self._closed = False

    def submit(self, work: Callable[[], None]) -> None:
        with self._idle:
            if self._closed:
                raise RuntimeError("the runtime is closed")
            if self._executor is None:
                # Imported here: programs that never send do not pay for concurrent.futures.
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(self._workers,
                                                    thread_name_prefix="durably-send")
            self._pending += 1
        context = contextvars.copy_context()

        def run() -> None:
            try:
                context.run(work)
            finally:
                self._finished()

        try:
            self._executor.submit(run)
        except BaseException:
            self._finished()
            raise

    def _finished(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def flush(self, timeout: float | None) -> bool:
        with self._idle:
            return bool(self._idle.wait_for(lambda: self._pending == 0, timeout))

    def close(self) -> None:
        with self._idle:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


class _Family:
    """What a runtime shares with its ``for_workflow`` siblings besides its options."""

    def __init__(self) -> None:
        self.closed = False
        self.deliveries = _Deliveries()


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
        return SystemClock()

    def _new_family(self) -> _Family:
        return _Family()

    def _finished(self, value: Any) -> Any:
        return value

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

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for in-flight ``send`` deliveries; ``False`` if ``timeout`` passed first.

        Do not call it from inside a subscriber: it would wait for itself.
        """
        family: _Family = self._family
        return family.deliveries.flush(timeout)

    def close(self) -> None:
        """Wait for deliveries, stop the worker pool and close the storage. Idempotent.

        Runtimes made by :meth:`for_workflow` share the storage, so closing one closes it for
        all of them.
        """
        family: _Family = self._family
        family.deliveries.flush(None)
        family.deliveries.close()
        family.closed = True
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

    def _read_history(self, command: ReadHistory) -> None:
        view = command.view
        with view.lock:  # threads making their first calls at once share one read
            if not view.loaded:
                view.fill(self._storage.list(workflow_id=view.workflow_id))

    def _write(self, command: Write) -> StepRecord:
        return self._storage.set(command.record)

    def _sleep(self, command: Sleep) -> None:
        self._clock.sleep(command.seconds)

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
                                  name=f"durably-attempt-{command.step.step_id}")
        worker.start()
        worker.join(command.timeout)
        if not box:
            return AttemptOutcome(error=StepTimeoutError(command.step.step_id, command.timeout))
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
}
