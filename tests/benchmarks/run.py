"""durably's benchmark suite: every figure beside a baseline measured in the same run.

    python tests/benchmarks/run.py            # the full suite (a few minutes on 2 cores)
    python tests/benchmarks/run.py --quick    # a smaller version (well under 20 s): CI smoke
    python tests/benchmarks/run.py --json results.json

Each scenario runs durably and its baseline interleaved, several repetitions, and prints the
median and min-max of both, their ratio, and PASS/MISS against the target from the speed issue.
Standard library only; not collected by pytest. The exit status is 0 whatever the ratios (CI
checks that the suite runs; noise must not fail it).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, SupportsIndex

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import durably  # noqa: E402
from durably import (  # noqa: E402
    DurableWorkflowRuntime,
    InMemoryStepStorage,
    RetryPolicy,
    SqliteStepStorage,
)
from durably.testing import FakeClock  # noqa: E402

RESULT = {"order": 4242, "customer": "c" * 40, "items": ["sku-1", "sku-2", "sku-3"],
          "total": 129.5, "paid": True, "note": "n" * 60}  # ~200 bytes of JSON
ROW = json.dumps(RESULT)


@dataclass
class Row:
    """One line of the report: durably against its baseline."""

    scenario: str
    unit: str
    durably: list[float]
    baseline: list[float]
    baseline_name: str
    target: str = ""
    passed: bool | None = None
    ratio: float = 0.0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median of per-repetition ratios ours/theirs.

    Each repetition measured both sides in alternating turns over the same stretch of time,
    so its ratio is steadier than the ratio of two medians when the machine's speed drifts.
    """
    return median([a / b for a, b in zip(ours, theirs, strict=True)])


def per_step(seconds: float, steps: int) -> float:
    return seconds / steps * 1e6


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------ 1. durable steps on SQLite


CHUNK = 100  # steps per turn: durably and its baseline alternate in turns this small, so
# that a slow spell of the machine (this is a shared VM) hits both sides alike


