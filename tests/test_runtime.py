"""Behaviour of the runtime shared by every flavour: the three levels, replay, retries, hooks.

Tests take the ``flavour`` fixture so that one suite covers each runtime flavour.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import Flavour
from durably import (
    ConfigurationError,
    Domain,
    HandlerNotFoundError,
    InMemoryStepStorage,
    NonRetryableError,
    Pipeline,
    RetryAfterError,
    RetryPolicy,
    SerializationError,
    SqliteStepStorage,
    StepContext,
    StepInterruptedError,
    StepRecord,
    StepStatus,
    StepTimeoutError,
    WorkflowStepError,
    current_step,
)
from durably._retry import backoff_delay, jitter_fraction
from durably.testing import FakeClock


class Counter:
    """A handler that counts its calls and fails the first ``failures`` of them."""

    def __init__(self, failures: int = 0, error: type[Exception] = ConnectionError,
                 result: Any = "ok") -> None:
        self.failures = failures
        self.error = error
        self.result = result
        self.calls: list[Any] = []

    def __call__(self, data: Any, *args: Any) -> Any:
        self.calls.append((data, *args) if args else data)
        if len(self.calls) <= self.failures:
            raise self.error(f"failure {len(self.calls)}")
        return self.result


def retries(n: int, **fields: Any) -> RetryPolicy:
    return RetryPolicy(max_attempts=n, **{"initial_delay": 1.0, "jitter": 0.0, **fields})


# ------------------------------------------------------------------ the table of levels


def test_do_records_the_result_and_replays_it(flavour: Flavour) -> None:
    """A completed do step returns its recorded result on every later run, without running."""
    storage = InMemoryStepStorage()
    first = flavour.make(storage=storage)
    handler = Counter(result={"total": 42})
    first.register("Order.total", handler)
    assert flavour.run(first.do("Order.total", {"id": 7})) == {"total": 42}
    (record,) = storage.list()
    assert record.status is StepStatus.COMPLETED and record.attempts == 1
    assert record.result == '{"total":42}'

    second = flavour.make(storage=storage)  # a re-run: a new runtime, the same storage
    second.register("Order.total", handler)
    assert flavour.run(second.do("Order.total", {"id": 7})) == {"total": 42}
    assert handler.calls == [{"id": 7}]


def test_do_returns_the_decoded_value_on_first_run_and_replay(flavour: Flavour) -> None:
    """The first run sees what a replay will see (tuples stay tuples, sets stay sets)."""
    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage)
    runtime.register("A.b", lambda data: {"pair": (1, 2), "tags": {"x"}})
    first = flavour.run(runtime.do("A.b", 1))
    again = flavour.make(storage=storage)
    again.register("A.b", lambda data: pytest.fail("replayed step ran"))
    replay = flavour.run(again.do("A.b", 1))
    assert first == replay == {"pair": (1, 2), "tags": {"x"}}


def test_completed_step_is_returned_without_looking_up_the_handler(flavour: Flavour) -> None:
    """A replay needs no handler at all: nothing is looked up."""
    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage)
    runtime.register("A.b", lambda data: data * 2)
    assert flavour.run(runtime.do("A.b", 21)) == 42
    bare = flavour.make(storage=storage)
    assert flavour.run(bare.do("A.b", 21)) == 42


def test_do_retries_then_raises_workflow_step_error_chained(flavour: Flavour) -> None:
    """After the last attempt, WorkflowStepError is raised from the last cause."""
    runtime = flavour.make(retry_policy=retries(3))
    handler = Counter(failures=10)
    runtime.register("A.b", handler)
    with pytest.raises(WorkflowStepError) as caught:
        flavour.run(runtime.do("A.b", "x"))
    error = caught.value
    assert len(handler.calls) == 3
    assert error.attempts == 3 and error.action == "A.b"
    assert isinstance(error.__cause__, ConnectionError) and error.cause is error.__cause__
    assert str(error.__cause__) == "failure 3"
    (record,) = runtime.storage.list()
    assert record.status is StepStatus.FAILED and record.attempts == 3
    assert record.error is not None and record.error.message == "failure 3"


def test_try_runs_once_stores_nothing_and_raises_unwrapped(flavour: Flavour) -> None:
    """try_ makes exactly one attempt, records nothing, and raises the handler's own error."""
    runtime = flavour.make(retry_policy=retries(5))
    handler = Counter(failures=1, error=KeyError)
    runtime.register("Cache.get", handler)
    with pytest.raises(KeyError, match="failure 1"):
        flavour.run(runtime.try_("Cache.get", "k"))
    assert flavour.run(runtime.try_("Cache.get", "k")) == "ok"
    assert handler.calls == ["k", "k"]
    assert runtime.storage.list() == []


def test_send_returns_none_at_once_and_stores_nothing(flavour: Flavour) -> None:
    """send delivers in the background, returns None, never stores or retries."""
    runtime = flavour.make(retry_policy=retries(5))
    handler = Counter(failures=1)
    runtime.on("Order.created", handler)
    assert runtime.send("Order.created", {"id": 1}) is None
    assert flavour.flush(runtime, 5)
    assert handler.calls == [{"id": 1}]  # the failure was not retried
    assert runtime.storage.list() == []


