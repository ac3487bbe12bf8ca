"""AsyncDurableWorkflowRuntime: the asyncio flavour. It drives the same state machine as the
sync runtime (``_core.py``) and answers its commands with awaits.

* Async handlers are awaited on the loop; sync handlers run in a worker thread
  (``asyncio.to_thread``) so they never block the loop.
* Storage calls run on a small thread pool, except for :class:`InMemoryStepStorage`, whose
  calls are dict operations: a SQLite commit can wait up to ``busy_timeout`` for another
  process's lock, or for an fsync, and that must never stall the loop (docs/performance.md
  has the figures).
* ``timeout`` cancels the attempt's task. Cancelling the caller's task propagates
  ``CancelledError``: it is not retried and leaves the step RUNNING, resumable by the next call.
* Step ids are assigned when ``do()`` is *called*, not when it is awaited, so
  ``asyncio.gather(rt.do(a), rt.do(a))`` numbers the two identical calls in argument order, and
  a rerun that makes the same calls in the same order replays each one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from ._api import RuntimeBase
from ._core import (
    NOT_COMPLETED,
    AttemptOutcome,
    Clock,
    RunAttempt,
    StepMachine,
    StepPlan,
    Write,
    call_handler,
    completed_value,
    durable_step,
    enter_step,
    leave_step,
    logger,
    single_attempt,
)
from ._errors import StepTimeoutError
from ._records import Pipeline
from ._registry import is_async_callable
from ._retry import RetryPolicy
from ._storage import InMemoryStepStorage

__all__ = ["AsyncDurableWorkflowRuntime", "AsyncSystemClock"]


class AsyncSystemClock:
    """Wall-clock time (``time.time``) and ``asyncio.sleep``."""

    def now(self) -> float:
        """Return seconds since the epoch."""
        return time.time()

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Return an awaitable that waits ``seconds`` without blocking the loop."""
        return asyncio.sleep(seconds)


async def _await_in_step(command: RunAttempt, awaitable: Any) -> Any:
    token = enter_step(command.step)
    try:
        return await awaitable
    finally:
        leave_step(token)


async def _call_async(command: RunAttempt) -> Any:
    token = enter_step(command.step)
    try:
        result = command.handler(command.context, *command.args)
        if inspect.isawaitable(result):
            result = await result
        return result
    finally:
        leave_step(token)


