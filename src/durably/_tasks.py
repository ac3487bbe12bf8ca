"""The tasks of the asyncio runtime: ``send`` deliveries, run workers, the lease heartbeat,
and the group commit of step writes.

The asyncio counterpart of ``_threads.py``, shared by a runtime and its ``for_workflow``
siblings. Everything here lives on the runtime's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._core import logger
from ._errors import OwnershipLost
from ._records import StepRecord
from ._storage import StepWrite

__all__ = ["Family", "GroupCommit"]

Renew = Callable[[dict[str, int]], Awaitable[set[str]]]
Release = Callable[[str, int], Coroutine[Any, Any, None]]
TryNow = Callable[..., tuple[bool, Any]]
OffLoop = Callable[..., Awaitable[Any]]
Batch = list[tuple[StepWrite, "asyncio.Future[StepRecord]"]]


class GroupCommit:
    """The step writes that concurrent tasks make in one turn of the event loop, committed
    together: one transaction, one commit (and with ``durability="full"`` one fsync) for
    all of them, instead of one each.

    The runtime sends a write here only when it may have company: another durable step is
    in progress (``steps``), or a batch is being committed off the loop (``busy``); a lone
    step writes at once, as it always did, since waiting a turn for nobody costs ~8 µs. The
    first write of a turn schedules the flush with ``call_soon``, which runs after every task
    that was already ready (those of an ``asyncio.gather``, say) has run up to its own
    write; while a batch is committed off the loop, new writes wait and go in the next one.
    Each writer awaits its own future, resolved only after the commit, so a writer never goes
    on before its record is stored. A batch of one is made as it always was (``one``);
    several go to the storage's ``write_steps`` (``many``), which reports each write's own
    outcome. A batch that fails as a whole (a database error) is made again one write at a
    time, so that each writer gets its own answer.

    ``try_now(call, *args)`` is the storage's attempt on the loop, ``(False, None)`` when it
    would have to wait; ``off_loop(call, *args)`` makes the call on a thread.
    """

    def __init__(self, one: Callable[[StepWrite], StepRecord],
                 many: Callable[[list[StepWrite]], list[StepRecord | BaseException]],
                 try_now: TryNow, off_loop: OffLoop) -> None:
        self._one = one
        self._many = many
        self._try_now = try_now
        self._off_loop = off_loop
        self._pending: Batch = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.steps = 0      # durable steps in progress on this loop
        self.busy = False   # a batch is being committed off the loop

    def _on(self, loop: asyncio.AbstractEventLoop) -> None:
        # A runtime may outlive its loop (asyncio.run, then asyncio.run again): whatever an
        # old loop left here (its writers, a batch it never finished) is dead with it, and
        # must not make the new loop's writes wait for a flush that will never come.
        if loop is not self._loop:
            self._loop, self._pending, self.steps, self.busy = loop, [], 0, False

    def step_started(self) -> asyncio.AbstractEventLoop:
        """Count a durable step in progress; returns its loop, for :meth:`step_ended`."""
        loop = asyncio.get_running_loop()
        self._on(loop)
        self.steps += 1
        return loop

    def step_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop counting a step :meth:`step_started` counted on ``loop``."""
        if loop is self._loop:
            self.steps -= 1

    def has_company(self) -> bool:
        """Whether a write may share a commit: another step is in progress, or a batch is
        on its way (then this write would wait for the storage anyway)."""
        return self.steps > 1 or self.busy

    def write(self, write: StepWrite) -> asyncio.Future[StepRecord]:
        """Queue ``write`` for this turn's commit; the future gives what is stored."""
        loop = asyncio.get_running_loop()
        self._on(loop)
        future: asyncio.Future[StepRecord] = loop.create_future()
        self._pending.append((write, future))
        if len(self._pending) == 1 and not self.busy:
            loop.call_soon(self._flush)
        return future

    def _make(self, writes: list[StepWrite]) -> list[StepRecord | BaseException]:
        if len(writes) > 1:
            return self._many(writes)
        try:
            return [self._one(writes[0])]
        except OwnershipLost as lost:  # this writer's answer, not a failed flush
            return [lost]

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            done, results = self._try_now(self._make, [write for write, _ in batch])
        except Exception as error:  # a lone write's own error, or a failed batch
            if len(batch) == 1:
                _deliver(batch, [error])
            else:
                self._start(self._one_by_one(batch))
            return
        if done:
            _deliver(batch, results)
        else:  # it would wait (another connection holds the write lock, or an fsync)
            self.busy = True
            self._start(self._later(batch))

    async def _later(self, batch: Batch) -> None:
        try:
            results = await self._off_loop(self._make, [write for write, _ in batch])
        except Exception as error:
            if len(batch) > 1:
                await self._one_by_one(batch)
            else:
                _deliver(batch, [error])
        else:
            _deliver(batch, results)
        finally:
            self.busy = False
            self._flush()  # what came meanwhile: the next batch

    async def _one_by_one(self, batch: Batch) -> None:
        for write, future in batch:
            try:
                outcome: StepRecord | BaseException = await self._off_loop(self._one, write)
            except (Exception, OwnershipLost) as error:
                outcome = error
            _deliver([(write, future)], [outcome])

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # kept, so that it is not collected before it ends
        task.add_done_callback(self._tasks.discard)


