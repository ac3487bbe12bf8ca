"""Helpers for testing code that uses durably, and for testing storage adapters.

* :class:`FakeClock`: time that moves only when told to; sleeps return at once.
* :class:`StorageContract`: the checks every :class:`~durably.StepStorage` must pass.
"""

from __future__ import annotations

import threading

from ._contract import StorageContract

__all__ = ["FakeClock", "StorageContract"]


class FakeClock:
    """A clock for tests: ``sleep`` returns at once and moves ``now()`` forward.

    Args:
        start: the initial value of ``now()``.

    Attributes:
        sleeps: every duration passed to :meth:`sleep` (or awaited through :meth:`asleep`),
            in order.
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

    async def asleep(self, seconds: float) -> None:
        """The awaitable form of :meth:`sleep`, for the asyncio runtime."""
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` without recording a sleep."""
        with self._lock:
            self._now += seconds
