"""The straight path of a durable step (``_core.straight_step``) against the state machine.

The sync runtime takes the straight path when no hook is set and the policy has no timeout;
any hook makes it drive the machine. Each scenario here runs twice, once each way, on a fresh
store and a fake clock, and must leave the same records, return the same results, raise the
same errors and ask for the same sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import durably._runtime
from conftest import completed_record, make_record
from durably import (
    DurableWorkflowRuntime,
    InMemoryStepStorage,
    JsonCodec,
    NonRetryableError,
    RetryAfterError,
    RetryPolicy,
    SqliteStepStorage,
    StepRecord,
    StepStatus,
    StepStorage,
    current_step,
)
from durably._core import Handoff
from durably.testing import FakeClock


@dataclasses.dataclass(frozen=True)
class Point:
    """A registered result type: not a plain JSON value, so the straight path hands off."""

    x: int
    y: int


def ok(data: Any) -> Any:
    return {"echo": data}


def point(data: Any) -> Point:
    return Point(data, data)


def no_arguments() -> str:  # called with one argument: a TypeError of the call itself
    return "never"


def unencodable(data: Any) -> object:
    return object()


def coroutine_maker(data: Any) -> Any:
    async def later() -> int:
        return 1
    return later()


class Flaky:
    """Fails its first ``failures`` calls with ``error``."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, data: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return {"calls": self.calls}


def outcome(call: Callable[[], Any]) -> Any:
    """A call's result, or what it raised (type, text, attempts) in comparable form."""
    try:
        return ("returned", call())
    except BaseException as error:
        return ("raised", type(error).__name__, str(error), getattr(error, "attempts", None),
                type(error.__cause__).__name__)


def records(storage: StepStorage) -> list[dict[str, Any]]:
    return [dataclasses.asdict(record) for record in storage.list()]


Scenario = Callable[[DurableWorkflowRuntime, StepStorage], list[Any]]


RETRY_AT_ONCE = RetryPolicy(max_attempts=3, initial_delay=0)


def both_ways(scenario: Scenario, make_storage: Callable[[str], StepStorage],
              policy: RetryPolicy = RETRY_AT_ONCE,
              prefill: tuple[StepRecord, ...] = ()) -> tuple[Any, Any]:
    """Run ``scenario`` on the straight path and on the machine; return both observations."""
    seen = []
    for way in ("straight", "machine"):
        storage = make_storage(way)
        for record in prefill:
            storage.set(record)
        clock = FakeClock(start=100.0)
        hook = {} if way == "straight" else {"on_step_start": lambda step_id, pipeline: None}
        runtime = DurableWorkflowRuntime(storage=storage, workflow_id="wf", clock=clock,
                                         retry_policy=policy, codec=JsonCodec(types=[Point]),
                                         **hook)
        # A runtime's first call reads history, which only the machine does: this one does
        # it, so that the scenario's calls are the straight path's to take.
        runtime.do(ok, "warm-up")
        results = scenario(runtime, storage)
        seen.append((results, records(storage), list(clock.sleeps)))
        runtime.close()
    return seen[0], seen[1]


