"""Many machines on one PostgreSQL server, simulated with processes: workers SIGKILLed and
restarted mid-way, a worker SIGSTOPped past its lease, the server restarted under load.

Audit triggers (installed by the tests, not by durably) log every step write and every run
outcome from inside the writing statement, with the writer (its connection's
application_name: the worker's executor id) and the run's owner at that moment, so a write by
anyone but the run's current owner would show."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from durably import DurableWorkflowRuntime, RunStatus

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
WORKER = HERE / "pg_worker_child.py"
RUN_CHILD = HERE / "run_child.py"
AUDIT = """
CREATE TABLE {s}.audit (kind text, subject text, status text, writer text, owner text,
                        run_status text, fence bigint);
CREATE FUNCTION {s}.audit_step() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    SELECT owner, status, fence INTO r FROM {s}.runs WHERE run_id = NEW.workflow_id;
    INSERT INTO {s}.audit VALUES ('step', NEW.step_id, NEW.status,
        current_setting('application_name'), r.owner, r.status, r.fence);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_step AFTER INSERT OR UPDATE ON {s}.steps
    FOR EACH ROW EXECUTE FUNCTION {s}.audit_step();
CREATE FUNCTION {s}.audit_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.audit VALUES ('outcome', NEW.run_id, NEW.status,
        current_setting('application_name'), OLD.owner, OLD.status, OLD.fence);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_outcome AFTER UPDATE OF status ON {s}.runs FOR EACH ROW
    WHEN (NEW.status = 'completed') EXECUTE FUNCTION {s}.audit_outcome();
"""


def audit(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT * FROM {schema}.audit").fetchall()


def install_audit(pg_storage: Any, dsn: str, schema: str) -> None:
    pg_storage().close()  # creates and migrates the schema
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT.format(s=schema))


def submit(pg_storage: Any, runs: int) -> None:
    submitter = DurableWorkflowRuntime(storage=pg_storage())
    for n in range(runs):
        submitter.start("Job.steps", n, run_id=f"j{n:04d}")
    submitter.close()


def worker(schema: str, name: str, pause: float = 0.02) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, str(WORKER), schema, name, str(pause)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def wait_until_all_completed(pg_storage: Any, runs: int, seconds: float) -> list[Any]:
    reader = pg_storage()
    until = time.monotonic() + seconds
    while True:
        stored = reader.list_runs(limit=None)
        if sum(run.status is RunStatus.COMPLETED for run in stored) == runs \
                or time.monotonic() > until:
            return stored
        time.sleep(0.25)


def stop(processes: list[subprocess.Popen[str]]) -> list[str]:
    errors = []
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        _, err = process.communicate(timeout=60)
        errors.append(err)
    return errors


def check_audit(rows: list[tuple[Any, ...]], runs: int, steps: int) -> None:
    """Every step completed exactly once, by the run's owner; every outcome by its owner."""
    step_writes = [row for row in rows if row[0] == "step"]
    stale = [row for row in step_writes if row[3] != row[4] or row[5] != "running"]
    assert stale == [], stale[:5]
    completions = Counter(row[1] for row in step_writes if row[2] == "completed")
    assert len(completions) == runs * steps and set(completions.values()) == {1}
    outcomes = [row for row in rows if row[0] == "outcome"]
    assert len(outcomes) == runs
    assert all(row[3] == row[4] and row[5] == "running" for row in outcomes), outcomes[:5]


