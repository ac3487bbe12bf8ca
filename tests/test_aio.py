"""What only the asyncio flavour has: awaiting, cancellation, timeouts, concurrent steps.

Everything the two flavours share is tested once, over both, in test_runtime.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from durably import (
    AsyncDurableWorkflowRuntime,
    AsyncSystemClock,
    InMemoryStepStorage,
    RetryPolicy,
    SqliteStepStorage,
    StepStatus,
    StepTimeoutError,
    WorkflowStepError,
    current_step,
)
from durably.testing import FakeClock, create_async_test_runtime


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_async_handlers_are_awaited_and_sync_ones_run_in_a_thread() -> None:
    """Coroutine handlers run on the loop's thread; plain ones in a worker thread."""

    async def main() -> tuple[int, int, int]:
        runtime = create_async_test_runtime()
        loop_thread = threading.get_ident()

        async def on_loop(data: Any) -> int:
            await asyncio.sleep(0)
            return threading.get_ident()

        runtime.register("A.async", on_loop)
        runtime.register("A.sync", lambda data: threading.get_ident())
        return loop_thread, await runtime.do("A.async", 1), await runtime.do("A.sync", 1)

    loop_thread, async_thread, sync_thread = run(main())
    assert async_thread == loop_thread
    assert sync_thread != loop_thread


def test_sqlite_calls_run_on_the_loop_only_when_they_cannot_wait(tmp_path: Path) -> None:
    """A SQLite call runs on the loop's thread when nothing makes it wait (no thread hop);
    while another connection holds the write lock, the write is made off the loop and waits
    there, the loop stays free, and the step completes once the lock is released. With
    durability="full" (an fsync per outcome) every call is made off the loop; in-memory
    storage always runs on it."""
    threads: dict[str, list[int]] = {"normal": [], "full": [], "memory": []}

    def spy(kind: str, storage: Any) -> Any:
        original = storage.set

        def set(record: Any) -> Any:
            threads[kind].append(threading.get_ident())
            return original(record)

        storage.set = set
        return storage

    async def main() -> tuple[int, int]:
        loop_thread = threading.get_ident()
        normal = create_async_test_runtime(
            storage=spy("normal", SqliteStepStorage(tmp_path / "n.db")))
        full = create_async_test_runtime(
            storage=spy("full", SqliteStepStorage(tmp_path / "f.db", durability="full")))
        memory = create_async_test_runtime()
        spy("memory", memory.storage)
        for runtime in (normal, full, memory):
            runtime.register("A.b", lambda data: data)
            assert await runtime.do("A.b", 1) == 1
        assert set(threads["normal"]) == {loop_thread}
        assert threads["full"] and loop_thread not in threads["full"]
        assert set(threads["memory"]) == {loop_thread}
        # Another connection holds the write lock: the marker cannot be written at once.
        blocker = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        threads["normal"].clear()
        step = asyncio.ensure_future(normal.do("A.b", 2))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the write waits off it
            await asyncio.sleep(0.01)
            ticks += 1
        assert not step.done()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await step == 2 and ticks == 20
        for runtime in (normal, full):
            await runtime.aclose()
        return loop_thread, threads["normal"]

    loop_thread, writers = run(main())
    # The marker was tried on the loop (busy: nothing written), then written off it, waiting;
    # the outcome, with nothing in the way, on the loop again.
    assert writers[0] == loop_thread and writers[1] != loop_thread
    assert writers[-1] == loop_thread


def test_gather_of_identical_calls_gets_stable_ids_in_argument_order() -> None:
    """Concurrent identical calls are numbered in the order do() was called; a rerun replays
    each one in place, even when the calls finish in another order."""
    storage = InMemoryStepStorage()

    async def first_run() -> list[Any]:
        runtime = create_async_test_runtime(storage=storage)
        order = iter(["a", "b", "c"])

        async def charge(amount: int) -> str:
            label = next(order)
            await asyncio.sleep(0.001 if label == "a" else 0)  # "a" finishes last
            return label

        runtime.register("Pay.charge", charge)
        return list(await asyncio.gather(*(runtime.do("Pay.charge", 10) for _ in range(3))))

    async def rerun() -> list[Any]:
        runtime = create_async_test_runtime(storage=storage)
        runtime.register("Pay.charge", lambda amount: pytest.fail("must replay"))
        calls = [runtime.do("Pay.charge", 10) for _ in range(3)]
        return list(await asyncio.gather(*reversed(calls)))[::-1]

    assert run(first_run()) == ["a", "b", "c"]
    ids = [record.step_id for record in storage.list()]
    assert sorted(ids) == sorted([ids[0].split("#")[0] + suffix for suffix in ("", "#1", "#2")])
    assert run(rerun()) == ["a", "b", "c"]


