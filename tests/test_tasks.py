"""The asyncio runtime's group commit (``_tasks.GroupCommit``), on a scripted storage: which
writes share a batch, who gets which answer, and what happens when a batch fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from durably import OwnershipLost, StepRecord, StepStatus, StorageError
from durably._storage import StepWrite
from durably._tasks import GroupCommit


def _record(step_id: str) -> StepRecord:
    return StepRecord(step_id=step_id, workflow_id="w", action="A.b",
                      status=StepStatus.RUNNING, attempts=1)


class Script:
    """A storage whose answers the test decides; it logs every call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.now_possible = True
        self.batch_error: Exception | None = None
        self.refused: set[str] = set()   # step ids whose write raises OwnershipLost

    def one(self, write: StepWrite) -> StepRecord:
        record = write[0]
        self.calls.append(("one", [record.step_id]))
        if record.step_id in self.refused:
            raise OwnershipLost("r", 1)
        return record

    def many(self, writes: list[StepWrite]) -> list[StepRecord | BaseException]:
        self.calls.append(("many", [record.step_id for record, _, _ in writes]))
        if self.batch_error is not None:
            raise self.batch_error
        return [OwnershipLost("r", 1) if record.step_id in self.refused else record
                for record, _, _ in writes]

    def try_now(self, call: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        if not self.now_possible:
            return False, None
        return True, call(*args)

    async def off_loop(self, call: Callable[..., Any], *args: Any) -> Any:
        await asyncio.sleep(0)  # a thread's round trip: other tasks run meanwhile
        return call(*args)

    def group(self) -> GroupCommit:
        return GroupCommit(self.one, self.many, self.try_now, self.off_loop)


async def _write(group: GroupCommit, step_id: str) -> StepRecord | BaseException:
    try:
        return await group.write((_record(step_id), None, 0))
    except (Exception, OwnershipLost) as error:
        return error


def test_writes_of_one_turn_share_one_batch() -> None:
    """Tasks that write in the same turn of the loop are committed together; a lone write
    later is made by itself."""
    script = Script()

    async def main() -> list[Any]:
        group = script.group()
        together = await asyncio.gather(*[_write(group, f"s{n}") for n in range(4)])
        alone = await _write(group, "last")
        return [*together, alone]

    results = asyncio.run(main())
    assert [r.step_id for r in results] == ["s0", "s1", "s2", "s3", "last"]
    assert script.calls == [("many", ["s0", "s1", "s2", "s3"]), ("one", ["last"])]


def test_each_writer_gets_its_own_answer() -> None:
    """A write the batch reports as refused raises in its own writer only."""
    script = Script()
    script.refused = {"s1"}

    async def main() -> list[Any]:
        group = script.group()
        return await asyncio.gather(*[_write(group, f"s{n}") for n in range(3)])

    first, refused, third = asyncio.run(main())
    assert isinstance(refused, OwnershipLost)
    assert first.step_id == "s0" and third.step_id == "s2"


def test_a_lone_write_that_is_refused_raises_in_its_writer() -> None:
    """OwnershipLost from a batch of one reaches its writer; it is not a failed flush."""
    script = Script()
    script.refused = {"s0"}

    async def main() -> Any:
        return await _write(script.group(), "s0")

    assert isinstance(asyncio.run(main()), OwnershipLost)
    assert script.calls == [("one", ["s0"])]


def test_a_failed_batch_is_made_again_one_write_at_a_time() -> None:
    """A database error for the whole batch: each write is made alone, and answered."""
    script = Script()
    script.batch_error = StorageError("disk I/O error")

    async def main() -> list[Any]:
        group = script.group()
        return await asyncio.gather(*[_write(group, f"s{n}") for n in range(3)])

    results = asyncio.run(main())
    assert [r.step_id for r in results] == ["s0", "s1", "s2"]
    assert script.calls == [("many", ["s0", "s1", "s2"]), ("one", ["s0"]), ("one", ["s1"]),
                            ("one", ["s2"])]


def test_a_lone_writes_error_is_its_own() -> None:
    """A lone write's StorageError is raised in its writer, with nothing made again."""
    script = Script()

    def broken(write: StepWrite) -> StepRecord:
        script.calls.append(("one", [write[0].step_id]))
        raise StorageError("database is full")

    async def main() -> Any:
        group = GroupCommit(broken, script.many, script.try_now, script.off_loop)
        return await _write(group, "s0")

    error = asyncio.run(main())
    assert isinstance(error, StorageError) and "full" in str(error)
    assert script.calls == [("one", ["s0"])]


def test_writes_made_while_a_batch_is_off_the_loop_go_in_the_next_batch() -> None:
    """When the storage would wait, the batch goes to a thread; writes that arrive
    meanwhile wait for it and then share the next batch."""
    script = Script()
    script.now_possible = False

    async def main() -> list[Any]:
        group = script.group()
        first = [asyncio.ensure_future(_write(group, f"a{n}")) for n in range(2)]
        for _ in range(2):  # the writers queue their writes; then the flush runs
            await asyncio.sleep(0)
        assert group.busy and group.has_company()
        second = [asyncio.ensure_future(_write(group, f"b{n}")) for n in range(3)]
        return await asyncio.gather(*first, *second)

    results = asyncio.run(main())
    assert [r.step_id for r in results] == ["a0", "a1", "b0", "b1", "b2"]
    assert script.calls == [("many", ["a0", "a1"]), ("many", ["b0", "b1", "b2"])]


def test_a_cancelled_writers_write_is_still_made() -> None:
    """Cancelling a writer does not take its write out of the batch (as a cancelled
    thread-pool write is made all the same); the others get their answers."""
    script = Script()

    async def main() -> list[Any]:
        group = script.group()
        tasks = [asyncio.ensure_future(_write(group, f"s{n}")) for n in range(3)]
        await asyncio.sleep(0)  # all three are waiting on the batch
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, cancelled, third = asyncio.run(main())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert first.step_id == "s0" and third.step_id == "s2"
    assert script.calls == [("many", ["s0", "s1", "s2"])]


@pytest.mark.parametrize("steps, busy, company", [(0, False, False), (1, False, False),
                                                  (2, False, True), (1, True, True)])
def test_company_is_another_step_or_a_batch_on_its_way(steps: int, busy: bool,
                                                       company: bool) -> None:
    """A write goes through the group only when another step is in progress or a batch is
    being committed off the loop; otherwise it is made at once."""
    group = Script().group()
    group.steps, group.busy = steps, busy
    assert group.has_company() is company


def test_a_new_loop_is_not_held_up_by_what_an_old_one_left() -> None:
    """A batch that an event loop never finished (the loop was closed under it) does not
    make the writes of the next loop wait forever: the group starts afresh on a new loop."""
    script = Script()
    group = script.group()
    script.now_possible = False
    forever: list[asyncio.Future[None]] = []
    writers: list[asyncio.Future[Any]] = []

    async def hang(call: Callable[..., Any], *args: Any) -> Any:
        forever.append(asyncio.get_running_loop().create_future())
        await forever[-1]

    group._off_loop = hang

    async def stranded() -> None:
        writers.append(asyncio.ensure_future(group.write((_record("old"), None, 0))))
        for _ in range(3):
            await asyncio.sleep(0)
        assert group.busy

    old = asyncio.new_event_loop()
    old.set_exception_handler(lambda loop, context: None)  # its stranded task, when collected
    old.run_until_complete(stranded())
    old.close()

    script.now_possible = True

    async def later() -> StepRecord:
        return await asyncio.wait_for(group.write((_record("new"), None, 0)), timeout=10)

    assert asyncio.run(later()).step_id == "new"
    assert not group.busy