def test_four_workers_finish_1000_runs_while_two_are_killed_and_one_is_paused(
        pg_storage: Any, pg_dsn: str, pg_schema: str) -> None:
    runs, steps = 1000, 5
    install_audit(pg_storage, pg_dsn, pg_schema)
    submit(pg_storage, runs)
    workers = [worker(pg_schema, f"w{n}") for n in range(4)]
    try:
        time.sleep(2.0)  # mid-way: the workers hold leases and are inside steps
        for victim in workers[:2]:
            victim.send_signal(signal.SIGKILL)
            victim.communicate(timeout=30)
            assert victim.returncode == -signal.SIGKILL
        workers += [worker(pg_schema, f"w{n}-again") for n in range(2)]
        # A third worker is paused past its lease (2 s) and continued: its runs have been
        # taken over meanwhile, and what it still tries to write must be refused.
        os.kill(workers[2].pid, signal.SIGSTOP)
        time.sleep(4.0)
        os.kill(workers[2].pid, signal.SIGCONT)
        stored = wait_until_all_completed(pg_storage, runs, 240)
    finally:
        errors = stop(workers)
    assert [run.status for run in stored] == [RunStatus.COMPLETED] * runs
    rows = audit(pg_dsn, pg_schema)
    check_audit(rows, runs, steps)
    # The runs the killed workers held were taken over, and the takeovers were counted.
    writers: dict[str, set[str]] = {}
    for row in rows:
        if row[0] == "step":
            writers.setdefault(row[1].split("/")[0], set()).add(row[3])
    moved = {run_id for run_id, names in writers.items() if len(names) > 1}
    assert moved, "no run was taken over: the kills came too late to test anything"
    by_id = {run.run_id: run for run in stored}
    assert all(by_id[run_id].recovery_count >= 1 for run_id in moved)
    assert sum(run.recovery_count for run in stored) >= len(moved)
    for err in errors[3:]:
        assert "Traceback" not in err, err


def test_a_paused_worker_s_write_is_refused_after_a_takeover(pg_dsn: str, pg_schema: str,
                                                             pg_storage: Any,
                                                             tmp_path: Path) -> None:
    """A is SIGSTOPped inside step 2 past its lease; B recovers, and is itself inside step 2
    when A is continued: A's write of step 2 is refused (OwnershipLost), nothing A writes
    after the takeover reaches the table, and the run completes with B's results."""
    install_audit(pg_storage, pg_dsn, pg_schema)
    db, log = f"postgres:{pg_schema}", tmp_path / "ran.log"

    def child(mode: str, **options: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(RUN_CHILD), db, str(log), mode,
             *(f"{key}={value}" for key, value in options.items())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    paused = child("run", block_in="charge", block=1)
    assert paused.stdout is not None and paused.stdout.readline().strip() == "ready"
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # A's lease (1 s) runs out while it is stopped
        recovering = child("recover", block_in="charge", block=3)
        assert recovering.stdout is not None
        assert recovering.stdout.readline().strip() == "ready"  # B holds the run, in charge
    finally:
        os.kill(paused.pid, signal.SIGCONT)  # A's charge ends while B's is still running
    out, err = recovering.communicate(timeout=120)
    assert recovering.returncode == 0 and '"claimed": ["r1"]' in out, err
    out, err = paused.communicate(timeout=120)
    assert paused.returncode == 0, err
    assert f"lost {paused.pid}" in log.read_text().splitlines()
    run = pg_storage().get_run("r1")
    assert run.status is RunStatus.COMPLETED and run.fence == 2 and run.recovery_count == 1
    rows = audit(pg_dsn, pg_schema)
    steps = [row for row in rows if row[0] == "step"]
    assert steps and all(row[3] == row[4] and row[5] == "running" for row in steps), steps
    assert {row[3] for row in steps} == {f"child-{paused.pid}", f"child-{recovering.pid}"}


def test_workers_ride_out_a_server_restart(pg_storage: Any, pg_dsn: str,
                                           pg_schema: str) -> None:
    """The server restarts (pg_ctl restart) while two workers run: they reconnect and
    finish; no step is lost or completed twice."""
    restart = os.environ.get("DURABLY_TEST_PG_RESTART")
    if not restart:
        pytest.skip("DURABLY_TEST_PG_RESTART (a command that restarts the test server) is"
                    " not set")
    runs, steps = 200, 5
    install_audit(pg_storage, pg_dsn, pg_schema)
    submit(pg_storage, runs)
    workers = [worker(pg_schema, f"r{n}") for n in range(2)]
    try:
        time.sleep(1.0)
        subprocess.run(restart, shell=True, check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stored = wait_until_all_completed(pg_storage, runs, 240)
    finally:
        errors = stop(workers)
    assert [run.status for run in stored] == [RunStatus.COMPLETED] * runs
    check_audit(audit(pg_dsn, pg_schema), runs, steps)
    assert any("trying again" in err for err in errors), "the restart was not noticed"
