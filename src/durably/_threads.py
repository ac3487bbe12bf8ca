"""The threads of the sync runtime: ``send`` deliveries, run workers, the lease heartbeat.

Shared by a runtime and its ``for_workflow`` siblings (one :class:`Family` each), so one
heartbeat renews every lease the runtime holds and ``max_runs`` bounds them all together.
Heartbeats and waits use real time; only lease arithmetic reads the runtime's clock.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._core import logger

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["Deliveries", "Family"]


class Deliveries:
    """The background work of ``send``: a small thread pool and a count of what is in flight."""

    def __init__(self, workers: int = 4) -> None:
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._idle = threading.Condition()
        self._closed = False

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` in the background (in a copy of the caller's context)."""
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
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        with self._idle:
            return bool(self._idle.wait_for(lambda: self._pending == 0, timeout))

    def close(self) -> None:
        """Refuse new work and stop the pool once its work is done."""
        with self._idle:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


Renew = Callable[[dict[str, int]], set[str]]
Release = Callable[[str, int], None]


class Family:
    """What a runtime shares with its siblings: closed flag, pools, leases, notifications.

    Attributes:
        closed: set by ``close()``: nothing more is claimed or started.
        deliveries: the ``send`` pool.
        failures: recent failures by run id (the ``__cause__`` of ``WorkflowFailedError``).
    """

    def __init__(self, max_runs: int, heartbeat_every: float) -> None:
        self.closed = False
        self.listening = False  # the storage's wake-up hints reach notify()
        self.deliveries = Deliveries()
        self.failures: dict[str, BaseException] = {}
        self._max_runs = max_runs
        self._heartbeat_every = heartbeat_every
        self._changed = threading.Condition()
        self._leases: dict[str, int] = {}      # runs executing here: run id -> fence
        self._queued: dict[str, int] = {}      # dispatched, not started yet
        self._in_flight = 0                    # dispatched and not finished
        self._pool: ThreadPoolExecutor | None = None
        self._heartbeat: threading.Thread | None = None
        self._stopping = threading.Event()
        self._draining = False

    # ------------------------------------------------------------------ notifications

    def notify(self) -> None:
        """Wake everything waiting in :meth:`wait` (a run finished, something became due)."""
        with self._changed:
            self._changed.notify_all()

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` of real time, or until :meth:`notify`."""
        if seconds > 0:
            with self._changed:
                self._changed.wait(seconds)

    # ------------------------------------------------------------------ leases

    def track(self, run_id: str, fence: int, renew: Renew) -> None:
        """Renew the lease of ``run_id`` from now on (starting the heartbeat if needed)."""
        with self._changed:
            self._leases[run_id] = fence
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(target=self._beat, args=(renew,),
                                                   name="durably-heartbeat", daemon=True)
                self._heartbeat.start()

    def untrack(self, run_id: str) -> None:
        """Stop renewing ``run_id`` (its machine ended), and wake waiters."""
        with self._changed:
            self._leases.pop(run_id, None)
            self._changed.notify_all()

    def _beat(self, renew: Renew) -> None:
        # One heartbeat for every lease of the family, every lease / 3 seconds of real time:
        # the runs executing here and those claimed and waiting for a worker (a long backlog
        # must not lose the runs at its end to another process before they even start).
        # It lingers a while with no lease to renew: starting a thread costs more than a
        # short run, and runs tend to come in series.
        idle_until = time.monotonic() + max(10.0, 5 * self._heartbeat_every)
        while True:
            # Its own event, not the family's condition: waking at every run's end would cost
            # every short run a thread switch.
            self._stopping.wait(self._heartbeat_every)
            with self._changed:
                leases = {**self._queued, **self._leases}
                if self.closed or (not leases and time.monotonic() > idle_until):
                    self._heartbeat = None
                    return
                if not leases:
                    continue
                idle_until = time.monotonic() + max(10.0, 5 * self._heartbeat_every)
            try:
                renew(leases)
            except Exception:  # a storage hiccup: try again at the next beat
                logger().exception("durably: renewing %d lease(s) failed", len(leases))

    # ------------------------------------------------------------------ workers

    def capacity(self) -> int:
        """How many more runs the workers may take now."""
        with self._changed:
            return max(0, self._max_runs - self._in_flight)

    def submit_run(self, run_id: str, fence: int, execute: Callable[[], None],
                   release: Release) -> None:
        """Run ``execute`` on a run worker; a run that cannot start (closing, draining) is
        handed back with ``release`` instead."""
        with self._changed:
            if self.closed or self._draining:
                refused = True
            else:
                refused = False
                self._queued[run_id] = fence
                self._in_flight += 1
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self._max_runs,
                                                    thread_name_prefix="durably-run")
                pool = self._pool
        if refused:
            release(run_id, fence)
            return
        context = contextvars.copy_context()

        def work() -> None:
            with self._changed:
                started = self._queued.pop(run_id, None) is not None and not (
                    self.closed or self._draining)
            try:
                if started:
                    context.run(execute)
                else:
                    release(run_id, fence)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()

        pool.submit(work)

    def settle(self, timeout: float) -> bool:
        """Wait until no run is dispatched or executing here; False if ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight or self._leases:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def hand_back(self, timeout: float, release: Release) -> None:
        """Stop starting runs, wait up to ``timeout`` s for those executing, and release the
        rest (queued ones, and any still executing: their late writes are refused)."""
        with self._changed:
            self._draining = True
            queued = dict(self._queued)
            self._queued.clear()
        for run_id, fence in queued.items():
            release(run_id, fence)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._leases and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
            left = dict(self._leases)
        for run_id, fence in left.items():
            release(run_id, fence)
        with self._changed:
            self._draining = self.closed

    def shutdown(self) -> None:
        """Stop the run pool (its queued work releases its runs) and the heartbeat."""
        self._stopping.set()
        with self._changed:
            self.closed = True
            pool, self._pool = self._pool, None
            self._changed.notify_all()
        if pool is not None:
            pool.shutdown(wait=False)
