"""DBOS Transact's side of the comparison, in a process of its own (DBOS is a process-wide
singleton). Not collected by pytest; run by dbos_compare.py only when ``dbos`` is importable.

    python dbos_child.py SYSTEM_DATABASE_URL WORKFLOWS    # prints µs per step as JSON

The workload is durably's: WORKFLOWS workflows of 10 steps, each step returning the same
~200-byte result, one after the other.
"""

from __future__ import annotations

import json
import sys
import time

from dbos import DBOS, DBOSConfig  # type: ignore[import-not-found]

RESULT = {"order": 4242, "customer": "c" * 40, "items": ["sku-1", "sku-2", "sku-3"],
          "total": 129.5, "paid": True, "note": "n" * 60}


def main() -> None:
    url, workflows = sys.argv[1], int(sys.argv[2])
    config: DBOSConfig = {"name": "durably-bench", "system_database_url": url,
                          "log_level": "WARNING"}
    DBOS(config=config)

    @DBOS.step()
    def step(n: int) -> dict:
        return RESULT

    @DBOS.workflow()
    def flow(first: int) -> int:
        for k in range(10):
            step(first + k)
        return first

    DBOS.launch()
    flow(-10)  # the first workflow pays for warm-up, on both sides
    started = time.perf_counter()
    for n in range(workflows):
        flow(n * 10)
    spent = time.perf_counter() - started
    print(json.dumps(spent / (workflows * 10) * 1e6))
    DBOS.destroy()


if __name__ == "__main__":
    main()
