"""Workflow runs across real processes: SIGKILL and recovery, live leases left alone, fencing
after SIGSTOP/SIGCONT, concurrent starts, a starter killed before it claimed, poison runs.

Leases here are short (1 s) and waits generous, so a loaded machine makes the tests slower,
never wrong."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from durably import RunStatus, SqliteStepStorage, StepStatus

CHILD = Path(__file__).resolve().parent / "run_child.py"
RESULT = {"reserve": "reserve 7", "charge": "charge 7", "pack": "pack 7", "ship": "ship 7"}

pytestmark = pytest.mark.slow


def child(db: Path, log: Path, mode: str, **options: Any) -> subprocess.Popen[str]:
    args = [sys.executable, str(CHILD), str(db), str(log), mode,
            *(f"{key}={value}" for key, value in options.items())]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> Any:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def ran(log: Path) -> Counter[str]:
    """How often each step body ran, in all processes."""
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def store(db: Path) -> SqliteStepStorage:
    return SqliteStepStorage(db)


def test_a_killed_owner_s_run_is_finished_by_another_process(tmp_path: Path) -> None:
    """Check 5: SIGKILL after step 2 of 4; another process's recover() after the lease
    expired finishes it: steps 1-2 ran once in total, 3-4 once, recovery_count 1."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    killed = child(db, log, "run", kill_after=2)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    storage = store(db)
    assert storage.get_run("r1").status is RunStatus.RUNNING
    time.sleep(1.5)  # the dead owner's lease (1 s) runs out
    report = finish(child(db, log, "recover"))
    assert report["claimed"] == ["r1"]
    run = storage.get_run("r1")
    assert run.status is RunStatus.COMPLETED and run.recovery_count == 1 and run.fence == 2
    assert json.loads(run.result or "") == RESULT
    assert ran(log) == {"reserve": 1, "charge": 1, "pack": 1, "ship": 1}
    storage.close()


def test_the_async_runtime_recovers_a_killed_owner_s_run(tmp_path: Path) -> None:
    """Check 5 with AsyncDurableWorkflowRuntime on both sides: the same once-only steps."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    killed = child(db, log, "async-run", kill_after=2)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    time.sleep(1.5)
    assert finish(child(db, log, "async-recover"))["claimed"] == ["r1"]
    storage = store(db)
    run = storage.get_run("r1")
    assert run.status is RunStatus.COMPLETED and run.recovery_count == 1
    assert json.loads(run.result or "") == RESULT
    assert ran(log) == {"reserve": 1, "charge": 1, "pack": 1, "ship": 1}
    storage.close()


def test_a_live_lease_is_never_taken_even_over_a_long_step(tmp_path: Path) -> None:
    """Checks 6 and 8: while the owner lives and heartbeats (a step lasting four lease
    periods), a second process calling recover() every 0.1 s claims nothing, and the run
    completes without a takeover."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    owner = child(db, log, "run", block_in="charge", block=4)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    assert finish(child(db, log, "recover-loop", seconds=3)) == []
    assert finish(owner) == RESULT
    storage = store(db)
    run = storage.get_run("r1")
    assert run.fence == 1 and run.recovery_count == 0
    assert ran(log) == {"reserve": 1, "charge": 1, "pack": 1, "ship": 1}
    storage.close()


