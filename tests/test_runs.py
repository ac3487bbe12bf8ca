"""Workflow runs in one process: start once, results, conflicts, cancel, resume, deadlines,
child runs, recovery reports, bad input; both flavours where the API is the same."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from durably import (
    AsyncDurableWorkflowRuntime,
    ConfigurationError,
    DurableWorkflowRuntime,
    InMemoryStepStorage,
    RecoveryReport,
    RetryPolicy,
    RunCancelledError,
    RunConflictError,
    RunNotFoundError,
    RunStatus,
    SerializationError,
    SqliteStepStorage,
    StepRecord,
    StepStatus,
    StepStorage,
    WorkflowFailedError,
)
from durably.testing import FakeClock, create_async_test_runtime, create_test_runtime


class Order:
    """A four-step order workflow whose step bodies log what ran."""

    def __init__(self, runtime: Any, fail_at: str | None = None) -> None:
        self.ran: list[str] = []
        self.fail_at = fail_at
        self.runtime = runtime
        for name in ("reserve", "charge", "pack", "ship"):
            runtime.register(f"Order.{name}", self._step(name))

        @runtime.workflow("Order.process")
        def process(order: dict[str, Any]) -> dict[str, Any]:
            done = {name: runtime.do(f"Order.{name}", order["id"])
                    for name in ("reserve", "charge", "pack", "ship")}
            return {"order": order["id"], **done}

        self.process = process

    def _step(self, name: str) -> Any:
        def step(order_id: int) -> str:
            self.ran.append(name)
            if name == self.fail_at:
                raise ValueError(f"{name} failed")
            return f"{name} {order_id}"

        return step


RESULT = {"order": 7, "reserve": "reserve 7", "charge": "charge 7", "pack": "pack 7",
          "ship": "ship 7"}


# ------------------------------------------------------------------ check 1, 3, 4


def test_starting_a_run_twice_executes_it_once() -> None:
    """Two starts of r1 with the same input: one execution, one result for both handles."""
    runtime = create_test_runtime()
    order = Order(runtime)
    first = order.process.start({"id": 7}, run_id="r1")
    second = order.process.start({"id": 7}, run_id="r1")
    assert first.result(timeout=10) == second.result(timeout=10) == RESULT
    assert order.ran == ["reserve", "charge", "pack", "ship"]
    assert order.process.run({"id": 7}, run_id="r1") == RESULT
    assert order.ran == ["reserve", "charge", "pack", "ship"]
    record = first.status()
    assert record.status is RunStatus.COMPLETED and record.fence == 1
    assert [s.step_id.split("/")[0] for s in first.steps()] == ["r1"] * 4
    runtime.close()


def test_a_run_id_taken_by_another_input_or_workflow_is_a_conflict() -> None:
    """RunConflictError for another input or another workflow; the stored run is untouched."""
    runtime = create_test_runtime()
    order = Order(runtime)

    @runtime.workflow("Other.flow")
    def other(data: Any) -> Any:
        return data

    order.process.run({"id": 7}, run_id="r1")
    before = runtime.get_run("r1").status()
    with pytest.raises(RunConflictError, match="another input") as caught:
        order.process.start({"id": 8}, run_id="r1")
    assert caught.value.run_id == "r1"
    with pytest.raises(RunConflictError, match=r"Order\.process") as caught:
        other.start({"id": 7}, run_id="r1")
    assert caught.value.workflow == "Order.process" and caught.value.requested == "Other.flow"
    assert runtime.get_run("r1").status() == before
    runtime.close()


def test_completed_and_failed_runs_are_not_executed_again_until_resumed() -> None:
    """Starting a COMPLETED id gives its result; a FAILED one a handle whose result() raises
    WorkflowFailedError with the recorded error; resume() re-executes, replaying steps."""
    runtime = create_test_runtime()
    order = Order(runtime, fail_at="pack")
    handle = order.process.start({"id": 7}, run_id="r1")
    with pytest.raises(WorkflowFailedError) as caught:
        handle.result(timeout=10)
    assert caught.value.run_id == "r1" and caught.value.error.type == "WorkflowStepError"
    assert "pack failed" in caught.value.error.message
    assert order.ran == ["reserve", "charge", "pack"]
    again = order.process.start({"id": 7}, run_id="r1")
    with pytest.raises(WorkflowFailedError):
        again.result(timeout=10)
    assert order.ran == ["reserve", "charge", "pack"]  # not executed again
    order.fail_at = None
    assert handle.resume() is True
    assert runtime.run_due() == 1
    assert handle.result(timeout=10) == RESULT
    assert order.ran == ["reserve", "charge", "pack", "pack", "ship"]
    assert handle.resume() is False
    runtime.close()


def test_the_body_raising_fails_the_run_with_its_error_and_traceback() -> None:
    """An exception escaping the body: FAILED, the recorded ErrorInfo with its traceback, and
    the original exception as __cause__ in this process."""
    runtime = create_test_runtime()

    @runtime.workflow("Bad.flow")
    def bad(data: Any) -> None:
        raise KeyError("missing field")

    with pytest.raises(WorkflowFailedError) as caught:
        bad.run(1, run_id="b1")
    error = caught.value.error
    assert (error.type, error.module) == ("KeyError", "builtins")
    assert "missing field" in error.message and "Traceback" in error.traceback
    assert isinstance(caught.value.__cause__, KeyError)
    assert runtime.get_run("b1").status().status is RunStatus.FAILED
    runtime.close()


# ------------------------------------------------------------------ check 11: cancel


def test_cancelling_between_steps_stops_the_run_and_resume_continues_it() -> None:
    """A cancel during step 2: step 2's result is not recorded, step 3 never starts, the run
    is CANCELLED and result() raises RunCancelledError; resume() continues after step 1."""
    runtime = create_test_runtime()
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    @runtime.action("Job.first")
    def first(n: int) -> str:
        ran.append("first")
        return "one"

    @runtime.action("Job.second")
    def second(n: int) -> str:
        ran.append("second")
        started.set()
        release.wait(10)
        return "two"

    @runtime.action("Job.third")
    def third(n: int) -> str:
        ran.append("third")
        return "three"

    @runtime.workflow("Job.run")
    def job(n: int) -> list[str]:
        return [runtime.do("Job.first", n), runtime.do("Job.second", n),
                runtime.do("Job.third", n)]

    handle = job.start(1, run_id="j1")
    assert started.wait(10)
    assert handle.cancel() is True
    release.set()
    with pytest.raises(RunCancelledError, match="cancelled") as caught:
        handle.result(timeout=10)
    assert caught.value.run_id == "j1"
    assert ran == ["first", "second"]
    statuses = {s.action: s.status for s in handle.steps()}
    assert statuses == {"Job.first": StepStatus.COMPLETED, "Job.second": StepStatus.RUNNING}
    assert handle.cancel() is False
    # The cancelled step's attempt was cut off, and max_attempts=1 means "at most once": the
    # resumed run fails with StepInterruptedError rather than run it twice...
    assert handle.resume() is True
    assert runtime.run_due() == 1
    with pytest.raises(WorkflowFailedError, match=r"StepInterruptedError|interrupted"):
        handle.result(timeout=10)
    assert ran == ["first", "second"]
    # ...and resuming again gives that step a fresh budget: the run continues after step 1.
    assert handle.resume() is True
    assert runtime.run_due() == 1
    assert handle.result(timeout=10) == ["one", "two", "three"]
    assert ran == ["first", "second", "second", "third"]
    runtime.close()


def test_a_run_past_its_deadline_is_cancelled_at_its_next_step() -> None:
    """timeout= sets a deadline at start; past it the run is CANCELLED at a step boundary
    and RunCancelledError says the deadline passed."""
    clock = FakeClock(start=100.0)
    runtime = create_test_runtime(clock=clock)
    ran: list[int] = []

    @runtime.action("Slow.step")
    def step(n: int) -> int:
        ran.append(n)
        clock.advance(40)
        return n

    @runtime.workflow("Slow.flow", timeout=60)
    def flow(count: int) -> list[int]:
        return [runtime.do("Slow.step", n) for n in range(count)]

    with pytest.raises(RunCancelledError, match="deadline") as caught:
        flow.run(5, run_id="s1")
    assert ran == [0, 1]
    record = runtime.get_run("s1").status()
    assert record.status is RunStatus.CANCELLED and record.deadline == 160.0
    assert "deadline" in str(caught.value)
    runtime.close()


# ------------------------------------------------------------------ check 12: child runs


def test_a_child_run_is_started_once_across_a_crash_and_replay_of_its_parent(
        tmp_path: Path) -> None:
    """The parent's first execution dies after starting its child; the replay re-attaches to
    the same child (id parent/<step>) instead of starting another."""
    storage = SqliteStepStorage(tmp_path / "s.db")
    child_runs: list[str] = []
    crash = [True]

    def build(now: float) -> Any:
        runtime = create_test_runtime(storage=storage, clock=FakeClock(start=now))

        @runtime.workflow("Child.flow")
        def child(n: int) -> int:
            child_runs.append("child")
            return n * 10

        @runtime.workflow("Parent.flow")
        def parent(n: int) -> int:
            handle = child.start(n)
            if crash[0]:
                crash[0] = False
                raise KeyboardInterrupt  # dies like a process would
            return handle.result(timeout=10) + 1

        return runtime, parent

    _, parent = build(0.0)
    with pytest.raises(KeyboardInterrupt):
        parent.run(4, run_id="p1")
    again, parent = build(1000.0)  # another "process", after the dead owner's lease ran out
    report = again.recover()
    assert report.claimed == ["p1"]
    assert again.get_run("p1").result(timeout=10) == 41
    children = [r for r in again.list_runs(workflow="Child.flow")]
    assert len(children) == 1 and children[0].parent_run_id == "p1"
    assert children[0].run_id.startswith("p1/")
    assert child_runs == ["child"]
    again.close()


# ------------------------------------------------------------------ check 13: async


def test_async_runs_start_once_fail_cancel_and_resume() -> None:
    """Checks 1, 4 and 11 with the asyncio runtime."""

    async def main() -> None:
        runtime = create_async_test_runtime(retry_policy=RetryPolicy(max_attempts=3,
                                                                     initial_delay=0))
        ran: list[str] = []
        gate = asyncio.Event()

        @runtime.step("Job.first")
        async def first(n: int) -> str:
            ran.append("first")
            return "one"

        @runtime.step("Job.second")
        async def second(n: int) -> str:
            ran.append("second")
            await gate.wait()
            if n < 0:
                raise ValueError("negative")
            return "two"

        @runtime.workflow("Job.run")
        async def job(n: int) -> list[str]:
            return [await first(n), await second(n)]

        gate.set()
        a = await job.start(1, run_id="a1")
        b = await job.start(1, run_id="a1")
        assert await a.result(timeout=10) == await b.result(timeout=10) == ["one", "two"]
        assert ran == ["first", "second"]
        with pytest.raises(WorkflowFailedError):
            await job.run(-1, run_id="a2")
        ran.clear()
        gate.clear()
        handle = await job.start(2, run_id="a3")
        while ran != ["first", "second"]:
            await asyncio.sleep(0.01)
        assert await handle.cancel() is True
        gate.set()
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=10)
        assert await handle.resume() is True
        assert await runtime.run_due() == 1
        assert await handle.result(timeout=10) == ["one", "two"]
        assert ran == ["first", "second", "second"]
        record = await handle.status()
        assert record.status is RunStatus.COMPLETED
        assert [r.run_id for r in await runtime.list_runs()] == ["a1", "a2", "a3"]
        await runtime.aclose()

    asyncio.run(main())


# ------------------------------------------------------------------ check 14: recovery


def test_recover_leaves_unknown_workflows_as_they_are_and_reports_them() -> None:
    """A run of a workflow this process has not registered is not claimed: it is listed in
    skipped_unknown, untouched, for a process that has it."""
    storage = InMemoryStepStorage()
    submitter = create_test_runtime(storage=storage)
    handle = submitter.start("Billing.close_month", {"month": 11}, run_id="m11")
    assert handle.status().status is RunStatus.PENDING
    worker = create_test_runtime(storage=storage)
    report = worker.recover()
    assert report == RecoveryReport(claimed=[], failed=[], skipped_unknown=["m11"])
    assert storage.get_run("m11").status is RunStatus.PENDING

    @worker.workflow("Billing.close_month")
    def close_month(data: dict[str, int]) -> str:
        return f"closed {data['month']}"

    assert worker.recover().claimed == ["m11"]
    assert handle.result(timeout=10) == "closed 11"
    worker.close()


def test_recover_filters_by_code_version() -> None:
    """recover(code_versions=...) claims only runs started by those versions."""
    storage = InMemoryStepStorage()
    old = create_test_runtime(storage=storage, code_version="v1")
    old.start("Report.build", 1, run_id="old")
    new = create_test_runtime(storage=storage, code_version="v2")
    new.start("Report.build", 2, run_id="new")
    worker = create_test_runtime(storage=storage, code_version="v2")
    worker.workflow("Report.build")(lambda n: n)  # type: ignore[arg-type]
    assert worker.recover(code_versions=["v2"]).claimed == ["new"]
    assert storage.get_run("old").status is RunStatus.PENDING
    worker.close()


def test_steps_of_a_run_are_scoped_by_its_id_and_outside_runs_nothing_changes() -> None:
    """Inside a run, step ids are run_id/<local id> and the record's workflow_id is the run
    id; the same call outside a run keeps its wave-1 id."""
    runtime = create_test_runtime()
    runtime.register("A.b", lambda n: n)

    @runtime.workflow("Flow.f")
    def flow(n: int) -> int:
        return int(runtime.do("A.b", n))

    flow.run(3, run_id="f1")
    runtime.do("A.b", 3)
    inside, outside = runtime.storage.list()
    assert inside.step_id.startswith("f1/s1_") and inside.workflow_id == "f1"
    assert outside.step_id.startswith("s1_") and outside.workflow_id == "test"
    runtime.close()


# ------------------------------------------------------------------ bad input


def test_bad_workflow_registrations_and_options_are_refused() -> None:
    """A name taken by another function, bad options, an async body in the sync runtime,
    a storage without runs: ConfigurationError naming the problem; nothing written."""
    runtime = create_test_runtime()
    runtime.workflow("A.flow")(lambda n: n)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="already registered"):
        runtime.workflow("A.flow")(lambda n: n + 1)  # type: ignore[arg-type]
    for options, field in (({"max_recoveries": -1}, "max_recoveries"),
                           ({"timeout": 0}, "timeout")):
        with pytest.raises(ConfigurationError) as caught:
            runtime.workflow("B.flow", **options)  # type: ignore[arg-type]
        assert caught.value.field == field

    async def body(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="async"):
        runtime.workflow("C.flow")(body)  # type: ignore[arg-type]
    for option, value in (("lease", 0), ("lease", float("nan")), ("max_runs", 0),
                          ("max_runs", 1.5), ("executor_id", "")):
        with pytest.raises(ConfigurationError) as caught:
            create_test_runtime(**{option: value})
        assert caught.value.field == option

    class StepsOnly:
        def get(self, step_id: str) -> StepRecord | None:
            return None

        def set(self, record: StepRecord) -> StepRecord:
            return record

        def delete(self, step_id: str) -> bool:
            return False

        def list(self, workflow_id: str | None = None,
                 status: StepStatus | None = None) -> list[StepRecord]:
            return []

        def close(self) -> None:
            pass

    steps_only: StepStorage = StepsOnly()
    plain = create_test_runtime(storage=steps_only)
    for attempt in (lambda: plain.workflow("D.flow"), plain.recover,
                    lambda: plain.start("D.flow", 1)):
        with pytest.raises(ConfigurationError, match="RunStorage"):
            attempt()


def test_bad_run_ids_inputs_and_unknown_runs() -> None:
    """A run id that is not a non-empty str, an input that cannot be encoded, and an unknown
    id: typed errors, nothing written."""
    runtime = create_test_runtime()
    flow = runtime.workflow("A.flow")(lambda n: n)  # type: ignore[arg-type]
    for bad in ("", 42, "r\ud800"):
        with pytest.raises(ConfigurationError) as caught:
            flow.start(1, run_id=bad)  # type: ignore[arg-type]
        assert caught.value.field == "run_id"
    with pytest.raises(SerializationError, match="input"):
        flow.start(object(), run_id="r1")
    assert runtime.list_runs() == []
    with pytest.raises(RunNotFoundError) as caught:
        runtime.get_run("nope")
    assert caught.value.run_id == "nope" and isinstance(caught.value, LookupError)
    handle = runtime._handle("nope")
    for call in (handle.result, handle.status, handle.cancel, handle.resume):
        with pytest.raises(RunNotFoundError):
            call()
    runtime.close()


def test_result_with_a_timeout_raises_timeout_error_and_the_run_goes_on() -> None:
    """result(timeout=) raises the builtin TimeoutError when the time runs out."""
    runtime = create_test_runtime()
    gate = threading.Event()
    runtime.register("Slow.step", lambda n: gate.wait(10))

    @runtime.workflow("Slow.flow")
    def flow(n: int) -> Any:
        return runtime.do("Slow.step", n)

    handle = flow.start(1, run_id="s1")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.2)
    assert time.monotonic() - started < 5
    gate.set()
    assert handle.result(timeout=10) is True
    runtime.close()


def test_close_hands_back_runs_that_have_not_started() -> None:
    """Runs queued on the workers when close() is called go back to PENDING (no recovery
    counted) for another process."""
    storage = InMemoryStepStorage()
    runtime = create_test_runtime(storage=storage, max_runs=1, shutdown_timeout=5)
    gate = threading.Event()
    runtime.register("Slow.step", lambda n: gate.wait(10))

    @runtime.workflow("Slow.flow")
    def flow(n: int) -> Any:
        return runtime.do("Slow.step", n)

    first = flow.start(1, run_id="s1")
    second = flow.start(2, run_id="s2")
    closer = threading.Thread(target=runtime.close)
    closer.start()
    time.sleep(0.2)
    gate.set()
    closer.join(10)
    assert first.status().status is RunStatus.COMPLETED
    record = second.status()
    assert record.status is RunStatus.PENDING and record.recovery_count == 0
    assert record.owner is None


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_runs_waiting_for_a_worker_keep_their_leases(tmp_path: Path, flavour: str) -> None:
    """recover() claims a backlog longer than its workers: the runs still waiting for a
    worker are owned, and the heartbeat renews their leases like those executing, so another
    process cannot take them over (and count a recovery) before they even start. Real time:
    a 1.2 s lease, renewed every 0.4 s, against a 3 s wait."""
    path = tmp_path / "runs.db"
    submitter = DurableWorkflowRuntime(storage=SqliteStepStorage(path))
    for n in range(3):
        submitter.start("Slow.job", n, run_id=f"job-{n}")
    submitter.close()
    gate = threading.Event()

    def other_takes() -> list[str]:
        other = DurableWorkflowRuntime(storage=SqliteStepStorage(path), lease=1.2)
        other.workflow("Slow.job")(lambda n: n)
        claimed = list(other.recover().claimed)
        other.close()
        return claimed

    if flavour == "sync":
        runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(path), lease=1.2,
                                         max_runs=1)
        runtime.workflow("Slow.job")(lambda n: gate.wait(10) and n)
        assert sorted(runtime.recover().claimed) == ["job-0", "job-1", "job-2"]
        time.sleep(3.0)  # two and a half leases: only the heartbeat keeps them
        taken = other_takes()
        gate.set()
        deadline = time.monotonic() + 30
        while len(runtime.list_runs(status=RunStatus.COMPLETED)) < 3:
            assert time.monotonic() < deadline, "the backlog never finished"
            time.sleep(0.01)
        runtime.close()
    else:
        async def main() -> list[str]:
            runtime = AsyncDurableWorkflowRuntime(storage=SqliteStepStorage(path), lease=1.2,
                                                  max_runs=1)

            @runtime.workflow("Slow.job")
            async def job(n: int) -> int:
                while not gate.is_set():
                    await asyncio.sleep(0.01)
                return n

            assert sorted((await runtime.recover()).claimed) == ["job-0", "job-1", "job-2"]
            await asyncio.sleep(3.0)
            taken = await asyncio.to_thread(other_takes)
            gate.set()
            deadline = time.monotonic() + 30
            while len(await runtime.list_runs(status=RunStatus.COMPLETED)) < 3:
                assert time.monotonic() < deadline, "the backlog never finished"
                await asyncio.sleep(0.01)
            await runtime.aclose()
            return taken

        taken = asyncio.run(main())
    assert taken == []
    check = SqliteStepStorage(path)
    runs = check.list_runs(limit=None)
    check.close()
    assert [(r.status, r.recovery_count) for r in runs] == [(RunStatus.COMPLETED, 0)] * 3