class AsyncDurableWorkflowRuntime(RuntimeBase):
    """The asyncio flavour of :class:`DurableWorkflowRuntime`: same options, same names.

    ``await rt.do(...)``, ``await rt.try_(...)``, ``await rt.execute_step(...)``,
    ``rt.send(...)`` (a plain call; needs a running loop), ``await rt.flush()``,
    ``await rt.aclose()`` and ``async with``. Proxy calls are awaitable. Handlers may be
    ``async def`` or plain functions (run in a worker thread). The ``clock`` may have a
    synchronous ``sleep`` (like ``FakeClock``) or one that returns an awaitable.
    """

    _accepts_async = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._closed = False
        # Dict operations are cheaper than a thread hop; everything else may block on I/O.
        self._storage_inline = type(self._storage) is InMemoryStepStorage
        self._storage_pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _default_clock(self) -> Clock:
        return AsyncSystemClock()

    # ------------------------------------------------------------ the three levels

    def try_(self, action: Any, data: Any = None, *,
             step_id: str | None = None) -> Coroutine[Any, Any, Any]:
        """Run ``action(data)`` once, store nothing; await it for the handler's value.

        Raises (when awaited): ``HandlerNotFoundError``, or the handler's own exception.
        """
        return self._run_once(self._plan_try(action, data, (), step_id))

    def do(
        self,
        action: Any,
        data: Any = None,
        *,
        retry: RetryPolicy | None = None,
        step_id: str | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Run ``action(data)`` as a durable step; await it for the (decoded) result.

        The step id is assigned by this call, before anything is awaited; see the module
        docs for what that means with ``asyncio.gather``. Errors are those of
        :meth:`DurableWorkflowRuntime.do`; ``SerializationError`` for unhashable data and
        ``ConfigurationError`` for bad arguments are raised by the call itself.
        """
        return self._run_durable(self._plan_do(action, data, (), retry, step_id))

    async def execute_step(
        self,
        step_id: str,
        pipeline: Pipeline,
        args: Sequence[Any] = (),
        mode: str = "do",
        *,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Run ``pipeline``'s action under ``step_id`` in ``mode`` (``"send"`` returns None).

        Raises:
            ValueError: an unknown mode (a :class:`ConfigurationError`).
            HandlerNotFoundError: no handler for the action, in every mode.
        """
        plan = self._plan_execute(step_id, pipeline, args, mode, retry)
        if plan.mode == "do":
            return await self._run_durable(plan)
        if plan.mode == "try":
            return await self._run_once(plan)
        self._dispatch(plan)
        return None

    # ------------------------------------------------------------ lifecycle

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait for in-flight ``send`` deliveries; ``False`` if ``timeout`` passed first."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self._deliveries:
            remaining = None
            if deadline is not None:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return False
            await asyncio.wait(set(self._deliveries), timeout=remaining)
        return True

    async def aclose(self) -> None:
        """Wait for deliveries, then close the storage. Idempotent.

        Runtimes made by :meth:`for_workflow` share the storage: closing one closes it for all.
        """
        await self.flush()
        self._closed = True
        await self._store(self._storage.close)
        pool, self._storage_pool = self._storage_pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncDurableWorkflowRuntime:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # ------------------------------------------------------------ driving the core

    async def _run_durable(self, plan: StepPlan) -> Any:
        known = self._known
        if known is None:
            records = await self._store(self._storage.list, self._workflow_id)
            known = self._index_records(records)
        stored = known.get(plan.step_id)
        replayed = completed_value(self._codec, stored)
        if replayed is not NOT_COMPLETED:
            return replayed
        return await self._drive(
            durable_step(plan, self._codec, self._hooks, self._clock.now, stored))

    async def _run_once(self, plan: StepPlan) -> Any:
        return await self._drive(single_attempt(plan, self._hooks))

    def _dispatch(self, plan: StepPlan) -> None:
        if self._closed:
            logger().warning("durably: %s sent after aclose(); dropped", plan.action)
            return

        async def deliver() -> None:
            try:
                await self._run_once(plan)
            except Exception:
                logger().exception("durably: %s delivery %s failed", plan.action,
                                 plan.step_id)

        def start() -> None:
            task = asyncio.get_running_loop().create_task(deliver())
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Not on a loop: a sync handler in a worker thread. Hand the delivery to the loop
            # this runtime last ran on; it is queued before that handler's own completion, so
            # flush() cannot miss it.
            loop = self._loop
            if loop is None or loop.is_closed():
                logger().error("durably: %s sent without a running event loop; dropped",
                             plan.action)
                return
            loop.call_soon_threadsafe(start)
            return
        start()

    async def _store(self, operation: Any, *args: Any) -> Any:
        if self._storage_inline:
            return operation(*args)
        if self._storage_pool is None:
            self._storage_pool = ThreadPoolExecutor(4, thread_name_prefix="durably-storage")
        return await asyncio.get_running_loop().run_in_executor(
            self._storage_pool, operation, *args)

    async def _drive(self, machine: StepMachine) -> Any:
        self._loop = asyncio.get_running_loop()
        reply: Any = None
        try:
            while True:
                command = machine.send(reply)
                kind = type(command)
                if kind is Write:
                    record = command.record  # type: ignore[union-attr]
                    reply = await self._store(self._storage.set, record)
                    self._note_write(reply)
                elif kind is RunAttempt:
                    reply = await self._attempt(command)  # type: ignore[arg-type]
                else:
                    waited = self._clock.sleep(command.seconds)  # type: ignore[union-attr]
                    reply = (await waited) if inspect.isawaitable(waited) else None
        except StopIteration as done:
            return done.value
        finally:
            machine.close()

    async def _attempt(self, command: RunAttempt) -> AttemptOutcome:
        if is_async_callable(command.handler):
            work: Any = _call_async(command)
        else:
            work = self._call_sync(command)
        if command.timeout is None:
            try:
                return AttemptOutcome(value=await work)
            except Exception as error:
                return AttemptOutcome(error=error)
        # A task of its own, so the deadline can cancel it without cancelling us; and
        # asyncio.wait, so a TimeoutError raised by the handler itself is not taken for ours.
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=command.timeout)
        except BaseException:  # our caller was cancelled: take the attempt down with us
            task.cancel()
            raise
        if not done:
            task.cancel()
            await asyncio.wait({task})
            return AttemptOutcome(error=StepTimeoutError(command.step.step_id, command.timeout))
        try:
            return AttemptOutcome(value=task.result())
        except Exception as error:
            return AttemptOutcome(error=error)

    @staticmethod
    async def _call_sync(command: RunAttempt) -> Any:
        outcome = await asyncio.to_thread(call_handler, command)
        if outcome.error is not None:
            raise outcome.error
        if inspect.isawaitable(outcome.value):  # a plain function that returned a coroutine
            return await _await_in_step(command, outcome.value)
        return outcome.value
