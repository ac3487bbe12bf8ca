"""Thirteen inputs the API accepts that used to break a promise, each with its scenario."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import Flavour
from durably import (
    ConfigurationError,
    InMemoryStepStorage,
    RetryAfterError,
    RetryPolicy,
    SerializationError,
    SqliteStepStorage,
    StepRecord,
    StepStatus,
    StorageError,
    WorkflowStepError,
    current_step,
)
from durably._storage._sqlite._store import MAX_BUSY_TIMEOUT
from durably.testing import FakeClock, create_async_test_runtime, create_test_runtime


def _step_id(action: str, data: Any, **options: Any) -> str:
    """The id a call gets, found with a throwaway runtime."""
    probe = create_test_runtime(**options)
    probe.register(action, lambda data: None)
    probe.do(action, data)
    return probe.storage.list()[0].step_id


# ------------------------------------------------------------------ 1. explicit keys


def test_1_the_same_step_id_in_two_workflows_names_two_steps(flavour: Flavour) -> None:
    """for_workflow("order-1") and ("order-2") each charge under key "charge"; neither
    replays the other's result, and a key with '/' is refused."""
    runtime = flavour.make()
    runtime.register("Pay.charge", lambda amount: f"charged {amount}")
    one, two = runtime.for_workflow("order-1"), runtime.for_workflow("order-2")
    assert flavour.run(one.do("Pay.charge", 10, step_id="charge")) == "charged 10"
    assert flavour.run(two.do("Pay.charge", 99, step_id="charge")) == "charged 99"
    records = {r.step_id: r for r in runtime.storage.list()}
    assert set(records) == {"order-1/charge", "order-2/charge"}
    assert records["order-1/charge"].workflow_id == "order-1"
    with pytest.raises(ConfigurationError, match="'/'") as caught:
        flavour.run(one.do("Pay.charge", 1, step_id="a/b"))
    assert caught.value.field == "step_id"


# ------------------------------------------------------------------ 2. gathered first calls


class CountingLists(InMemoryStepStorage):
    """Counts the history reads."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(self, workflow_id: str | None = None, status: StepStatus | None = None) -> Any:
        self.lists += 1
        return super().list(workflow_id, status)


def test_2_gathered_first_calls_share_one_read() -> None:
    """200 gathered do() calls as a runtime's first calls make one history read."""
    storage = CountingLists()

    async def main() -> list[Any]:
        runtime = create_async_test_runtime(storage=storage)
        runtime.register("A.b", lambda n: n)
        return list(await asyncio.gather(*(runtime.do("A.b", n) for n in range(200))))

    assert asyncio.run(main()) == list(range(200))
    assert storage.lists == 1


def test_2_threads_making_first_calls_at_once_share_one_read() -> None:
    """Eight threads' first calls through one runtime read the history once."""
    storage = CountingLists()
    runtime = create_test_runtime(storage=storage)
    runtime.register("A.b", lambda n: n)
    start = threading.Barrier(8)

    def call(n: int) -> None:
        start.wait()
        runtime.do("A.b", n)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.lists == 1 and len(storage.list()) == 8


# ------------------------------------------------------------------ 3. hostile exceptions


