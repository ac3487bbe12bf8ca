"""AsyncDurableWorkflowRuntime: the asyncio flavour. It drives the same state machine as the
sync runtime (``_core.py``) and answers its commands with awaits.

* Async handlers are awaited on the loop; sync handlers run in a worker thread
  (``asyncio.to_thread``) so they never block the loop.
* Storage calls run on a small thread pool when the storage says its calls block
  (``blocking``, see ``StepStorage``): a SQLite commit can wait up to ``busy_timeout`` for
  another process's lock, or for an fsync, and that must never stall the loop. A storage whose
  calls do not block (``InMemoryStepStorage``) is called on the loop. SQLite calls that cannot
  wait run on the loop too (the storage's ``try_now``), and the writes of concurrent steps
  share one commit (``_tasks.GroupCommit``, through the storage's ``write_steps``).
* ``timeout`` cancels the attempt's task. Cancelling the caller's task propagates
  ``CancelledError``: it is not retried and leaves the step RUNNING, resumable by the next call.
* Step ids are assigned when ``do()`` is *called*, not when it is awaited, so
  ``asyncio.gather(rt.do(a), rt.do(a))`` numbers the two identical calls in argument order, and
  a rerun that makes the same calls in the same order replays each one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._clock import AsyncSystemClock, Clock
from ._context import enter_run, leave_run, leave_step
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
from ._errors import StepTimeoutError, StorageError
from ._handles import AsyncRunHandle, AsyncWorker, AsyncWorkflow
from ._records import Pipeline, RunRecord, StepRecord
from ._registry import is_async_callable
from ._retry import RetryPolicy
from ._runtime_base import RuntimeBase, check_poll
from ._step import AsyncStepFunction
from ._storage import StepWrite, batch_writer, is_blocking, server_time
from ._tasks import Family, GroupCommit
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

__all__ = ["AsyncDurableWorkflowRuntime"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - a workflow's input


class _AsyncStepDecorator(Protocol):
    """What ``AsyncDurableWorkflowRuntime.step(name)`` returns: it takes an async function
    (whose awaited value the step returns) or a plain one."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]
                 ) -> AsyncStepFunction[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> AsyncStepFunction[P, R]: ...


async def _call_async(command: RunAttempt) -> Any:
    token = command.enter()
    try:
        result = command.handler(command.context, *command.args)
        if inspect.isawaitable(result):
            result = await result
        return result
    finally:
        leave_step(token)


async def _call_sync(command: RunAttempt) -> Any:
    outcome = await asyncio.to_thread(call_handler, command)
    if outcome.error is not None:
        raise outcome.error
    value = outcome.value
    if inspect.isawaitable(value):  # a plain function that returned a coroutine: await it
        token = command.enter()
        try:
            value = await value
        finally:
            leave_step(token)
    return value


async def _ready(value: Any) -> Any:
    return value


def _never_now(call: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """The ``try_now`` of a storage without one: every call is made off the loop."""
    return False, None


class AsyncDurableWorkflowRuntime(RuntimeBase):
    """The asyncio flavour of :class:`DurableWorkflowRuntime`: same options, same names.

    ``await rt.do(...)``, ``await rt.try_(...)``, ``await rt.execute_step(...)``,
    ``rt.send(...)`` (a plain call; needs a running loop), ``await rt.flush()``,
    ``await rt.aclose()`` and ``async with``. Proxy calls are awaitable. Handlers may be
    ``async def`` or plain functions (run in a worker thread). The ``clock`` may have a
    synchronous ``sleep`` (like ``FakeClock``) or one that returns an awaitable.

    Args:
        storage: where step records live (default: a new :class:`InMemoryStepStorage`).
        retry_policy: the default policy of ``do`` (default: ``RetryPolicy()``).
        workflow_id: scopes step ids (default ``"default"``).
        on_step_start: ``hook(step_id, pipeline)`` before every attempt.
        on_step_complete: ``hook(step_id, result)`` after every success.
        on_step_error: ``hook(step_id, error, attempt)`` after every failed attempt.
        hooks: a :class:`StepHooks` object whose methods receive a :class:`StepEvent`.
        clock: ``now()`` and ``sleep()`` (default: :class:`AsyncSystemClock`).
        codec: turns results into text and back (default: :class:`JsonCodec`).
    """

    _accepts_async = True

    def _default_clock(self) -> Clock:
        return AsyncSystemClock(server_time(self._storage))

    def _new_family(self) -> Family:
        family = Family(self.max_runs, self.lease / 3)
        storage = self._storage
        many = batch_writer(storage)
        if many is not None and is_blocking(storage):
            try_now = getattr(storage, "try_now", None) or _never_now
            family.group = GroupCommit(self._write_one, many, try_now, self._off_loop)
        return family

    def _finished(self, value: Any) -> Awaitable[Any]:
        return _ready(value)

    def _then(self, result: Any, after: Callable[[Any], Any]) -> Any:
        async def chain() -> Any:
            value = after(await result)
            if inspect.isawaitable(value):
                value = await value
            return value

        return chain()

    def _handle(self, run_id: str) -> AsyncRunHandle[Any]:
        return AsyncRunHandle(self, run_id)

    def _op_handler(self, make_op: Callable[[], Any], post: Callable[[Any], Any]) -> Any:
        async def handler(_data: Any) -> Any:
            return post(await self._drive(make_op()))

        return handler

    # ------------------------------------------------------------ the three levels

    @overload
    def try_(self, action: Callable[[T], Awaitable[R]], data: T, *,
             step_id: str | None = None) -> Coroutine[Any, Any, R]: ...

    @overload
    def try_(self, action: Callable[[T], R], data: T, *,
             step_id: str | None = None) -> Coroutine[Any, Any, R]: ...

    @overload
    def try_(self, action: str, data: Any = None, *,
             step_id: str | None = None) -> Coroutine[Any, Any, Any]: ...

    def try_(self, action: Any, data: Any = None, *,
             step_id: str | None = None) -> Coroutine[Any, Any, Any]:
        """Run ``action(data)`` once, store nothing; await it for the handler's value.

        Raises (when awaited): ``HandlerNotFoundError``, or the handler's own exception.
        """
        return self._once(self._plan_try(action, data, (), step_id))  # type: ignore[no-any-return]

    @overload
    def do(self, action: Callable[[T], Awaitable[R]], data: T, *,
           retry: RetryPolicy | None = None,
           step_id: str | None = None) -> Coroutine[Any, Any, R]: ...

    @overload
    def do(self, action: Callable[[T], R], data: T, *, retry: RetryPolicy | None = None,
           step_id: str | None = None) -> Coroutine[Any, Any, R]: ...

    @overload
    def do(self, action: str, data: Any = None, *, retry: RetryPolicy | None = None,
           step_id: str | None = None) -> Coroutine[Any, Any, Any]: ...

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
        return self._durable(self._plan_do(action, data, (), retry, step_id))

    @overload
    def step(self, name: Callable[P, Awaitable[R]], *,
             retry: RetryPolicy | None = None) -> AsyncStepFunction[P, R]: ...

    @overload
    def step(self, name: Callable[P, R], *,
             retry: RetryPolicy | None = None) -> AsyncStepFunction[P, R]: ...

    @overload
    def step(self, name: str | None = None, *,
             retry: RetryPolicy | None = None) -> _AsyncStepDecorator: ...

    def step(self, name: Any = None, *, retry: RetryPolicy | None = None) -> Any:
        """Decorator: like :meth:`DurableWorkflowRuntime.step`, but calling the result returns
        an awaitable. ``async def`` functions are awaited on the loop; plain ones run in a
        worker thread."""
        return self._step_decorator(name, retry, AsyncStepFunction)

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
        return await self._execute(self._plan_execute(step_id, pipeline, args, mode, retry))

    # ------------------------------------------------------------ lifecycle

    def workflow(self, name: str, *, max_recoveries: int = 10, timeout: float | None = None
                 ) -> Callable[[Callable[[I], Awaitable[R]]], AsyncWorkflow[I, R]]:
        """Decorator: register an ``async def`` workflow (see
        :meth:`DurableWorkflowRuntime.workflow`) and return an :class:`AsyncWorkflow`."""
        return self._workflow_decorator(name, max_recoveries, timeout, AsyncWorkflow)

    async def serve(self, poll: float = 1.0) -> None:
        """Claim due runs and execute them as tasks until :meth:`aclose` (or cancellation);
        then hand back the runs not finished."""
        try:
            await self._serve(check_poll(poll), [False])
        finally:
            if not self._family.closed:  # aclose() has handed them back already
                await self._hand_back()

    def start_worker(self, poll: float = 1.0) -> AsyncWorker:
        """Run :meth:`serve`'s loop as a task of the running loop; ``await worker.stop()``
        ends it."""
        stopped = [False]
        task = asyncio.get_running_loop().create_task(self._serve(check_poll(poll), stopped))

        async def stop() -> None:
            stopped[0] = True
            self._family.notify()
            await asyncio.wait({task})
            await self._hand_back()

        return AsyncWorker(stop, lambda: not task.done())

    async def _serve(self, poll: float, stopped: list[bool]) -> None:
        family: Family = self._family
        family.loop = asyncio.get_running_loop()
        self._listen_for_wakeups()
        while not (family.closed or stopped[0]):
            try:
                wait = await self._drive(op_serve_pass(self, family.capacity(), poll))
            except StorageError:
                if family.closed:
                    return  # close() (a signal handler's, say) closed the storage mid-pass
                logger().exception("durably: a worker pass failed; trying again")
                wait = poll
            if not (family.closed or stopped[0]):
                await family.wait(wait)

    async def _hand_back(self) -> None:
        await self._family.hand_back(self.shutdown_timeout, self._release)

    async def _release(self, run_id: str, fence: int) -> None:
        try:
            await self._store(self._runs.release, run_id, fence, self._now())
        except Exception:  # closing anyway: the lease will run out and another takes it
            logger().exception("durably: could not hand back run %s", run_id)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait for in-flight ``send`` deliveries; ``False`` if ``timeout`` passed first."""
        deliveries = self._family.deliveries
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while deliveries:
            remaining = None
            if deadline is not None:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return False
            await asyncio.wait(set(deliveries), timeout=remaining)
        return True

    async def aclose(self) -> None:
        """Stop claiming runs, wait up to ``shutdown_timeout`` for the runs executing here and
        hand the others back, wait for deliveries, then close the storage. Idempotent.

        Runtimes made by :meth:`for_workflow` share the storage: closing one closes it for all.
        """
        family: Family = self._family
        if not family.closed:
            family.closed = True
            family.notify()
            await self._hand_back()
        await self.flush()
        await self._store(self._storage.close)
        await family.shutdown()

    async def __aenter__(self) -> AsyncDurableWorkflowRuntime:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # ------------------------------------------------------------ driving the core

    def _dispatch(self, plan: StepPlan) -> None:
        family: Family = self._family
        if family.closed:
            logger().warning("durably: %s sent after aclose(); dropped", plan.action)
            return

        async def deliver() -> None:
            try:
                await self._once(plan)
            except Exception:
                logger().exception("durably: %s delivery %s failed", plan.action,
                                   plan.step_id)

        def start() -> None:
            task = asyncio.get_running_loop().create_task(deliver())
            family.deliveries.add(task)
            task.add_done_callback(family.deliveries.discard)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Not on a loop: a sync handler in a worker thread. Hand the delivery to the loop
            # this runtime last ran on; it is queued before that handler's own completion, so
            # flush() cannot miss it.
            loop = family.loop
            if loop is None or loop.is_closed():
                logger().error("durably: %s sent without a running event loop; dropped",
                               plan.action)
                return
            loop.call_soon_threadsafe(start)
            return
        start()

    async def _store(self, operation: Callable[..., Any], *args: Any) -> Any:
        storage = self._storage
        if not is_blocking(storage):
            return operation(*args)
        # A blocking storage may still finish most calls at once (SQLite without another
        # writer): its try_now runs the call here if it can do so without waiting.
        attempt = getattr(storage, "try_now", None)
        if attempt is not None:
            done, value = attempt(operation, *args)
            if done:
                return value
        return await self._off_loop(operation, *args)

    def _durable(self, plan: StepPlan) -> Coroutine[Any, Any, Any]:
        group: GroupCommit | None = self._family.group
        if group is None:
            return super()._durable(plan)  # type: ignore[no-any-return]
        return self._counted(group, plan)

    async def _counted(self, group: GroupCommit, plan: StepPlan) -> Any:
        loop = group.step_started()  # what tells the group commit that other writes may come
        try:
            return await super()._durable(plan)
        finally:
            group.step_ended(loop)

    async def _off_loop(self, operation: Callable[..., Any], *args: Any) -> Any:
        family: Family = self._family
        if family.storage_pool is None:
            family.storage_pool = ThreadPoolExecutor(4, thread_name_prefix="durably-storage")
        return await asyncio.get_running_loop().run_in_executor(
            family.storage_pool, operation, *args)

    async def _drive(self, machine: StepMachine) -> Any:
        self._family.loop = asyncio.get_running_loop()
        answers = _ANSWERS
        reply: Any = None
        try:
            while True:
                command = machine.send(reply)
                answer = answers.get(type(command))
                if answer is None:
                    raise TypeError(f"AsyncDurableWorkflowRuntime cannot answer {command!r}")
                reply = await answer(self, command)
        except StopIteration as done:
            return done.value
        finally:
            machine.close()

    async def _store_call(self, command: StoreCall) -> Any:
        return await self._store(functools.partial(command.method, *command.args,
                                                   **command.kwargs))

    async def _pause(self, command: Pause) -> None:
        await self._family.wait(command.seconds)

    async def _execute_run(self, command: ExecuteRun) -> RunRecord | None:
        claimed = command.claimed
        family: Family = self._family
        family.loop = asyncio.get_running_loop()
        family.track(claimed.run_id, claimed.fence, self._renew)
        try:
            ended: RunRecord | None = await self._drive(run_machine(self, claimed))
            return ended
        finally:
            family.untrack(claimed.run_id)

    async def _dispatch_run(self, command: Dispatch) -> None:
        claimed = command.claimed
        self._family.submit_run(claimed.run_id, claimed.fence,
                                lambda: self._execute_run(ExecuteRun(claimed)), self._release)

    async def _run_body(self, command: RunBody) -> BodyOutcome:
        token = enter_run(command.scope)
        try:
            return BodyOutcome(value=await command.function(command.input))
        except BaseException as error:
            return body_outcome(error)
        finally:
            leave_run(token)

    async def _renew(self, leases: dict[str, int]) -> set[str]:
        renewed: set[str] = await self._store(self._runs.renew, self.executor_id, leases,
                                              self._now(), self.lease)
        return renewed

    async def _read_history(self, command: ReadHistory) -> None:
        view = command.view
        # Calls needing the same page at once (asyncio.gather) share one read: the first
        # starts it, the others await the same future. A failed read is forgotten, so a later
        # call retries.
        loading = view.loading
        if loading is None:
            if not view.needs(command.step_id):
                return
            loading = view.loading = asyncio.ensure_future(
                self._store(self._history, view.workflow_id, view.cursor, view.page))
        try:
            records, cursor = await asyncio.shield(loading)
        except Exception:
            if view.loading is loading:
                view.loading = None
            raise
        if view.loading is loading:  # the first of the waiters adds the page
            view.loading = None
            view.add_page(records, cursor)

    async def _write(self, command: Write) -> StepRecord:
        run = command.run
        write = (command.record, None, 0) if run is None else (command.record, run.run_id,
                                                                run.fence)
        group: GroupCommit | None = self._family.group
        if group is not None and group.has_company():  # one commit with other tasks' writes
            return await group.write(write)
        written: StepRecord = await self._store(self._write_one, write)
        return written

    def _write_one(self, write: StepWrite) -> StepRecord:
        """Make one step write: ``set``, or ``record_step`` under the run's fence."""
        record, run_id, fence = write
        if run_id is None:
            return self._storage.set(record)
        return self._runs.record_step(run_id, fence, record)

    async def _sleep(self, command: Sleep) -> None:
        if command.for_event and isinstance(self._clock, AsyncSystemClock):
            # Real time: a send_event in this process ends the wait at once.
            await self._family.wait(min(command.seconds, EVENT_POLL))
            return
        waited = self._clock.sleep(command.seconds)
        if inspect.isawaitable(waited):
            await waited

    async def _consume(self, command: Consume) -> Any:
        run = command.run
        return await self._store(self._runs.consume_event, run.run_id, run.fence, command.name,
                                 command.deadline, command.record)

    async def _attempt(self, command: RunAttempt) -> AttemptOutcome:
        if is_async_callable(command.handler):
            work: Any = _call_async(command)
        else:
            work = _call_sync(command)
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
            return AttemptOutcome(error=StepTimeoutError(command.plan.step_id, command.timeout))
        try:
            return AttemptOutcome(value=task.result())
        except Exception as error:
            return AttemptOutcome(error=error)


# The closed table of answers: a command of another type is refused, never misread.
_ANSWERS: dict[type, Callable[[AsyncDurableWorkflowRuntime, Any], Awaitable[Any]]] = {
    ReadHistory: AsyncDurableWorkflowRuntime._read_history,
    Write: AsyncDurableWorkflowRuntime._write,
    Sleep: AsyncDurableWorkflowRuntime._sleep,
    RunAttempt: AsyncDurableWorkflowRuntime._attempt,
    StoreCall: AsyncDurableWorkflowRuntime._store_call,
    Pause: AsyncDurableWorkflowRuntime._pause,
    ExecuteRun: AsyncDurableWorkflowRuntime._execute_run,
    Dispatch: AsyncDurableWorkflowRuntime._dispatch_run,
    RunBody: AsyncDurableWorkflowRuntime._run_body,
    Consume: AsyncDurableWorkflowRuntime._consume,
}
