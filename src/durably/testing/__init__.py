"""Helpers for testing code that uses durably, and for testing storage adapters.

* :class:`FakeClock`: time that moves only when told to; sleeps return at once.
* :func:`create_test_runtime` / :func:`create_async_test_runtime`: an in-memory runtime with
  one attempt, no delays and fake time.
* :func:`run_until_idle`: time skipping for runs that sleep and wait, in-process.
* :class:`StorageContract`, :class:`RunStorageContract`: the checks every storage adapter
  must pass.
"""

from __future__ import annotations

import threading
from typing import Any

from .._aio import AsyncDurableWorkflowRuntime
from .._records import RunRecord, RunStatus
from .._retry import RetryPolicy
from .._runtime import DurableWorkflowRuntime
from .._storage import InMemoryStepStorage
from ._contract import StorageContract
from ._run_contract import RunStorageContract

__all__ = [
    "FakeClock", "RunStorageContract", "StorageContract", "create_async_test_runtime",
    "create_test_runtime", "run_until_idle",
]


class FakeClock:
    """A clock for tests: ``sleep`` returns at once and moves ``now()`` forward.

    Args:
        start: the initial value of ``now()``.

    Attributes:
        sleeps: every duration passed to :meth:`sleep`, in order.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Return the current fake time."""
        return self._now

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time by ``seconds`` at once."""
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` without recording a sleep."""
        with self._lock:
            self._now += seconds


def _test_options(overrides: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "storage": InMemoryStepStorage(),
        "clock": FakeClock(),
        "retry_policy": RetryPolicy(max_attempts=1, initial_delay=0),
        "workflow_id": "test",
    }
    options.update(overrides)
    return options


def create_test_runtime(**overrides: Any) -> DurableWorkflowRuntime:
    """Return a :class:`~durably.DurableWorkflowRuntime` set up for tests.

    Defaults: ``InMemoryStepStorage()``, a ``FakeClock()``,
    ``RetryPolicy(max_attempts=1, initial_delay=0)`` and workflow id ``"test"``. Any keyword
    argument of the runtime overrides them, e.g.
    ``create_test_runtime(retry_policy=RetryPolicy(max_attempts=3))``.
    """
    return DurableWorkflowRuntime(**_test_options(overrides))


def create_async_test_runtime(**overrides: Any) -> AsyncDurableWorkflowRuntime:
    """Return an :class:`~durably.AsyncDurableWorkflowRuntime` with the same test defaults as
    :func:`create_test_runtime` (the ``FakeClock`` works with both flavours)."""
    return AsyncDurableWorkflowRuntime(**_test_options(overrides))


def _left_waiting(runs: list[RunRecord]) -> list[RunRecord]:
    return [run for run in runs
            if run.status is RunStatus.SUSPENDED and run.waiting_for is not None]


def run_until_idle(runtime: Any, clock: FakeClock, *,
                   max_time: float | None = None) -> Any:
    """Run every due run, and jump ``clock`` to the next wake time, until nothing is left to
    do: Temporal's time skipping, in-process.

    It first waits for the runs this runtime is already executing, then loops: ``run_due()``;
    when nothing was due, ``clock`` is advanced to the storage's next wake time (a sleep's
    end, a wait's deadline, a lease's expiry), but never past ``max_time`` seconds after the
    call. Returns the runs left SUSPENDED waiting for an event (``RunRecord``s); for an
    ``AsyncDurableWorkflowRuntime`` it returns a coroutine of that.

    Args:
        runtime: a runtime on that clock.
        clock: the runtime's ``FakeClock``.
        max_time: how far time may be moved forward, in seconds (``None``: without limit).
    """
    if isinstance(runtime, AsyncDurableWorkflowRuntime):
        return _run_until_idle_async(runtime, clock, max_time)
    limit = None if max_time is None else clock.now() + max_time
    runtime._family.settle(60.0)
    while True:
        if runtime.run_due():
            continue
        wake = runtime.storage.next_wake_at(runtime._workflow_names())
        if not _skip_time(wake, clock, limit):
            break
    return _left_waiting(runtime.list_runs(limit=None))


async def _run_until_idle_async(runtime: AsyncDurableWorkflowRuntime, clock: FakeClock,
                                max_time: float | None) -> list[RunRecord]:
    limit = None if max_time is None else clock.now() + max_time
    await runtime._family.settle(60.0)
    while True:
        if await runtime.run_due():
            continue
        wake = runtime.storage.next_wake_at(  # type: ignore[attr-defined]
            runtime._workflow_names())
        if not _skip_time(wake, clock, limit):
            break
    return _left_waiting(await runtime.list_runs(limit=None))


def _skip_time(wake: float | None, clock: FakeClock, limit: float | None) -> bool:
    """Advance ``clock`` to ``wake`` when that is ahead and allowed; whether it moved."""
    now = clock.now()
    if wake is None or wake <= now or (limit is not None and wake > limit):
        return False
    clock.advance(wake - now)
    return True