class RawCommits:
    """The baseline: BEGIN; INSERT; COMMIT of a pre-encoded ~200-byte row per step."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data TEXT)")

    def run(self, steps: int) -> float:
        conn = self.conn
        start = time.perf_counter()
        for _ in range(steps):
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
            conn.execute("COMMIT")
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


class Steps:
    """``do`` calls on an existing runtime, numbered on from ``first``."""

    def __init__(self, runtime: DurableWorkflowRuntime, first: int = 0) -> None:
        self.runtime = runtime
        self.next = first

    def run(self, steps: int) -> float:
        runtime, first = self.runtime, self.next
        self.next += steps
        start = time.perf_counter()
        for n in range(first, first + steps):
            runtime.do("Bench.step", n)
        return time.perf_counter() - start


class DurableSteps:
    """``do`` calls on a new SQLite runtime (see :class:`Steps`)."""

    def __init__(self, path: str, durability: str, workflow: str = "bench") -> None:
        self.runtime = DurableWorkflowRuntime(
            storage=SqliteStepStorage(path, durability=durability), workflow_id=workflow,
            clock=FakeClock())
        self.runtime.register("Bench.step", lambda n: RESULT)
        self.steps = Steps(self.runtime)

    def run(self, steps: int) -> float:
        return self.steps.run(steps)

    def close(self) -> None:
        self.runtime.close()


def alternate(ours: Any, theirs: Any, steps: int) -> tuple[float, float]:
    """Run both in alternating turns of CHUNK steps; return µs/step for each."""
    mine = other = 0.0
    for _ in range(max(1, steps // CHUNK)):
        mine += ours.run(CHUNK)
        other += theirs.run(CHUNK)
    done = max(1, steps // CHUNK) * CHUNK
    return per_step(mine, done), per_step(other, done)


def durable_steps(path: str, steps: int, durability: str, workflow: str = "bench") -> float:
    """Seconds for ``steps`` durable steps on a new runtime (used by scenarios 5 and 6)."""
    runner = DurableSteps(path, durability, workflow)
    elapsed = runner.run(steps)
    runner.close()
    return elapsed


def scenario_sqlite(directory: Path, steps: int, reps: int) -> list[Row]:
    rows = []
    for durability, synchronous, floor in (("normal", "NORMAL", 0.30), ("full", "FULL", 0.50)):
        ours, raw = [], []
        for rep in range(reps):
            mine = DurableSteps(str(directory / f"d-{durability}-{rep}.db"), durability)
            theirs = RawCommits(str(directory / f"r-{durability}-{rep}.db"), synchronous)
            a, b = alternate(mine, theirs, steps)
            mine.close()
            theirs.close()
            ours.append(a)
            raw.append(b)
        rate = paired(raw, ours)
        rows.append(Row(f"1. durable step, SQLite {durability}", "µs/step", ours, raw,
                        f"raw BEGIN;INSERT;COMMIT ({synchronous})",
                        f"rate >= {floor} of raw", rate >= floor, rate,
                        f"rate ratio {rate:.2f}; {1e6 / median(ours):,.0f} steps/s"))
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


def _durable_loop(handler: _Flaky, steps: int) -> float:
    runtime = DurableWorkflowRuntime(workflow_id="bench",
                                     retry_policy=RetryPolicy(max_attempts=3, initial_delay=0))
    runtime.register("Bench.flaky", handler)
    return timed(lambda: [runtime.do("Bench.flaky", n) for n in range(steps)])


def _hand_loop(handler: _Flaky, steps: int) -> float:
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
    """Cost per failed attempt: (loop with two failures per step - loop without) / 2."""
    real_sleep = time.sleep
    slept: list[float] = []

    def counting_sleep(seconds: float | SupportsIndex) -> None:
        slept.append(float(seconds))

    time.sleep = counting_sleep  # a zero delay must never sleep: count any call
    try:
        ours, raw = [], []
        for _ in range(reps):
            ours.append(per_step(_durable_loop(_Flaky(), steps)
                                 - _durable_loop(_Flaky(failing=False), steps), steps) / 2)
            raw.append(per_step(_hand_loop(_Flaky(), steps)
                                - _hand_loop(_Flaky(failing=False), steps), steps) / 2)
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


# ------------------------------------------------------------------ 6. two processes


WRITER = """
import sys, time
sys.path.insert(0, {src!r})
sys.path.insert(0, {here!r})
from run import durable_steps
print(durable_steps(sys.argv[1], int(sys.argv[2]), "normal", sys.argv[3]))
"""


def scenario_two_processes(directory: Path, steps: int, reps: int) -> list[Row]:
    script = WRITER.format(src=str(ROOT / "src"), here=str(Path(__file__).parent))
    one, two = [], []
    for rep in range(reps):
        path = directory / f"two-{rep}.db"
        SqliteStepStorage(path).close()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", script, str(path), str(steps), "solo"],
                       check=True, capture_output=True)
        one.append(steps / (time.perf_counter() - start))
        start = time.perf_counter()
        workers = [subprocess.Popen([sys.executable, "-c", script, str(path), str(steps),
                                     f"pair-{n}"], stdout=subprocess.PIPE)
                   for n in range(2)]
        for worker in workers:
            worker.communicate()
        two.append(2 * steps / (time.perf_counter() - start))
    ratio = paired(two, one)
    return [Row("6. two processes, one file", "steps/s", two, one, "one process",
                "(reported)", None, ratio, f"combined throughput {ratio:.2f}x one process")]


# ------------------------------------------------------------------ 7. import time


def import_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - start


def scenario_import(reps: int) -> list[Row]:
    ours, base = [], []
    for _ in range(reps):
        ours.append(import_seconds("import durably") * 1e3)
        base.append(import_seconds("import sqlite3, json") * 1e3)
    ratio = paired(ours, base)
    return [Row("7. import time", "ms", ours, base, "import sqlite3, json", "<= 1.5x",
                ratio <= 1.5, ratio)]


# ------------------------------------------------------------------ 8. DBOS, if present


def scenario_dbos() -> list[Row]:
    try:
        import dbos  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return [Row("8. DBOS Transact", "", [], [], "", "(dbos not importable: skipped)")]
    return [Row("8. DBOS Transact", "", [], [], "",
                "(dbos importable but not measured by this version of the suite)")]


# ------------------------------------------------------------------ report


def report(rows: list[Row]) -> None:
    header = (f"{'scenario':<38} {'durably':>24} {'baseline':>24} {'ratio':>7}  "
              f"{'target':<26} verdict")
    print(header)
    print("-" * len(header))
    for row in rows:
        if not row.durably:
            print(f"{row.scenario:<38} {row.target}")
            continue

        def cell(values: list[float]) -> str:
            return f"{median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

        verdict = "" if row.passed is None else ("PASS" if row.passed else "MISS")
        print(f"{row.scenario:<38} {cell(row.durably):>24} {cell(row.baseline):>24} "
              f"{row.ratio:>7.2f}  {row.target:<26} {verdict}")
        print(f"{'':<38} {row.unit}; baseline: {row.baseline_name}"
              + (f"; {row.notes}" if row.notes else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster version")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--only", help="run only the scenarios whose number is in this list, "
                        "e.g. 1,2")
    options = parser.parse_args()
    quick = options.quick
    reps = 3 if quick else 7
    started = time.perf_counter()
    print(f"durably {durably.__version__}, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
          + (" (quick)" if quick else ""))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        wanted = set(options.only.split(",")) if options.only else set("12345678")
        scenarios: list[tuple[str, Callable[[], list[Row]]]] = [
            ("1", lambda: scenario_sqlite(directory, 200 if quick else 2000, reps)),
            ("2", lambda: scenario_memory(2000 if quick else 20000, reps)),
            ("3", lambda: scenario_sqlite_replay(directory, 1000 if quick else 10000, reps)),
            ("4", lambda: scenario_retries(1000 if quick else 10000, reps)),
            ("5", lambda: scenario_scale(directory, [10**3, 10**4] if quick
                                         else [10**3, 10**4, 10**5, 10**6],
                                         200 if quick else 2000, 2 if quick else 3)),
            ("6", lambda: scenario_two_processes(directory, 200 if quick else 2000,
                                                 2 if quick else 3)),
            ("7", lambda: scenario_import(5 if quick else 15)),
            ("8", scenario_dbos),
        ]
        for number, scenario in scenarios:
            if number in wanted:
                rows += scenario()
    report(rows)
    print(f"\n{time.perf_counter() - started:.1f} s")
    if options.json is not None:
        options.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()
