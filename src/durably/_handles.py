"""What users hold of workflow runs: ``Workflow`` (what ``@runtime.workflow`` returns),
``RunHandle`` and ``Worker``, each in a sync and an asyncio flavour.

They are thin: every method builds an operation of ``_workflows.py`` and hands it to its
runtime, which answers its commands with blocking calls (sync) or awaits (asyncio).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from ._records import EventRecord, RunRecord, StepRecord
from ._waits import MISSING
from ._workflows import WorkflowSpec

__all__ = ["AsyncRunHandle", "AsyncWorker", "AsyncWorkflow", "HandleHost", "RunHandle",
           "Worker", "Workflow"]

I = TypeVar("I")  # noqa: E741 - the input
R = TypeVar("R")


class HandleHost(Protocol):
    """The runtime methods handles use (each returns a value, or an awaitable in the
    asyncio flavour)."""

    def _start_run(self, name: str, value: Any, run_id: str | None) -> Any: ...

    def _run_run(self, name: str, value: Any, run_id: str | None,
                 timeout: float | None) -> Any: ...

    def _run_status(self, run_id: str) -> Any: ...

    def _run_result(self, run_id: str, timeout: float | None) -> Any: ...

    def _run_steps(self, run_id: str) -> Any: ...

    def _run_cancel(self, run_id: str) -> Any: ...

    def _run_resume(self, run_id: str) -> Any: ...

    def _run_events(self, run_id: str) -> Any: ...

    def fork(self, run_id: str, from_step: str, *, new_run_id: str | None = None) -> Any: ...

    def restart(self, run_id: str, from_step: str) -> Any: ...

    def delete_run(self, run_id: str) -> Any: ...

    def _run_published(self, run_id: str, key: str | None, timeout: float | None,
                       default: Any) -> Any: ...


class _WorkflowBase:
    def __init__(self, host: HandleHost, spec: WorkflowSpec) -> None:
        self._host = host
        self.name = spec.name
        self.max_recoveries = spec.max_recoveries
        self.timeout = spec.timeout
        functools.update_wrapper(self, spec.function)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<workflow {self.name!r}>"


class Workflow(_WorkflowBase, Generic[I, R]):
    """A registered workflow (what ``DurableWorkflowRuntime.workflow`` returns).

    ``start(input, run_id=...)`` starts a run and returns its :class:`RunHandle` at once;
    ``run(input, run_id=...)`` starts it and waits for its result (executing it in the
    caller's thread when it claims it); calling the workflow is ``run()`` under a fresh run id.
    Inside another run, starting or running a workflow is a step of that run: its child run
    id defaults to ``parent_run_id + "/" + local step id``, so a replay re-attaches to it.
    """

    def start(self, input: I, *, run_id: str | None = None) -> RunHandle[R]:
        """Start a run (once per run id) and return its handle; the body runs on this
        runtime's workers when this process claims it.

        Raises:
            RunConflictError: ``run_id`` is taken by another workflow or another input.
            SerializationError: the input cannot be encoded (nothing is written).
            ConfigurationError: a bad run id, or a storage without runs.
        """
        handle: RunHandle[R] = self._host._start_run(self.name, input, run_id)
        return handle

    def run(self, input: I, *, run_id: str | None = None, timeout: float | None = None) -> R:
        """Start a run (once per run id) and wait for its result.

        Raises:
            WorkflowFailedError: the body raised (the run is FAILED).
            RunCancelledError: the run was cancelled or passed its deadline.
            TimeoutError: ``timeout`` seconds passed first (the run goes on).
        """
        result: R = self._host._run_run(self.name, input, run_id, timeout)
        return result

    def __call__(self, input: I) -> R:
        return self.run(input)


class AsyncWorkflow(_WorkflowBase, Generic[I, R]):
    """The asyncio flavour of :class:`Workflow`: ``await w.start(...)``, ``await w.run(...)``,
    ``await w(...)``."""

    async def start(self, input: I, *, run_id: str | None = None) -> AsyncRunHandle[R]:
        """Start a run and return its handle (see :meth:`Workflow.start`)."""
        handle: AsyncRunHandle[R] = await self._host._start_run(self.name, input, run_id)
        return handle

    async def run(self, input: I, *, run_id: str | None = None,
                  timeout: float | None = None) -> R:
        """Start a run and wait for its result (see :meth:`Workflow.run`)."""
        result: R = await self._host._run_run(self.name, input, run_id, timeout)
        return result

    def __call__(self, input: I) -> Coroutine[Any, Any, R]:
        return self.run(input)


class _HandleBase:
    def __init__(self, host: HandleHost, run_id: str) -> None:
        self._host = host
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<run {self.run_id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _HandleBase) and other.run_id == self.run_id \
            and other._host is self._host

    def __hash__(self) -> int:
        return hash(self.run_id)


class RunHandle(_HandleBase, Generic[R]):
    """A run, by its id: look at it, wait for it, cancel or resume it.

    Attributes:
        run_id: the run's id.
    """

    def status(self) -> RunRecord:
        """Return the run as stored now.

        Raises:
            RunNotFoundError: there is no such run.
        """
        record: RunRecord = self._host._run_status(self.run_id)
        return record

    def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish and return its recorded result.

        Raises:
            WorkflowFailedError: the run FAILED (``error`` is the recorded ErrorInfo).
            RunCancelledError: the run was cancelled or passed its deadline.
            TimeoutError: ``timeout`` seconds of real time passed first.
            RunNotFoundError: there is no such run.
        """
        result: R = self._host._run_result(self.run_id, timeout)
        return result

    def steps(self) -> list[StepRecord]:
        """Return the run's step records, in call order."""
        records: list[StepRecord] = self._host._run_steps(self.run_id)
        return records

    def cancel(self) -> bool:
        """Cancel the run: its owner stops at its next step boundary and a step finishing
        after this is not recorded. Returns False if the run was already finished."""
        done: bool = self._host._run_cancel(self.run_id)
        return done

    def resume(self) -> bool:
        """Move a CANCELLED or FAILED run back to PENDING with a fresh recovery budget; the
        next worker, ``recover()`` or ``run_due()`` continues it. False if there was
        nothing to resume."""
        done: bool = self._host._run_resume(self.run_id)
        return done

    def fork(self, from_step: str, new_run_id: str | None = None) -> RunHandle[R]:
        """Start a new run that keeps this run's history before ``from_step`` and executes
        from there; this run is unchanged (see ``runtime.fork``)."""
        handle: RunHandle[R] = self._host.fork(self.run_id, from_step, new_run_id=new_run_id)
        return handle

    def restart(self, from_step: str) -> None:
        """Execute this run again from ``from_step``, in place (see ``runtime.restart``)."""
        self._host.restart(self.run_id, from_step)

    def delete(self) -> bool:
        """Delete the run with its steps and inbox; False if it was already gone."""
        done: bool = self._host.delete_run(self.run_id)
        return done

    def events(self) -> list[EventRecord]:
        """Return the run's inbox (``EventRecord``s in the order they were sent), consumed
        ones included."""
        events: list[EventRecord] = self._host._run_events(self.run_id)
        return events

    def published(self, key: str, *, timeout: float | None = None,
                  default: Any = MISSING) -> Any:
        """Return the latest value the run published under ``key``, waiting up to
        ``timeout`` seconds (``None``: as long as it takes) for it to appear.

        Raises:
            TimeoutError: the time ran out and no ``default`` was given.
            KeyError: the run finished without publishing ``key`` and no ``default``.
        """
        return self._host._run_published(self.run_id, key, timeout, default)

    def published_all(self) -> dict[str, Any]:
        """Return every key the run has published so far, with its latest value."""
        values: dict[str, Any] = self._host._run_published(self.run_id, None, None, MISSING)
        return values


class AsyncRunHandle(_HandleBase, Generic[R]):
    """The asyncio flavour of :class:`RunHandle`: every method is a coroutine."""

    async def status(self) -> RunRecord:
        """Return the run as stored now (see :meth:`RunHandle.status`)."""
        record: RunRecord = await self._host._run_status(self.run_id)
        return record

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run's result (see :meth:`RunHandle.result`)."""
        result: R = await self._host._run_result(self.run_id, timeout)
        return result

    async def steps(self) -> list[StepRecord]:
        """Return the run's step records, in call order."""
        records: list[StepRecord] = await self._host._run_steps(self.run_id)
        return records

    async def cancel(self) -> bool:
        """Cancel the run (see :meth:`RunHandle.cancel`)."""
        done: bool = await self._host._run_cancel(self.run_id)
        return done

    async def resume(self) -> bool:
        """Resume a CANCELLED or FAILED run (see :meth:`RunHandle.resume`)."""
        done: bool = await self._host._run_resume(self.run_id)
        return done

    async def fork(self, from_step: str, new_run_id: str | None = None) -> AsyncRunHandle[R]:
        """Start a new run from this one's history (see :meth:`RunHandle.fork`)."""
        handle: AsyncRunHandle[R] = await self._host.fork(self.run_id, from_step,
                                                          new_run_id=new_run_id)
        return handle

    async def restart(self, from_step: str) -> None:
        """Execute this run again from ``from_step`` (see :meth:`RunHandle.restart`)."""
        await self._host.restart(self.run_id, from_step)

    async def delete(self) -> bool:
        """Delete the run with its steps and inbox (see :meth:`RunHandle.delete`)."""
        done: bool = await self._host.delete_run(self.run_id)
        return done

    async def events(self) -> list[EventRecord]:
        """Return the run's inbox (see :meth:`RunHandle.events`)."""
        events: list[EventRecord] = await self._host._run_events(self.run_id)
        return events

    async def published(self, key: str, *, timeout: float | None = None,
                        default: Any = MISSING) -> Any:
        """Return a published value (see :meth:`RunHandle.published`)."""
        return await self._host._run_published(self.run_id, key, timeout, default)

    async def published_all(self) -> dict[str, Any]:
        """Return every published key with its latest value."""
        values: dict[str, Any] = await self._host._run_published(self.run_id, None, None,
                                                                 MISSING)
        return values


class Worker:
    """A worker loop running in a background thread (``runtime.start_worker()``).

    It claims due runs and executes them until :meth:`stop`; stopping hands back the runs it
    has not finished, as ``close()`` does.
    """

    def __init__(self, stop: Callable[[float | None], None],
                 running: Callable[[], bool]) -> None:
        self._stop = stop
        self._running = running

    @property
    def running(self) -> bool:
        """Whether the loop is still running."""
        return self._running()

    def stop(self, timeout: float | None = None) -> None:
        """End the loop and wait up to ``timeout`` seconds (``None``: until it has ended)."""
        self._stop(timeout)


class AsyncWorker:
    """The asyncio flavour of :class:`Worker`: the loop is a task; ``await stop()``."""

    def __init__(self, stop: Callable[[], Coroutine[Any, Any, None]],
                 running: Callable[[], bool]) -> None:
        self._stop = stop
        self._running = running

    @property
    def running(self) -> bool:
        """Whether the loop is still running."""
        return self._running()

    async def stop(self) -> None:
        """End the loop and wait until it has ended."""
        await self._stop()
