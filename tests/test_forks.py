"""Forking a run from a step, restarting one in place, deleting one (DESIGN.md §11's API)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from durably import (
    InMemoryStepStorage,
    RunConflictError,
    RunNotFoundError,
    RunStatus,
    StepNotFoundError,
    StepStatus,
)
from durably.testing import FakeClock, create_async_test_runtime, create_test_runtime

T0 = 50_000.0


class Declined(Exception):
    """The card was declined."""


def shop(storage: Any, clock: FakeClock, ran: Counter[str], cards: dict[int, str]) -> Any:
    """A runtime whose workflow reserves, charges (failing while ``cards`` says so), waits
    for approval, and ships. Each step advances the clock a little, as real work would."""
    runtime = create_test_runtime(storage=storage, clock=clock, suspend_after=0)

    @runtime.step("Order.reserve")
    def reserve(n: int) -> str:
        ran["reserve"] += 1
        clock.advance(1)
        return f"shelf-{n}"

    @runtime.step("Order.charge")
    def charge(n: int) -> int:
        ran["charge"] += 1
        clock.advance(1)
        if cards.get(n) == "declined":
            raise Declined(f"order {n}")
        return 10 * n

    @runtime.step("Order.ship")
    def ship(n: int) -> str:
        ran["ship"] += 1
        clock.advance(1)
        return f"parcel-{n}"

    @runtime.workflow("Order.process")
    def process(n: int) -> list[Any]:
        shelf = reserve(n)
        paid = charge(n)
        approval = runtime.wait_for_event("approved")
        return [shelf, paid, approval, ship(n)]

    return runtime


def begin(runtime: Any, workflow: str, value: Any, run_id: str) -> Any:
    """Start a run and execute it in this thread (a runtime that has not registered the
    workflow creates it PENDING; run_due() then runs it here, deterministically)."""
    create_test_runtime(storage=runtime._storage, clock=runtime._clock).start(
        workflow, value, run_id=run_id)
    runtime.run_due()
    return runtime.get_run(run_id)


def test_a_fork_from_the_failed_step_keeps_the_steps_before_and_leaves_the_source() -> None:
    storage, clock, ran = InMemoryStepStorage(), FakeClock(start=T0), Counter[str]()
    cards = {1: "declined"}
    runtime = shop(storage, clock, ran, cards)
    source = begin(runtime, "Order.process", 1, "o1")
    assert source.status().status is RunStatus.FAILED
    before = (source.status(), source.steps())
    cards.clear()  # the card was fixed
    fork = source.fork("last-failure", new_run_id="o1-retry")
    assert fork.run_id == "o1-retry"
    record = fork.status()
    assert (record.status, record.forked_from, record.workflow, record.input) == (
        RunStatus.PENDING, "o1", "Order.process", before[0].input)
    assert [s.action for s in fork.steps()] == ["Order.reserve"]  # the copy, nothing else
    runtime.send_event("o1-retry", "approved", "ok")
    assert runtime.run_due() == 1
    assert fork.result(timeout=5) == ["shelf-1", 10, "ok", "parcel-1"]
    assert ran == {"reserve": 1, "charge": 2, "ship": 1}  # reserve was not run again
    assert (source.status(), source.steps()) == before  # the source is unchanged


@pytest.mark.parametrize("naming", ["full", "local", "short", "action", "action#1"])
def test_every_form_of_from_step_names_the_same_step(naming: str) -> None:
    storage, clock, ran = InMemoryStepStorage(), FakeClock(start=T0), Counter[str]()
    runtime = shop(storage, clock, ran, {})
    source = begin(runtime, "Order.process", 2, "o2")
    charge = next(s for s in source.steps() if s.action == "Order.charge")
    local = charge.step_id.split("/", 1)[1]
    name = {"full": charge.step_id, "local": local, "short": local[:15],
            "action": "Order.charge", "action#1": "Order.charge#1"}[naming]
    fork = runtime.fork("o2", name)
    assert fork.run_id != "o2"
    assert [s.step_id.split("/", 1)[1] for s in fork.steps()] == [
        source.steps()[0].step_id.split("/", 1)[1]]


def test_unknown_steps_runs_and_taken_ids_are_refused_with_nothing_written() -> None:
    storage, clock, ran = InMemoryStepStorage(), FakeClock(start=T0), Counter[str]()
    runtime = shop(storage, clock, ran, {})
    begin(runtime, "Order.process", 3, "o3")
    begin(runtime, "Order.process", 4, "o4")
    with pytest.raises(StepNotFoundError) as error:
        runtime.fork("o3", "Order.refund")
    assert error.value.run_id == "o3" and error.value.step == "Order.refund"
    with pytest.raises(StepNotFoundError):
        runtime.fork("o3", "Order.charge#2")  # only one charge
    with pytest.raises(StepNotFoundError, match="no step of it FAILED"):
        runtime.fork("o3", "last-failure")
    with pytest.raises(StepNotFoundError, match="several"):
        runtime.fork("o3", "s1_")  # every local id starts so
    with pytest.raises(RunNotFoundError):
        runtime.fork("nope", "Order.charge")
    with pytest.raises(RunConflictError):
        runtime.fork("o3", "Order.charge", new_run_id="o4")
    assert [run.run_id for run in runtime.list_runs()] == ["o3", "o4"]


def test_a_forks_inbox_keeps_the_events_and_gives_back_those_of_steps_not_kept() -> None:
    storage, clock, ran = InMemoryStepStorage(), FakeClock(start=T0), Counter[str]()
    runtime = shop(storage, clock, ran, {})
    runtime.start("Order.park", None, run_id="unused")  # keeps ids apart from the events'
    source = begin(runtime, "Order.process", 5, "o5")
    runtime.send_event("o5", "approved", "first", key="k1")
    runtime.run_due()
    assert source.result(timeout=5)[2] == "first"
    fork = runtime.fork("o5", "Order.ship")  # keeps reserve, charge and the wait
    (event,) = fork.events()
    (wait,) = [s for s in fork.steps() if s.action == "durably.wait:approved"]
    assert (event.key, event.consumed_by) == ("k1", wait.step_id)
    again = runtime.fork("o5", "durably.wait:approved")  # the wait runs again: its event back
    (event,) = again.events()
    assert event.consumed_by is None and event.key == "k1"
    assert runtime.send_event(again.run_id, "approved", "dup", key="k1") is False
    runtime.run_due()
    assert again.result(timeout=5)[2] == "first"


def test_a_fork_from_a_child_step_does_not_keep_its_completed_parent() -> None:
    storage, clock = InMemoryStepStorage(), FakeClock(start=T0)
    runtime = create_test_runtime(storage=storage, clock=clock)
    calls: Counter[str] = Counter()

    @runtime.step("Box.inner")
    def inner(n: int) -> int:
        calls["inner"] += 1
        clock.advance(1)
        return n

    @runtime.step("Box.outer")
    def outer(n: int) -> int:
        calls["outer"] += 1
        clock.advance(1)
        return inner(n) + 1

    @runtime.workflow("Box.flow")
    def flow(n: int) -> int:
        return outer(n)

    source = begin(runtime, "Box.flow", 1, "b1")
    assert source.result(timeout=5) == 2
    fork = runtime.fork("b1", "Box.inner")
    assert fork.steps() == []  # the parent completed after its child started: not kept
    runtime.run_due()
    assert fork.result(timeout=5) == 2 and calls == {"outer": 2, "inner": 2}


def test_restart_executes_again_from_a_step_in_place_and_gives_back_events() -> None:
    storage, clock, ran = InMemoryStepStorage(), FakeClock(start=T0), Counter[str]()
    runtime = shop(storage, clock, ran, {})
    handle = begin(runtime, "Order.process", 6, "o6")
    runtime.send_event("o6", "approved", "yes", key="k")
    runtime.run_due()
    assert handle.result(timeout=5) == ["shelf-6", 60, "yes", "parcel-6"]
    fence = handle.status().fence
    handle.restart("Order.charge")
    record = handle.status()
    assert (record.status, record.result, record.recovery_count) == (
        RunStatus.PENDING, None, 0)
    assert record.fence > fence
    assert [s.action for s in handle.steps()] == ["Order.reserve"]
    assert [e.consumed_by for e in handle.events()] == [None]
    runtime.run_due()
    assert handle.result(timeout=5) == ["shelf-6", 60, "yes", "parcel-6"]
    assert ran == {"reserve": 1, "charge": 2, "ship": 2}
    assert [s.status for s in handle.steps()] == [StepStatus.COMPLETED] * 4


def test_delete_removes_the_run_its_steps_and_inbox() -> None:
    storage, clock, ran = InMemoryStepStorage(), FakeClock(start=T0), Counter[str]()
    runtime = shop(storage, clock, ran, {})
    handle = begin(runtime, "Order.process", 7, "o7")
    runtime.send_event("o7", "approved", "x")
    assert handle.delete() is True and handle.delete() is False
    assert storage.list(workflow_id="o7") == [] and storage.list_events("o7") == []
    with pytest.raises(RunNotFoundError):
        handle.status()


def test_async_fork_restart_and_delete() -> None:
    async def main() -> None:
        storage, clock = InMemoryStepStorage(), FakeClock(start=T0)
        runtime = create_async_test_runtime(storage=storage, clock=clock)
        ran: Counter[str] = Counter()

        @runtime.step("Job.a")
        async def a(n: int) -> int:
            ran["a"] += 1
            clock.advance(1)
            return n

        @runtime.step("Job.b")
        async def b(n: int) -> int:
            ran["b"] += 1
            clock.advance(1)
            return n * 2

        @runtime.workflow("Job.flow")
        async def flow(n: int) -> int:
            return await a(n) + await b(n)

        source = await flow.start(3, run_id="j1")
        assert await source.result(timeout=5) == 9
        fork = await source.fork("Job.b", new_run_id="j2")
        await source.restart("Job.b")
        assert await runtime.run_due() == 2
        assert await fork.result(timeout=5) == 9 and await source.result(timeout=5) == 9
        assert ran == {"a": 1, "b": 3}
        assert await fork.delete() is True
        await runtime.aclose()

    asyncio.run(main())