def test_timeout_cancels_the_attempt_task_and_retries() -> None:
    """An async attempt past its timeout is cancelled and fails with StepTimeoutError."""
    cancelled: list[bool] = []
    errors: list[BaseException] = []

    async def main() -> Any:
        runtime = create_async_test_runtime(
            # A generous limit: the second attempt must finish well inside it even on a loaded
            # machine; the first one waits forever and is cut off when it passes.
            retry_policy=RetryPolicy(max_attempts=2, initial_delay=0, timeout=0.5),
            on_step_error=lambda sid, error, n: errors.append(error),
        )

        async def slow_then_fast(data: Any) -> str:
            step = current_step()
            assert step is not None
            if step.attempt == 1:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(True)
                    raise
            return "second attempt"

        runtime.register("A.b", slow_then_fast)
        return await runtime.do("A.b", 1)

    assert run(main()) == "second attempt"
    assert cancelled == [True]
    assert isinstance(errors[0], StepTimeoutError)


def test_a_handlers_own_timeout_error_is_not_mistaken_for_the_deadline() -> None:
    """A TimeoutError raised by the handler is its error, reported as such."""
    errors: list[BaseException] = []

    async def main() -> None:
        runtime = create_async_test_runtime(
            retry_policy=RetryPolicy(max_attempts=1, timeout=30),
            on_step_error=lambda sid, error, n: errors.append(error))

        async def upstream(data: Any) -> None:
            raise TimeoutError("the upstream API timed out")

        runtime.register("A.b", upstream)
        with pytest.raises(WorkflowStepError):
            await runtime.do("A.b", 1)

    run(main())
    assert type(errors[0]) is TimeoutError


def test_cancelling_the_caller_propagates_and_leaves_the_step_resumable() -> None:
    """CancelledError is not retried or recorded as failure; the next call continues."""
    storage = InMemoryStepStorage()
    started = asyncio.Event

    async def first() -> None:
        runtime = create_async_test_runtime(storage=storage,
                                            retry_policy=RetryPolicy(max_attempts=3))
        entered = started()

        async def forever(data: Any) -> None:
            entered.set()
            await asyncio.Event().wait()

        runtime.register("A.b", forever)
        task = asyncio.ensure_future(runtime.do("A.b", 1))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(first())
    (record,) = storage.list()
    assert record.status is StepStatus.RUNNING and record.attempts == 1

    async def second() -> tuple[Any, int]:
        runtime = create_async_test_runtime(storage=storage,
                                            retry_policy=RetryPolicy(max_attempts=3))
        seen: list[int] = []

        async def works(data: Any) -> str:
            step = current_step()
            assert step is not None
            seen.append(step.attempt)
            return "resumed"

        runtime.register("A.b", works)
        return await runtime.do("A.b", 1), seen[0]

    assert run(second()) == ("resumed", 2)


def test_cancelling_a_timed_attempt_cancels_its_task_too() -> None:
    """With a timeout, cancelling the caller also cancels the attempt's own task."""
    cancelled: list[bool] = []

    async def main() -> None:
        runtime = create_async_test_runtime(retry_policy=RetryPolicy(timeout=60))
        entered = asyncio.Event()

        async def forever(data: Any) -> None:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        runtime.register("A.b", forever)
        task = asyncio.ensure_future(runtime.do("A.b", 1))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    run(main())
    assert cancelled == [True]


