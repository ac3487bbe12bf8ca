"""Scenarios 1-8: durable steps on SQLite and in memory, replay, retries, scale, two
processes, import time, DBOS. Run through run.py."""

from __future__ import annotations

import compileall
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, SupportsIndex

from common import (
    CHUNK,
    RESULT,
    ROOT,
    ROW,
    DurableSteps,
    RawCommits,
    Row,
    Steps,
    alternate,
    durable_steps,
    median,
    paired,
    per_step,
    timed,
)

from durably import (
    DurableWorkflowRuntime,
    InMemoryStepStorage,
    RetryPolicy,
    SqliteStepStorage,
)
from durably.testing import FakeClock


class _FloorSteps:
    """The floor of a correct two-commit step: a step's two statements written by hand (the
    RUNNING marker's INSERT, then the COMPLETED UPDATE of the same row), each its own commit,
    on durably's own schema and connection settings, with no runtime at all. With "full",
    as durably does it: the marker on a connection at NORMAL, the outcome on one at FULL."""

    def __init__(self, path: str, durability: str, workflow: str = "bench") -> None:
        import hashlib

        from durably._storage._sqlite._connection import tune

        self._hashlib = hashlib
        self.workflow = workflow
        SqliteStepStorage(path, durability=durability).close()  # schema and pragmas
        self.conn = self.outcome_conn = sqlite3.connect(path, isolation_level=None)
        tune(self.conn, full=False)
        if durability == "full":
            self.outcome_conn = sqlite3.connect(path, isolation_level=None)
            tune(self.outcome_conn, full=True)
        for conn in (self.conn, self.outcome_conn):
            conn.execute("PRAGMA busy_timeout = 30000")  # durably's default
        self.n = 0

    def run(self, steps: int) -> float:
        conn, outcome_conn, n0 = self.conn, self.outcome_conn, self.n
        self.n += steps
        started = time.perf_counter()
        for n in range(n0, n0 + steps):
            step_id = "s1_" + self._hashlib.sha256(f"{self.workflow}{n}".encode()).hexdigest()[:32]
            conn.execute(
                "INSERT INTO durably_steps (step_id, workflow_id, action, status, attempts,"
                " created_at, started_at, updated_at, budget_started_at) VALUES"
                " (?, ?, 'Bench.step', 'running', 1, 1.0, 1.0, 1.0, 1.0)",
                (step_id, self.workflow))
            outcome_conn.execute(
                "UPDATE durably_steps SET status = 'completed', result = ?, updated_at = 2.0,"
                " completed_at = 2.0 WHERE step_id = ?", (ROW, step_id))
        return time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()
        self.outcome_conn.close()


def scenario_sqlite(directory: Path, steps: int, reps: int) -> list[Row]:
    rows = []
    for durability, synchronous, target in (("normal", "NORMAL", 0.50), ("full", "FULL", 0.65)):
        ours, raw, floor = [], [], []
        for rep in range(reps):
            mine = DurableSteps(str(directory / f"d-{durability}-{rep}.db"), durability)
            theirs = RawCommits(str(directory / f"r-{durability}-{rep}.db"), synchronous)
            least = _FloorSteps(str(directory / f"f-{durability}-{rep}.db"), durability)
            a, b = alternate(mine, theirs, steps)
            c, _ = alternate(least, theirs, steps)
            for runner in (mine, theirs, least):
                runner.close()
            ours.append(a)
            raw.append(b)
            floor.append(c)
        rate = paired(raw, ours)
        floor_rate = paired(raw, floor)
        rows.append(Row(f"1. durable step, SQLite {durability}", "µs/step", ours, raw,
                        f"raw BEGIN;INSERT;COMMIT ({synchronous})",
                        f"rate >= {target} of raw", rate >= target, rate,
                        f"rate ratio {rate:.2f}; {1e6 / median(ours):,.0f} steps/s"))
        rows.append(Row(f"1. floor: a step's two commits, {durability}", "µs/step", floor,
                        raw, "the same raw commit", "(the best a two-commit step can do)",
                        None, floor_rate,
                        f"rate {floor_rate:.2f}: the marker INSERT and the COMPLETED UPDATE"
                        " by hand, on durably's schema, no runtime"))
    return rows


# ------------------------------------------------------------------ 2. in-memory overhead


class JsonRoundTrips:
    """The in-memory baseline: one json.dumps + json.loads of the same result per step."""

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            json.loads(json.dumps(RESULT))
        return time.perf_counter() - start