@pytest.fixture(params=["memory", "sqlite"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> Callable[[str], StepStorage]:
    if request.param == "memory":
        return lambda way: InMemoryStepStorage()
    return lambda way: SqliteStepStorage(tmp_path / f"{way}.db")


def test_new_steps_then_a_replay(make_storage: Callable[[str], StepStorage]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        first = [outcome(lambda n=n: runtime.do(ok, n)) for n in range(5)]
        again = runtime.for_workflow("wf")  # a new process: replays from the records
        return first + [outcome(lambda n=n: again.do(ok, n)) for n in range(6)]

    straight, machine = both_ways(scenario, make_storage)
    assert straight == machine
    assert len(straight[1]) == 7 and all(r["status"] is StepStatus.COMPLETED for r in straight[1])


@pytest.mark.parametrize("failures, error, steps", [
    (2, ConnectionError, 2),          # retried, then succeeds; the second call is a new step
    (3, ConnectionError, 1),          # gives up: FAILED; the second call continues that step
    (1, NonRetryableError, 1),        # never retried
    (1, KeyboardInterrupt, 1),        # not an outcome: the record stays RUNNING
])
def test_failed_attempts_hand_over_to_the_machine(
    make_storage: Callable[[str], StepStorage], failures: int,
    error: type[BaseException], steps: int,
) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        flaky = Flaky(failures, error)
        runtime.register("Test.flaky", flaky)
        results = [outcome(lambda: runtime.do("Test.flaky", 1)) for _ in range(2)]
        return [*results, flaky.calls]

    straight, machine = both_ways(scenario, make_storage)
    assert _without_tracebacks(straight) == _without_tracebacks(machine)
    # A call that raised gave its number back: the second call continued its step.
    assert len(straight[1]) == 1 + steps


def test_a_retry_with_a_wait_records_it_and_sleeps(
        make_storage: Callable[[str], StepStorage]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        runtime.register("Test.flaky", Flaky(2))
        return [outcome(lambda: runtime.do("Test.flaky", 1))]

    straight, machine = both_ways(scenario, make_storage,
                                  RetryPolicy(max_attempts=3, initial_delay=2.0, jitter=0.0))
    assert straight == machine
    assert straight[2] == [2.0, 4.0]


@pytest.mark.parametrize("handler", [point, no_arguments, unencodable, coroutine_maker])
def test_results_the_straight_path_does_not_handle(
        make_storage: Callable[[str], StepStorage], handler: Callable[..., Any]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        runtime.register("Test.odd", handler)
        return [outcome(lambda: runtime.do("Test.odd", 3)),
                outcome(lambda: runtime.for_workflow("wf").do("Test.odd", 3))]

    straight, machine = both_ways(scenario, make_storage)
    assert _without_tracebacks(straight) == _without_tracebacks(machine)


def test_a_step_completed_elsewhere_is_not_run(
        make_storage: Callable[[str], StepStorage]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        flaky = Flaky(0)
        runtime.register("Test.flaky", flaky)
        first = outcome(lambda: runtime.do(ok, 0))
        storage.set(completed_record("wf/k", '{"from": "elsewhere"}', action="Test.flaky",
                                     workflow_id="wf"))
        return [first, outcome(lambda: runtime.do("Test.flaky", 1, step_id="k")), flaky.calls]

    straight, machine = both_ways(scenario, make_storage)
    assert straight == machine
    assert straight[0][1:] == [("returned", {"from": "elsewhere"}), 0]


@pytest.mark.parametrize("status", [StepStatus.RUNNING, StepStatus.RETRYING,
                                    StepStatus.FAILED])
def test_unfinished_records_continue_their_budget(
        make_storage: Callable[[str], StepStorage], status: StepStatus) -> None:
    extra = {"next_attempt_at": 103.0} if status is StepStatus.RETRYING else {}
    prefill = (make_record("wf/k", status=status, action="Test.flaky", attempts=2, **extra),)

    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        runtime.register("Test.flaky", Flaky(1))
        first = outcome(lambda: runtime.do(ok, 0))  # the warm-up read the page holding wf/k
        return [first, outcome(lambda: runtime.do("Test.flaky", 1, step_id="k"))]

    straight, machine = both_ways(scenario, make_storage, prefill=prefill)
    assert _without_tracebacks(straight) == _without_tracebacks(machine)


def test_steps_inside_a_run(make_storage: Callable[[str], StepStorage]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        flaky = Flaky(1)
        runtime.register("Test.flaky", flaky)

        @runtime.workflow("Test.flow")
        def flow(n: int) -> list[Any]:
            return [runtime.do(ok, n), runtime.do("Test.flaky", n), runtime.do(ok, n + 1)]

        handle = flow.start(7, run_id="r1")
        return [handle.result(timeout=5), handle.status().status.value, flaky.calls]

    straight, machine = both_ways(scenario, make_storage)
    assert straight[0] == machine[0]
    assert _step_shapes(straight[1]) == _step_shapes(machine[1])


class Scripted:
    """Raises the errors of ``script`` in turn (None: returns), noting each attempt number."""

    def __init__(self, *script: BaseException | None, clock: FakeClock | None = None,
                 advance: float = 0.0) -> None:
        self.script = list(script)
        self.attempts: list[int] = []
        self.clock, self.advance = clock, advance

    def __call__(self, data: Any) -> Any:
        step = current_step()
        assert step is not None
        self.attempts.append(step.attempt)
        if self.clock is not None:
            self.clock.advance(self.advance)
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error
        return {"attempt": step.attempt}


@pytest.mark.parametrize("script", [
    # retried at once twice, then succeeds: straight all the way
    (ConnectionError("a"), ConnectionError("b"), None),
    # at once, then a wait the handler asks for: the machine records RETRYING and sleeps
    (ConnectionError("a"), RetryAfterError(2.5), None),
    # at once, then an error never retried: FAILED
    (ConnectionError("a"), NonRetryableError("no")),
    # a TypeError raised inside the handler (not the call's): retried like any error
    (TypeError("inside"), None),
    # at once until the budget is spent: FAILED with the last error
    (ConnectionError("a"), ConnectionError("b"), ConnectionError("c")),
    # at once, then interrupted: RUNNING, attempt 2, carrying the first error; the next
    # call continues the budget
    (ConnectionError("a"), KeyboardInterrupt()),
], ids=["twice-then-ok", "then-wait", "then-non-retryable", "inner-type-error", "spent",
        "then-interrupted"])
def test_retries_at_once_on_the_straight_path(
        make_storage: Callable[[str], StepStorage], script: tuple[Any, ...]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        handler = Scripted(*script)
        runtime.register("Test.scripted", handler)
        results = [outcome(lambda: runtime.do("Test.scripted", 1)) for _ in range(2)]
        return [*results, handler.attempts]

    straight, machine = both_ways(scenario, make_storage)
    assert _without_tracebacks(straight) == _without_tracebacks(machine)


def test_an_interrupted_retry_leaves_its_marker_with_the_error_before_it(
        make_storage: Callable[[str], StepStorage]) -> None:
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        runtime.register("Test.scripted", Scripted(ConnectionError("first"),
                                                   KeyboardInterrupt()))
        return [outcome(lambda: runtime.do("Test.scripted", 1))]

    straight, machine = both_ways(scenario, make_storage)
    assert _without_tracebacks(straight) == _without_tracebacks(machine)
    row = straight[1][-1]
    assert row["status"] is StepStatus.RUNNING and row["attempts"] == 2
    assert row["error"]["type"] == "ConnectionError" and row["error"]["message"] == "first"


def test_a_retry_past_max_elapsed_gives_up_on_both_paths(
        make_storage: Callable[[str], StepStorage]) -> None:
    """Each attempt takes 4 s of fake time; max_elapsed=6 stops the third."""
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        clock = runtime.clock
        assert isinstance(clock, FakeClock)
        handler = Scripted(*[ConnectionError("slow")] * 5, clock=clock, advance=4.0)
        runtime.register("Test.slow", handler)
        return [outcome(lambda: runtime.do("Test.slow", 1)), handler.attempts]

    straight, machine = both_ways(scenario, make_storage,
                                  RetryPolicy(max_attempts=5, initial_delay=0, max_elapsed=6))
    assert _without_tracebacks(straight) == _without_tracebacks(machine)
    assert straight[0][1] == [1, 2]


def test_a_step_completed_elsewhere_between_attempts_is_not_run_again(
        make_storage: Callable[[str], StepStorage]) -> None:
    """Another process completes the step while an attempt fails: the next marker's write
    hands back that COMPLETED record, whose result is returned without another attempt."""
    def scenario(runtime: DurableWorkflowRuntime, storage: StepStorage) -> list[Any]:
        calls: list[int] = []

        def racing(data: Any) -> Any:
            step = current_step()
            assert step is not None
            calls.append(step.attempt)
            stored = storage.get(step.step_id)
            assert stored is not None
            storage.set(dataclasses.replace(stored, status=StepStatus.COMPLETED,
                                            result='{"from": "elsewhere"}', completed_at=100.0))
            raise ConnectionError("lost the race")

        runtime.register("Test.racing", racing)
        return [outcome(lambda: runtime.do("Test.racing", 1)), calls]

    straight, machine = both_ways(scenario, make_storage)
    assert straight == machine
    assert straight[0] == [("returned", {"from": "elsewhere"}), [1]]


def test_the_sync_runtime_takes_the_straight_path_without_hooks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = []
    real = durably._runtime.straight_step

    def spy(*args: Any) -> Any:
        answers.append(real(*args))
        return answers[-1]

    monkeypatch.setattr(durably._runtime, "straight_step", spy)
    runtime = DurableWorkflowRuntime(clock=FakeClock(), workflow_id="wf")
    runtime.do(ok, 1)  # the first call reads history: the machine does that
    runtime.do(ok, 2)
    again = runtime.for_workflow("wf")
    again.do(ok, 1)  # reads history again
    again.do(ok, 2)  # a replay from the view
    assert [type(answer) is Handoff for answer in answers] == [True, False, True, False]
    assert answers[1::2] == [{"echo": 2}, {"echo": 2}]

    quick = DurableWorkflowRuntime(clock=FakeClock(), workflow_id="quick",
                                   retry_policy=RETRY_AT_ONCE)
    flaky = Flaky(2)
    quick.register("Test.flaky", flaky)
    quick.do(ok, 1)  # reads history
    quick.do("Test.flaky", 1)  # two failures retried at once: no hand-over
    assert type(answers[-1]) is not Handoff and flaky.calls == 3
    del answers[-2:]

    hooked = DurableWorkflowRuntime(clock=FakeClock(), on_step_complete=lambda s, r: None)
    hooked.do(ok, 1)
    timed = DurableWorkflowRuntime(clock=FakeClock(), retry_policy=RetryPolicy(timeout=5.0))
    timed.do(ok, 1)
    assert len(answers) == 4  # a hook or a timeout: the machine from the start


def _without_tracebacks(seen: Any) -> Any:
    results, rows, sleeps = seen
    for row in rows:
        if row["error"] is not None:
            row["error"] = {**row["error"], "traceback": bool(row["error"]["traceback"])}
    return results, rows, sleeps


def _step_shapes(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Inside runs, ids and times follow the run (created by the worker's real clock)."""
    return [(row["action"], row["status"], row["attempts"], row["result"]) for row in rows]
