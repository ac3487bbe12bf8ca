"""Durable waiting: sleeps, events and published values (both flavours where the API is the
same), on a FakeClock with suspension and time skipping."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from durably import (
    ConfigurationError,
    InMemoryStepStorage,
    RunClosedError,
    RunNotFoundError,
    RunStatus,
    SerializationError,
    SqliteStepStorage,
    StepStatus,
    SystemClock,
    WaitTimeoutError,
)
from durably.testing import (
    FakeClock,
    create_async_test_runtime,
    create_test_runtime,
    run_until_idle,
)

T0 = 10_000.0


def sleeper(storage: Any, clock: FakeClock, seconds: float, ran: list[str]) -> Any:
    """A runtime whose workflow runs a step, sleeps ``seconds``, then runs another."""
    runtime = create_test_runtime(storage=storage, clock=clock, suspend_after=0)

    @runtime.step("Mail.first")
    def first(n: int) -> str:
        ran.append("first")
        return "one"

    @runtime.step("Mail.second")
    def second(n: int) -> str:
        ran.append("second")
        return "two"

    @runtime.workflow("Mail.drip")
    def drip(n: int) -> list[str]:
        a = first(n)
        runtime.sleep(seconds, name="cool")
        return [a, second(n)]

    return runtime, drip


# ------------------------------------------------------------------ check 1: sleeps


def test_a_long_sleep_suspends_and_resumes_exactly_at_its_recorded_wake_time(
        tmp_path: Path) -> None:
    """sleep(3600) suspends (lease released, wake_at t0+3600); a new runtime resumes nothing
    at t0+3599 and resumes at t0+3600 without re-running earlier steps, even though its code
    now says 7200."""
    storage = SqliteStepStorage(tmp_path / "s.db")
    clock = FakeClock(start=T0)
    ran: list[str] = []
    runtime, drip = sleeper(storage, clock, 3600, ran)
    handle = drip.start(1, run_id="d1")
    runtime._family.settle(10)
    run = handle.status()
    assert (run.status, run.wake_at, run.owner, run.lease_until) == (
        RunStatus.SUSPENDED, T0 + 3600, None, None)
    assert ran == ["first"]
    later, _ = sleeper(storage, clock, 7200, ran)  # a deploy changed the duration
    clock.advance(3599)
    assert later.run_due() == 0
    clock.advance(1)
    assert later.run_due() == 1
    assert later.get_run("d1").result(timeout=5) == ["one", "two"]
    assert ran == ["first", "second"]
    sleep_step = next(s for s in storage.list(workflow_id="d1")
                      if s.action == "durably.sleep:cool")
    assert sleep_step.status is StepStatus.COMPLETED and sleep_step.next_attempt_at == T0 + 3600
    storage.close()


def test_a_short_sleep_waits_inline_and_a_due_one_returns_at_once() -> None:
    """Within suspend_after a sleep happens inline (the run keeps its lease: it never
    suspends); sleep_until a past time returns at once; the id hashes the name, not the
    duration."""
    clock = FakeClock(start=T0)
    runtime = create_test_runtime(clock=clock)

    @runtime.workflow("Nap.flow")
    def nap(n: int) -> float:
        runtime.sleep(dt.timedelta(seconds=5))
        runtime.sleep_until(T0 - 100)
        runtime.sleep_until(dt.datetime.fromtimestamp(T0 + 10, dt.timezone.utc), name="b")
        return clock.now()

    assert nap.run(1, run_id="n1") == T0 + 10
    assert clock.sleeps == [5, 5]
    actions = [s.action for s in runtime.get_run("n1").steps()]
    assert actions == ["durably.sleep:sleep", "durably.sleep:sleep", "durably.sleep:b"]
    ids = [s.step_id for s in runtime.get_run("n1").steps()]
    assert ids[1] == ids[0] + "#1"  # the second "sleep" is its next occurrence


def test_run_until_idle_skips_time_and_reports_runs_left_waiting() -> None:
    """Time skipping: every due run runs and the clock jumps to the next wake time; runs
    waiting for an event are returned."""
    clock = FakeClock(start=T0)
    ran: list[str] = []
    runtime, drip = sleeper(InMemoryStepStorage(), clock, 86400 * 7, ran)

    @runtime.workflow("Ask.flow")
    def ask(n: int) -> Any:
        return runtime.wait_for_event("answer")

    drip.start(1, run_id="d1")
    ask.start(1, run_id="a1")
    left = run_until_idle(runtime, clock, max_time=86400 * 30)
    assert clock.now() == T0 + 86400 * 7
    assert runtime.get_run("d1").result(timeout=5) == ["one", "two"]
    assert [(run.run_id, run.waiting_for) for run in left] == [("a1", "answer")]


# ------------------------------------------------------------------ checks 2-6: events


def approvals(storage: Any, clock: FakeClock, *, suspend_after: float = 0,
              timeout: float | None = None, waits: int = 1) -> Any:
    runtime = create_test_runtime(storage=storage, clock=clock, suspend_after=suspend_after)

    @runtime.workflow("Order.approve")
    def approve(n: int) -> list[Any]:
        return [runtime.wait_for_event("approved", timeout=timeout) for _ in range(waits)]

    return runtime, approve


def test_an_event_sent_before_the_wait_is_returned_at_once_and_consumed() -> None:
    """Check 2: events wait in the inbox; the wait takes it at once; the inbox shows it
    consumed by the wait step."""
    storage, clock = InMemoryStepStorage(), FakeClock(start=T0)
    runtime, _ = approvals(storage, clock)
    runtime.start("Order.park", 0, run_id="x")  # an unknown workflow: the run just exists
    submitter = create_test_runtime(storage=storage, clock=clock)
    handle = submitter.start("Order.approve", 1, run_id="o1")  # PENDING: not registered here
    assert submitter.send_event("o1", "approved", {"by": "ann"}) is True
    assert runtime.run_due() == 1
    assert handle.result(timeout=5) == [{"by": "ann"}]
    (event,) = handle.events()
    wait = next(s for s in handle.steps() if s.action == "durably.wait:approved")
    assert event.consumed_by == wait.step_id and event.consumed_at == T0


def test_waits_consume_events_in_order_and_a_replay_consumes_nothing_new(
        tmp_path: Path) -> None:
    """Check 3: two waits and three events: the first two are consumed in order, the third
    left; a crash after the first consumption replays its payload and takes nothing new."""
    storage, clock = SqliteStepStorage(tmp_path / "s.db"), FakeClock(start=T0)
    runtime = create_test_runtime(storage=storage, clock=clock, suspend_after=0)
    crash = [True]

    @runtime.workflow("Order.twice")
    def twice(n: int) -> list[Any]:
        first = runtime.wait_for_event("approved")
        if crash[0]:
            crash[0] = False
            raise KeyboardInterrupt  # the process dies after the first consumption
        return [first, runtime.wait_for_event("approved")]

    handle = twice.start(1, run_id="t1")
    runtime._family.settle(10)
    for n in (1, 2, 3):
        runtime.send_event("t1", "approved", n)
    with pytest.raises(KeyboardInterrupt):
        runtime.run_due()
    assert [e.consumed_by is not None for e in handle.events()] == [True, False, False]
    again = create_test_runtime(storage=storage, clock=FakeClock(start=T0 + 1000),
                                suspend_after=0)
    again.workflow("Order.twice")(twice.__wrapped__)  # type: ignore[attr-defined]
    assert again.run_due() == 1
    assert again.get_run("t1").result(timeout=5) == [1, 2]
    assert [e.consumed_by is not None for e in handle.events()] == [True, True, False]
    storage.close()


def test_a_repeated_key_stores_one_event() -> None:
    """Check 4: send_event with one key three times: True, False, False; one event stored."""
    runtime = create_test_runtime()
    runtime.start("Hook.target", None, run_id="h1")
    sent = [runtime.send_event("h1", "paid", {"n": n}, key="webhook-7781") for n in range(3)]
    assert sent == [True, False, False]
    assert [e.payload for e in runtime.get_run("h1").events()] == ['{"n":0}']


def test_a_wait_times_out_at_its_recorded_deadline_and_late_events_are_kept() -> None:
    """Check 5: timeout=60 times out at t0+60; a runtime at t0+30 whose code now says 120
    changes nothing; an event sent exactly at the deadline wins; a later one is left for a
    later wait."""
    storage = InMemoryStepStorage()
    clock = FakeClock(start=T0)
    runtime, approve = approvals(storage, clock, timeout=60)
    handle = approve.start(1, run_id="w1")
    runtime._family.settle(10)
    assert handle.status().wake_at == T0 + 60
    clock.advance(30)
    changed, _ = approvals(storage, clock, timeout=120)
    assert changed.run_due() == 0 and handle.status().wake_at == T0 + 60
    clock.advance(30)
    assert changed.run_due() == 1
    with pytest.raises(Exception) as caught:
        handle.result(timeout=5)
    assert "WaitTimeoutError" in str(caught.value)
    # Another run: the event at the deadline wins; the late one stays in the inbox.
    won, _ = approvals(storage, clock, timeout=60)
    handle = approve.start(2, run_id="w2")
    won._family.settle(10)
    clock.advance(60)
    won.send_event("w2", "approved", "on time")  # sent_at == the deadline
    clock.advance(5)
    won.send_event("w2", "approved", "late")
    assert won.run_due() == 1
    assert handle.result(timeout=5) == ["on time"]
    assert [(e.payload, e.consumed_by is not None) for e in handle.events()] == [
        ('"on time"', True), ('"late"', False)]


def test_a_timed_out_wait_returns_its_default_and_raises_without_one() -> None:
    """wait_for_event(timeout=..., default=x) returns x past the deadline; inline on a
    FakeClock the deadline is reached at once; without a default, WaitTimeoutError."""
    clock = FakeClock(start=T0)
    runtime = create_test_runtime(clock=clock)

    @runtime.workflow("Ask.flow")
    def ask(use_default: bool) -> Any:
        if use_default:
            return runtime.wait_for_event("answer", timeout=5, default="nobody")
        try:
            runtime.wait_for_event("answer", timeout=5)
        except WaitTimeoutError as error:
            return [error.name, error.deadline, error.run_id]
        return None

    assert ask.run(True, run_id="a1") == "nobody"
    assert ask.run(False, run_id="a2") == ["answer", T0 + 10, "a2"]


def test_sending_to_unknown_or_finished_runs_is_refused() -> None:
    """Check 6: RunNotFoundError for an unknown run, RunClosedError for a COMPLETED one."""
    runtime = create_test_runtime()
    runtime.workflow("Quick.flow")(lambda n: n)  # type: ignore[arg-type]
    runtime.start("Quick.flow", 1, run_id="q1").result(timeout=5)
    with pytest.raises(RunNotFoundError):
        runtime.send_event("nope", "x")
    with pytest.raises(RunClosedError) as caught:
        runtime.send_event("q1", "x")
    assert caught.value.status == "completed"


def test_an_event_for_a_suspended_run_makes_it_due_and_wakes_a_waiting_run_call() -> None:
    """A send to a run suspended waiting for that event makes it due now, and a run()
    caller blocked on it picks it up (on the real clock)."""
    runtime = create_test_runtime(clock=SystemClock(), suspend_after=0)

    @runtime.workflow("Ask.flow")
    def ask(n: int) -> Any:
        return runtime.wait_for_event("answer", timeout=3600)

    results: list[Any] = []
    caller = threading.Thread(target=lambda: results.append(ask.run(1, run_id="a1")))
    caller.start()
    until = time.monotonic() + 10
    while time.monotonic() < until:
        runs = runtime.list_runs()
        if runs and runs[0].status is RunStatus.SUSPENDED:
            break
        time.sleep(0.01)
    assert runtime.get_run("a1").status().waiting_for == "answer"
    assert runtime.send_event("a1", "answer", 42) is True
    caller.join(10)
    assert results == [42]
    runtime.close()


# ------------------------------------------------------------------ published values


def test_published_values_are_readable_while_the_run_goes_on() -> None:
    """publish() inside a run: the latest value per key wins; a replay publishes nothing new;
    published() waits for a key; published_all() gives them all."""
    clock = FakeClock(start=T0)
    runtime = create_test_runtime(clock=clock, suspend_after=0)

    @runtime.workflow("Pay.flow")
    def pay(n: int) -> str:
        runtime.publish("payment_url", f"https://pay.example/{n}")
        runtime.publish("progress", 1)
        runtime.publish("progress", 2)
        runtime.wait_for_event("paid")
        runtime.publish("progress", 3)
        return "done"

    handle = pay.start(7, run_id="p1")
    runtime._family.settle(10)
    assert handle.published("payment_url", timeout=5) == "https://pay.example/7"
    assert handle.published_all() == {"payment_url": "https://pay.example/7", "progress": 2}
    with pytest.raises(TimeoutError):
        handle.published("receipt", timeout=0.05)
    assert handle.published("receipt", timeout=0.05, default=None) is None
    runtime.send_event("p1", "paid")
    run_until_idle(runtime, clock)
    assert handle.result(timeout=5) == "done"
    assert handle.published_all() == {"payment_url": "https://pay.example/7", "progress": 3}
    with pytest.raises(KeyError):
        handle.published("receipt")  # the run is finished: it will never come


def test_a_send_inside_a_run_is_a_step_and_is_not_repeated_by_a_replay(tmp_path: Path) -> None:
    """A run that sends an event to another run sends it once, even when it is replayed."""
    storage = SqliteStepStorage(tmp_path / "s.db")
    clock = FakeClock(start=T0)
    runtime = create_test_runtime(storage=storage, clock=clock, suspend_after=0)

    @runtime.workflow("Notify.flow")
    def notify(target: str) -> bool:
        sent: bool = runtime.send_event(target, "ping", {"from": "notify"})
        runtime.sleep(60)
        return sent

    runtime.start("Listen.flow", None, run_id="listener")
    notify.start("listener", run_id="n1")
    run_until_idle(runtime, clock)
    assert runtime.get_run("n1").result(timeout=5) is True
    (event,) = runtime.get_run("listener").events()
    assert event.key is not None and event.key.startswith("n1/")
    storage.close()


# ------------------------------------------------------------------ check 8: async


def test_async_sleeps_and_waits_suspend_and_resume() -> None:
    """Checks 1, 2 and 5 with the asyncio runtime."""

    async def main() -> None:
        clock = FakeClock(start=T0)
        runtime = create_async_test_runtime(clock=clock, suspend_after=0)
        ran: list[str] = []

        @runtime.step("A.first")
        async def first(n: int) -> str:
            ran.append("first")
            return "one"

        @runtime.workflow("A.flow")
        async def flow(n: int) -> list[Any]:
            await first(n)
            await runtime.sleep(3600, name="cool")
            early = await runtime.wait_for_event("early")
            late = await runtime.wait_for_event("late", timeout=60, default="none")
            return [early, late]

        handle = await flow.start(1, run_id="f1")
        await runtime.send_event("f1", "early", "here before the wait")
        await runtime._family.settle(10)
        record = await handle.status()
        assert (record.status, record.wake_at) == (RunStatus.SUSPENDED, T0 + 3600)
        clock.advance(3599)
        assert await runtime.run_due() == 0
        left = await run_until_idle(runtime, clock)
        assert left == []
        assert await handle.result(timeout=5) == ["here before the wait", "none"]
        assert ran == ["first"] and clock.now() == T0 + 3660
        await runtime.aclose()

    asyncio.run(main())


# ------------------------------------------------------------------ bad input


def test_bad_waits_and_sends_are_refused_and_write_nothing() -> None:
    """Negative or NaN durations, a naive datetime, a name that is not a str, an unencodable
    payload, a key that is not a str, timeout <= 0, and waiting outside a run: typed errors,
    nothing written."""
    runtime = create_test_runtime()
    runtime.start("Hook.target", None, run_id="h1")
    for call, field in ((lambda: runtime.sleep(1), "run"),
                        (lambda: runtime.wait_for_event("x"), "run"),
                        (lambda: runtime.publish("k", 1), "run"),
                        (lambda: runtime.send_event("h1", 3), "name"),  # type: ignore[arg-type]
                        (lambda: runtime.send_event("h1", "x", key=5), "key")):  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError) as caught:
            call()
        assert caught.value.field == field
    with pytest.raises(SerializationError, match="data"):
        runtime.send_event("h1", "x", object())
    assert runtime.get_run("h1").events() == []

    @runtime.workflow("Bad.flow")
    def bad(case: str) -> str:
        try:
            {"negative": lambda: runtime.sleep(-1),
             "nan": lambda: runtime.sleep(float("nan")),
             "naive": lambda: runtime.sleep_until(dt.datetime(2026, 1, 1)),
             "zero": lambda: runtime.wait_for_event("x", timeout=0),
             "name": lambda: runtime.wait_for_event(7)}[case]()  # type: ignore[arg-type]
        except ConfigurationError as error:
            return f"refused {error.field}"
        return "accepted"

    for case, field in (("negative", "seconds"), ("nan", "seconds"), ("naive", "when"),
                        ("zero", "timeout"), ("name", "name")):
        assert bad.run(case, run_id=f"b-{case}") == f"refused {field}"
        assert runtime.get_run(f"b-{case}").steps() == []
