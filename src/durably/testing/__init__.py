"""Helpers for testing code that uses durably, and for testing storage adapters.

* :class:`FakeClock`: time that moves only when told to; sleeps return at once.
* :func:`create_test_runtime` / :func:`create_async_test_runtime`: an in-memory runtime with
  one attempt, no delays and fake time.
* :class:`StorageContract`: the checks every :class:`~durably.StepStorage` must pass.
"""

from __future__ import annotations

import threading
from typing import Any

from .._aio import AsyncDurableWorkflowRuntime
from .._retry import RetryPolicy
from .._runtime import DurableWorkflowRuntime
from .._storage import InMemoryStepStorage
from ._contract import StorageContract
from ._run_contract import RunStorageContract

__all__ = [
    "FakeClock", "RunStorageContract", "StorageContract", "create_async_test_runtime",
    "create_test_runtime",
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
