"""Fixtures shared by the test modules."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import InMemoryStepStorage, SqliteStepStorage, StepRecord, StepStatus, StepStorage


def make_record(step_id: str, **fields: Any) -> StepRecord:
    """A RUNNING record of workflow "wf" at t=100, with any field overridden."""
    values: dict[str, Any] = {
        "workflow_id": "wf", "action": "Test.step", "status": StepStatus.RUNNING,
        "attempts": 1, "created_at": 100.0, "started_at": 100.0, "updated_at": 100.0,
        "budget_started_at": 100.0,
    }
    values.update(fields)
    return StepRecord(step_id=step_id, **values)


def completed_record(step_id: str, result: str, **fields: Any) -> StepRecord:
    """A COMPLETED record holding the encoded ``result``."""
    return make_record(step_id, status=StepStatus.COMPLETED, result=result,
                       completed_at=101.0, updated_at=101.0, **fields)


# The PostgreSQL server of the tests (a libpq connection string): .ci/run always sets it; the
# PostgreSQL tests skip only when it is unset (README: how to run them locally).
PG_DSN = os.environ.get("DURABLY_TEST_PG_DSN")


def drop_schema(schema: str) -> None:
    """Remove a test's PostgreSQL schema with everything in it."""
    import psycopg

    assert PG_DSN is not None
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def pg_dsn() -> str:
    """The test server's connection string (the test skips without one)."""
    if not PG_DSN:
        pytest.skip("DURABLY_TEST_PG_DSN is not set: no PostgreSQL server for this test")
    return PG_DSN


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema name, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    drop_schema(schema)


@pytest.fixture
def pg_storage(pg_dsn: str, pg_schema: str) -> Iterator[Callable[..., Any]]:
    """Opens PostgresStorage on the test's fresh schema (closing every one after)."""
    from durably.postgres import PostgresStorage

    opened: list[Any] = []

    def make(**options: Any) -> Any:
        opened.append(PostgresStorage(pg_dsn, schema=pg_schema, **options))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StepStorage]:
    """Every storage backend, one at a time (PostgreSQL when DURABLY_TEST_PG_DSN is set)."""
    store: StepStorage
    schema = None
    if request.param == "memory":
        store = InMemoryStepStorage()
    elif request.param == "sqlite":
        store = SqliteStepStorage(tmp_path / "steps.db")
    else:
        if not PG_DSN:
            pytest.skip("DURABLY_TEST_PG_DSN is not set: no PostgreSQL server for this test")
        from durably.postgres import PostgresStorage

        schema = f"t_{uuid.uuid4().hex[:12]}"
        store = PostgresStorage(PG_DSN, schema=schema)
    yield store
    store.close()
    if schema is not None:
        drop_schema(schema)


class Flavour:
    """Runs the shared runtime tests against one runtime flavour.

    ``flavour.make(**options)`` builds a runtime (test defaults: in-memory storage, FakeClock,
    workflow "test", one attempt without delay); ``flavour.run(x)`` returns ``x`` for the sync
    runtime and awaits it on the test's event loop for the async one.
    """

    name = "sync"

    def make(self, **options: object) -> Any:
        from durably.testing import create_test_runtime

        return create_test_runtime(**options)

    def run(self, value: Any) -> Any:
        return value

    def flush(self, runtime: Any, timeout: float | None = None) -> bool:
        return bool(runtime.flush(timeout))

    def close(self, runtime: Any) -> None:
        runtime.close()


class LoopDriven:
    """Gives an AsyncDurableWorkflowRuntime the sync runtime's call style, for shared tests.

    Each awaitable call runs to completion on one event loop; ``send`` is called inside the
    loop, so its deliveries are real tasks that progress whenever the loop runs again (in
    ``flush``, or during later calls), exactly as in an asyncio application.
    """

    _AWAITED = frozenset({"do", "try_", "execute_step", "flush", "aclose"})

    def __init__(self, runtime: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.runtime, name)
        if name in self._AWAITED:
            return lambda *args, **kwargs: self._loop.run_until_complete(
                attribute(*args, **kwargs))
        if name == "send":
            return lambda *args, **kwargs: self._send(attribute, *args, **kwargs)
        if name == "for_workflow":
            return lambda workflow_id: LoopDriven(attribute(workflow_id), self._loop)
        if name == "proxy":
            return lambda mode="do": _LoopProxy(attribute(mode), self._loop)
        return attribute

    def _send(self, send: Any, *args: Any, **kwargs: Any) -> None:
        if self._loop.is_running():  # called by a handler: the runtime's own send is right
            return send(*args, **kwargs)
        return self._loop.run_until_complete(self._inside_loop(send, *args, **kwargs))

    @staticmethod
    async def _inside_loop(function: Any, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self.runtime.aclose())


class _LoopProxy:
    def __init__(self, proxy: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._proxy = proxy
        self._loop = loop

    def __getattr__(self, domain: str) -> Any:
        def bind(context: Any = None) -> Any:
            bound = getattr(self._proxy, domain)(context)
            return _LoopBound(bound, self._loop)

        return bind


class _LoopBound:
    def __init__(self, bound: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._bound = bound
        self._loop = loop

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._bound, method)
        return lambda *args: self._loop.run_until_complete(call(*args))


class AsyncFlavour(Flavour):
    """The asyncio runtime, driven through LoopDriven on a loop owned by the test."""

    name = "async"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def make(self, **options: object) -> Any:
        from durably.testing import create_async_test_runtime

        return LoopDriven(create_async_test_runtime(**options), self.loop)

    def finish(self) -> None:
        pending = asyncio.all_tasks(self.loop)
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=10))
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> Iterator[Flavour]:
    """Each runtime flavour in turn."""
    if request.param == "sync":
        yield Flavour()
        return
    async_flavour = AsyncFlavour()
    yield async_flavour
    async_flavour.finish()