def test_nested_async_steps_replay_within_a_retried_parent() -> None:
    """Children awaited by an async parent are scoped to its attempt and replay on retry."""
    storage = InMemoryStepStorage()
    child_runs: list[Any] = []

    async def main() -> Any:
        runtime = create_async_test_runtime(
            storage=storage, retry_policy=RetryPolicy(max_attempts=2, initial_delay=0))

        async def child(data: Any) -> str:
            child_runs.append(data)
            return f"child {data}"

        async def parent(data: Any) -> list[str]:
            step = current_step()
            assert step is not None
            results = list(await asyncio.gather(runtime.do("Child.run", 1),
                                                runtime.do("Child.run", 2)))
            if step.attempt == 1:
                raise ConnectionError("parent fails after its children")
            return results

        runtime.register("Child.run", child)
        runtime.register("Parent.run", parent)
        return await runtime.do("Parent.run", None)

    assert run(main()) == ["child 1", "child 2"]
    assert sorted(child_runs) == [1, 2]


def test_fake_clock_drives_async_retries_without_waiting() -> None:
    """FakeClock's synchronous sleep works in the async runtime and records the schedule."""
    clock = FakeClock()

    async def main() -> Any:
        runtime = create_async_test_runtime(
            clock=clock, retry_policy=RetryPolicy(max_attempts=4, initial_delay=2, jitter=0))
        failures = iter([True, True, False])

        async def flaky(data: Any) -> str:
            if next(failures):
                raise ConnectionError("again")
            return "ok"

        runtime.register("A.b", flaky)
        return await runtime.do("A.b", 1)

    assert run(main()) == "ok"
    assert clock.sleeps == [2.0, 4.0]


def test_async_system_clock_sleeps_without_blocking() -> None:
    """AsyncSystemClock.sleep returns an awaitable; now() is wall-clock time."""
    clock = AsyncSystemClock()

    async def main() -> None:
        awaitable = clock.sleep(0)
        assert asyncio.iscoroutine(awaitable)
        await awaitable

    run(main())
    assert clock.now() > 1e9


def test_send_from_a_sync_subscriber_thread_is_delivered_and_flushed() -> None:
    """A plain subscriber (in a worker thread) that sends again is delivered and awaited."""

    async def main() -> list[str]:
        runtime = create_async_test_runtime()
        got: list[str] = []
        runtime.on("First.x", lambda data: runtime.send("Second.x", data + "!"))
        runtime.on("Second.x", got.append)
        runtime.send("First.x", "hi")
        assert await runtime.flush(timeout=10)
        return got

    assert run(main()) == ["hi!"]


def test_send_returns_before_a_slow_async_subscriber_and_flush_waits() -> None:
    """send() schedules tasks and returns; flush times out, then waits them out."""

    async def main() -> None:
        runtime = create_async_test_runtime()
        release = asyncio.Event()
        finished: list[bool] = []

        async def slow(data: Any) -> None:
            await release.wait()
            finished.append(True)

        runtime.on("Job.started", slow)
        assert runtime.send("Job.started", None) is None
        assert finished == []
        assert await runtime.flush(timeout=0.01) is False
        release.set()
        assert await runtime.flush(timeout=10) is True
        assert finished == [True]

    run(main())


