"""What both runtime flavours share: explicit options, hooks as events, siblings, drivers."""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import Flavour
from durably import (
    AsyncDurableWorkflowRuntime,
    DurableWorkflowRuntime,
    InMemoryStepStorage,
    RetryPolicy,
    SqliteStepStorage,
    StepEvent,
    StepStatus,
    StorageError,
    WorkflowStepError,
)
from durably.testing import FakeClock, create_async_test_runtime, create_test_runtime

OPTIONS = ["storage", "retry_policy", "workflow_id", "on_step_start", "on_step_complete",
           "on_step_error", "hooks", "clock", "codec", "executor_id", "lease", "max_runs",
           "code_version", "shutdown_timeout", "suspend_after"]


@pytest.mark.parametrize("cls", [DurableWorkflowRuntime, AsyncDurableWorkflowRuntime])
def test_constructors_spell_out_their_parameters(cls: type) -> None:
    """inspect.signature (and so IDEs and mypy) see every option; a misspelt one is refused."""
    parameters = inspect.signature(cls).parameters
    assert list(parameters) == OPTIONS
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
               for name in OPTIONS[6:])
    with pytest.raises(TypeError, match="retry_polcy"):
        cls(retry_polcy=RetryPolicy())


class Recorder:
    """A StepHooks implementation that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, StepEvent]] = []

    def on_step_start(self, event: StepEvent) -> None:
        self.events.append(("start", event))

    def on_step_complete(self, event: StepEvent) -> None:
        self.events.append(("complete", event))

    def on_step_error(self, event: StepEvent) -> None:
        self.events.append(("error", event))


def test_hooks_object_receives_one_frozen_event_per_call(flavour: Flavour) -> None:
    """A StepHooks object is told about each attempt with a StepEvent carrying the step id,
    workflow, action, mode, attempt, pipeline, and the result or error."""
    recorder = Recorder()
    runtime = flavour.make(hooks=recorder, retry_policy=RetryPolicy(max_attempts=2,
                                                                    initial_delay=0))
    calls = []

    def flaky(data: Any) -> str:
        calls.append(data)
        if len(calls) == 1:
            raise ConnectionError("down")
        return "up"

    runtime.register("Net.call", flaky)
    assert flavour.run(runtime.do("Net.call", {"host": "a"})) == "up"
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["start", "error", "start", "complete"]
    start, error, _, complete = (event for _, event in recorder.events)
    (record,) = runtime.storage.list()
    assert {e.step_id for _, e in recorder.events} == {record.step_id}
    assert (start.workflow_id, start.action, start.mode, start.attempt) == (
        "test", "Net.call", "do", 1)
    assert start.pipeline.context == {"host": "a"} and start.pipeline.action == "Net.call"
    assert isinstance(error.error, ConnectionError) and error.attempt == 1
    assert complete.result == "up" and complete.attempt == 2 and complete.error is None
    with pytest.raises(AttributeError):
        complete.result = "changed"  # type: ignore[misc]


def test_hooks_object_may_implement_only_some_methods_and_joins_the_callables(
        flavour: Flavour) -> None:
    """A hooks object with one method is enough, and the three callables still fire too."""
    completed: list[Any] = []
    seen: list[Any] = []

    class OnlyComplete:
        def on_step_complete(self, event: StepEvent) -> None:
            completed.append(event.result)

    runtime = flavour.make(hooks=OnlyComplete(),
                           on_step_complete=lambda step_id, result: seen.append(result))
    runtime.register("A.b", lambda data: data * 2)
    assert flavour.run(runtime.do("A.b", 21)) == 42
    assert completed == seen == [42]


def test_a_failed_record_keeps_its_traceback_and_a_retrying_one_does_not(
        flavour: Flavour) -> None:
    """The FAILED record carries the formatted traceback (what people debug); the RETRYING
    marker before it carries only type, module and message."""
    storage = InMemoryStepStorage()
    clock = FakeClock()
    seen: list[Any] = []
    runtime = flavour.make(storage=storage, clock=clock,
                           retry_policy=RetryPolicy(max_attempts=2, initial_delay=5, jitter=0),
                           on_step_error=lambda *a: seen.append(storage.list()[0].error))

    def refuse_payment(data: Any) -> None:
        raise ValueError("card declined")

    runtime.register("Pay.charge", refuse_payment)
    with pytest.raises(WorkflowStepError):
        flavour.run(runtime.do("Pay.charge", 1))
    (record,) = storage.list()
    assert record.status is StepStatus.FAILED and record.error is not None
    assert "Traceback" in record.error.traceback
    assert "refuse_payment" in record.error.traceback
    assert "card declined" in record.error.traceback
    # What the second attempt's marker carried: the first error, without its traceback.
    assert seen[1] is not None and seen[1].message == "card declined"
    assert seen[1].traceback == ""


def test_a_sibling_shares_storage_and_registry_but_numbers_its_own_calls(
        flavour: Flavour) -> None:
    """for_workflow gives a runtime of another workflow that sees the same actions."""
    runtime = flavour.make()
    runtime.register("A.b", lambda n: n + 1)
    sibling = runtime.for_workflow("other")
    assert sibling.storage is runtime.storage and sibling.workflow_id == "other"
    assert flavour.run(sibling.do("A.b", 1)) == 2
    assert [r.workflow_id for r in runtime.storage.list()] == ["other"]


def test_closing_either_sibling_closes_both(tmp_path: Path) -> None:
    """Closing the original closes the shared storage, and the sibling reports closed."""
    runtime = create_test_runtime(storage=SqliteStepStorage(tmp_path / "s.db"))
    sibling = runtime.for_workflow("other")
    assert not runtime.closed and not sibling.closed
    runtime.close()
    assert runtime.closed and sibling.closed
    with pytest.raises(StorageError, match="closed"):
        sibling.storage.list()


def test_closing_an_async_original_stops_the_sibling_and_its_storage_threads(
        tmp_path: Path) -> None:
    """After aclose() on the original, the async sibling reports closed and no storage
    thread is left alive."""

    async def main() -> tuple[bool, bool]:
        runtime = create_async_test_runtime(storage=SqliteStepStorage(tmp_path / "s.db"))
        runtime.register("A.b", lambda n: n)
        sibling = runtime.for_workflow("other")
        await sibling.do("A.b", 1)  # the sibling's storage calls start the storage threads
        await runtime.aclose()
        return runtime.closed, sibling.closed

    assert asyncio.run(main()) == (True, True)
    for thread in threading.enumerate():
        if thread.name.startswith("durably-storage"):
            thread.join(10)
    assert not [t for t in threading.enumerate() if t.name.startswith("durably-storage")]


class _Unknown:
    """A command no driver knows."""


def _machine_yielding_an_unknown_command() -> Any:
    yield _Unknown()
    return "never"


def test_drivers_refuse_a_command_they_do_not_know() -> None:
    """A command of an unknown type raises instead of falling into another branch."""
    sync = create_test_runtime()
    with pytest.raises(TypeError, match="cannot answer"):
        sync._drive(_machine_yielding_an_unknown_command())

    async def main() -> None:
        runtime = create_async_test_runtime()
        await runtime._drive(_machine_yielding_an_unknown_command())

    with pytest.raises(TypeError, match="cannot answer"):
        asyncio.run(main())


class CountingMemory(InMemoryStepStorage):
    """A subclass that records which thread each write ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def set(self, record: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        return super().set(record)


class BlockingMemory(CountingMemory):
    """The same, declaring that its calls block."""

    blocking = True


@pytest.mark.parametrize(("storage_class", "on_loop"), [(CountingMemory, True),
                                                        (BlockingMemory, False)])
def test_the_async_runtime_asks_the_storage_whether_its_calls_block(
        storage_class: type[CountingMemory], on_loop: bool) -> None:
    """A subclass of the in-memory storage stays on the loop; one that declares blocking=True
    is called from the storage thread pool."""
    storage = storage_class()

    async def main() -> str:
        runtime = create_async_test_runtime(storage=storage)
        runtime.register("A.b", lambda n: n)
        await runtime.do("A.b", 1)
        await runtime.aclose()
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert (storage.threads == {loop_thread}) is on_loop