def test_send_data_need_not_be_encodable(flavour: Flavour) -> None:
    """send data is never hashed or stored, so any object goes."""
    runtime = flavour.make()
    got: list[Any] = []
    runtime.on("Thing.happened", got.append)
    marker = object()
    runtime.send("Thing.happened", marker)
    assert flavour.flush(runtime, 5)
    assert got == [marker]


def test_send_errors_reach_on_step_error_and_logging_not_the_caller(
    flavour: Flavour, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber's exception goes to the hook and the log; send itself does not raise."""
    errors: list[tuple[str, BaseException, int]] = []
    runtime = flavour.make(on_step_error=lambda sid, err, n: errors.append((sid, err, n)))

    def broken(data: Any) -> None:
        raise RuntimeError("subscriber broke")

    runtime.on("Order.*", broken)
    with caplog.at_level(logging.ERROR, logger="durably"):
        runtime.send("Order.created", 1)
        assert flavour.flush(runtime, 5)
    ((step_id, error, attempt),) = errors
    assert step_id.startswith("send_") and attempt == 1
    assert isinstance(error, RuntimeError)
    assert "subscriber broke" in caplog.text


def test_send_never_raises_even_for_a_bad_event(flavour: Flavour,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Even a non-str event is logged, not raised."""
    runtime = flavour.make()
    with caplog.at_level(logging.ERROR, logger="durably"):
        assert runtime.send(42, "x") is None  # type: ignore[arg-type]
    assert "could not be delivered" in caplog.text


def test_send_returns_before_a_slow_subscriber_and_flush_waits(flavour: Flavour) -> None:
    """send does not wait for subscribers; flush does, and reports a timeout."""
    if flavour.name != "sync":
        pytest.skip("the async flavour has its own version of this test")
    runtime = flavour.make()
    release = threading.Event()
    finished: list[bool] = []

    def slow(data: Any) -> None:
        release.wait(10)
        finished.append(True)

    runtime.on("Job.started", slow)
    runtime.send("Job.started", None)
    assert finished == []
    assert runtime.flush(timeout=0.01) is False
    release.set()
    assert runtime.flush(timeout=10) is True
    assert finished == [True]


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("Order.created", ["Order.created"], ["Order.paid", "Order.created.late"]),
        ("Order.*", ["Order.created", "Order.paid"], ["Order", "Order.a.b", "Invoice.paid"]),
        ("*.created", ["Order.created", "User.created"], ["created", "A.b.created"]),
        ("**", ["A", "A.b", "A.b.c"], []),
        ("Order.**", ["Order.a", "Order.a.b"], ["Order", "Invoice.a"]),
        ("**.done", ["a.done", "a.b.done"], ["done", "a.done.x"]),
    ],
)
def test_wildcard_subscriptions(flavour: Flavour, pattern: str, matches: list[str],
                                misses: list[str]) -> None:
    """``*`` matches one segment and ``**`` one or more."""
    runtime = flavour.make()
    got: list[Any] = []
    runtime.on(pattern, got.append)
    for event in matches + misses:
        runtime.send(event, event)
    assert flavour.flush(runtime, 5)
    assert sorted(got) == sorted(matches)


def test_unsubscribe_stops_delivery(flavour: Flavour) -> None:
    """The callable returned by on() removes the subscription."""
    runtime = flavour.make()
    got: list[Any] = []
    unsubscribe = runtime.on("A.*", got.append)
    runtime.send("A.x", 1)
    assert flavour.flush(runtime, 5)
    unsubscribe()
    unsubscribe()  # idempotent
    runtime.send("A.x", 2)
    assert flavour.flush(runtime, 5)
    assert got == [1]


@pytest.mark.parametrize("pattern", ["", "A..b", "A.b*", "A. b", 3])
def test_bad_patterns_are_refused(flavour: Flavour, pattern: Any) -> None:
    """Patterns with empty or half-wild segments raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        flavour.make().on(pattern, print)


def test_execute_step_runs_every_mode(flavour: Flavour) -> None:
    """execute_step runs handler(context, *args) in do, try and send mode under the given id."""
    runtime = flavour.make()
    seen: list[Any] = []

    def handler(context: Any, a: Any, b: Any) -> Any:
        step = current_step()
        assert step is not None
        seen.append((step.step_id, step.mode, context, a, b))
        return a + b

    runtime.register("Math.add", handler)
    pipeline = Pipeline(path=("Math", "add"), context="ctx")
    assert flavour.run(runtime.execute_step("my-do", pipeline, (1, 2))) == 3
    assert flavour.run(runtime.execute_step("my-try", pipeline, (3, 4), mode="try")) == 7
    assert flavour.run(runtime.execute_step("my-send", pipeline, (5, 6), mode="send")) is None
    assert flavour.flush(runtime, 5)
    assert sorted(seen) == [("my-do", "do", "ctx", 1, 2), ("my-send", "send", "ctx", 5, 6),
                            ("my-try", "try", "ctx", 3, 4)]
    assert [r.step_id for r in runtime.storage.list()] == ["my-do"]


def test_execute_step_rejects_unknown_mode_and_action_at_once(flavour: Flavour) -> None:
    """A bad mode is a ValueError; an unknown action is raised even in send mode."""
    runtime = flavour.make()
    pipeline = Pipeline(path=("No", "such"))
    with pytest.raises(ValueError, match="mode"):
        flavour.run(runtime.execute_step("x", pipeline, (), mode="maybe"))
    with pytest.raises(HandlerNotFoundError):
        flavour.run(runtime.execute_step("x", pipeline, (), mode="send"))
    assert runtime.storage.list() == []


@pytest.mark.parametrize("method", ["do", "try_"])
def test_unknown_action_raises_before_any_hook_or_record(flavour: Flavour, method: str) -> None:
    """HandlerNotFoundError comes at once: no hook, no sleep, no record, no retry."""
    events: list[str] = []
    clock = FakeClock()
    runtime = flavour.make(
        clock=clock, retry_policy=retries(5),
        on_step_start=lambda *a: events.append("start"),
        on_step_error=lambda *a: events.append("error"),
    )
    with pytest.raises(HandlerNotFoundError) as caught:
        flavour.run(getattr(runtime, method)("Nope.missing", 1))
    assert caught.value.action == "Nope.missing"
    assert events == [] and clock.sleeps == [] and runtime.storage.list() == []


# ------------------------------------------------------------------ step identity


def test_identical_calls_are_distinct_steps_that_replay_in_order(flavour: Flavour) -> None:
    """Charging twice with the same data makes two steps; a re-run replays both in order."""
    storage = InMemoryStepStorage()
    results = iter(["first", "second"])
    runtime = flavour.make(storage=storage)
    runtime.register("Pay.charge", lambda data: next(results))
    assert flavour.run(runtime.do("Pay.charge", 10)) == "first"
    assert flavour.run(runtime.do("Pay.charge", 10)) == "second"
    ids = [r.step_id for r in storage.list()]
    assert len(ids) == 2 and ids[1] == ids[0] + "#1"

    rerun = flavour.make(storage=storage)
    rerun.register("Pay.charge", lambda data: pytest.fail("must replay"))
    assert flavour.run(rerun.do("Pay.charge", 10)) == "first"
    assert flavour.run(rerun.do("Pay.charge", 10)) == "second"


def test_key_order_and_set_order_name_the_same_step(flavour: Flavour) -> None:
    """Equal data built in another order replays the same step."""
    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage)
    handler = Counter()
    runtime.register("A.b", handler)
    flavour.run(runtime.do("A.b", {"x": 1, "tags": {"a", "b", "c"}}))
    again = flavour.make(storage=storage)
    again.register("A.b", handler)
    flavour.run(again.do("A.b", {"tags": {"c", "b", "a"}, "x": 1}))
    assert len(handler.calls) == 1


def test_workflow_ids_isolate_steps(flavour: Flavour) -> None:
    """The same call in two workflows is two steps; for_workflow shares everything else."""
    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage, workflow_id="order-1")
    handler = Counter()
    runtime.register("A.b", handler)
    other = runtime.for_workflow("order-2")
    flavour.run(runtime.do("A.b", 1))
    flavour.run(other.do("A.b", 1))
    assert len(handler.calls) == 2
    assert {r.workflow_id for r in storage.list()} == {"order-1", "order-2"}
    assert other.workflow_id == "order-2" and other.storage is storage
    flavour.run(runtime.for_workflow("order-1").do("A.b", 1))
    assert len(handler.calls) == 2


