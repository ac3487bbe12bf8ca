"""Scenarios 12 and 13: the asyncio runtime against the sync one, and a workflow of 100,000
steps. Run through run.py.

* 12. ``await runtime.do(...)`` on AsyncDurableWorkflowRuntime ÷ ``runtime.do(...)`` on the
  sync runtime, both on SQLite ``normal``, in alternating turns (target <= 1.5x, DESIGN §13);
  and steps awaited ten at a time (``asyncio.gather``, handlers that await) ÷ the same steps
  awaited one after another, in ``normal`` and ``full``: what sharing commits saves (reported);
* 13. the first call of a new runtime over a 100,000-step workflow ÷ the first call over a
  10-step one (target <= 3x: history is read as replay needs it), and the memory the runtime
  holds after replaying all of it (target: ~100 bytes per completed call).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

from common import CHUNK, RESULT, Row, paired, per_step

from durably import AsyncDurableWorkflowRuntime, DurableWorkflowRuntime, SqliteStepStorage
from durably.testing import FakeClock


def _sync_runtime(path: Path, workflow: str) -> DurableWorkflowRuntime:
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(path), workflow_id=workflow,
                                     clock=FakeClock(start=1000.0))
    runtime.register("Bench.step", lambda n: RESULT)
    return runtime


async def _alternate(path: Path, sync_runtime: DurableWorkflowRuntime,
                     turns: int) -> tuple[float, float]:
    """Seconds spent by the async runtime and by the sync one, in alternating turns."""

    async def step(n: int) -> dict[str, object]:
        return RESULT

    runtime = AsyncDurableWorkflowRuntime(storage=SqliteStepStorage(path), workflow_id="bench",
                                          clock=FakeClock(start=1000.0))
    runtime.register("Bench.step", step)
    spent_async = spent_sync = 0.0
    for turn in range(turns):
        started = time.perf_counter()
        for n in range(turn * CHUNK, (turn + 1) * CHUNK):
            await runtime.do("Bench.step", n)
        spent_async += time.perf_counter() - started
        started = time.perf_counter()
        for n in range(turn * CHUNK, (turn + 1) * CHUNK):
            sync_runtime.do("Bench.step", n)
        spent_sync += time.perf_counter() - started
    await runtime.aclose()
    return spent_async, spent_sync


WIDTH = 10  # steps awaited together


async def _together_and_apart(path: Path, durability: str, turns: int) -> tuple[float, float]:
    """Seconds for steps awaited WIDTH at a time, and for as many one after another."""

    async def fetch(n: int) -> dict[str, object]:
        await asyncio.sleep(0)  # a handler doing I/O: other tasks run meanwhile
        return RESULT

    runtime = AsyncDurableWorkflowRuntime(
        storage=SqliteStepStorage(path, durability=durability), workflow_id="fan",
        clock=FakeClock(start=1000.0))
    runtime.register("Bench.fetch", fetch)
    together = apart = 0.0
    n = 0
    for _ in range(turns):
        started = time.perf_counter()
        for _ in range(CHUNK // WIDTH):
            await asyncio.gather(*[runtime.do("Bench.fetch", n + k) for k in range(WIDTH)])
            n += WIDTH
        together += time.perf_counter() - started
        started = time.perf_counter()
        for k in range(n, n + CHUNK):
            await runtime.do("Bench.fetch", k)
        n += CHUNK
        apart += time.perf_counter() - started
    await runtime.aclose()
    return together, apart


def scenario_gather(directory: Path, count: int, reps: int) -> list[Row]:
    rows = []
    for durability, steps in (("normal", count), ("full", max(CHUNK, count // 5))):
        turns = max(1, steps // CHUNK)
        together, apart = [], []
        for rep in range(reps):
            a, b = asyncio.run(_together_and_apart(
                directory / f"gather-{durability}-{rep}.db", durability, turns))
            together.append(per_step(a, turns * CHUNK))
            apart.append(per_step(b, turns * CHUNK))
        rows.append(Row(f"12. asyncio, {WIDTH} steps at once, {durability}", "µs/step",
                        together, apart, "the same steps one after another", "(reported)",
                        None, paired(together, apart),
                        "asyncio.gather of handlers that await: their writes share commits"))
    return rows


def scenario_async(directory: Path, count: int, reps: int) -> list[Row]:
    ours, sync = [], []
    turns = max(1, count // CHUNK)
    for rep in range(reps):
        sync_runtime = _sync_runtime(directory / f"sync-{rep}.db", "bench")
        spent_async, spent_sync = asyncio.run(
            _alternate(directory / f"async-{rep}.db", sync_runtime, turns))
        sync_runtime.close()
        ours.append(per_step(spent_async, turns * CHUNK))
        sync.append(per_step(spent_sync, turns * CHUNK))
    ratio = paired(ours, sync)
    return [Row("12. asyncio runtime, SQLite", "µs/step", ours, sync,
                "the sync runtime, same steps, same run", "<= 1.5x", ratio <= 1.5, ratio)]


def _first_call(path: Path, workflow: str) -> float:
    """µs for the first call of a new runtime over ``workflow``'s recorded history."""
    runtime = _sync_runtime(path, workflow)
    started = time.perf_counter()
    runtime.do("Bench.step", 0)
    spent = time.perf_counter() - started
    runtime.close()
    return spent * 1e6


def scenario_long_workflow(directory: Path, steps: int, reps: int) -> list[Row]:
    path = directory / "long.db"
    writer = _sync_runtime(path, "long")
    for n in range(steps):
        writer.do("Bench.step", n)
    writer.close()
    short = _sync_runtime(path, "short")
    for n in range(10):
        short.do("Bench.step", n)
    short.close()
    big, small = [], []
    for _ in range(reps):
        big.append(_first_call(path, "long"))
        small.append(_first_call(path, "short"))
    ratio = paired(big, small)
    # Memory held after the whole replay: tracemalloc of the runtime's allocations.
    runtime = _sync_runtime(path, "long")
    gc.collect()
    tracemalloc.start()
    for n in range(steps):
        runtime.do("Bench.step", n)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    runtime.close()
    per_call = held / steps
    return [
        Row(f"13. first call, {steps:,}-step workflow", "µs", big, small,
            "the first call of a 10-step workflow", "<= 3x", ratio <= 3, ratio),
        Row(f"13. memory after replaying {steps:,} steps", "bytes/call", [per_call],
            [100.0], "the target", "<= ~100 bytes/call", per_call <= 110, per_call / 100,
            notes="what the runtime still holds (tracemalloc): the call numbering"),
    ]
