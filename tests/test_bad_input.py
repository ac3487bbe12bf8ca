"""Bad input, one case per test: a clear error (type and message), and a store left as it was.

Every test runs a workflow on SQLite that already holds one completed step, feeds it one bad
input, and checks the error and that the stored records are what they were (apart from the
documented FAILED record of a step whose result could not be encoded). Storage files that are
garbage, newer, read-only or on a missing directory are covered in test_storage_sqlite.py; the
cases here add truncated and locked databases and everything that goes through the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import (
    ConfigurationError,
    DurableWorkflowRuntime,
    HandlerNotFoundError,
    RetryPolicy,
    SerializationError,
    SqliteStepStorage,
    StepRecord,
    StepStatus,
    StorageError,
    WorkflowStepError,
)
from durably.testing import create_test_runtime


class Setup:
    """A runtime on SQLite holding one completed step, and a snapshot to compare against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runtime = create_test_runtime(storage=SqliteStepStorage(path))
        self.runtime.register("Good.step", lambda data: {"kept": data})
        self.runtime.do("Good.step", 1)
        self.before = self.records()

    def records(self) -> list[StepRecord]:
        return self.runtime.storage.list()

    def assert_unchanged(self) -> None:
        assert self.records() == self.before


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """The workflow and its store."""
    prepared = Setup(tmp_path / "steps.db")
    yield prepared
    prepared.runtime.close()


def _recursive() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


UNENCODABLE = {
    "object": (lambda: {"payload": object()}, "object", '["payload"]'),
    "lambda": (lambda: [1, lambda: None], "function", "[1]"),
    "generator": (lambda: {"rows": (n for n in range(3))}, "generator", '["rows"]'),
    "recursive list": (_recursive, "list", "[0]"),
}


@pytest.mark.parametrize("case", UNENCODABLE)
def test_unencodable_arguments_are_refused_before_anything_runs(setup: Setup,
                                                                 case: str) -> None:
    """Arguments that cannot be hashed: SerializationError with type and path; no record."""
    make, type_name, path = UNENCODABLE[case]
    setup.runtime.register("Bad.step", lambda data: pytest.fail("must not run"))
    with pytest.raises(SerializationError) as caught:
        setup.runtime.do("Bad.step", make())
    assert caught.value.type_name == type_name
    assert caught.value.path == "data" + path
    assert f"data{path}" in str(caught.value) and "Bad.step" in str(caught.value)
    setup.assert_unchanged()


@pytest.mark.parametrize("value", [math.nan, math.inf, {"price": -math.inf}])
def test_nan_and_infinity_in_an_id_are_refused(setup: Setup, value: Any) -> None:
    """NaN/Infinity cannot be part of a step id: SerializationError saying why."""
    setup.runtime.register("Bad.step", lambda data: pytest.fail("must not run"))
    with pytest.raises(SerializationError, match="NaN and Infinity cannot be hashed"):
        setup.runtime.do("Bad.step", value)
    setup.assert_unchanged()


@pytest.mark.parametrize("case", UNENCODABLE)
def test_unencodable_results_fail_the_step_and_nothing_else(setup: Setup, case: str) -> None:
    """A result the codec refuses: SerializationError naming the step and path; the step is
    recorded FAILED (so the next call starts afresh), every other record is untouched."""
    make, type_name, path = UNENCODABLE[case]
    setup.runtime.register("Bad.step", lambda data: make())
    with pytest.raises(SerializationError) as caught:
        setup.runtime.do("Bad.step", 2)
    assert caught.value.type_name == type_name and caught.value.path == "result" + path
    assert caught.value.step_id is not None and caught.value.step_id in str(caught.value)
    after = setup.records()
    assert [r for r in after if r.action == "Good.step"] == setup.before
    (failed,) = [r for r in after if r.action == "Bad.step"]
    assert failed.status is StepStatus.FAILED and failed.result is None
    assert failed.error is not None and failed.error.type == "SerializationError"


@pytest.mark.slow
def test_a_50_mb_result_is_stored_and_replayed(setup: Setup) -> None:
    """Large results are not an error: 50 MB round-trips through SQLite and replays."""
    big = "x" * (50 * 1024 * 1024)
    setup.runtime.register("Big.step", lambda data: big)
    assert setup.runtime.do("Big.step", 1) == big
    rerun = create_test_runtime(storage=SqliteStepStorage(setup.path))
    assert rerun.do("Big.step", 1) == big  # replayed: no handler registered here
    rerun.close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Connection.setlimit needs 3.11")
def test_a_result_over_the_database_limit_is_a_storage_error(tmp_path: Path) -> None:
    """A result larger than SQLite accepts: StorageError naming the step; nothing recorded
    but the attempt's marker, so the next call counts that attempt and tries again."""

    class Limited(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000)
            return conn

    runtime = create_test_runtime(storage=Limited(tmp_path / "steps.db"))
    runtime.register("Big.step", lambda data: "x" * 20_000)
    with pytest.raises(StorageError) as caught:
        runtime.do("Big.step", 1)
    assert caught.value.step_id is not None and caught.value.step_id in str(caught.value)
    (record,) = runtime.storage.list()
    assert record.status is StepStatus.RUNNING and record.result is None
    runtime.close()


