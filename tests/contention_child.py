"""One process of the contention test (not collected by pytest).

Usage: python contention_child.py DB THREADS STEPS
Each thread runs the same STEPS-step workflow ("race") with its own runtime on the shared
SQLite file; every handler returns a fresh random value. Prints one JSON line: the list of
results each thread got back, or the error that reached a caller.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import DurableWorkflowRuntime, RetryPolicy, SqliteStepStorage

db, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = threading.Barrier(threads)
outcomes: list[object] = [None] * threads


def race(index: int) -> None:
    # Racers that find a step RUNNING take it for interrupted and count an attempt (v1 has no
    # owners or leases), so the budget must cover every racer.
    runtime = DurableWorkflowRuntime(
        storage=SqliteStepStorage(db), workflow_id="race",
        retry_policy=RetryPolicy(max_attempts=1000, initial_delay=0),
    )
    runtime.register("Step.run", lambda n: {"n": n, "value": uuid.uuid4().hex})
    try:
        start.wait()
        outcomes[index] = [runtime.do("Step.run", n) for n in range(steps)]
    except Exception as error:  # reported to the parent, which fails the test
        outcomes[index] = f"{type(error).__name__}: {error}"
    finally:
        runtime.close()


workers = [threading.Thread(target=race, args=(n,)) for n in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(json.dumps(outcomes))
