"""What a runtime keeps of a workflow's records: one read, then only what is unfinished."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from pathlib import Path
from typing import Any

from conftest import Flavour
from durably import (
    InMemoryStepStorage,
    RetryPolicy,
    SqliteStepStorage,
    StepStatus,
    WorkflowStepError,
)
from durably._view import FIRST_PAGE
from durably.testing import create_test_runtime

RESULT = {"order": 42, "customer": "c" * 200, "items": ["sku"] * 20}  # ~400 bytes encoded


def _growth_per_step(run: Any, steps: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(steps)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / steps


# The records live in SQLite (memory that tracemalloc does not see), so what is measured is
# what the runtime itself keeps.


def test_a_runtime_does_not_keep_the_steps_it_completes(tmp_path: Path) -> None:
    """A long-lived runtime's memory grows by far less than a record per completed step."""
    runtime = create_test_runtime(storage=SqliteStepStorage(tmp_path / "s.db"))
    runtime.register("A.b", lambda n: RESULT)
    runtime.do("A.b", -1)  # the first call reads the (empty) history

    def run(steps: int) -> None:
        for n in range(steps):
            runtime.do("A.b", n)

    # A kept record with its ~400-byte result would cost well over 1 KB per step; the call
    # numbering that must stay (one entry per distinct call) costs a few hundred bytes.
    assert _growth_per_step(run, 5000) < 400
    runtime.close()


def test_replay_reads_history_as_it_needs_it_and_forgets_what_it_replayed(
        tmp_path: Path) -> None:
    """The first call of a long workflow reads one small page, not the whole history; later
    pages grow as the replay goes on; after the replay, what the runtime holds is the call
    numbering only (well under 200 bytes per completed call), not the records."""
    storage = SqliteStepStorage(tmp_path / "s.db")
    first = create_test_runtime(storage=storage)
    first.register("A.b", lambda n: RESULT)
    for n in range(5000):
        first.do("A.b", n)
    pages: list[int] = []
    history = storage.history

    def counting(workflow_id: str, after: Any, limit: int) -> Any:
        pages.append(limit)
        return history(workflow_id, after, limit)

    storage.history = counting  # type: ignore[method-assign]
    replay = create_test_runtime(storage=storage)
    replay.register("A.b", lambda n: RESULT)
    gc.collect()
    tracemalloc.start()
    try:
        replay.do("A.b", 0)
        after_first = tracemalloc.get_traced_memory()[0]
        assert pages == [FIRST_PAGE]
        for n in range(1, 5000):
            replay.do("A.b", n)
        gc.collect()
        after_replay = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert pages[:4] == [FIRST_PAGE, 2 * FIRST_PAGE, 4 * FIRST_PAGE, 8 * FIRST_PAGE]
    assert sum(pages) >= 5000 and len(pages) < 20
    assert after_first < 100_000  # one page: not 5000 records of ~1 KB
    assert after_replay < 200 * 5000
    storage.close()


def test_history_reads_back_in_call_order_under_a_fake_clock(flavour: Flavour,
                                                              tmp_path: Any) -> None:
    """With every timestamp equal, storage.list(workflow_id) returns steps in call order."""
    for storage in (InMemoryStepStorage(), SqliteStepStorage(tmp_path / f"{flavour.name}.db")):
        runtime = flavour.make(storage=storage)
        runtime.register("A.b", lambda n: n)
        calls = [7, 3, 9, 1, 5, 8, 2]
        for n in calls:
            flavour.run(runtime.do("A.b", n))
        records = storage.list(workflow_id="test")
        assert {r.created_at for r in records} == {0.0}
        assert [r.result for r in records] == [str(n) for n in calls]
        flavour.close(runtime)


def test_an_unfinished_step_is_continued_from_what_the_runtime_knows() -> None:
    """A call that comes back to a failed step in the same runtime starts its fresh budget
    from the record the runtime holds (it does not need to read it again)."""
    storage = InMemoryStepStorage()
    runtime = create_test_runtime(storage=storage, retry_policy=RetryPolicy(max_attempts=2,
                                                                             initial_delay=0))
    outcomes = iter([ValueError("1"), ValueError("2"), "ok"])

    def flaky(data: Any) -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    runtime.register("A.b", flaky)
    with contextlib.suppress(WorkflowStepError):
        runtime.do("A.b", 1, step_id="key")
    (failed,) = storage.list()
    assert failed.status is StepStatus.FAILED and failed.attempts == 2
    assert runtime.do("A.b", 1, step_id="key") == "ok"
    (done,) = storage.list()
    assert done.status is StepStatus.COMPLETED and done.attempts == 1
    assert done.created_at == failed.created_at