class Unprintable(Exception):
    """An exception whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def test_3_an_exception_whose_str_raises_is_recorded_and_retried_by_the_policy(
        flavour: Flavour) -> None:
    """The policy applies (two attempts), the step ends FAILED (not RUNNING), and the message
    says what happened instead of raising."""
    runtime = flavour.make(retry_policy=RetryPolicy(max_attempts=2, initial_delay=0))
    calls: list[int] = []

    def handler(data: Any) -> None:
        calls.append(1)
        raise Unprintable

    runtime.register("A.b", handler)
    with pytest.raises(WorkflowStepError) as caught:
        flavour.run(runtime.do("A.b", 1))
    assert len(calls) == 2
    assert "Unprintable: <str() raised RuntimeError>" in str(caught.value)
    (record,) = runtime.storage.list()
    assert record.status is StepStatus.FAILED and record.error is not None
    assert record.error.type == "Unprintable" and "RuntimeError" in record.error.message


# ------------------------------------------------------------------ 4. long busy timeouts

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("busy_timeout", [float("inf"), 3e6])
def test_4_a_long_busy_timeout_waits_instead_of_failing_at_once(tmp_path: Path,
                                                                busy_timeout: float) -> None:
    """busy_timeout=inf or 3e6 s is capped at what SQLite can wait, never turned into "do not
    wait": a write behind another process's lock waits for it, then succeeds."""
    path = tmp_path / "s.db"
    storage = SqliteStepStorage(path, busy_timeout=busy_timeout)
    assert storage.busy_timeout == MAX_BUSY_TIMEOUT
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "0.5"],
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        runtime = create_test_runtime(storage=storage)
        runtime.register("A.b", lambda n: n)
        assert runtime.do("A.b", 1) == 1
        holder.wait(30)
    runtime.close()


# ------------------------------------------------------------------ 5, 7, 8. waits


def test_5_a_resumed_wait_is_never_longer_than_max_delay() -> None:
    """A RETRYING record written by a process whose clock was an hour ahead resumes with at
    most max_delay of waiting, not 3,605 s."""
    clock = FakeClock(start=1000.0)
    storage = InMemoryStepStorage()
    policy = RetryPolicy(max_attempts=3, max_delay=10, initial_delay=5, jitter=0)
    step_id = _step_id("A.b", 1)
    storage.set(StepRecord(step_id, "test", "A.b", StepStatus.RETRYING, attempts=1,
                           created_at=4600.0, started_at=4600.0, updated_at=4600.0,
                           next_attempt_at=4605.0, budget_started_at=4600.0))
    runtime = create_test_runtime(storage=storage, clock=clock, retry_policy=policy)
    runtime.register("A.b", lambda n: "done")
    assert runtime.do("A.b", 1) == "done"
    assert clock.sleeps == [10]