def test_explicit_step_id_is_scoped_and_does_not_number(flavour: Flavour) -> None:
    """step_id= names the record "<workflow>/<key>" and leaves the numbering of hashed calls
    alone."""
    runtime = flavour.make()
    runtime.register("A.b", Counter())
    flavour.run(runtime.do("A.b", 1, step_id="charge-order-42"))
    flavour.run(runtime.do("A.b", 1))
    ids = [r.step_id for r in runtime.storage.list()]
    assert ids[0] == "test/charge-order-42" and "#" not in ids[1]


def test_unhashable_data_is_refused_before_anything_runs(flavour: Flavour) -> None:
    """Data that cannot be hashed raises SerializationError naming its path; nothing runs."""
    runtime = flavour.make()
    handler = Counter()
    runtime.register("A.b", handler)
    with pytest.raises(SerializationError) as caught:
        flavour.run(runtime.do("A.b", {"items": [1, object()]}))
    assert caught.value.path == 'data["items"][1]'
    with pytest.raises(SerializationError, match="NaN"):
        flavour.run(runtime.do("A.b", float("nan")))
    assert handler.calls == [] and runtime.storage.list() == []


def test_unencodable_result_fails_the_step_without_retry(flavour: Flavour) -> None:
    """A result the codec refuses: FAILED, SerializationError as it is, no second attempt."""
    runtime = flavour.make(retry_policy=retries(3))
    handler = Counter(result={"conn": object()})
    runtime.register("A.b", handler)
    with pytest.raises(SerializationError) as caught:
        flavour.run(runtime.do("A.b", 1))
    assert caught.value.path == 'result["conn"]' and caught.value.step_id
    assert len(handler.calls) == 1
    (record,) = runtime.storage.list()
    assert record.status is StepStatus.FAILED and record.error is not None
    assert record.error.type == "SerializationError"


def double(x: int) -> int:
    """A module-level function: an action with a stable name."""
    return x * 2


def test_a_plain_callable_is_an_action_named_by_module_and_qualname(flavour: Flavour) -> None:
    """do(fn, data) needs no registration; the step's action is module:qualname."""
    runtime = flavour.make()
    assert flavour.run(runtime.do(double, 4)) == 8
    (record,) = runtime.storage.list()
    assert record.action == f"{__name__}:double"


