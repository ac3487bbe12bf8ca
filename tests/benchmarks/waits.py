"""Scenario 10: durable waiting on SQLite, each beside its baseline in the same run. Run
through run.py.

* a sleep that is already due, and a wait whose event is already there, ÷ a durable step,
  all inside runs (target: no more than a step, <= 1.0x with noise: PASS under 1.15x);
* send_event ÷ a raw single-insert commit (target <= 2x: at most two commits' worth);
* run_due() with nothing due among 10,000 SUSPENDED runs ÷ among 1,000 (target <= 1.5x: the
  due scan reads an index, so its cost does not grow with runs that are not due).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import CHUNK, RESULT, RawCommits, Row, paired, per_step

from durably import DurableWorkflowRuntime, RunStatus, SqliteStepStorage
from durably.testing import FakeClock


def _runtime(path: Path, **options: Any) -> DurableWorkflowRuntime:
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(path), workflow_id="bench",
                                     clock=FakeClock(start=1000.0), **options)
    runtime.register("Bench.step", lambda n: RESULT)
    return runtime


def _due_waits(path: Path, count: int) -> tuple[float, float, float]:
    """µs per due sleep, per wait with its event there, per step: each in runs of CHUNK."""
    runtime = _runtime(path)
    spent = {"sleep": 0.0, "wait": 0.0, "step": 0.0}

    @runtime.workflow("Bench.sleeps")
    def sleeps(n: int) -> None:
        started = time.perf_counter()
        for _ in range(n):
            runtime.sleep_until(0.0)
        spent["sleep"] += time.perf_counter() - started

    @runtime.workflow("Bench.waits")
    def waits(n: int) -> None:
        started = time.perf_counter()
        for _ in range(n):
            runtime.wait_for_event("go")
        spent["wait"] += time.perf_counter() - started

    @runtime.workflow("Bench.steps")
    def steps(n: int) -> None:
        started = time.perf_counter()
        for k in range(n):
            runtime.do("Bench.step", k)
        spent["step"] += time.perf_counter() - started

    # A runtime that has not registered the waits, to create their runs PENDING and fill
    # their inboxes before they run.
    submitter = _runtime(path)
    turns = max(1, count // CHUNK)
    for turn in range(turns):
        sleeps.run(CHUNK, run_id=f"s-{turn}")
        submitter.start("Bench.waits", CHUNK, run_id=f"w-{turn}")
        for n in range(CHUNK):
            submitter.send_event(f"w-{turn}", "go", n)
        waits.run(CHUNK, run_id=f"w-{turn}")
        steps.run(CHUNK, run_id=f"t-{turn}")
    done = turns * CHUNK
    submitter.close()
    runtime.close()
    return (per_step(spent["sleep"], done), per_step(spent["wait"], done),
            per_step(spent["step"], done))


def scenario_due_waits(directory: Path, count: int, reps: int) -> list[Row]:
    figures = [_due_waits(directory / f"waits-{rep}.db", count) for rep in range(reps)]
    sleeps = [f[0] for f in figures]
    waits = [f[1] for f in figures]
    steps = [f[2] for f in figures]
    sleep_ratio, wait_ratio = paired(sleeps, steps), paired(waits, steps)
    return [
        Row("10. a sleep already due, in a run", "µs/sleep", sleeps, steps,
            "a durable step in a run", "<= a step", sleep_ratio <= 1.15, sleep_ratio),
        Row("10. a wait whose event is there", "µs/wait", waits, steps,
            "a durable step in a run", "<= a step", wait_ratio <= 1.15, wait_ratio),
    ]


def _sends(path: Path, raw_path: Path, count: int) -> tuple[float, float]:
    runtime = _runtime(path)
    runtime.start("Bench.inbox", None, run_id="inbox")
    raw = RawCommits(str(raw_path), "NORMAL")
    spent_send = spent_raw = 0.0
    for turn in range(max(1, count // CHUNK)):
        started = time.perf_counter()
        for n in range(CHUNK):
            runtime.send_event("inbox", "note", n, key=f"{turn}-{n}")
        spent_send += time.perf_counter() - started
        spent_raw += raw.run(CHUNK)
    done = max(1, count // CHUNK) * CHUNK
    runtime.close()
    raw.close()
    return per_step(spent_send, done), per_step(spent_raw, done)


def scenario_send_event(directory: Path, count: int, reps: int) -> list[Row]:
    pairs = [_sends(directory / f"send-{rep}.db", directory / f"send-raw-{rep}.db", count)
             for rep in range(reps)]
    ours, raw = [a for a, _ in pairs], [b for _, b in pairs]
    ratio = paired(ours, raw)
    return [Row("10. send_event", "µs/event", ours, raw, "raw BEGIN;INSERT;COMMIT (NORMAL)",
                "<= 2x raw", ratio <= 2, ratio)]


def _idle_run_due(path: Path, suspended: int, calls: int) -> float:
    """µs per run_due() that finds nothing due among ``suspended`` sleeping runs."""
    runtime = _runtime(path, suspend_after=0)

    @runtime.workflow("Bench.nap")
    def nap(n: int) -> None:
        runtime.sleep(86400)

    # Created PENDING by a runtime that has not registered the workflow, then executed here,
    # in this thread, until each one's sleep suspends it: nothing is left running in the
    # worker threads (start() here would dispatch them there) while run_due() is measured.
    submitter = _runtime(path)
    for n in range(suspended):
        submitter.start("Bench.nap", n, run_id=f"nap-{n}")
    submitter.close()
    assert runtime.run_due() == suspended
    assert not runtime.list_runs(status=RunStatus.RUNNING, limit=1)
    runtime.run_due()  # warm
    started = time.perf_counter()
    for _ in range(calls):
        assert runtime.run_due() == 0
    elapsed = time.perf_counter() - started
    runtime.close()
    return elapsed / calls * 1e6


def scenario_due_scan(directory: Path, small: int, large: int, reps: int) -> list[Row]:
    few = [_idle_run_due(directory / f"scan-small-{rep}.db", small, 1000) for rep in range(reps)]
    many = [_idle_run_due(directory / f"scan-large-{rep}.db", large, 1000) for rep in range(reps)]
    ratio = paired(many, few)
    return [Row(f"10. run_due(), nothing due among {large:,} suspended", "µs/call", many, few,
                f"the same among {small:,}", "<= 1.5x", ratio <= 1.5, ratio)]
