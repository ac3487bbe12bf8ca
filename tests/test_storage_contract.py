"""The public storage contract suite, run against every built-in backend."""

from __future__ import annotations

from pathlib import Path

from durably import InMemoryStepStorage, SqliteStepStorage, StepRecord, StepStatus
from durably.testing import RunStorageContract, StorageContract


class TestBackends(StorageContract):
    """Every contract check, against the parametrized ``storage`` fixture (memory, SQLite)."""


class TestRunBackends(RunStorageContract):
    """Every run contract check, against the same backends."""


def test_run_executes_every_check_outside_pytest(tmp_path: Path) -> None:
    """StorageContract.run calls each check on a fresh storage and reports them all."""
    made: list[SqliteStepStorage] = []

    def make() -> SqliteStepStorage:
        made.append(SqliteStepStorage(tmp_path / f"run{len(made)}.db"))
        return made[-1]

    passed = StorageContract.run(make)
    assert passed == StorageContract.check_names()
    assert len(made) == len(passed) >= 10


def test_run_reports_a_broken_adapter() -> None:
    """An adapter that replaces COMPLETED records fails the contract."""

    class Forgetful(InMemoryStepStorage):
        def set(self, record):  # type: ignore[no-untyped-def]
            self._records[record.step_id] = record
            return record

    try:
        StorageContract.run(Forgetful)
    except AssertionError:
        return
    raise AssertionError("the contract accepted a backend that overwrites completed steps")


def test_in_memory_clear_removes_everything() -> None:
    """clear() empties the in-memory store."""
    store = InMemoryStepStorage()
    store.set(StepRecord("a", "wf", "A.b", StepStatus.RUNNING, attempts=1))
    store.clear()
    assert store.list() == [] and store.get("a") is None