def test_proxy_calls_name_the_same_step_as_do(flavour: Flavour) -> None:
    """p.A(ctx).b() and do("A.b", ctx) are one step; proxy args join the hash."""
    runtime = flavour.make()
    handler = Counter(result=1)
    runtime.register("Inventory.check", handler)
    p = runtime.proxy()
    assert flavour.run(p.Inventory({"sku": 1}).check()) == 1
    assert flavour.run(runtime.for_workflow("test").do("Inventory.check", {"sku": 1})) == 1
    assert len(handler.calls) == 1
    flavour.run(p.Inventory({"sku": 1}).check(5))
    assert handler.calls[-1] == ({"sku": 1}, 5)
    assert len(runtime.storage.list()) == 2


def test_proxy_try_and_send_modes(flavour: Flavour) -> None:
    """proxy("try") runs once unrecorded; proxy("send") delivers in the background."""
    runtime = flavour.make()
    handler = Counter(result="r")
    runtime.register("A.b", handler)
    assert flavour.run(runtime.proxy("try").A(1).b(2)) == "r"
    flavour.run(runtime.proxy("send").A(3).b(4))
    assert flavour.flush(runtime, 5)
    assert sorted(handler.calls) == [(1, 2), (3, 4)]
    assert runtime.storage.list() == []
    with pytest.raises(ValueError):
        runtime.proxy("maybe")


# ------------------------------------------------------------------ retries


def test_backoff_gaps_on_a_fake_clock_equal_the_schedule(flavour: Flavour) -> None:
    """The sleeps between attempts are exactly policy.delays() when jitter is 0."""
    clock = FakeClock(start=1000.0)
    policy = RetryPolicy(max_attempts=5, initial_delay=0.5, backoff=3, max_delay=6, jitter=0)
    runtime = flavour.make(clock=clock, retry_policy=policy)
    starts: list[float] = []

    def flaky(data: Any) -> str:
        starts.append(clock.now())
        if len(starts) < 5:
            raise TimeoutError("slow upstream")
        return "done"

    runtime.register("A.b", flaky)
    assert flavour.run(runtime.do("A.b", 1)) == "done"
    assert clock.sleeps == policy.delays() == [0.5, 1.5, 4.5, 6]
    assert [b - a for a, b in itertools.pairwise(starts)] == policy.delays()


def test_jittered_delays_follow_the_seeded_formula_and_stay_under_max(flavour: Flavour) -> None:
    """With jitter, each sleep is d * (1 - jitter * u) for the step's seeded u, <= max_delay."""
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=8, initial_delay=1, backoff=2, max_delay=10, jitter=0.9)
    runtime = flavour.make(clock=clock, retry_policy=policy)
    runtime.register("A.b", Counter(failures=7))
    flavour.run(runtime.do("A.b", 1))
    (record,) = runtime.storage.list()
    expected = [backoff_delay(policy, k, jitter_fraction("test", record.step_id, k))
                for k in range(1, 8)]
    assert clock.sleeps == pytest.approx(expected)
    assert all(0 <= s <= policy.max_delay for s in clock.sleeps)


def test_zero_delay_never_sleeps(flavour: Flavour) -> None:
    """initial_delay=0 retries at once without calling sleep."""
    clock = FakeClock()
    runtime = flavour.make(clock=clock, retry_policy=retries(3, initial_delay=0))
    runtime.register("A.b", Counter(failures=2))
    assert flavour.run(runtime.do("A.b", 1)) == "ok"
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (retries(5), NonRetryableError("card declined")),
        (retries(5, non_retryable=(PermissionError,)), PermissionError("no")),
        (retries(5, retry_if=lambda e: "transient" in str(e)), ValueError("permanent")),
    ],
    ids=["NonRetryableError", "non_retryable", "retry_if"],
)
def test_non_retryable_errors_fail_after_one_attempt(flavour: Flavour, policy: RetryPolicy,
                                                     error: Exception) -> None:
    """Errors the policy refuses to retry end the step on the first attempt."""
    clock = FakeClock()
    runtime = flavour.make(clock=clock, retry_policy=policy)
    calls: list[int] = []

    def handler(data: Any) -> None:
        calls.append(1)
        raise error

    runtime.register("A.b", handler)
    with pytest.raises(WorkflowStepError) as caught:
        flavour.run(runtime.do("A.b", 1))
    assert caught.value.__cause__ is error and caught.value.attempts == 1
    assert calls == [1] and clock.sleeps == []
    assert runtime.storage.list()[0].status is StepStatus.FAILED


def test_retry_if_true_keeps_retrying(flavour: Flavour) -> None:
    """retry_if returning True retries like any other error."""
    runtime = flavour.make(retry_policy=retries(3, retry_if=lambda e: True))
    runtime.register("A.b", Counter(failures=2))
    assert flavour.run(runtime.do("A.b", 1)) == "ok"