def test_send_without_a_running_loop_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Outside any loop (and before the runtime ever ran on one), send logs and drops."""
    runtime = AsyncDurableWorkflowRuntime()
    runtime.on("A.*", print)
    runtime.send("A.x", 1)
    assert "without a running event loop" in caplog.text


def test_async_with_closes_storage(tmp_path: Path) -> None:
    """Leaving ``async with`` waits for deliveries and closes the storage."""
    from durably import StorageError

    storage = SqliteStepStorage(tmp_path / "steps.db")
    got: list[int] = []

    async def main() -> None:
        async with AsyncDurableWorkflowRuntime(storage=storage) as runtime:
            runtime.on("A.*", got.append)
            runtime.send("A.x", 1)

    run(main())
    assert got == [1]
    with pytest.raises(StorageError, match="closed"):
        storage.get("x")


def test_proxy_calls_are_awaitable_in_every_mode() -> None:
    """p.A(ctx).b(x) returns an awaitable for do, try and send."""

    async def main() -> list[Any]:
        runtime = create_async_test_runtime()
        runtime.register("A.b", lambda context, x: context + x)
        results = [await runtime.proxy().A(1).b(2), await runtime.proxy("try").A(3).b(4),
                   await runtime.proxy("send").A(5).b(6)]
        assert await runtime.flush(10)
        return results

    assert run(main()) == [3, 7, None]


class _Batches(SqliteStepStorage):
    """SQLite that logs the size of every batch the group commit makes."""

    batches: list[int]

    def write_steps(self, writes: Any) -> Any:
        self.batches.append(len(writes))
        return super().write_steps(writes)


def test_concurrent_steps_share_commits(tmp_path: Path) -> None:
    """Steps awaited together (asyncio.gather) whose handlers really wait write their
    markers in one transaction and their outcomes in another; steps awaited one after
    another are written one at a time, at once."""

    async def main() -> tuple[list[int], list[int], list[Any]]:
        storage = _Batches(tmp_path / "steps.db")
        storage.batches = []
        runtime = AsyncDurableWorkflowRuntime(storage=storage, workflow_id="fan")

        async def fetch(n: int) -> int:
            await asyncio.sleep(0)  # I/O: the other steps run meanwhile
            return n * n

        runtime.register("Fan.fetch", fetch)
        results = await asyncio.gather(*[runtime.do("Fan.fetch", n) for n in range(10)])
        together = list(storage.batches)
        storage.batches.clear()
        for n in range(10, 13):
            results.append(await runtime.do("Fan.fetch", n))
        records = storage.list(workflow_id="fan")
        await runtime.aclose()
        return together, storage.batches, [results, records]

    together, alone, (results, records) = run(main())
    assert results == [n * n for n in range(13)]
    assert sum(together) == 20 and len(together) <= 3, together  # 20 writes, 2-3 commits
    assert alone == []
    assert [r.status for r in records] == [StepStatus.COMPLETED] * 13
    assert [r.result for r in records] == [str(n * n) for n in range(13)]


def test_concurrent_runs_share_fenced_commits(tmp_path: Path) -> None:
    """Runs executing at once batch their fenced step writes and still each get their own
    result; a replay afterwards finds every step."""

    async def main() -> tuple[list[Any], list[int]]:
        storage = _Batches(tmp_path / "steps.db")
        storage.batches = []
        runtime = AsyncDurableWorkflowRuntime(storage=storage, workflow_id="runs")

        async def charge(n: int) -> str:
            await asyncio.sleep(0)
            return f"paid-{n}"

        runtime.register("Shop.charge", charge)

        @runtime.workflow("Shop.order")
        async def order(n: int) -> list[str]:
            return [await runtime.do("Shop.charge", n), await runtime.do("Shop.charge", -n)]

        results = await asyncio.gather(*[order.run(n, run_id=f"o{n}") for n in range(1, 6)])
        replayed = await order.run(3, run_id="o3")
        await runtime.aclose()
        return [*results, replayed], storage.batches

    results, batches = run(main())
    assert results == [[f"paid-{n}", f"paid--{n}"] for n in range(1, 6)] + [["paid-3",
                                                                              "paid--3"]]
    assert batches and max(batches) > 1, batches


def test_a_subclass_that_changes_set_is_written_one_record_at_a_time(tmp_path: Path) -> None:
    """A storage subclass that overrides set() (to encrypt results, say) sees every write:
    the group commit never bypasses it with a batch."""
    seen: list[str] = []

    class Sealed(SqliteStepStorage):
        def set(self, record: Any) -> Any:
            seen.append(record.status.value)
            return super().set(record)

    async def main() -> list[int]:
        runtime = AsyncDurableWorkflowRuntime(storage=Sealed(tmp_path / "steps.db"),
                                              workflow_id="sealed")

        async def slow(n: int) -> int:
            await asyncio.sleep(0)
            return n

        runtime.register("S.slow", slow)
        results = await asyncio.gather(*[runtime.do("S.slow", n) for n in range(5)])
        await runtime.aclose()
        return results

    assert run(main()) == list(range(5))
    assert sorted(seen) == ["completed"] * 5 + ["running"] * 5
