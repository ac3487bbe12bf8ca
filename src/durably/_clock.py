"""Where time comes from: the :class:`Clock` protocol and the two wall clocks.

Records are compared across processes, so the default clocks read ``time.time`` (seconds since
the epoch), not a monotonic clock. Tests pass ``durably.testing.FakeClock`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

__all__ = ["AsyncSystemClock", "Clock", "SystemClock"]


class Clock(Protocol):
    """Where time comes from: ``now()`` in seconds since the epoch, and ``sleep(seconds)``.

    The asyncio runtime also accepts a clock whose ``sleep`` returns an awaitable.
    """

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> Any:
        """Wait ``seconds`` (or return an awaitable that does)."""
        ...


class SystemClock:
    """Wall-clock time (``time.time``, comparable across processes) and ``time.sleep``.

    Args:
        source: where "now" comes from instead of ``time.time``: the runtime passes a
            storage's ``server_time`` (PostgreSQL's), so that processes on machines whose
            clocks disagree agree on leases and due times.
    """

    def __init__(self, source: Callable[[], float] | None = None) -> None:
        self._source: Callable[[], float] = time.time if source is None else source

    def now(self) -> float:
        """Return seconds since the epoch."""
        return self._source()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        time.sleep(seconds)


class AsyncSystemClock:
    """Wall-clock time (``time.time``) and ``asyncio.sleep``: the asyncio runtime's default.

    Args:
        source: as for :class:`SystemClock`.
    """

    def __init__(self, source: Callable[[], float] | None = None) -> None:
        self._source: Callable[[], float] = time.time if source is None else source

    def now(self) -> float:
        """Return seconds since the epoch."""
        return self._source()

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Return an awaitable that waits ``seconds`` without blocking the loop."""
        import asyncio  # only asyncio programs pay for the import

        return asyncio.sleep(seconds)