def test_retry_after_sets_the_wait(flavour: Flavour) -> None:
    """RetryAfterError's delay is slept as is (capped at max_delay), whatever retry_if says."""
    clock = FakeClock()
    runtime = flavour.make(clock=clock, retry_policy=retries(4, max_delay=20, jitter=0.5,
                                                              retry_if=lambda e: False))
    delays = iter([7.0, 99.0, -3.0])

    def rate_limited(data: Any) -> str:
        delay = next(delays, None)
        if delay is not None:
            raise RetryAfterError(delay)
        return "through"

    runtime.register("Api.call", rate_limited)
    assert flavour.run(runtime.do("Api.call", 1)) == "through"
    assert clock.sleeps == [7.0, 20.0]  # the negative delay became 0: no sleep at all


def test_max_elapsed_stops_retrying(flavour: Flavour) -> None:
    """No retry is scheduled past max_elapsed since the budget's first attempt."""
    clock = FakeClock()
    policy = retries(10, initial_delay=4, backoff=1, max_elapsed=10)
    runtime = flavour.make(clock=clock, retry_policy=policy)
    handler = Counter(failures=100)
    runtime.register("A.b", handler)
    with pytest.raises(WorkflowStepError, match="max_elapsed"):
        flavour.run(runtime.do("A.b", 1))
    assert clock.sleeps == [4, 4] and len(handler.calls) == 3


def test_per_call_retry_override(flavour: Flavour) -> None:
    """do(..., retry=policy) replaces the runtime's policy for that call only."""
    runtime = flavour.make(retry_policy=retries(1))
    handler = Counter(failures=2)
    runtime.register("A.b", handler)
    assert flavour.run(runtime.do("A.b", 1, retry=retries(3))) == "ok"
    with pytest.raises(ConfigurationError):
        flavour.run(runtime.do("A.b", 2, retry={"max_attempts": 3}))  # type: ignore[arg-type]


def test_failed_step_gets_a_fresh_budget_on_the_next_call(flavour: Flavour) -> None:
    """Re-running a FAILED step starts its attempts from zero; success clears the error."""
    storage = InMemoryStepStorage()
    handler = Counter(failures=2)
    first = flavour.make(storage=storage, retry_policy=retries(2))
    first.register("A.b", handler)
    with pytest.raises(WorkflowStepError):
        flavour.run(first.do("A.b", 1))
    failed = storage.list()[0]
    assert failed.status is StepStatus.FAILED and failed.attempts == 2

    second = flavour.make(storage=storage, retry_policy=retries(2))
    second.register("A.b", handler)
    assert flavour.run(second.do("A.b", 1)) == "ok"
    done = storage.list()[0]
    assert done.status is StepStatus.COMPLETED and done.attempts == 1 and done.error is None


def test_timeout_fails_the_attempt_and_discards_a_late_result(flavour: Flavour) -> None:
    """An attempt past its timeout fails with StepTimeoutError; its late value is never stored."""
    if flavour.name != "sync":
        pytest.skip("the async flavour cancels instead; tested in test_aio.py")
    release = threading.Event()
    finished = threading.Event()
    calls: list[int] = []

    def handler(data: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)
            finished.set()
            return "late"
        return "on time"

    errors: list[BaseException] = []
    # A generous limit: the second attempt must finish inside it even on a loaded machine.
    runtime = flavour.make(retry_policy=retries(2, initial_delay=0, timeout=1.0),
                           on_step_error=lambda sid, err, n: errors.append(err))
    runtime.register("A.b", handler)
    assert runtime.do("A.b", 1) == "on time"
    release.set()
    assert finished.wait(10)
    assert isinstance(errors[0], StepTimeoutError) and errors[0].timeout == 1.0
    assert runtime.storage.list()[0].result == '"on time"'


def test_keyboard_interrupt_propagates_and_leaves_the_step_running(flavour: Flavour) -> None:
    """A BaseException is not retried or recorded as failure; the next call counts it."""
    storage = InMemoryStepStorage()
    interrupted = flavour.make(storage=storage, retry_policy=retries(3, initial_delay=0))

    def handler(data: Any) -> None:
        raise KeyboardInterrupt

    interrupted.register("A.b", handler)
    with pytest.raises(KeyboardInterrupt):
        flavour.run(interrupted.do("A.b", 1))
    (record,) = storage.list()
    assert record.status is StepStatus.RUNNING and record.attempts == 1

    attempts: list[int] = []

    def resumed(data: Any) -> str:
        step = current_step()
        assert step is not None
        attempts.append(step.attempt)
        return "ok"

    rerun = flavour.make(storage=storage, retry_policy=retries(3, initial_delay=0))
    rerun.register("A.b", resumed)
    assert flavour.run(rerun.do("A.b", 1)) == "ok"
    assert attempts == [2]


def test_interrupted_last_attempt_fails_with_step_interrupted_error(flavour: Flavour) -> None:
    """A RUNNING record whose budget is used up becomes FAILED without running again."""
    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage, retry_policy=retries(2))
    handler = Counter()
    runtime.register("A.b", handler)
    step_id = _step_id(flavour, runtime, "A.b", 1)
    storage.set(StepRecord(step_id, "test", "A.b", StepStatus.RUNNING, attempts=2,
                           created_at=0, started_at=0, updated_at=0, budget_started_at=0))
    with pytest.raises(WorkflowStepError) as caught:
        flavour.run(runtime.for_workflow("test").do("A.b", 1))
    assert isinstance(caught.value.__cause__, StepInterruptedError)
    assert handler.calls == []
    record = storage.get(step_id)
    assert record is not None and record.status is StepStatus.FAILED
    assert record.error is not None and record.error.type == "StepInterruptedError"


