"""Durable waiting across processes: two serve() workers share 200 runs that sleep and wait
for events (check 7)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from durably import RunStatus, SqliteStepStorage, SystemClock
from durably.testing import create_test_runtime

CHILD = Path(__file__).resolve().parent / "serve_child.py"
RUNS = 200

pytestmark = pytest.mark.slow


def test_two_serving_processes_finish_200_runs_of_sleeps_and_events(tmp_path: Path) -> None:
    """All 200 runs COMPLETED, every step body ran exactly once, and no "database is locked"
    reached user code (the workers' output is clean)."""
    db, log = tmp_path / "mix.db", tmp_path / "ran.log"
    submitter = create_test_runtime(storage=SqliteStepStorage(db, busy_timeout=60),
                                    clock=SystemClock())
    for n in range(RUNS):
        submitter.start("Mix.flow", n, run_id=f"m{n}")
    for n in range(0, RUNS, 3):  # a third of the events arrive before any worker starts
        submitter.send_event(f"m{n}", "go", {"n": n}, key=f"go-{n}")
    workers = [subprocess.Popen([sys.executable, str(CHILD), str(db), str(log)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for n in range(RUNS):  # the rest while they work (a repeat of a key stores nothing)
            submitter.send_event(f"m{n}", "go", {"n": n}, key=f"go-{n}")
            if n % 20 == 0:
                time.sleep(0.02)  # spread over the workers' work
        until = time.monotonic() + 120
        while time.monotonic() < until:
            left = submitter.list_runs(status=None, limit=None)
            if all(run.status is RunStatus.COMPLETED for run in left):
                break
            time.sleep(0.1)
    finally:
        outputs = []
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            outputs.append(worker.communicate(timeout=60))
    runs = submitter.list_runs(limit=None)
    assert [run.status for run in runs] == [RunStatus.COMPLETED] * RUNS
    assert [submitter.get_run(f"m{n}").result(timeout=5) for n in range(RUNS)] == [
        f"{n}:{n}" for n in range(RUNS)]
    counts = Counter(" ".join(line.split()[:2]) for line in log.read_text().splitlines())
    assert set(counts.values()) == {1} and len(counts) == 2 * RUNS
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
    pids = {line.split()[2] for line in log.read_text().splitlines()}
    assert len(pids) == 2  # both workers took a share
    submitter.close()
