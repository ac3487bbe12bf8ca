"""What every benchmark scenario shares: the report row, paired ratios, timing helpers,
the raw baselines and the durably step runners. Not collected by pytest."""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import durably  # noqa: E402,F401
from durably import (  # noqa: E402
    DurableWorkflowRuntime,
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


