"""PostgresStorage on a real server (DURABLY_TEST_PG_DSN; the contract suites run on it through
conftest's ``storage`` fixture): options, migrations, the server's clock, wake-ups, runs and
waits end to end, dropped connections, and the command line with --url."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest

from conftest import drop_schema
from durably import (
    ConfigurationError,
    DurableWorkflowRuntime,
    RetryPolicy,
    RunStatus,
    SqliteStepStorage,
    StepStatus,
    StorageError,
)
from durably.testing import FakeClock, run_until_idle
from ops_workload import build

T0 = 1_000_000.0


def test_importing_durably_never_imports_psycopg() -> None:
    code = ("import sys, durably, durably.testing; import durably._cli;"
            " print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("options", [
    {"schema": "Bad-Name"}, {"schema": "x; DROP TABLE y"}, {"durability": "fast"},
    {"pool_size": 0}, {"retries": -1}, {"connect_timeout": 0},
])
def test_bad_options_are_configuration_errors(pg_dsn: str, options: dict[str, Any]) -> None:
    from durably.postgres import PostgresStorage

    with pytest.raises(ConfigurationError):
        PostgresStorage(pg_dsn, **options)


def test_an_unreachable_server_is_a_storage_error_without_the_password() -> None:
    from durably.postgres import PostgresStorage

    with pytest.raises(StorageError) as error:
        PostgresStorage("postgresql://app:s3cret@127.0.0.1:1/app", connect_timeout=1,
                        retries=0)
    assert "s3cret" not in str(error.value) and "127.0.0.1" in str(error.value)


def test_many_workers_starting_at_once_migrate_once(pg_dsn: str, pg_schema: str) -> None:
    from durably.postgres import SCHEMA_VERSION, PostgresStorage

    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        try:
            barrier.wait()
            PostgresStorage(pg_dsn, schema=pg_schema, pool_size=1).close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(f"SELECT version FROM {pg_schema}.durably_version").fetchall()
    assert rows == [(SCHEMA_VERSION,)]


def test_foreign_and_newer_schemas_are_refused_untouched(pg_dsn: str, pg_schema: str) -> None:
    from durably.postgres import PostgresStorage

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}")
        conn.execute(f"CREATE TABLE {pg_schema}.invoices (id int)")
    with pytest.raises(StorageError, match="not durably's"):
        PostgresStorage(pg_dsn, schema=pg_schema)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {pg_schema}.invoices")
    PostgresStorage(pg_dsn, schema=pg_schema).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {pg_schema}.durably_version SET version = 99")
    with pytest.raises(StorageError, match="newer"):
        PostgresStorage(pg_dsn, schema=pg_schema)


def test_a_read_only_open_never_creates_and_refuses_writes(pg_storage: Any, pg_dsn: str,
                                                           pg_schema: str) -> None:
    from durably.postgres import PostgresStorage

    with pytest.raises(StorageError, match="no durably store"):
        PostgresStorage(pg_dsn, schema=pg_schema, readonly=True)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace(%s)", (pg_schema,)).fetchone() == (None,)
    writer = pg_storage()
    runtime = DurableWorkflowRuntime(storage=writer, workflow_id="wf")
    runtime.register("A.b", lambda data: data)
    runtime.do("A.b", 1)
    reader = pg_storage(readonly=True)
    assert [r.status for r in reader.list()] == [StepStatus.COMPLETED]
    with pytest.raises(StorageError, match="read-only"):
        reader.set(writer.list()[0])
    runtime.close()


def test_the_runtime_reads_the_server_clock_by_default(pg_storage: Any, pg_dsn: str) -> None:
    """A runtime without a clock reads PostgreSQL's: machines with skewed clocks agree."""
    storage = pg_storage()
    runtime = DurableWorkflowRuntime(storage=storage)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    assert abs(runtime.clock.now() - row[0]) < 1.0
    assert abs(storage.server_time() - row[0]) < 1.0
    runtime.close()


def test_runs_sleeps_events_and_published_values_end_to_end(pg_storage: Any) -> None:
    clock = FakeClock(start=T0)
    storage = pg_storage()
    runtime = DurableWorkflowRuntime(storage=storage, clock=clock, suspend_after=0,
                                     retry_policy=RetryPolicy(max_attempts=1))
    ran: list[str] = []

    @runtime.step("Order.reserve")
    def reserve(n: int) -> str:
        ran.append("reserve")
        return f"shelf-{n}"

    @runtime.workflow("Order.approve")
    def approve(n: int) -> dict[str, Any]:
        shelf = reserve(n)
        runtime.publish("status", "waiting")
        runtime.sleep(3600, name="cool-off")
        approval = runtime.wait_for_event("approved", timeout=86400)
        return {"shelf": shelf, "by": approval["by"]}

    submitter = DurableWorkflowRuntime(storage=pg_storage(), clock=clock)
    handle = submitter.start("Order.approve", 1, run_id="o1")
    assert runtime.run_due() == 1
    record = handle.status()
    assert (record.status, record.wake_at) == (RunStatus.SUSPENDED, T0 + 3600)
    assert handle.published("status") == "waiting"
    clock.advance(3600)
    assert runtime.run_due() == 1
    assert handle.status().waiting_for == "approved"
    assert submitter.send_event("o1", "approved", {"by": "ann"}, key="k1") is True
    assert submitter.send_event("o1", "approved", {"by": "ann"}, key="k1") is False
    assert handle.status().wake_at == clock.now()  # the trigger made it due
    assert run_until_idle(runtime, clock) == []
    assert handle.result(timeout=5) == {"shelf": "shelf-1", "by": "ann"}
    assert ran == ["reserve"]
    (event,) = handle.events()
    assert event.consumed_by is not None
    fork = runtime.fork("o1", "durably.wait:approved", new_run_id="o1-again")
    assert run_until_idle(runtime, clock) == []
    assert fork.result(timeout=5) == {"shelf": "shelf-1", "by": "ann"}
    runtime.close()
    submitter.close()