def scenario_memory(steps: int, reps: int) -> list[Row]:
    first, replay, base_first, base_replay = [], [], [], []
    for _ in range(reps):
        runtime = DurableWorkflowRuntime(storage=InMemoryStepStorage(), workflow_id="bench",
                                         clock=FakeClock())
        runtime.register("Bench.step", lambda n: RESULT)
        a, b = alternate(Steps(runtime), JsonRoundTrips(), steps)
        first.append(a)
        base_first.append(b)
        a, b = alternate(Steps(runtime.for_workflow("bench")), JsonRoundTrips(), steps)
        replay.append(a)
        base_replay.append(b)
    ratio_first = paired(first, base_first)
    ratio_replay = paired(replay, base_replay)
    return [
        Row("2. in-memory do, first run", "µs/step", first, base_first, "json.dumps+loads",
            "<= 3x", ratio_first <= 3, ratio_first),
        Row("2. in-memory do, replay", "µs/step", replay, base_replay, "json.dumps+loads",
            "<= 1.5x", ratio_replay <= 1.5, ratio_replay),
    ]


# ------------------------------------------------------------------ 3. replay from SQLite


class RawLookups:
    """The replay baseline: a primary-key lookup plus json.loads per step, in order."""

    def __init__(self, path: Path, ids: list[str]) -> None:
        self.conn = sqlite3.connect(path)
        self.ids = ids
        self.next = 0

    def run(self, steps: int) -> float:
        ids = self.ids[self.next:self.next + steps]
        self.next += steps
        conn = self.conn
        start = time.perf_counter()
        for step_id in ids:
            row = conn.execute("SELECT result FROM durably_steps WHERE step_id = ?",
                               (step_id,)).fetchone()
            json.loads(row[0])
        return time.perf_counter() - start


def scenario_sqlite_replay(directory: Path, steps: int, reps: int) -> list[Row]:
    path = directory / "replay.db"
    durable_steps(str(path), steps, "normal")
    conn = sqlite3.connect(path)
    ids = [row[0] for row in conn.execute(
        "SELECT step_id FROM durably_steps WHERE workflow_id = 'bench' ORDER BY seq")]
    conn.close()
    ours, raw = [], []
    for _ in range(reps):
        runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(path), workflow_id="bench",
                                         clock=FakeClock())
        lookups = RawLookups(path, ids)
        a, b = alternate(Steps(runtime), lookups, steps)  # the first turn pays the one read
        runtime.close()
        lookups.conn.close()
        ours.append(a)
        raw.append(b)
    rate = paired(raw, ours)
    return [Row(f"3. replay {steps:,} steps from SQLite", "µs/step", ours, raw,
                "raw PK lookup + json.loads", "rate >= 0.50 of raw", rate >= 0.5, rate,
                f"rate ratio {rate:.2f}")]


# ------------------------------------------------------------------ 4. retry overhead


class _Flaky:
    """Fails the first two calls of every three (so each step needs three attempts)."""

    def __init__(self, failing: bool = True) -> None:
        self.calls = 0
        self.failing = failing

    def __call__(self, n: int) -> dict[str, Any]:
        self.calls += 1
        if self.failing and self.calls % 3:
            raise ConnectionError("flaky")
        return RESULT


class _DurableLoop:
    """Durable steps of one handler, CHUNK at a time, numbered on from the last chunk."""

    def __init__(self, handler: _Flaky) -> None:
        self.runtime = DurableWorkflowRuntime(
            workflow_id="bench", retry_policy=RetryPolicy(max_attempts=3, initial_delay=0))
        self.runtime.register("Bench.flaky", handler)
        self.next = 0

    def run(self, steps: int) -> float:
        runtime, first = self.runtime, self.next
        self.next += steps
        return timed(lambda: [runtime.do("Bench.flaky", n) for n in range(first, first + steps)])


class _HandLoop:
    """The same calls in a hand-written retry loop."""

    def __init__(self, handler: _Flaky) -> None:
        self.handler = handler

    def run(self, steps: int) -> float:
        handler = self.handler

        def loop() -> None:
            for n in range(steps):
                for attempt in range(3):
                    try:
                        handler(n)
                        break
                    except ConnectionError:
                        if attempt == 2:
                            raise

        return timed(loop)


