"""Scenarios 8 and 11's DBOS rows: the same workflows on DBOS Transact and on durably, side by
side in one run, when ``dbos`` is importable (it is never a dependency of durably: install it
in the benchmark's environment to compare). Not collected by pytest.

Both sides run WORKFLOWS workflows of 10 steps returning a ~200-byte result, one after the
other, after one warm-up workflow: durably as workflow runs (``workflow.run``) on its default
settings, DBOS as ``@DBOS.workflow`` / ``@DBOS.step`` on its defaults, against the same kind of
store (a new SQLite file; a new database on the same PostgreSQL server).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common import RESULT, Row, paired

from durably import DurableWorkflowRuntime

CHILD = Path(__file__).resolve().parent / "dbos_child.py"


def available() -> bool:
    return importlib.util.find_spec("dbos") is not None


def dbos_us_per_step(url: str, workflows: int) -> float:
    done = subprocess.run([sys.executable, str(CHILD), url, str(workflows)],
                          capture_output=True, text=True, timeout=1800, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def durably_us_per_step(storage: Any, workflows: int) -> float:
    runtime = DurableWorkflowRuntime(storage=storage)
    runtime.register("Bench.step", lambda n: RESULT)

    @runtime.workflow("Bench.flow")
    def flow(first: int) -> int:
        for k in range(10):
            runtime.do("Bench.step", first + k)
        return first

    flow.run(-10, run_id="warm-up")
    started = time.perf_counter()
    for n in range(workflows):
        flow.run(n * 10, run_id=f"w{n}")
    spent = time.perf_counter() - started
    runtime.close()
    return spent / (workflows * 10) * 1e6


def compare(label: str, target: float, make_storage: Any, make_url: Any, workflows: int,
            reps: int) -> list[Row]:
    """Alternate the two sides ``reps`` times; the ratio is DBOS µs/step ÷ durably's."""
    if not available():
        return [Row(label, "", [], [], "", "(dbos not importable: skipped)")]
    ours, theirs = [], []
    for _ in range(reps):
        tag = uuid.uuid4().hex[:10]
        ours.append(durably_us_per_step(make_storage(tag), workflows))
        theirs.append(dbos_us_per_step(make_url(tag), workflows))
    speedup = paired(theirs, ours)
    return [Row(label, "µs/step", ours, theirs,
                f"DBOS Transact, the same {workflows} workflows x 10 steps",
                f">= {target:g}x faster", speedup >= target, speedup,
                notes=f"durably {speedup:.1f}x faster per step")]
