"""The public test helpers: FakeClock and create_test_runtime."""

from __future__ import annotations

from durably import InMemoryStepStorage, RetryPolicy, SqliteStepStorage
from durably.testing import FakeClock, create_test_runtime


def test_fake_clock_sleeps_instantly_and_records() -> None:
    """sleep advances now() and is recorded; advance() moves time silently."""
    clock = FakeClock(start=10.0)
    clock.sleep(2.5)
    clock.advance(1.0)
    clock.sleep(0)
    assert clock.now() == 13.5
    assert clock.sleeps == [2.5, 0]


def test_create_test_runtime_defaults() -> None:
    """In-memory storage, a fake clock, one attempt without delay, workflow "test"."""
    runtime = create_test_runtime()
    assert isinstance(runtime.storage, InMemoryStepStorage)
    assert isinstance(runtime.clock, FakeClock)
    assert runtime.retry_policy == RetryPolicy(max_attempts=1, initial_delay=0)
    assert runtime.workflow_id == "test"


def test_create_test_runtime_overrides(tmp_path: object) -> None:
    """Any constructor argument replaces the default."""
    storage = SqliteStepStorage(":memory:")
    runtime = create_test_runtime(storage=storage, workflow_id="wf")
    assert runtime.storage is storage and runtime.workflow_id == "wf"
    runtime.close()
