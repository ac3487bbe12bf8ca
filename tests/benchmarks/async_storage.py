"""How long a SQLite write would stall an event loop, against the cost of moving it off.

    python tests/benchmarks/async_storage.py [--steps N]

Prints, per durability mode, the median cost of one SqliteStepStorage.set() called on the
loop's thread, the same call through the runtime's worker pool, and a bare thread hop. The
asyncio runtime keeps SQLite calls off the loop: a write can wait for another process's lock
(up to busy_timeout) or for an fsync, and a loop must never stall for that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from durably import SqliteStepStorage, StepRecord, StepStatus


def _record(n: int) -> StepRecord:
    return StepRecord(f"s1_{n:032x}", "bench", "Bench.step", StepStatus.COMPLETED,
                      result='{"payload":"' + "x" * 180 + '"}', attempts=1, created_at=1.0,
                      updated_at=1.0)


async def _one_round(storage: SqliteStepStorage, pool: ThreadPoolExecutor, steps: int,
                     first: int) -> tuple[float, float, float]:
    """Time ``steps`` writes on the loop, ``steps`` through the pool, ``steps`` bare hops."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for n in range(first, first + steps):
        storage.set(_record(n))
    on_loop = (time.perf_counter() - start) / steps * 1e6
    start = time.perf_counter()
    for n in range(first + steps, first + 2 * steps):
        await loop.run_in_executor(pool, storage.set, _record(n))
    off_loop = (time.perf_counter() - start) / steps * 1e6
    start = time.perf_counter()
    for _ in range(steps):
        await loop.run_in_executor(pool, len, "")
    hop = (time.perf_counter() - start) / steps * 1e6
    return on_loop, off_loop, hop


def measure(steps: int, rounds: int = 5) -> list[tuple[str, float, float, float]]:
    """Return (durability, on-loop µs, off-loop µs, bare hop µs) medians over ``rounds``."""
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for durability in ("normal", "full"):
            storage = SqliteStepStorage(os.path.join(directory, f"{durability}.db"),
                                        durability=durability)
            pool = ThreadPoolExecutor(4)
            samples = [asyncio.run(_one_round(storage, pool, steps, r * 2 * steps))
                       for r in range(rounds)]
            pool.shutdown()
            storage.close()
            columns = zip(*samples, strict=True)
            on_loop, off_loop, hop = (statistics.median(column) for column in columns)
            rows.append((durability, on_loop, off_loop, hop))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    options = parser.parse_args()
    print(f"{'durability':<11} {'set() on loop':>14} {'set() off loop':>15} {'thread hop':>11}")
    for durability, on_loop, off_loop, hop in measure(options.steps):
        print(f"{durability:<11} {on_loop:>11.1f} µs {off_loop:>12.1f} µs {hop:>8.1f} µs")


if __name__ == "__main__":
    main()
