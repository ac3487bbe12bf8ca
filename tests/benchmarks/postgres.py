"""Scenario 11: PostgreSQL, each figure beside a baseline measured on the same server in the
same run. Run through run.py; needs DURABLY_TEST_PG_DSN (skipped without it) and the
``postgres`` extra.

* a durable step (RUNNING marker, then COMPLETED) ÷ a raw one-statement commit of a
  ~200-byte row (reported: durably's rate, raw commits per second / steps per second);
* a step inside a run ÷ the same step outside (target <= 1.25x, DESIGN §13);
* a 10-step run, start to result ÷ 10 steps outside a run (target <= 1.5x);
* claims per second with 8 workers claiming at once ÷ with one (SKIP LOCKED: reported);
* DBOS Transact on the same server, when ``dbos`` is importable (never a dependency).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from common import CHUNK, RESULT, ROW, Row, paired, per_step

from durably import DurableWorkflowRuntime
from durably.testing import FakeClock

DSN = os.environ.get("DURABLY_TEST_PG_DSN")


def _skipped(why: str) -> list[Row]:
    return [Row("11. PostgreSQL", "", [], [], "", f"({why}: skipped)")]


class _Schema:
    """A fresh schema for one measurement, dropped afterwards."""

    def __init__(self) -> None:
        self.name = f"bench_{uuid.uuid4().hex[:10]}"

    def storage(self, **options: Any) -> Any:
        from durably.postgres import PostgresStorage

        assert DSN is not None
        return PostgresStorage(DSN, schema=self.name, **options)

    def drop(self) -> None:
        import psycopg

        assert DSN is not None
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")


class _RawCommits:
    """The baseline: one autocommit INSERT of a ~200-byte row per step (a synchronous
    commit, as an outcome is), on one connection."""

    def __init__(self, schema: str) -> None:
        import psycopg

        assert DSN is not None
        self.conn = psycopg.connect(DSN, autocommit=True)
        self.table = f"{schema}.raw"
        self.conn.execute(f"CREATE TABLE {self.table} (id bigint GENERATED ALWAYS AS IDENTITY"
                          " PRIMARY KEY, data text)")

    def run(self, steps: int) -> float:
        conn, sql = self.conn, f"INSERT INTO {self.table} (data) VALUES (%s)"
        started = time.perf_counter()
        for _ in range(steps):
            conn.execute(sql, (ROW,))
        return time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


def _runtime(storage: Any, **options: Any) -> DurableWorkflowRuntime:
    runtime = DurableWorkflowRuntime(storage=storage, workflow_id="bench",
                                     clock=FakeClock(start=1000.0), **options)
    runtime.register("Bench.step", lambda n: RESULT)
    return runtime


def _chunk_workflow(runtime: DurableWorkflowRuntime, spent: dict[str, float]) -> Any:
    """A workflow of CHUNK steps that adds its own time to ``spent["s"]``."""
    @runtime.workflow("Bench.chunk")
    def chunk(first: int) -> None:
        started = time.perf_counter()
        for n in range(first, first + CHUNK):
            runtime.do("Bench.step", n)
        spent["s"] += time.perf_counter() - started

    return chunk


def _ten_workflow(runtime: DurableWorkflowRuntime) -> Any:
    @runtime.workflow("Bench.ten")
    def ten(first: int) -> None:
        for n in range(first, first + 10):
            runtime.do("Bench.step", n)

    return ten


def scenario_steps(count: int, reps: int) -> list[Row]:
    if DSN is None:
        return _skipped("DURABLY_TEST_PG_DSN is not set")
    ours, raw, inside = [], [], []
    for _ in range(reps):
        schema = _Schema()
        storage = schema.storage()
        baseline = _RawCommits(schema.name)
        runtime = _runtime(storage)
        spent_in = {"s": 0.0}
        chunk = _chunk_workflow(runtime, spent_in)

        spent = spent_raw = 0.0
        turns = max(1, count // CHUNK)
        for turn in range(turns):
            started = time.perf_counter()
            for n in range(turn * CHUNK, (turn + 1) * CHUNK):
                runtime.do("Bench.step", n)
            spent += time.perf_counter() - started
            spent_raw += baseline.run(CHUNK)
            chunk.run(turn * CHUNK, run_id=f"c{turn}")
        done = turns * CHUNK
        ours.append(per_step(spent, done))
        raw.append(per_step(spent_raw, done))
        inside.append(per_step(spent_in["s"], done))
        runtime.close()
        baseline.close()
        schema.drop()
    rate = 1 / paired(ours, raw)
    in_run = paired(inside, ours)
    return [
        Row("11. durable step, PostgreSQL", "µs/step", ours, raw,
            "raw one-statement INSERT commit", "(reported)", None, rate,
            notes=f"rate {rate:.2f}: two commits per step, the marker's without a WAL flush"),
        Row("11. a step inside a run, PostgreSQL", "µs/step", inside, ours,
            "the same step outside a run", "<= 1.25x", in_run <= 1.25, in_run),
    ]


def scenario_ten_step_run(runs: int, reps: int) -> list[Row]:
    if DSN is None:
        return _skipped("DURABLY_TEST_PG_DSN is not set")
    whole, outside = [], []
    for _ in range(reps):
        schema = _Schema()
        runtime = _runtime(schema.storage())
        ten = _ten_workflow(runtime)

        spent_runs = spent_steps = 0.0
        for k in range(runs):
            started = time.perf_counter()
            ten.run(k * 10, run_id=f"t{k}")
            spent_runs += time.perf_counter() - started
            started = time.perf_counter()
            for n in range(10):
                runtime.do("Bench.step", 10**6 + k * 10 + n)
            spent_steps += time.perf_counter() - started
        whole.append(spent_runs / runs * 1e6)
        outside.append(spent_steps / runs * 1e6)
        runtime.close()
        schema.drop()
    ratio = paired(whole, outside)
    return [Row("11. a 10-step run, PostgreSQL", "µs/run", whole, outside,
                "10 steps outside a run", "<= 1.5x", ratio <= 1.5, ratio)]


def _claims_per_second(workers: int, runs: int) -> float:
    schema = _Schema()
    storage = schema.storage(pool_size=workers + 1)
    submitter = DurableWorkflowRuntime(storage=storage)
    for n in range(runs):
        submitter.start("Bench.claimed", n, run_id=f"r{n}")
    now = storage.server_time()
    claimed: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(workers)

    def claim_all(name: str) -> None:
        barrier.wait()
        got = 0
        while True:
            batch = storage.claim(name, now + 1, 60.0, limit=1)
            if not batch:
                break
            got += len(batch)
        with lock:
            claimed.append(got)

    threads = [threading.Thread(target=claim_all, args=(f"w{n}",)) for n in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spent = time.perf_counter() - started
    assert sum(claimed) == runs, claimed  # every run claimed once, by one worker
    submitter.close()
    schema.drop()
    return runs / spent


def scenario_claims(runs: int, reps: int) -> list[Row]:
    if DSN is None:
        return _skipped("DURABLY_TEST_PG_DSN is not set")
    eight = [_claims_per_second(8, runs) for _ in range(reps)]
    one = [_claims_per_second(1, runs) for _ in range(reps)]
    ratio = paired(eight, one)
    return [Row("11. claims, 8 workers at once", "claims/s", eight, one,
                "one worker claiming alone", "(reported)", None, ratio,
                notes="one run per claim, FOR UPDATE SKIP LOCKED: no worker waits for another")]


def _sqlalchemy_url(database: str) -> str:
    """DURABLY_TEST_PG_DSN as the URL DBOS takes, naming another database."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    assert DSN is not None
    parts = {k: str(v) for k, v in conninfo_to_dict(DSN).items()}
    user = quote(parts.pop("user", "postgres"))
    password = parts.pop("password", None)
    parts.pop("dbname", None)
    query = "&".join(f"{k}={quote(v)}" for k, v in parts.items())
    auth = user if password is None else f"{user}:{quote(password)}"
    return f"postgresql+psycopg://{auth}@/{database}?{query}"


def scenario_dbos(workflows: int, reps: int) -> list[Row]:
    """DBOS Transact on the same server beside durably (when dbos is importable)."""
    if DSN is None:
        return _skipped("DURABLY_TEST_PG_DSN is not set")
    import dbos_compare
    import psycopg

    schemas: list[_Schema] = []

    def storage(tag: str) -> Any:
        schemas.append(_Schema())
        return schemas[-1].storage()

    try:
        return dbos_compare.compare("11. durably vs DBOS Transact, PostgreSQL", 5, storage,
                                    lambda tag: _sqlalchemy_url(f"dbos_{tag}"), workflows,
                                    reps)
    finally:
        for schema in schemas:
            schema.drop()
        with psycopg.connect(DSN, autocommit=True) as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE"
                                        " 'dbos\\_%%'").fetchall():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
