"""Steps awaited ten at a time by the asyncio runtime (their writes share commits), run in a
child process by the crash tests (not collected by pytest).

Usage: python gather_child.py DB LOG DURABILITY
Every handler run appends "<n> <pid>" to LOG before it waits; the results and the number of
writes that went in shared commits are printed as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from durably import AsyncDurableWorkflowRuntime, SqliteStepStorage

STEPS = 40
db, log, durability = sys.argv[1], sys.argv[2], sys.argv[3]


class Counted(SqliteStepStorage):
    batched = 0

    def write_steps(self, writes: Any) -> Any:
        Counted.batched += len(writes)
        return super().write_steps(writes)


async def main() -> None:
    runtime = AsyncDurableWorkflowRuntime(
        storage=Counted(db, durability=durability), workflow_id="fan")

    async def square(n: int) -> int:
        with open(log, "a") as out:
            out.write(f"{n} {os.getpid()}\n")
        await asyncio.sleep(0.002)  # I/O: the other steps of the batch run meanwhile
        return n * n

    runtime.register("Fan.square", square)
    results: list[int] = []
    for first in range(0, STEPS, 10):
        results += await asyncio.gather(*[runtime.do("Fan.square", n)
                                          for n in range(first, first + 10)])
    await runtime.aclose()
    print(json.dumps({"results": results, "batched": Counted.batched}))


asyncio.run(main())
