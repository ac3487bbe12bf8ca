"""Scenario 9: workflow runs on SQLite, each beside the same steps outside runs in the same
run. Run through run.py.

* a step inside a run ÷ the same step outside (target <= 1.25x): the fenced write against the
  plain one, a run of 100 steps per turn;
* a 10-step run from start to result ÷ 10 steps outside a run (target <= 1.5x): create, claim,
  the history read, the steps, the fenced outcome, against a fresh workflow's 10 steps;
* recover() of 10,000 due one-step runs ÷ running those steps outside runs (target <= 3x):
  claims, workers, fenced writes and outcomes, until every run is COMPLETED.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from common import CHUNK, RESULT, Row, paired, per_step

from durably import DurableWorkflowRuntime, RunStatus, SqliteStepStorage
from durably.testing import FakeClock


def _runtime(path: Path, **options: Any) -> DurableWorkflowRuntime:
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(path), workflow_id="bench",
                                     clock=FakeClock(), **options)
    runtime.register("Bench.step", lambda n: RESULT)
    return runtime


def _step_in_run(path: Path, steps: int) -> tuple[float, float]:
    runtime = _runtime(path)
    spent = {"in": 0.0, "out": 0.0}
    numbers = itertools.count()

    @runtime.workflow("Bench.many")
    def many(count: int) -> None:
        started = time.perf_counter()
        for _ in range(count):
            runtime.do("Bench.step", next(numbers))
        spent["in"] += time.perf_counter() - started

    outside = runtime.for_workflow("outside")
    turns = max(1, steps // CHUNK)
    for turn in range(turns):
        many.run(CHUNK, run_id=f"many-{turn}")
        started = time.perf_counter()
        for _ in range(CHUNK):
            outside.do("Bench.step", next(numbers))
        spent["out"] += time.perf_counter() - started
    runtime.close()
    return per_step(spent["in"], turns * CHUNK), per_step(spent["out"], turns * CHUNK)


def scenario_step_in_run(directory: Path, steps: int, reps: int) -> list[Row]:
    pairs = [_step_in_run(directory / f"in-run-{rep}.db", steps) for rep in range(reps)]
    inside, outside = [a for a, _ in pairs], [b for _, b in pairs]
    ratio = paired(inside, outside)
    return [Row("9. a step inside a run", "µs/step", inside, outside, "the same step outside",
                "<= 1.25x", ratio <= 1.25, ratio)]


def _ten_step_runs(path: Path, runs: int) -> tuple[float, float]:
    runtime = _runtime(path)

    @runtime.workflow("Bench.ten")
    def ten(n: int) -> int:
        for k in range(10):
            runtime.do("Bench.step", k)
        return n

    spent_run = spent_loose = 0.0
    for n in range(runs):
        started = time.perf_counter()
        ten.run(n, run_id=f"ten-{n}")
        spent_run += time.perf_counter() - started
        fresh = runtime.for_workflow(f"loose-{n}")
        started = time.perf_counter()
        for k in range(10):
            fresh.do("Bench.step", k)
        spent_loose += time.perf_counter() - started
    runtime.close()
    return per_step(spent_run, runs), per_step(spent_loose, runs)


def scenario_ten_step_run(directory: Path, runs: int, reps: int) -> list[Row]:
    pairs = [_ten_step_runs(directory / f"ten-{rep}.db", runs) for rep in range(reps)]
    whole, loose = [a for a, _ in pairs], [b for _, b in pairs]
    ratio = paired(whole, loose)
    return [Row("9. a 10-step run, start to result", "µs/run", whole, loose,
                "10 steps outside a run", "<= 1.5x", ratio <= 1.5, ratio)]


def _recover_runs(path: Path, runs: int) -> tuple[float, float]:
    submitter = _runtime(path)
    for n in range(runs):  # not registered here: created PENDING for a worker
        submitter.start("Bench.one", n, run_id=f"one-{n}")
    submitter.close()
    worker = _runtime(path)

    @worker.workflow("Bench.one")
    def one(n: int) -> Any:
        return worker.do("Bench.step", n)

    started = time.perf_counter()
    report = worker.recover()
    assert len(report.claimed) == runs
    while worker.list_runs(status=RunStatus.RUNNING, limit=1):  # two cheap reads per poll
        time.sleep(0.005)
    recovering = (time.perf_counter() - started) / runs * 1e6
    assert len(worker.list_runs(status=RunStatus.COMPLETED, limit=None)) == runs
    outside = worker.for_workflow("outside")
    started = time.perf_counter()
    for n in range(runs):
        outside.do("Bench.step", n)
    loose = (time.perf_counter() - started) / runs * 1e6
    worker.close()
    return recovering, loose


def scenario_recover(directory: Path, runs: int, reps: int) -> list[Row]:
    pairs = [_recover_runs(directory / f"recover-{rep}.db", runs) for rep in range(reps)]
    recovering, loose = [a for a, _ in pairs], [b for _, b in pairs]
    ratio = paired(recovering, loose)
    return [Row(f"9. recover() of {runs:,} due one-step runs", "µs/run", recovering, loose,
                "the same steps outside runs", "<= 3x", ratio <= 3, ratio)]