def test_retrying_step_waits_out_the_rest_of_its_schedule(flavour: Flavour) -> None:
    """A RETRYING record found at start-up sleeps until next_attempt_at, then continues."""
    storage = InMemoryStepStorage()
    clock = FakeClock(start=100.0)
    runtime = flavour.make(storage=storage, clock=clock, retry_policy=retries(3))
    attempts: list[int] = []

    def handler(data: Any) -> str:
        step = current_step()
        assert step is not None
        attempts.append(step.attempt)
        return "ok"

    runtime.register("A.b", handler)
    step_id = _step_id(flavour, runtime, "A.b", 1)
    storage.set(StepRecord(step_id, "test", "A.b", StepStatus.RETRYING, attempts=1,
                           created_at=90, started_at=90, updated_at=91, budget_started_at=90,
                           next_attempt_at=107.5))
    assert flavour.run(runtime.for_workflow("test").do("A.b", 1)) == "ok"
    assert clock.sleeps == [7.5] and attempts == [2]
    record = storage.get(step_id)
    assert record is not None and record.created_at == 90 and record.budget_started_at == 90


def test_a_completion_by_someone_else_wins(flavour: Flavour) -> None:
    """If another process completes the step mid-attempt, its result is returned, ours dropped."""

    class Racing(InMemoryStepStorage):
        def set(self, record: StepRecord) -> StepRecord:
            if record.status is StepStatus.COMPLETED:
                winner = dataclasses.replace(record, result='"theirs"')
                super().set(winner)
            return super().set(record)

    completions: list[Any] = []
    runtime = flavour.make(storage=Racing(),
                           on_step_complete=lambda sid, result: completions.append(result))
    runtime.register("A.b", lambda data: "ours")
    assert flavour.run(runtime.do("A.b", 1)) == "theirs"
    assert completions == ["theirs"]


def test_a_step_completed_before_our_attempt_starts_is_not_run(flavour: Flavour) -> None:
    """If the RUNNING marker write finds a COMPLETED record, the handler never runs."""

    class AlreadyDone(InMemoryStepStorage):
        def set(self, record: StepRecord) -> StepRecord:
            if record.status is StepStatus.RUNNING:
                super().set(dataclasses.replace(record, status=StepStatus.COMPLETED,
                                                result="7"))
            return super().set(record)

    runtime = flavour.make(storage=AlreadyDone())
    handler = Counter()
    runtime.register("A.b", handler)
    assert flavour.run(runtime.do("A.b", 1)) == 7
    assert handler.calls == []


def test_undecodable_stored_result_raises_storage_error_naming_the_step(
    flavour: Flavour,
) -> None:
    """A corrupted result is a StorageError with the step id, not a crash."""
    from durably import StorageError

    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage)
    step_id = _step_id(flavour, runtime, "A.b", 1)
    storage.set(StepRecord(step_id, "test", "A.b", StepStatus.COMPLETED, result="{broken"))
    with pytest.raises(StorageError) as caught:
        flavour.run(runtime.for_workflow("test").do("A.b", 1))
    assert caught.value.step_id == step_id and step_id in str(caught.value)


def _step_id(flavour: Flavour, runtime: Any, action: str, data: Any) -> str:
    """The id the runtime gives the first top-level call (found by a throwaway run)."""
    probe = flavour.make(workflow_id=runtime.workflow_id)
    probe.register(action, lambda d: None)
    flavour.run(probe.do(action, data))
    return str(probe.storage.list()[0].step_id)


# ------------------------------------------------------------------ hooks


def test_hooks_fire_the_same_way_from_every_entry_point(flavour: Flavour) -> None:
    """start once per attempt, error once per failed attempt, complete once per success."""
    events: list[tuple[Any, ...]] = []
    runtime = flavour.make(
        retry_policy=retries(2, initial_delay=0),
        on_step_start=lambda sid, pipeline: events.append(("start", pipeline.action)),
        on_step_complete=lambda sid, result: events.append(("complete", result)),
        on_step_error=lambda sid, err, n: events.append(("error", n)),
    )
    runtime.register("A.b", Counter(failures=1, result="r"))
    flavour.run(runtime.do("A.b", "do"))
    assert events == [("start", "A.b"), ("error", 1), ("start", "A.b"), ("complete", "r")]

    events.clear()
    runtime.register("C.d", Counter(failures=1, result="r"))
    with pytest.raises(ConnectionError):
        flavour.run(runtime.try_("C.d", "try"))
    assert flavour.run(runtime.try_("C.d", "try")) == "r"
    assert events == [("start", "C.d"), ("error", 1), ("start", "C.d"), ("complete", "r")]

    events.clear()
    runtime.on("E.f", Counter(result="r"))
    runtime.send("E.f", "send")
    assert flavour.flush(runtime, 5)
    assert events == [("start", "E.f"), ("complete", "r")]

    events.clear()
    flavour.run(runtime.for_workflow("test").do("A.b", "do"))  # a replay runs nothing
    assert events == []


