"""Real crashes: a child process is killed with SIGKILL, then the workflow is run again."""

from __future__ import annotations

import json
import os
import signal
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
