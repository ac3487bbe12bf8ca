"""Seeded property tests over generated hostile inputs: huge numbers, deep nesting, odd
strings, clocks that disagree, and hand-edited rows. Each case must end in a documented
outcome (a value that replays, or a typed durably error), never a raw exception, a wrong
replay or a broken budget."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from durably import (
    ConfigurationError,
    DurableError,
    InMemoryStepStorage,
    RetryPolicy,
    SerializationError,
    SqliteStepStorage,
    StepStatus,
    StorageError,
    WorkflowStepError,
)
from durably.testing import FakeClock, create_test_runtime

ODD_STRINGS = ["", "\x00", "\ud800", "\udfff", "a\ud83d", "🙂", "\u202egnp.exe", "é" * 300,
               "line\nbreak", "tab\t", "'; DROP TABLE x; --", "\\", '"', "/", "#1", "x" * 5000]


def odd_string(rng: random.Random) -> str:
    """A string from the list above, or a random mix of awkward code points."""
    if rng.random() < 0.5:
        return rng.choice(ODD_STRINGS)
    points = [0, 0x7F, 0xD800, 0xDBFF, 0xDC00, 0xFFFF, 0x10FFFF, 0x1F600, 0x202E, 0x0301]
    return "".join(chr(rng.choice(points) if rng.random() < 0.5 else rng.randint(32, 126))
                   for _ in range(rng.randint(0, 12)))


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    """A value mixing huge and odd numbers, odd strings and nesting up to ~150 deep."""
    roll = rng.random()
    if roll < 0.1:  # a deep chain, around the nesting limit
        value: Any = "leaf"
        for _ in range(rng.choice([50, 98, 99, 100, 101, 150])):
            value = [value] if rng.random() < 0.5 else {"k": value}
        return value
    if depth > 3 or roll < 0.45:
        return rng.choice([
            lambda: rng.randint(-10, 10) * 10 ** rng.choice([0, 10, 300, 4299, 4300, 6000]),
            lambda: rng.choice([0.0, -0.0, 1e308, -1e-308, math.pi]),
            lambda: odd_string(rng),
            lambda: rng.choice([True, False, None]),
        ])()
    items = [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    kind = rng.randrange(3)
    if kind == 0:
        return items
    if kind == 1:
        return tuple(items)
    return {odd_string(rng): item for item in items}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_hostile_values_replay_or_are_refused_with_a_serialization_error(
        tmp_path: Path, backend: str) -> None:
    """300 generated values as data and as results: each call either succeeds and replays an
    equal value from a fresh runtime, or raises SerializationError; a refused result leaves
    the step FAILED, never RUNNING or COMPLETED."""
    rng = random.Random(f"values-{backend}")
    storage: Any = (InMemoryStepStorage() if backend == "memory"
                    else SqliteStepStorage(tmp_path / "s.db"))
    for case in range(300):
        data, result = hostile_value(rng), hostile_value(rng)
        runtime = create_test_runtime(storage=storage, workflow_id=f"w{case}")
        runtime.register("A.b", lambda _data, value=result: value)
        try:
            first = runtime.do("A.b", data)
        except SerializationError:
            records = storage.list(workflow_id=f"w{case}")
            assert all(r.status is StepStatus.FAILED for r in records), case
            continue
        replay = create_test_runtime(storage=storage, workflow_id=f"w{case}")
        replay.register("A.b", lambda _data: pytest.fail("a completed step ran again"))
        assert replay.do("A.b", data) == first, case
    storage.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_odd_names_behave_the_same_on_every_backend(tmp_path: Path, backend: str) -> None:
    """Generated workflow ids, step keys and action names: each is refused with a
    ConfigurationError naming its field, or works and replays; the outcome does not depend
    on the backend (the seed is the same for both)."""
    rng = random.Random("names")
    storage: Any = (InMemoryStepStorage() if backend == "memory"
                    else SqliteStepStorage(tmp_path / "s.db"))
    outcomes = []
    for _ in range(200):
        workflow, key, action = odd_string(rng), odd_string(rng), "A." + odd_string(rng)
        try:
            runtime = create_test_runtime(storage=storage, workflow_id=workflow)
            runtime.register(action, lambda n: n * 2)
            value = runtime.do(action, 21, step_id=key)
            again = create_test_runtime(storage=storage, workflow_id=workflow)
            again.register(action, lambda n: pytest.fail("replayed step ran"))
            assert again.do(action, 21, step_id=key) == value == 42
            outcomes.append("ok")
        except ConfigurationError as error:
            assert error.field in ("workflow_id", "step_id", "action")
            outcomes.append(error.field)
    assert set(outcomes) >= {"ok", "workflow_id", "step_id", "action"}
    expected = _NAME_OUTCOMES.setdefault("outcomes", outcomes)
    assert outcomes == expected  # identical for memory and SQLite
    storage.close()


_NAME_OUTCOMES: dict[str, list[str]] = {}


def test_clocks_that_disagree_never_stretch_a_wait_or_a_budget() -> None:
    """A flaky step resumed by "processes" whose clocks are up to a day apart (and may step
    back): every wait stays within max_delay, attempts never exceed max_attempts, and the step
    ends COMPLETED or FAILED with a WorkflowStepError."""
    rng = random.Random("clocks")
    for case in range(150):
        storage = InMemoryStepStorage()
        policy = RetryPolicy(max_attempts=rng.randint(1, 5), initial_delay=rng.choice([0, 1, 5]),
                             max_delay=rng.choice([0.5, 3, 10]), jitter=rng.random(),
                             max_elapsed=rng.choice([None, 30.0, 1e5]))
        fail_times = rng.randint(0, 6)
        calls: list[int] = []
        outcome = None
        for _ in range(8):  # up to eight "processes", each with its own clock
            clock = FakeClock(start=1e6 + rng.uniform(-86400, 86400))
            runtime = create_test_runtime(storage=storage, clock=clock, retry_policy=policy)

            def flaky(data: Any, calls: list[int] = calls, fail_times: int = fail_times) -> str:
                calls.append(1)
                if rng.random() < 0.3:
                    raise KeyboardInterrupt  # this "process" dies mid-attempt
                if len(calls) <= fail_times:
                    raise ConnectionError("down")
                return "up"

            runtime.register("A.b", flaky)
            try:
                outcome = runtime.do("A.b", 1)
            except KeyboardInterrupt:
                continue
            except WorkflowStepError:
                outcome = "failed"
            finally:
                assert all(0 <= s <= policy.max_delay for s in clock.sleeps), case
            (record,) = storage.list()
            assert record.attempts <= policy.max_attempts, case
            if outcome == "failed":
                assert record.status is StepStatus.FAILED
            break
        if outcome == "up":
            (record,) = storage.list()
            assert record.status is StepStatus.COMPLETED


COLUMNS = ["action", "status", "result", "error", "attempts", "created_at", "started_at",
           "updated_at", "completed_at", "next_attempt_at", "budget_started_at"]


def test_hand_edited_rows_are_refused_or_resumed_sanely(tmp_path: Path) -> None:
    """300 random edits of one column of an interrupted step's row: the next call either
    raises StorageError naming the step (and runs nothing), or resumes within its budget; it
    never raises anything else."""
    rng = random.Random("rows")
    junk = [None, -5, 0, 7, 2**62, -1e300, 1e300, float("inf"), "text", b"\x00\x01", "",
            '{"type": 1}', '{"type": "E", "module": "m", "message": "x"}', "completed",
            "running", "retrying", "failed", "paused", 3.5]
    for case in range(300):
        path = tmp_path / f"s{case}.db"
        first = create_test_runtime(storage=SqliteStepStorage(path),
                                    retry_policy=RetryPolicy(max_attempts=3))
        first.register("A.b", lambda n: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            first.do("A.b", 1)
        first.close()
        conn = sqlite3.connect(path)
        column = rng.choice(COLUMNS)
        try:
            conn.execute(f"UPDATE durably_steps SET {column} = ?", (rng.choice(junk),))
        except sqlite3.IntegrityError:
            continue  # the schema itself refuses that edit (a NULL in a NOT NULL column)
        finally:
            conn.commit()
            conn.close()
        runs: list[int] = []
        runtime = create_test_runtime(storage=SqliteStepStorage(path),
                                      retry_policy=RetryPolicy(max_attempts=3))
        runtime.register("A.b", lambda n, runs=runs: runs.append(n) or "ok")
        try:
            runtime.do("A.b", 1)
        except StorageError as error:
            assert error.step_id is not None and runs == [], (case, column)
        except DurableError:
            pass  # a step error from a budget the edit used up: documented
        else:
            (record,) = runtime.storage.list()
            assert record.attempts <= 3 and len(runs) <= 3, (case, column)
        runtime.close()