def _deliver(batch: Batch, results: list[StepRecord | BaseException]) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if future.cancelled():  # its writer was cancelled: the write is made all the same
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class Family:
    """What an asyncio runtime shares with its siblings: closed flag, tasks, leases.

    Attributes:
        closed: set by ``aclose()``: nothing more is claimed or started.
        deliveries: the tasks of ``send``.
        storage_pool: the threads blocking storage calls run on.
        group: the group commit of step writes, when the storage can batch them.
        loop: the loop this family last ran on (for ``send`` from worker threads).
        failures: recent failures by run id (the ``__cause__`` of ``WorkflowFailedError``).
    """

    def __init__(self, max_runs: int, heartbeat_every: float) -> None:
        self.closed = False
        self.listening = False  # the storage's wake-up hints reach notify()
        self.deliveries: set[asyncio.Task[None]] = set()
        self.storage_pool: ThreadPoolExecutor | None = None
        self.group: GroupCommit | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failures: dict[str, BaseException] = {}
        self._max_runs = max_runs
        self._heartbeat_every = heartbeat_every
        self._changed: asyncio.Event | None = None
        self._leases: dict[str, int] = {}
        self._runs: dict[str, tuple[int, asyncio.Task[None]]] = {}   # dispatched runs
        self._slots: asyncio.Semaphore | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._draining = False

    # ------------------------------------------------------------------ notifications

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def notify(self) -> None:
        """Wake every :meth:`wait` (a run finished, something became due)."""
        if self._changed is None:
            return
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)  # from a worker thread
        else:
            self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    async def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` of real time, or until :meth:`notify`."""
        if seconds <= 0:
            return
        event = self._event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    # ------------------------------------------------------------------ leases

    def track(self, run_id: str, fence: int, renew: Renew) -> None:
        """Renew the lease of ``run_id`` from now on (starting the heartbeat if needed)."""
        self._leases[run_id] = fence
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(renew))

    def untrack(self, run_id: str) -> None:
        """Stop renewing ``run_id``, and wake waiters."""
        self._leases.pop(run_id, None)
        self.notify()

    def _owned(self) -> dict[str, int]:
        # The runs executing here and those dispatched and waiting for a slot: a long
        # backlog must not lose the runs at its end to another process before they start.
        return {**{run_id: fence for run_id, (fence, _) in self._runs.items()}, **self._leases}

    async def _beat(self, renew: Renew) -> None:
        while not self.closed and self._owned():
            await asyncio.sleep(self._heartbeat_every)
            leases = self._owned()
            if self.closed or not leases:
                break
            try:
                await renew(leases)
            except Exception:  # a storage hiccup: try again at the next beat
                logger().exception("durably: renewing %d lease(s) failed", len(leases))
        self._heartbeat = None

    # ------------------------------------------------------------------ workers

    def capacity(self) -> int:
        """How many more runs the workers may take now."""
        return max(0, self._max_runs - len(self._runs))

    def submit_run(self, run_id: str, fence: int,
                   execute: Callable[[], Coroutine[Any, Any, None]], release: Release) -> None:
        """Run ``execute()`` as a task, at most ``max_runs`` at once; a run that cannot start
        (closing, draining) is handed back with ``release`` instead."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_runs)
        slots = self._slots

        async def work() -> None:
            try:
                async with slots:
                    if self.closed or self._draining:
                        await release(run_id, fence)
                        return
                    await execute()
            finally:
                self._runs.pop(run_id, None)
                self.notify()

        if self.closed or self._draining:
            task = asyncio.get_running_loop().create_task(release(run_id, fence))
            self.deliveries.add(task)
            task.add_done_callback(self.deliveries.discard)
            return
        self._runs[run_id] = (fence, asyncio.get_running_loop().create_task(work()))

    async def settle(self, timeout: float) -> bool:
        """Wait until no run is dispatched or executing here; False if ``timeout`` passed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._runs or self._leases:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await self.wait(min(left, 0.05))
        return True

    async def hand_back(self, timeout: float, release: Release) -> None:
        """Stop starting runs, wait up to ``timeout`` s for those executing, then cancel and
        release the rest (their late writes are refused)."""
        self._draining = True
        self.notify()
        tasks = [task for _, task in self._runs.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for run_id, (fence, task) in list(self._runs.items()):
            task.cancel()
            await release(run_id, fence)
        for run_id, fence in list(self._leases.items()):
            await release(run_id, fence)  # executing inline in a caller (run(), run_due())
        self._draining = self.closed

    async def shutdown(self) -> None:
        """Stop the heartbeat and the storage threads."""
        self.closed = True
        self.notify()
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.cancel()
        pool, self.storage_pool = self.storage_pool, None
        if pool is not None:
            pool.shutdown(wait=False)
