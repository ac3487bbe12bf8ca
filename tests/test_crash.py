"""Real crashes: a child process is killed with SIGKILL, then the workflow is run again
(sync steps, retries, and asyncio steps whose writes share commits)."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durably import SqliteStepStorage, StepStatus

CHILD = Path(__file__).with_name("crash_child.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(db: Path, log: Path, behaviour: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), str(db), str(log), behaviour],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _kill_when_ready(child: subprocess.Popen[str], log: Path) -> None:
    ready = Path(f"{log}.ready")
    deadline = time.monotonic() + 60
    while not ready.exists():  # process coordination: wait for the child to reach its point
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    ready.unlink()


def _finish(db: Path, log: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(CHILD), str(db), str(log), "normal"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _runs(log: Path) -> list[tuple[str, int, int]]:
    return [(name, int(attempt), int(pid)) for name, attempt, pid in
            (line.split() for line in log.read_text().splitlines())]


def test_sigkill_inside_a_step_repeats_only_that_step(tmp_path: Path) -> None:
    """Killed inside "charge": the rerun replays "reserve" and runs "charge" again, counted."""
    db, log = tmp_path / "orders.db", tmp_path / "runs.log"
    child = _start(db, log, "block-in-charge")
    _kill_when_ready(child, log)
    storage = SqliteStepStorage(db)
    statuses = sorted((r.action, r.status, r.attempts) for r in storage.list())
    assert statuses == [("Inventory.reserve", StepStatus.COMPLETED, 1),
                        ("Payment.charge", StepStatus.RUNNING, 1)]
    storage.close()

    output = _finish(db, log)
    assert output["result"] == [{"reserved": ["book"]}, {"charged": 12.5, "attempt": 2},
                                "shipped 42"]
    runs = _runs(log)
    assert [(name, attempt) for name, attempt, _ in runs] == [
        ("reserve", 1), ("charge", 1), ("charge", 2), ("ship", 1)]
    assert runs[0][2] == runs[1][2] != runs[2][2] == runs[3][2]  # killed pid, then the rerun


def test_sigkill_during_a_retry_wait_keeps_the_count_and_the_schedule(tmp_path: Path) -> None:
    """Killed while waiting to retry: the rerun waits only the rest, then makes attempt 2."""
    db, log = tmp_path / "orders.db", tmp_path / "runs.log"
    child = _start(db, log, "hang-in-retry-wait")
    _kill_when_ready(child, log)
    storage = SqliteStepStorage(db)
    charge = next(r for r in storage.list() if r.action == "Payment.charge")
    storage.close()
    assert charge.status is StepStatus.RETRYING and charge.attempts == 1
    assert charge.error is not None and charge.error.message == "gateway timeout"
    assert charge.next_attempt_at is not None
    assert charge.next_attempt_at - charge.updated_at == pytest.approx(60)

    before = time.time()
    output = _finish(db, log)
    after = time.time()
    (remaining,) = output["sleeps"]
    # The rerun waited exactly what was left of the recorded wait at the moment it looked:
    # not a fresh 60 s (restarted), not nothing (skipped). Bounded by when it ran, so a slow
    # machine cannot fail it.
    assert charge.next_attempt_at - after <= remaining <= charge.next_attempt_at - before
    assert remaining < 60
    assert output["result"][1] == {"charged": 12.5, "attempt": 2}
    assert [(name, attempt) for name, attempt, _ in _runs(log)] == [
        ("reserve", 1), ("charge", 1), ("charge", 2), ("ship", 1)]


GATHER = Path(__file__).with_name("gather_child.py")


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_sigkill_among_steps_that_share_commits_loses_and_repeats_nothing(
        tmp_path: Path, durability: str) -> None:
    """Steps awaited together commit their records in shared transactions. Killed at any
    moment, each step is either recorded COMPLETED (and never runs again) or not recorded
    as done (and the rerun runs it); the rerun finishes every step with its own result."""
    # (handler runs logged, then a pause): while handlers wait, and around the commit of a
    # batch's outcomes (the handlers of a batch wait 2 ms, then their records commit).
    kill_points = ((1, 0.0), (7, 0.0), (10, 0.0024), (15, 0.0), (20, 0.0021), (26, 0.0),
                   (30, 0.0026), (38, 0.0))
    for k, (kill_after, pause) in enumerate(kill_points):
        db, log = tmp_path / f"fan-{k}.db", tmp_path / f"fan-{k}.log"
        child = subprocess.Popen([sys.executable, str(GATHER), str(db), str(log), durability],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=_env())
        deadline = time.monotonic() + 60
        while not log.exists() or len(log.read_text().splitlines()) < kill_after:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.0005)
        time.sleep(pause)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        store = SqliteStepStorage(db)
        done_before = {math.isqrt(int(r.result or "0")) for r in store.list()
                       if r.status is StepStatus.COMPLETED}
        store.close()
        assert len(done_before) < 40, "killed after the last step: nothing was tested"

        rerun = subprocess.Popen([sys.executable, str(GATHER), str(db), str(log), durability],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=_env())
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        finished = json.loads(out)
        assert finished["results"] == [n * n for n in range(40)]
        ran_again = {int(n) for n, pid in (line.split() for line in log.read_text().splitlines())
                     if int(pid) == rerun.pid}
        assert finished["batched"] > 0 or len(ran_again) < 2  # steps did share commits
        assert not ran_again & done_before, (kill_after, pause, sorted(ran_again & done_before))
        assert ran_again | done_before == set(range(40))
        store = SqliteStepStorage(db)
        records = store.list(workflow_id="fan")
        store.close()
        assert sorted(int(r.result or "-1") for r in records) == [n * n for n in range(40)]
        assert {r.status for r in records} == {StepStatus.COMPLETED}
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
