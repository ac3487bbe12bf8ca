"""A worker process of the runs torture test (tests/test_torture_runs.py); not collected.

    python torture_runs_child.py DB LOG RUNS [KILL_POINT]

Starts runs r0..r{RUNS-1} of a four-step workflow (idempotently: every worker starts them
all), then claims and executes due runs until all of them are finished, and exits 0.

Its storage counts *kill points* (before and after every create, claim, renew, step write and
finish) and SIGKILLs the process at KILL_POINT. Every connection it opens gets temporary audit
triggers and a SQL function ``writer_fence()`` (the fence under which the current thread
writes), so each write is logged from inside its own statement with the writer's fence and
the run's fence at that moment.

The log gets one line per event (one write(2) each, so processes never interleave lines):
``enter <step_id> <pid>``, ``exit <step_id> <result-json>``,
``step <step_id> <status> <writer fence> <run fence> <run status> <next_attempt_at>``,
``fence <run_id> <old> <new>``, ``outcome <run_id> <status> <writer fence> <fence>``,
``consumed <event seq> <run_id> <wait step>``.

The workflow runs two steps, sleeps past ``suspend_after`` (the run suspends), waits for the
event "go" (which every worker sends to every run under one key), then runs two more steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import (
    DurableWorkflowRuntime,
    RetryPolicy,
    RunClosedError,
    RunStatus,
    SqliteStepStorage,
    current_step,
)

LEASE = 0.2
STEPS = ("reserve", "charge", "pack", "ship")

# Temporary triggers on this connection: every write of a run's step, every fence change and
# every outcome is logged from inside the writing statement, with the fence the writer holds
# and the run as it stands at that moment.
AUDIT = [
    """CREATE TEMP TRIGGER audit_step_insert AFTER INSERT ON main.durably_steps
       WHEN new.workflow_id IN (SELECT run_id FROM main.durably_runs)
       BEGIN SELECT audit('step', new.step_id, new.status, writer_fence(), fence, status,
                          coalesce(new.next_attempt_at, 'none'))
             FROM main.durably_runs WHERE run_id = new.workflow_id; END""",
    """CREATE TEMP TRIGGER audit_step_update AFTER UPDATE ON main.durably_steps
       WHEN new.workflow_id IN (SELECT run_id FROM main.durably_runs)
       BEGIN SELECT audit('step', new.step_id, new.status, writer_fence(), fence, status,
                          coalesce(new.next_attempt_at, 'none'))
             FROM main.durably_runs WHERE run_id = new.workflow_id; END""",
    """CREATE TEMP TRIGGER audit_consumed AFTER UPDATE OF consumed_by ON main.durably_events
       BEGIN SELECT audit('consumed', new.seq, new.run_id, new.consumed_by); END""",
    """CREATE TEMP TRIGGER audit_fence AFTER UPDATE OF fence ON main.durably_runs
       BEGIN SELECT audit('fence', new.run_id, old.fence, new.fence); END""",
    """CREATE TEMP TRIGGER audit_outcome AFTER UPDATE OF status ON main.durably_runs
       WHEN new.status IN ('completed', 'failed')
       BEGIN SELECT audit('outcome', new.run_id, new.status, writer_fence(), new.fence); END""",
]


class Points:
    """Counts kill points; SIGKILLs this process at the chosen one."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    db, logfile, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    points = Points(int(sys.argv[4]) if len(sys.argv) > 4 else None)
    writing = threading.local()
    log_fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(line: str) -> None:
        os.write(log_fd, (line + "\n").encode())

    def audit(*fields: Any) -> None:
        log(" ".join(str(field) for field in fields))

    class Audited(SqliteStepStorage):
        def connect(self) -> sqlite3.Connection:
            conn = super().connect()
            conn.create_function("writer_fence", 0,
                                 lambda: getattr(writing, "fence", None))
            conn.create_function("audit", -1, audit)
            for statement in AUDIT:
                conn.execute(statement)
            return conn

        def around(self, name: str, work: Any) -> Any:
            points()
            result = work()
            points()
            return result

        def create_run(self, record: Any) -> Any:
            writing.fence = None
            return self.around("create", lambda: super(Audited, self).create_run(record))

        def claim(self, *args: Any, **kwargs: Any) -> Any:
            writing.fence = None
            return self.around("claim", lambda: super(Audited, self).claim(*args, **kwargs))

        def renew(self, *args: Any, **kwargs: Any) -> Any:
            writing.fence = None
            return self.around("renew", lambda: super(Audited, self).renew(*args, **kwargs))

        def record_step(self, run_id: str, fence: int, record: Any) -> Any:
            writing.fence = fence
            return self.around("step", lambda: super(Audited, self).record_step(
                run_id, fence, record))

        def finish(self, run_id: str, fence: int, *args: Any, **kwargs: Any) -> Any:
            writing.fence = fence
            return self.around("finish", lambda: super(Audited, self).finish(
                run_id, fence, *args, **kwargs))

        def suspend(self, run_id: str, fence: int, *args: Any) -> Any:
            writing.fence = fence
            return self.around("suspend", lambda: super(Audited, self).suspend(
                run_id, fence, *args))

        def consume_event(self, run_id: str, fence: int, *args: Any) -> Any:
            writing.fence = fence
            return self.around("consume", lambda: super(Audited, self).consume_event(
                run_id, fence, *args))

        def add_event(self, *args: Any) -> Any:
            writing.fence = None
            return self.around("send", lambda: super(Audited, self).add_event(*args))

    runtime = DurableWorkflowRuntime(
        storage=Audited(db, busy_timeout=60),
        retry_policy=RetryPolicy(max_attempts=50, initial_delay=0.002, max_delay=0.01),
        lease=LEASE, max_runs=2, shutdown_timeout=0.2, suspend_after=0.01)

    def make(name: str) -> Any:
        def step(order: dict[str, Any]) -> dict[str, Any]:
            context = current_step()
            assert context is not None
            log(f"enter {context.step_id} {os.getpid()}")
            time.sleep(random.uniform(0.01, 0.08))  # long enough to be stopped inside
            if name == "charge" and context.attempt == 1 and random.random() < 0.5:
                raise ConnectionError("gateway down")
            result = {"step": name, "nonce": uuid.uuid4().hex, "order": order["id"]}
            log(f"exit {context.step_id} {json.dumps(result, sort_keys=True)}")
            return result

        return step

    for name in STEPS:
        runtime.register(f"Order.{name}", make(name))

    @runtime.workflow("Order.process", max_recoveries=1000)
    def process(order: dict[str, Any]) -> dict[str, Any]:
        done = {}
        for index, name in enumerate(STEPS):
            if index == 2:
                runtime.sleep(0.03, name="cool-off")  # longer than suspend_after: suspends
                done["go"] = runtime.wait_for_event("go")
            done[name] = runtime.do(f"Order.{name}", order)
        return done

    for n in range(runs):
        process.start({"id": n}, run_id=f"r{n}")
    for n in range(runs):
        with contextlib.suppress(RunClosedError):  # finished already: it had its event
            runtime.send_event(f"r{n}", "go", {"run": n}, key=f"go-{n}")  # once, whoever sends
    while True:
        pending = [run for run in runtime.list_runs(limit=None)
                   if run.status not in (RunStatus.COMPLETED, RunStatus.FAILED)]
        if not pending:
            break
        runtime.recover()
        time.sleep(0.02)
    runtime.close()


if __name__ == "__main__":
    main()