def test_a_worker_is_woken_by_notify_long_before_its_poll(pg_storage: Any) -> None:
    """serve(poll=30) picks up a run started by another runtime within seconds: the
    LISTEN/NOTIFY hint wakes it (polling would take 30 s)."""
    worker = DurableWorkflowRuntime(storage=pg_storage(), max_runs=2)

    @worker.workflow("Quick.job")
    def job(n: int) -> int:
        return n * 2

    thread = worker.start_worker(poll=30)
    try:
        time.sleep(0.5)  # the worker's first pass has found nothing and waits
        submitter = DurableWorkflowRuntime(storage=pg_storage())
        started = time.monotonic()
        handle = submitter.start("Quick.job", 21, run_id="q1")
        assert handle.result(timeout=20) == 42
        assert time.monotonic() - started < 15
        submitter.close()
    finally:
        thread.stop(timeout=10)
        worker.close()


def test_dropped_connections_are_retried_inside_the_adapter(pg_storage: Any,
                                                            pg_dsn: str) -> None:
    storage = pg_storage(pool_size=2)
    runtime = DurableWorkflowRuntime(storage=storage, workflow_id="wf")
    runtime.register("A.b", lambda data: data * 2)
    assert runtime.do("A.b", 1) == 2
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE"
            " application_name = '' AND pid <> pg_backend_pid() AND datname = current_database()"
            " AND backend_type = 'client backend'").fetchone()
    assert killed is not None and killed[0] >= 1
    assert runtime.do("A.b", 2) == 4  # on a new connection, after a retry
    assert [s.result for s in storage.list()] == ["2", "4"]
    runtime.close()


# ------------------------------------------------------------------ the command line


def cli(*args: str) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "durably", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    return done.returncode, done.stdout, done.stderr


def test_a_sqlite_store_moves_to_postgres_through_export_and_import(
        tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    """The documented migration path: every run shows the same JSON afterwards, and the
    commands work on PostgreSQL with --url."""
    db = tmp_path / "orders.db"
    build(db)
    code, exported, err = cli("--db", str(db), "export")
    assert code == 0, err
    dump = tmp_path / "dump.jsonl"
    dump.write_text(exported)
    target = ("--url", pg_dsn, "--schema", pg_schema)
    code, out, err = cli(*target, "import", str(dump))
    assert code == 0 and "imported 5 runs" in out, err
    for n in range(1, 6):
        same = [json.loads(cli(*where, "show", f"order-{n}", "--json")[1])
                for where in (("--db", str(db)), target)]
        assert same[0] == same[1]
    assert json.loads(cli(*target, "steps", "--json")[1]) == json.loads(
        cli("--db", str(db), "steps", "--json")[1])
    code, out, _ = cli(*target, "runs")
    assert code == 0 and "order-3" in out and "SUSPENDED" in out
    assert cli(*target, "cancel", "order-3")[0] == 0
    assert cli(*target, "resume", "order-1")[0] == 3
    assert cli(*target, "show", "nope")[0] == 1
    code, _, err = cli("--url", pg_dsn, "--schema", "t_missing_schema", "runs")
    assert code == 1 and "no durably store" in err
    sqlite_after = SqliteStepStorage.open_readonly(db)
    assert sqlite_after.get_run("order-3").status is RunStatus.SUSPENDED  # the source as it was
    sqlite_after.close()
    drop_schema("t_missing_schema")


def test_concurrent_async_steps_share_commits_on_postgres(pg_dsn: str, pg_schema: str) -> None:
    """On PostgreSQL too, the asyncio runtime commits the writes of steps awaited together
    in one transaction (write_steps, off the loop), fenced writes of runs included, and each
    step and run gets its own result."""
    import asyncio

    from durably import AsyncDurableWorkflowRuntime
    from durably.postgres import PostgresStorage

    class Counted(PostgresStorage):
        batches: ClassVar[list[int]] = []

        def write_steps(self, writes: Any) -> Any:
            self.batches.append(len(writes))
            return super().write_steps(writes)

    async def main() -> tuple[list[Any], list[Any]]:
        storage = Counted(pg_dsn, schema=pg_schema)
        runtime = AsyncDurableWorkflowRuntime(storage=storage, workflow_id="fan")

        async def fetch(n: int) -> int:
            await asyncio.sleep(0)
            return n + 100

        runtime.register("Fan.fetch", fetch)

        @runtime.workflow("Fan.order")
        async def order(n: int) -> list[int]:
            return [await runtime.do("Fan.fetch", n), await runtime.do("Fan.fetch", -n)]

        loose = await asyncio.gather(*[runtime.do("Fan.fetch", n) for n in range(8)])
        runs = await asyncio.gather(*[order.run(n, run_id=f"o{n}") for n in range(1, 5)])
        records = storage.list(workflow_id="fan")
        await runtime.aclose()
        return [loose, runs], records

    (loose, runs), records = asyncio.run(main())
    assert loose == [n + 100 for n in range(8)]
    assert runs == [[n + 100, 100 - n] for n in range(1, 5)]
    assert [r.status for r in records] == [StepStatus.COMPLETED] * 8
    assert Counted.batches and max(Counted.batches) > 1, Counted.batches