def _steps(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT * FROM durably_steps ORDER BY seq").fetchall()
    conn.close()
    return rows


def test_a_paused_owner_s_write_is_refused_after_a_takeover(tmp_path: Path) -> None:
    """Check 7: A is SIGSTOPped inside step 2 past its lease; B recovers and finishes; after
    SIGCONT, A's step write raises OwnershipLost, no row changes, the result is B's."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    paused = child(db, log, "run", block_in="charge", block=1)
    assert paused.stdout is not None and paused.stdout.readline().strip() == "ready"
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # A's lease runs out while it is stopped
        assert finish(child(db, log, "recover"))["claimed"] == ["r1"]
        before = _steps(db)
        storage = store(db)
        winner = storage.get_run("r1")
        assert winner.status is RunStatus.COMPLETED and winner.fence == 2
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    assert finish(paused) == RESULT  # A's run() waits for, and returns, B's result
    assert _steps(db) == before
    assert storage.get_run("r1") == winner
    lines = log.read_text().splitlines()
    assert f"lost {paused.pid}" in lines
    # charge ran in A (cut off) and again in B; nothing after it ran in A.
    assert ran(log) == {"reserve": 1, "charge": 2, "pack": 1, "ship": 1, "lost": 1}
    charge = next(s for s in storage.list(workflow_id="r1") if s.action == "Order.charge")
    assert charge.status is StepStatus.COMPLETED and charge.attempts == 2
    storage.close()


def test_many_threads_in_two_processes_start_one_run_once(tmp_path: Path) -> None:
    """Check 2: eight threads in each of two processes start r1 at the same moment: one
    execution, and all sixteen get the same result."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    SqliteStepStorage(db).close()
    at = time.time() + 2.0
    racers = [child(db, log, "threads", threads=8, at=at) for _ in range(2)]
    results = [finish(racer) for racer in racers]
    assert all(result == [RESULT] * 8 for result in results)
    assert ran(log) == {"reserve": 1, "charge": 1, "pack": 1, "ship": 1}
    storage = store(db)
    assert len(storage.list_runs()) == 1 and storage.get_run("r1").fence == 1
    storage.close()


def test_a_starter_killed_before_it_claimed_leaves_a_pending_run_that_recover_runs(
        tmp_path: Path) -> None:
    """Check 9: start() commits the run before it claims it; killed in between, the run is
    PENDING, and recover() runs it (no recovery counted: it never ran)."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    starter = child(db, log, "die-before-claim")
    starter.communicate(timeout=60)
    assert starter.returncode == -signal.SIGKILL
    storage = store(db)
    assert storage.get_run("r1").status is RunStatus.PENDING
    assert finish(child(db, log, "recover"))["claimed"] == ["r1"]
    run = storage.get_run("r1")
    assert run.status is RunStatus.COMPLETED and run.recovery_count == 0
    assert ran(log) == {"reserve": 1, "charge": 1, "pack": 1, "ship": 1}
    storage.close()


def test_a_poison_run_stops_at_max_recoveries_and_resume_resets_it(tmp_path: Path) -> None:
    """Check 10: a run that kills its process on every attempt executes 1 + max_recoveries
    times, then a takeover makes it FAILED with RecoveryLimitError; recover() no longer
    starts it; resume() gives it a fresh budget."""
    db, log = tmp_path / "s.db", tmp_path / "ran.log"
    first = child(db, log, "poison", start=1, recoveries=2, lease=0.5)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    outcomes = []
    for _ in range(3):
        time.sleep(0.8)  # the dead owner's lease runs out
        attempt = child(db, log, "poison", recoveries=2, lease=0.5)
        out, _ = attempt.communicate(timeout=60)
        outcomes.append((attempt.returncode, out.strip()))
    # Two recoveries each died running it; the third takeover failed it instead.
    assert [code for code, _ in outcomes] == [-signal.SIGKILL, -signal.SIGKILL, 0]
    assert json.loads(outcomes[-1][1]) == {"claimed": [], "failed": ["p1"]}
    assert ran(log) == {"poison": 3}
    storage = store(db)
    run = storage.get_run("p1")
    assert run.status is RunStatus.FAILED and run.error is not None
    assert run.error.type == "RecoveryLimitError" and run.recovery_count == 2
    again = child(db, log, "poison", recoveries=2, lease=0.5)
    assert finish(again) == {"claimed": [], "failed": []}
    assert storage.resume("p1", time.time()) is True
    assert storage.get_run("p1").recovery_count == 0
    storage.close()