def scenario_retries(steps: int, reps: int) -> list[Row]:
    """Cost per failed attempt: (loop with two failures per step - loop without) / 2.

    The four loops run in alternating turns of CHUNK steps, as scenario 1's sides do, so that
    a slow spell of the machine falls on all of them alike (one loop after the other, the
    difference of two noisy totals varied 3x between repetitions).
    """
    real_sleep = time.sleep
    slept: list[float] = []

    def counting_sleep(seconds: float | SupportsIndex) -> None:
        slept.append(float(seconds))

    time.sleep = counting_sleep  # a zero delay must never sleep: count any call
    try:
        ours, raw = [], []
        for _ in range(reps):
            loops = [_DurableLoop(_Flaky()), _DurableLoop(_Flaky(failing=False)),
                     _HandLoop(_Flaky()), _HandLoop(_Flaky(failing=False))]
            spent = [0.0] * len(loops)
            for _ in range(max(1, steps // CHUNK)):
                for k, loop in enumerate(loops):
                    spent[k] += loop.run(CHUNK)
            done = max(1, steps // CHUNK) * CHUNK
            ours.append(per_step(spent[0] - spent[1], done) / 2)
            raw.append(per_step(spent[2] - spent[3], done) / 2)
    finally:
        time.sleep = real_sleep
    ratio = paired(ours, raw)
    return [Row("4. retry overhead per failed attempt", "µs/attempt", ours, raw,
                "hand-written try/except loop", "<= 10x, no sleep",
                ratio <= 10 and not slept, ratio,
                f"time.sleep calls with zero delay: {len(slept)}")]


# ------------------------------------------------------------------ 5. scale


STEP_INSERT = (
    "INSERT INTO durably_steps (step_id, workflow_id, action, status, result, error, attempts,"
    " created_at, started_at, updated_at, completed_at, next_attempt_at, budget_started_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def populate(path: Path, records: int) -> None:
    """Put ``records`` completed steps of other workflows in a durably database, fast."""
    SqliteStepStorage(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    batch = []
    for n in range(records):
        batch.append((f"s1_{uuid.uuid4().hex}", f"other-{n // 100}", "Bench.step",
                      "completed", ROW, None, 1, float(n), float(n), float(n), float(n),
                      None, float(n)))
        if len(batch) == 10_000:
            conn.executemany(STEP_INSERT, batch)
            batch.clear()
    if batch:
        conn.executemany(STEP_INSERT, batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def scenario_scale(directory: Path, sizes: list[int], steps: int, reps: int) -> list[Row]:
    """Steps and replays per database size, the sizes measured in alternating turns."""
    paths = {}
    for size in sizes:
        paths[size] = directory / f"scale-{size}.db"
        populate(paths[size], size)
    before = {size: paths[size].stat().st_size for size in sizes}
    writes: dict[int, list[float]] = {size: [] for size in sizes}
    replays: dict[int, list[float]] = {size: [] for size in sizes}
    for rep in range(reps):
        runners = {}
        for size in sizes:
            runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(paths[size]),
                                             workflow_id=f"scale-{rep}", clock=FakeClock())
            runtime.register("Bench.step", lambda n: RESULT)
            runners[size] = Steps(runtime)
        spent = {size: 0.0 for size in sizes}
        for _ in range(max(1, steps // CHUNK)):
            for size in sizes:
                spent[size] += runners[size].run(CHUNK)
        done = max(1, steps // CHUNK) * CHUNK
        for size in sizes:
            writes[size].append(per_step(spent[size], done))
            runners[size].runtime.close()
            runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(paths[size]),
                                             workflow_id=f"scale-{rep}", clock=FakeClock())
            replays[size].append(per_step(Steps(runtime).run(done), done))
            runtime.close()
    rows = []
    for size in sizes:
        conn = sqlite3.connect(paths[size])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        growth = (paths[size].stat().st_size - before[size]) / (steps * reps)
        ratio = paired(writes[size], writes[sizes[0]])
        rows.append(Row(f"5. scale: {size:,} records", "µs/step", writes[size], replays[size],
                        "(replay µs/step)", f"<= 1.5x the {sizes[0]:,} cost", ratio <= 1.5,
                        ratio, f"{1e6 / median(writes[size]):,.0f} steps/s; replay "
                        f"{median(replays[size]):.1f} µs/step; ~{growth:,.0f} bytes/step on "
                        "disk"))
    return rows


# ------------------------------------------------------------------ 6. processes on one file


WRITER = """
import sys, time
sys.path.insert(0, {src!r})
sys.path.insert(0, {here!r})
from {module} import {runner} as Runner
runner = Runner(sys.argv[1], "normal", sys.argv[3])
runner.run(10)  # warm: imports, the connection, the first statements
print("ready", flush=True)
start_at = float(sys.stdin.readline())
time.sleep(max(0.0, start_at - time.time()))
spent = runner.run(int(sys.argv[2]))
print(time.time(), flush=True)
runner.close()
"""


def _aggregate(path: Path, processes: int, steps: int, script: str) -> float:
    """Steps per second of ``processes`` writers of one file, each ``steps`` steps, from a
    common start (after every interpreter has started and warmed up) to the last finish."""
    workers = [subprocess.Popen([sys.executable, "-c", script, str(path), str(steps),
                                 f"p{processes}-{n}"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
               for n in range(processes)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    start_at = time.time() + 0.2
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(f"{start_at}\n")
        worker.stdin.flush()
    finished = [float(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
    return processes * steps / (max(finished) - start_at)


def scenario_processes(directory: Path, steps: int, reps: int) -> list[Row]:
    """Durable steps from 1, 2 and 8 processes on one file, and the floor: the same from the
    hand-written two commits of scenario 1's floor, with no runtime (what SQLite's one writer
    at a time, and every process re-reading what the others changed, leave)."""
    here = str(Path(__file__).parent)
    script = WRITER.format(src=str(ROOT / "src"), here=here, module="common",
                           runner="DurableSteps")
    floor_script = WRITER.format(src=str(ROOT / "src"), here=here, module="steps",
                                 runner="_FloorSteps")
    one, two, eight, floor_one, floor_eight = [], [], [], [], []
    for rep in range(reps):
        path = directory / f"procs-{rep}.db"
        SqliteStepStorage(path).close()
        one.append(_aggregate(path, 1, steps, script))
        two.append(_aggregate(path, 2, steps, script))
        eight.append(_aggregate(path, 8, steps // 4, script))
        floor_path = directory / f"procs-floor-{rep}.db"
        floor_one.append(_aggregate(floor_path, 1, steps, floor_script))
        floor_eight.append(_aggregate(floor_path, 8, steps // 4, floor_script))
    return [
        Row("6. two processes, one file", "steps/s", two, one, "one process",
            "(reported)", None, paired(two, one), "aggregate, from a common start"),
        Row("6. eight processes, one file", "steps/s", eight, one, "one process",
            ">= 1.0x one process", paired(eight, one) >= 1.0, paired(eight, one),
            "aggregate, from a common start"),
        Row("6. floor: eight processes of hand-written two commits", "steps/s", floor_eight,
            floor_one, "one such process", "(the floor of the row above)", None,
            paired(floor_eight, floor_one), "scenario 1's floor statements, no runtime"),
    ]


# ------------------------------------------------------------------ 7. import time


def import_seconds(code: str) -> float:
    # PYTHONDONTWRITEBYTECODE (set on some machines, this one included) must not matter: the
    # bytecode is written beforehand, and it is read whatever the variable says.
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - start


def scenario_import(reps: int) -> list[Row]:
    ours, base = [], []
    # "With bytecode": compile durably's modules first. A stale cache would otherwise be
    # recompiled by every interpreter below and counted as import time.
    compileall.compile_dir(str(ROOT / "src" / "durably"), quiet=1)
    floor = []
    for _ in range(reps):
        floor.append(import_seconds("import sqlite3, json, typing, dataclasses, enum") * 1e3)
        ours.append(import_seconds("import durably") * 1e3)
        base.append(import_seconds("import sqlite3, json") * 1e3)
    ratio = paired(ours, base)
    return [Row("7. import time", "ms", ours, base, "import sqlite3, json", "<= 1.3x",
                ratio <= 1.3, ratio, "fresh interpreters, bytecode cached"),
            Row("7. floor: sqlite3, json, typing, dataclasses, enum", "ms", floor, base,
                "import sqlite3, json", "(what durably's records and protocols need)", None,
                paired(floor, base))]


# ------------------------------------------------------------------ 8. DBOS, if present


def scenario_dbos(directory: Path, workflows: int, reps: int) -> list[Row]:
    """DBOS Transact on SQLite beside durably on SQLite (when dbos is importable)."""
    import dbos_compare

    return dbos_compare.compare(
        "8. durably vs DBOS Transact, SQLite", 25,
        lambda tag: SqliteStepStorage(directory / f"durably-{tag}.db"),
        lambda tag: f"sqlite:///{directory / f'dbos-{tag}.db'}", workflows, reps)
