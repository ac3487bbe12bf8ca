"""Crash everywhere, for runs: workers SIGKILLed at every kill point (around create, claim,
renew, step writes, suspension, sending and consuming events, and finish) and at random
moments, and SIGSTOPped past their lease while another worker takes over; after each scenario
the promises of runs are checked against a log written from inside the database's own write
statements.

The default suite runs the short, seeded form; ``pytest -m torture`` runs the long form.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from durably import RunStatus, SqliteStepStorage, StepStatus

CHILD = Path(__file__).with_name("torture_runs_child.py")
RUNS = 3        # per kill-point scenario
CHAOS_RUNS = 12  # per chaos scenario: enough work that kills and pauses land inside it

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL and SIGSTOP")


def start_worker(directory: Path, kill_point: int | None = None, errors: bool = False,
                 runs: int = RUNS) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(CHILD), str(directory / "runs.db"), str(directory / "runs.log"),
            str(runs)]
    if kill_point is not None:
        args.append(str(kill_point))
    return subprocess.Popen(args, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if errors else subprocess.DEVNULL)


def settle(directory: Path, runs: int = RUNS) -> None:
    """A clean worker finishes whatever is left (it also proves the store is usable)."""
    worker = start_worker(directory, errors=True, runs=runs)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err.decode()


def check(directory: Path) -> dict[str, int]:
    """Every promise of runs, from the store and the audit log. Returns counts."""
    lines = (directory / "runs.log").read_text().splitlines()
    violations: list[str] = []
    outcomes: Counter[str] = Counter()
    exits: dict[str, set[str]] = {}
    wake_times: dict[str, str] = {}
    consumed: dict[str, set[str]] = {}
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "step":
            step_id, status, writer, fence, run_status, ends = rest.split(" ")
            if writer != fence or run_status != "running":
                violations.append(f"step {step_id} ({status}) written under fence {writer}"
                                  f" while the run had {fence} and was {run_status}")
            # a sleep's wake time or a wait's deadline: frozen
            if ends != "none" and wake_times.setdefault(step_id, ends) != ends:
                violations.append(f"the end of {step_id} moved from"
                                  f" {wake_times[step_id]} to {ends}")
        elif kind == "consumed":
            seq, run_id, step_id = rest.split(" ")
            consumed.setdefault(seq, set()).add(step_id)
        elif kind == "fence":
            run_id, old, new = rest.split(" ")
            if int(new) <= int(old):
                violations.append(f"fence of {run_id} went from {old} to {new}")
        elif kind == "outcome":
            run_id, status, writer, fence = rest.split(" ")
            outcomes[run_id] += status == "completed"
            if writer not in ("None", fence):
                violations.append(f"outcome of {run_id} written under fence {writer} of {fence}")
        elif kind == "exit":
            step_id, result = rest.split(" ", 1)
            exits.setdefault(step_id, set()).add(json.dumps(json.loads(result),
                                                            sort_keys=True))
    assert not violations, violations[:5]
    assert all(count <= 1 for count in outcomes.values()), outcomes
    assert all(len(steps) == 1 for steps in consumed.values()), consumed  # never twice
    storage = SqliteStepStorage(directory / "runs.db")
    runs = storage.list_runs(limit=None)
    for run in runs:
        assert run.status is RunStatus.COMPLETED, run
        steps = storage.list(workflow_id=run.run_id)
        assert [s.status for s in steps] == [StepStatus.COMPLETED] * 6
        recorded: dict[str, object] = {}
        for step in steps:
            if step.action == "durably.wait:go":
                # One event, consumed by this wait exactly once, and it is its result.
                (event,) = storage.list_events(run.run_id)
                assert event.consumed_by == step.step_id and step.result == event.payload
                assert consumed.get(str(event.seq), {step.step_id}) == {step.step_id}
                recorded["go"] = json.loads(event.payload)
            elif step.action.startswith("Order."):
                # The recorded result is the value of a handler run that really returned it.
                assert json.dumps(json.loads(step.result or ""), sort_keys=True) \
                    in exits.get(step.step_id, set()), step.step_id
                recorded[step.action.split(".")[1]] = json.loads(step.result or "")
        assert json.loads(run.result or "") == recorded
    storage.close()
    conn = sqlite3.connect(directory / "runs.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    return {"runs": len(runs), "outcomes": sum(outcomes.values())}


def _fresh(directory: Path) -> Path:
    directory.mkdir()
    SqliteStepStorage(directory / "runs.db").close()
    return directory


def sweep(tmp_path: Path, points: range) -> int:
    """Kill one worker at each kill point, let a clean worker finish, check."""
    kills = 0
    for point in points:
        directory = _fresh(tmp_path / f"point-{point}")
        worker = start_worker(directory, kill_point=point)
        worker.communicate(timeout=120)
        if worker.returncode == -signal.SIGKILL:
            kills += 1
            time.sleep(0.25)  # the lease (0.2 s) of the killed worker runs out
        settle(directory)
        check(directory)
    return kills


def _all_done(directory: Path) -> bool:
    conn = sqlite3.connect(directory / "runs.db")
    try:
        left = conn.execute("SELECT count(*) FROM durably_runs WHERE status NOT IN"
                            " ('completed', 'failed')").fetchone()[0]
        total = conn.execute("SELECT count(*) FROM durably_runs").fetchone()[0]
    finally:
        conn.close()
    return bool(total == CHAOS_RUNS and left == 0)


def chaos(tmp_path: Path, seed: int, seconds: float) -> dict[str, int]:
    """Two workers at once; at random moments one is SIGKILLed (and restarted) or SIGSTOPped
    past its lease (and continued) while the other takes its runs over, until every run is
    finished or the time is up; then a clean worker finishes what is left."""
    rng = random.Random(seed)
    directory = _fresh(tmp_path / f"chaos-{seed}")
    workers = [start_worker(directory, runs=CHAOS_RUNS) for _ in range(2)]
    kills = stops = 0
    until = time.monotonic() + seconds
    try:
        while time.monotonic() < until and not _all_done(directory):
            time.sleep(rng.uniform(0.02, 0.1))
            index = rng.randrange(2)
            victim = workers[index]
            if victim.poll() is not None:
                workers[index] = start_worker(directory, runs=CHAOS_RUNS)
                continue
            if rng.random() < 0.4:
                victim.kill()
                victim.wait()
                kills += 1
                workers[index] = start_worker(directory, runs=CHAOS_RUNS)
            else:
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.3, 0.6))  # past the 0.2 s lease
                os.kill(victim.pid, signal.SIGCONT)
                stops += 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    settle(directory, runs=CHAOS_RUNS)
    return {**check(directory), "kills": kills, "stops": stops}


def test_runs_survive_kills_at_every_point_and_random_kills_and_pauses(tmp_path: Path) -> None:
    """Short form: every eighth kill point, and one chaos scenario."""
    kills = sweep(tmp_path, range(1, 90, 8))
    assert kills >= 8
    figures = chaos(tmp_path, seed=1, seconds=10.0)
    assert figures["runs"] == CHAOS_RUNS and figures["kills"] + figures["stops"] >= 4


@pytest.mark.torture
def test_runs_torture_long(tmp_path: Path) -> None:
    """Long form: every kill point, and chaos in twelve seeds."""
    kills = sweep(tmp_path, range(1, 120))
    totals: Counter[str] = Counter()
    for seed in range(12):
        totals.update(chaos(tmp_path, seed=seed, seconds=20.0))
    print(f"sweep kills {kills}; chaos {dict(totals)}")