def test_raising_hooks_change_nothing(flavour: Flavour, caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises is logged; the step neither fails, repeats nor changes its result."""

    def explode(*args: Any) -> None:
        raise RuntimeError("hook bug")

    runtime = flavour.make(retry_policy=retries(2, initial_delay=0), on_step_start=explode,
                           on_step_complete=explode, on_step_error=explode)
    handler = Counter(failures=1, result={"v": 1})
    runtime.register("A.b", handler)
    with caplog.at_level(logging.ERROR, logger="durably"):
        assert flavour.run(runtime.do("A.b", 1)) == {"v": 1}
        assert flavour.run(runtime.try_("A.b", 2)) == {"v": 1}
    assert len(handler.calls) == 3
    record = runtime.storage.list()[0]
    assert record.status is StepStatus.COMPLETED and record.attempts == 2
    assert caplog.text.count("hook bug") >= 5


# ------------------------------------------------------------------ handlers


def test_current_step_inside_and_outside_a_handler(flavour: Flavour) -> None:
    """current_step() describes the running step, and is None outside any handler."""
    seen: list[StepContext] = []

    def handler(data: Any) -> None:
        step = current_step()
        assert step is not None
        seen.append(step)
        if step.attempt == 1:
            raise ConnectionError("again")

    runtime = flavour.make(retry_policy=retries(3, initial_delay=0), workflow_id="wf-9")
    runtime.register("A.b", handler)
    assert current_step() is None
    flavour.run(runtime.do("A.b", 1))
    assert current_step() is None
    first, second = seen
    assert (first.workflow_id, first.action, first.mode, first.max_attempts) == (
        "wf-9", "A.b", "do", 3)
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.step_id == second.step_id
    assert first.idempotency_key == second.idempotency_key
    assert first.idempotency_key.startswith("idem_")


def test_nested_do_calls_are_scoped_to_their_parent(flavour: Flavour) -> None:
    """Children of a retried parent replay instead of running again."""
    if flavour.name != "sync":
        pytest.skip("nested async handlers are covered in test_aio.py")
    storage = InMemoryStepStorage()
    runtime = flavour.make(storage=storage, retry_policy=retries(2, initial_delay=0))
    child = Counter(result="child")
    runtime.register("Child.run", child)
    parent_calls: list[int] = []

    def parent(data: Any) -> str:
        parent_calls.append(1)
        first = runtime.do("Child.run", "x")
        second = runtime.do("Child.run", "x")
        if len(parent_calls) == 1:
            raise ConnectionError("parent fails after its children")
        return f"{first}+{second}"

    runtime.register("Parent.run", parent)
    assert runtime.do("Parent.run", 1) == "child+child"
    assert len(child.calls) == 2  # two distinct children, each run once
    records = {r.step_id: r for r in storage.list()}
    parent_id = next(sid for sid, r in records.items() if r.action == "Parent.run")
    children = sorted(sid for sid, r in records.items() if r.action == "Child.run")
    assert len(children) == 2 and children[1] == children[0] + "#1"
    assert parent_id not in children


def test_coroutine_function_is_refused_by_the_sync_runtime(flavour: Flavour) -> None:
    """Registering or calling an async def handler in the sync runtime: ConfigurationError."""
    if flavour.name != "sync":
        pytest.skip("the async runtime accepts coroutine functions")
    runtime = flavour.make()

    async def handler(data: Any) -> None:
        return None

    with pytest.raises(ConfigurationError, match="coroutine"):
        runtime.register("A.b", handler)
    with pytest.raises(ConfigurationError, match="coroutine"):
        runtime.on("A.*", handler)
    with pytest.raises(ConfigurationError, match="coroutine"):
        runtime.do(handler, 1)


def test_a_handler_returning_a_coroutine_fails_clearly(flavour: Flavour) -> None:
    """A sync handler that returns a coroutine by mistake fails the step, never retried."""
    if flavour.name != "sync":
        pytest.skip("the async runtime awaits it")

    async def work() -> int:
        return 1

    runtime = flavour.make(retry_policy=retries(3))
    runtime.register("A.b", lambda data: work())
    with pytest.raises(WorkflowStepError) as caught:
        runtime.do("A.b", 1)
    assert isinstance(caught.value.__cause__, ConfigurationError)
    assert caught.value.attempts == 1


def test_registration_forms(flavour: Flavour) -> None:
    """register, @action and Domain all register; a name taken by another handler is refused."""
    runtime = flavour.make()

    @runtime.action("Inventory.reserve")
    def reserve(items: Any) -> str:
        return f"reserved {items}"

    def charge(data: Any) -> str:
        return "charged"

    runtime.register(Domain("Payment", {"charge": charge, "refund": lambda d: "refunded"}))
    runtime.register("Payment.charge", charge)  # the same handler again: fine
    assert flavour.run(runtime.do("Inventory.reserve", 2)) == "reserved 2"
    assert flavour.run(runtime.try_("Payment.refund", 1)) == "refunded"
    with pytest.raises(ConfigurationError, match="already registered"):
        runtime.register("Payment.charge", lambda d: "other")
    for bad in ["", "A..b", "A.*", "has space"]:
        with pytest.raises(ConfigurationError):
            runtime.register(bad, print)
    with pytest.raises(ConfigurationError):
        runtime.register("A.b", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        runtime.register("A.b")


def test_actions_are_per_runtime(flavour: Flavour) -> None:
    """Two unrelated runtimes never see each other's handlers."""
    one, two = flavour.make(), flavour.make()
    one.register("A.b", print)
    with pytest.raises(HandlerNotFoundError):
        flavour.run(two.do("A.b", 1))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"workflow_id": ""}, "workflow_id"),
        ({"workflow_id": 3}, "workflow_id"),
        ({"storage": object()}, "storage"),
        ({"retry_policy": 3}, "retry_policy"),
        ({"on_step_start": "print"}, "on_step_start"),
        ({"codec": object()}, "codec"),
        ({"hooks": object()}, "hooks"),
    ],
)
def test_bad_constructor_options(flavour: Flavour, options: dict[str, Any], field: str) -> None:
    """Bad options raise ConfigurationError naming the option."""
    with pytest.raises(ConfigurationError) as caught:
        flavour.make(**options)
    assert caught.value.field == field