def test_7_retry_after_a_huge_delay_waits_max_delay(flavour: Flavour) -> None:
    """RetryAfterError(10**400) (past the float range) waits max_delay as documented."""
    clock = FakeClock()
    runtime = flavour.make(clock=clock, retry_policy=RetryPolicy(max_attempts=2, max_delay=7))
    calls: list[int] = []

    def handler(data: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RetryAfterError(10**400)  # type: ignore[arg-type]
        return "ok"

    runtime.register("A.b", handler)
    assert flavour.run(runtime.do("A.b", 1)) == "ok"
    assert clock.sleeps == [7]


def test_8_a_zero_initial_delay_stays_zero_however_large_the_backoff() -> None:
    """initial_delay=0 gives zero delays even when backoff ** k overflows."""
    policy = RetryPolicy(max_attempts=6, initial_delay=0, backoff=1e308)
    assert policy.delays() == [0, 0, 0, 0, 0]
    clock = FakeClock()
    runtime = create_test_runtime(clock=clock, retry_policy=policy)
    calls: list[int] = []

    def flaky(data: Any) -> str:
        calls.append(1)
        if len(calls) < 6:
            raise ConnectionError("down")
        return "up"

    runtime.register("A.b", flaky)
    assert runtime.do("A.b", 1) == "up" and clock.sleeps == []


# ------------------------------------------------------------------ 6, 9. values

DEEP_REPLAY = """
import sys
from durably import SqliteStepStorage
from durably.testing import create_test_runtime
def nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = [value]
    return value
def deep_call(frames, work):
    return work() if frames == 0 else deep_call(frames - 1, work)
db = sys.argv[1]
runtime = create_test_runtime(storage=SqliteStepStorage(db))
runtime.register("A.deep", lambda n: nested(n))
print(deep_call(int(sys.argv[2]), lambda: runtime.do("A.deep", 99)) == nested(99))
"""


@pytest.mark.slow
def test_6_a_stored_result_replays_from_any_stack_depth(tmp_path: Path) -> None:
    """A value within the nesting limit, stored from a shallow stack, replays from a call
    stack 900 frames deep (decoding does not depend on the caller's depth)."""
    db = str(tmp_path / "s.db")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for frames in ("0", "900"):
        done = subprocess.run([sys.executable, "-c", DEEP_REPLAY, db, frames],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "True"


def test_6_a_result_nested_past_the_limit_is_refused_not_recorded(flavour: Flavour) -> None:
    """A list nested 900 deep is not stored COMPLETED (it could not always be read back): the
    step is FAILED with a SerializationError naming the limit."""
    runtime = flavour.make()

    def deep(data: Any) -> Any:
        value: Any = "leaf"
        for _ in range(900):
            value = [value]
        return value

    runtime.register("A.deep", deep)
    with pytest.raises(SerializationError, match="100 levels"):
        flavour.run(runtime.do("A.deep", 1))
    (record,) = runtime.storage.list()
    assert record.status is StepStatus.FAILED


HUGE = 10**5000


def test_9_an_int_past_the_digit_limit_is_a_serialization_error(flavour: Flavour) -> None:
    """In the data, from do (both flavours): a SerializationError naming the path; try_ runs
    the handler with an unhashed id, as documented; as a result: FAILED, not RUNNING."""
    runtime = flavour.make()
    runtime.register("A.b", lambda data: "ran")
    runtime.register("A.big", lambda data: HUGE)
    with pytest.raises(SerializationError) as caught:
        flavour.run(runtime.do("A.b", {"n": [1, HUGE]}))
    assert caught.value.path == 'data["n"][1]' and "int" in str(caught.value)
    assert runtime.storage.list() == []
    assert flavour.run(runtime.try_("A.b", {"n": HUGE})) == "ran"
    with pytest.raises(SerializationError, match="result"):
        flavour.run(runtime.do("A.big", 1))
    assert [r.status for r in runtime.storage.list()] == [StepStatus.FAILED]


# ------------------------------------------------------------------ 10. odd strings


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_10_lone_surrogates_in_names_are_refused_alike_by_every_backend(
        tmp_path: Path, backend: str) -> None:
    """A workflow id, step key or action name with a lone surrogate is a ConfigurationError
    naming the field, before anything is written, whatever the backend."""
    storage: Any = (InMemoryStepStorage() if backend == "memory"
                    else SqliteStepStorage(tmp_path / "s.db"))
    with pytest.raises(ConfigurationError) as caught:
        create_test_runtime(storage=storage, workflow_id="order-\ud800")
    assert caught.value.field == "workflow_id"
    runtime = create_test_runtime(storage=storage)
    with pytest.raises(ConfigurationError) as caught:
        runtime.register("Pay.\udc00charge", lambda n: n)
    assert caught.value.field == "action"
    runtime.register("Pay.charge", lambda n: n)
    with pytest.raises(ConfigurationError) as caught:
        runtime.do("Pay.charge", 1, step_id="key-\ud800")
    assert caught.value.field == "step_id"
    assert runtime.do("Pay.charge", "data may hold \ud800") == "data may hold \ud800"
    assert len(storage.list()) == 1
    storage.close()


def test_10_sqlite_storage_itself_refuses_them_with_a_storage_error(tmp_path: Path) -> None:
    """Used directly, the SQLite backend raises StorageError naming the field, not a raw
    UnicodeEncodeError."""
    store = SqliteStepStorage(tmp_path / "s.db")
    with pytest.raises(StorageError, match="step_id"):
        store.set(StepRecord("s\ud800", "wf", "A.b", StepStatus.RUNNING, attempts=1))
    with pytest.raises(StorageError, match="step_id"):
        store.get("s\ud800")
    assert store.list() == []
    store.close()


# ------------------------------------------------------------------ 11. platform limits


@pytest.mark.parametrize("fields", [{"timeout": 1e10},
                                    {"initial_delay": 1e10, "max_delay": 1e10}])
def test_11_waits_the_platform_cannot_make_are_refused_when_the_policy_is_built(
        fields: dict[str, float]) -> None:
    """timeout=1e10 (past threading.TIMEOUT_MAX) used to crash after the handler started, and
    a 1e10 s delay inside time.sleep, leaving the step RETRYING."""
    with pytest.raises(ConfigurationError, match="at most") as caught:
        RetryPolicy(**fields)  # type: ignore[arg-type]
    assert caught.value.field in fields


# ------------------------------------------------------------------ 12. max_elapsed on resume


def test_12_a_step_resumed_after_max_elapsed_is_failed_not_run(flavour: Flavour) -> None:
    """Killed during attempt 1 at t=0, resumed at t=10,000 with max_elapsed=60: the attempt
    does not run; the step is FAILED with the reason."""
    storage = InMemoryStepStorage()
    step_id = _step_id("A.b", 1)
    storage.set(StepRecord(step_id, "test", "A.b", StepStatus.RUNNING, attempts=1,
                           created_at=0.0, started_at=0.0, updated_at=0.0,
                           budget_started_at=0.0))
    runtime = flavour.make(storage=storage, clock=FakeClock(start=10_000.0),
                           retry_policy=RetryPolicy(max_attempts=5, max_elapsed=60))
    runtime.register("A.b", lambda n: pytest.fail("the budget had run out"))
    with pytest.raises(WorkflowStepError, match="max_elapsed=60 s") as caught:
        flavour.run(runtime.do("A.b", 1))
    assert type(caught.value.cause).__name__ == "StepInterruptedError"
    (record,) = storage.list()
    assert record.status is StepStatus.FAILED and record.attempts == 1
    assert record.error is not None and "max_elapsed" in record.error.message


def test_12_a_step_resumed_within_max_elapsed_runs() -> None:
    """The same record resumed at t=30 continues its budget."""
    storage = InMemoryStepStorage()
    step_id = _step_id("A.b", 1)
    storage.set(StepRecord(step_id, "test", "A.b", StepStatus.RUNNING, attempts=1,
                           created_at=0.0, started_at=0.0, updated_at=0.0,
                           budget_started_at=0.0))
    runtime = create_test_runtime(storage=storage, clock=FakeClock(start=30.0),
                                  retry_policy=RetryPolicy(max_attempts=5, max_elapsed=60))
    runtime.register("A.b", lambda n: current_step().attempt)  # type: ignore[union-attr]
    assert runtime.do("A.b", 1) == 2


# ------------------------------------------------------------------ 13. hand-edited rows


@pytest.mark.parametrize(("column", "value", "field"), [
    ("attempts", -5, "attempts"),
    ("attempts", "three", "attempts"),
    ("created_at", "yesterday", "created_at"),
    ("next_attempt_at", "soon", "next_attempt_at"),
    ("status", "paused", "status"),
    ("action", b"\x00binary", "action"),
    ("result", b"\x00binary", "result"),
])
def test_13_a_row_that_breaks_the_record_invariants_is_refused(
        tmp_path: Path, column: str, value: Any, field: str) -> None:
    """A hand-edited row is a StorageError naming the step and the field; nothing runs."""
    path = tmp_path / "s.db"
    first = create_test_runtime(storage=SqliteStepStorage(path),
                                retry_policy=RetryPolicy(max_attempts=3))
    first.register("A.b", lambda n: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        first.do("A.b", 1)  # leaves the step RUNNING, as a crash would
    first.close()
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE durably_steps SET {column} = ?", (value,))
    conn.commit()
    conn.close()
    runtime = create_test_runtime(storage=SqliteStepStorage(path),
                                  retry_policy=RetryPolicy(max_attempts=3))
    runs: list[int] = []
    runtime.register("A.b", lambda n: runs.append(n))
    with pytest.raises(StorageError) as caught:
        runtime.do("A.b", 1)
    assert field in str(caught.value) and caught.value.step_id is not None
    assert caught.value.step_id in str(caught.value)
    assert runs == []
    runtime.close()