def test_unknown_action(setup: Setup) -> None:
    """An action nobody registered: HandlerNotFoundError naming it; nothing recorded."""
    with pytest.raises(HandlerNotFoundError, match=r"'Nope\.missing'"):
        setup.runtime.do("Nope.missing", 1)
    setup.assert_unchanged()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "RetryPolicy.max_attempts must be an int >= 1, got 0"),
        ({"backoff": 0.5}, "RetryPolicy.backoff must be a finite number >= 1, got 0.5"),
        ({"jitter": 2}, "RetryPolicy.jitter must be a number from 0 to 1, got 2"),
        ({"timeout": -1}, "RetryPolicy.timeout must be None or a finite number > 0, got -1"),
        ({"non_retryable": ("KeyError",)},
         "RetryPolicy.non_retryable must be an exception class or a tuple"),
    ],
)
def test_invalid_policy(setup: Setup, fields: dict[str, Any], message: str) -> None:
    """A bad policy field: ConfigurationError naming field, rule and value, at construction."""
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**fields)
    assert str(caught.value).startswith(message)
    setup.assert_unchanged()


def test_a_hook_that_raises(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A raising hook is logged with the step id; the step completes exactly once."""

    def broken_hook(step_id: str, *rest: Any) -> None:
        raise ValueError("hook bug")

    runtime = create_test_runtime(storage=setup.runtime.storage, on_step_start=broken_hook,
                                  on_step_complete=broken_hook)
    calls: list[int] = []
    runtime.register("Hooked.step", lambda data: calls.append(data) or "done")
    with caplog.at_level(logging.ERROR, logger="durably"):
        assert runtime.do("Hooked.step", 5) == "done"
    assert calls == [5] and "hook bug" in caplog.text and "on_step_start" in caplog.text
    added = [r for r in setup.records() if r not in setup.before]
    assert [(r.action, r.status) for r in added] == [("Hooked.step", StepStatus.COMPLETED)]


def test_a_sync_handler_returning_a_coroutine(setup: Setup) -> None:
    """The sync runtime cannot await: the step fails at once with a ConfigurationError cause
    that says what to do, and the coroutine is closed (no 'never awaited' warning)."""

    async def work() -> int:
        return 1

    setup.runtime.register("Async.mistake", lambda data: work())
    with pytest.raises(WorkflowStepError) as caught:
        setup.runtime.do("Async.mistake", 1)
    cause = caught.value.__cause__
    assert isinstance(cause, ConfigurationError)
    assert "AsyncDurableWorkflowRuntime" in str(cause) and caught.value.attempts == 1
    assert [r for r in setup.records() if r.action == "Good.step"] == setup.before


def test_a_coroutine_function_handler_in_the_sync_runtime(setup: Setup) -> None:
    """Registering an async def in the sync runtime is refused at registration."""

    async def handler(data: Any) -> None:
        await asyncio.sleep(0)

    with pytest.raises(ConfigurationError, match="coroutine function"):
        setup.runtime.register("Async.handler", handler)
    setup.assert_unchanged()


def test_truncated_database(setup: Setup) -> None:
    """A database file cut short: StorageError naming the path; the file is not modified."""
    for n in range(200):
        setup.runtime.do("Good.step", {"n": n, "pad": "x" * 400})
    setup.runtime.close()
    data = setup.path.read_bytes()
    setup.path.write_bytes(data[: len(data) // 2])
    truncated = setup.path.read_bytes()
    with pytest.raises(StorageError) as caught:
        SqliteStepStorage(setup.path)
    assert caught.value.path == str(setup.path) and str(setup.path) in str(caught.value)
    assert setup.path.read_bytes() == truncated
    setup.runtime = DurableWorkflowRuntime()  # the fixture closes this one instead


def test_locked_database(setup: Setup) -> None:
    """Another connection holds the write lock past busy_timeout: StorageError naming the
    step and "locked"; nothing half-written, and the step runs once the lock is gone."""
    runtime = create_test_runtime(storage=SqliteStepStorage(setup.path, busy_timeout=0.05))
    calls: list[int] = []
    runtime.register("Locked.step", lambda data: calls.append(data) or "ran")
    blocker = sqlite3.connect(setup.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match="locked") as caught:
            runtime.do("Locked.step", 1)
        assert caught.value.step_id is not None
        assert calls == []  # the RUNNING marker could not be written, so nothing ran
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    setup.assert_unchanged()
    retry = runtime.for_workflow(runtime.workflow_id)
    assert retry.do("Locked.step", 1) == "ran" and calls == [1]
    runtime.close()


def test_undecodable_stored_result(setup: Setup) -> None:
    """A stored result that is not valid codec text: StorageError naming the step id."""
    (record,) = setup.before
    conn = sqlite3.connect(setup.path)
    conn.execute("UPDATE durably_steps SET result = ? WHERE step_id = ?",
                 ('{"__durably__":"bytes","v":"not base64!"}', record.step_id))
    conn.commit()
    conn.close()
    rerun = create_test_runtime(storage=SqliteStepStorage(setup.path))
    with pytest.raises(StorageError) as caught:
        rerun.do("Good.step", 1)
    assert caught.value.step_id == record.step_id and record.step_id in str(caught.value)
    rerun.close()


def test_corrupt_status_in_a_row(setup: Setup) -> None:
    """A row with an unknown status: StorageError naming the step id, not a crash."""
    (record,) = setup.before
    conn = sqlite3.connect(setup.path)
    conn.execute("UPDATE durably_steps SET status = 'weird' WHERE step_id = ?",
                 (record.step_id,))
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match=record.step_id):
        setup.runtime.for_workflow(setup.runtime.workflow_id).do("Good.step", 1)


def test_database_file_made_read_only_is_refused(setup: Setup) -> None:
    """A database file without write permission: StorageError at construction, untouched."""
    os.chmod(setup.path, 0o400)
    try:
        before = setup.path.read_bytes()
        with pytest.raises(StorageError, match="read-only"):
            SqliteStepStorage(setup.path)
        assert setup.path.read_bytes() == before
    finally:
        os.chmod(setup.path, 0o600)