def test_sqlite_replay_across_runtime_objects(flavour: Flavour, tmp_path: Path) -> None:
    """Two runtimes on one SQLite file: the second replays what the first recorded."""
    path = tmp_path / "steps.db"
    handler = Counter(result=[1, 2, 3])
    first = flavour.make(storage=SqliteStepStorage(path))
    first.register("A.b", handler)
    assert flavour.run(first.do("A.b", "x")) == [1, 2, 3]
    flavour.close(first)
    second = flavour.make(storage=SqliteStepStorage(path))
    second.register("A.b", handler)
    assert flavour.run(second.do("A.b", "x")) == [1, 2, 3]
    assert len(handler.calls) == 1
    flavour.close(second)


def test_execute_step_fires_hooks_like_do(flavour: Flavour) -> None:
    """execute_step reports start and completion exactly like do."""
    events: list[tuple[str, str]] = []
    runtime = flavour.make(
        on_step_start=lambda sid, pipeline: events.append(("start", sid)),
        on_step_complete=lambda sid, result: events.append(("complete", sid)),
    )
    runtime.register("A.b", lambda context, x: x)
    flavour.run(runtime.execute_step("mine", Pipeline(("A", "b"), None), (1,)))
    assert events == [("start", "mine"), ("complete", "mine")]


def test_close_flushes_deliveries_and_closes_storage(flavour: Flavour, tmp_path: Path) -> None:
    """Leaving the context manager waits for deliveries, then closes the storage."""
    from durably import StorageError

    storage = SqliteStepStorage(tmp_path / "steps.db")
    got: list[int] = []
    runtime = flavour.make(storage=storage)
    runtime.on("A.*", got.append)
    if flavour.name == "sync":
        with runtime:
            runtime.send("A.x", 1)
    else:
        flavour.close(runtime)
    with pytest.raises(StorageError, match="closed"):
        storage.get("x")
    assert got == ([1] if flavour.name == "sync" else [])


def test_send_after_close_is_dropped_with_a_warning(flavour: Flavour,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A closed runtime does not deliver, and send still does not raise."""
    runtime = flavour.make()
    got: list[int] = []
    runtime.on("A.*", got.append)
    flavour.close(runtime)
    with caplog.at_level(logging.WARNING, logger="durably"):
        assert runtime.send("A.x", 1) is None
    assert got == [] and "dropped" in caplog.text


def test_flush_waits_for_deliveries_that_send_more(flavour: Flavour) -> None:
    """A subscriber that sends again is still waited for by one flush."""
    runtime = flavour.make()
    got: list[str] = []
    runtime.on("Chain.first", lambda data: runtime.send("Chain.second", data))
    runtime.on("Chain.second", got.append)
    runtime.send("Chain.first", "x")
    assert flavour.flush(runtime, 5)
    assert got == ["x"]


def test_a_runtime_reads_its_workflow_once(flavour: Flavour) -> None:
    """One list() at the first durable call, no per-step reads, replays from memory."""

    class Counting(InMemoryStepStorage):
        def __init__(self) -> None:
            super().__init__()
            self.reads: list[str] = []

        def get(self, step_id: str) -> StepRecord | None:
            self.reads.append("get")
            return super().get(step_id)

        def list(self, workflow_id: str | None = None,
                 status: StepStatus | None = None) -> list[StepRecord]:
            self.reads.append(f"list {workflow_id}")
            return super().list(workflow_id, status)

    storage = Counting()
    runtime = flavour.make(storage=storage)
    runtime.register("A.b", Counter())
    for n in range(5):
        flavour.run(runtime.do("A.b", n))
    rerun = runtime.for_workflow("test")
    for n in range(5):
        flavour.run(rerun.do("A.b", n))
    assert storage.reads == ["list test", "list test"]


def test_a_step_completed_elsewhere_after_our_read_is_not_run_again(flavour: Flavour) -> None:
    """Records written by another runtime after this one's read are still honoured: the
    storage refuses to overwrite a COMPLETED record, and its result is returned."""
    storage = InMemoryStepStorage()
    ours = flavour.make(storage=storage)
    theirs = flavour.make(storage=storage)
    calls: list[str] = []
    ours.register("A.b", lambda data: calls.append("ours") or "ours")
    theirs.register("A.b", lambda data: calls.append("theirs") or "theirs")
    ours.register("Warm.up", lambda data: None)
    flavour.run(ours.do("Warm.up", 0))  # ours has read the workflow now
    assert flavour.run(theirs.do("A.b", 1)) == "theirs"
    assert flavour.run(ours.do("A.b", 1)) == "theirs"
    assert calls == ["theirs"]
