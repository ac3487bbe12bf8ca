"""An order workflow started by one process, killed with SIGKILL after two of its four steps,
and finished by another process's recover(): completed steps are not run again.

    python examples/07_recover_after_kill.py              # in a temp database
    python examples/07_recover_after_kill.py --db shop.db
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from durably import DurableWorkflowRuntime, RunStatus, SqliteStepStorage

STEPS = ("reserve", "charge", "pack", "ship")
LEASE = 1.0  # short, so the example does not wait long for the dead owner's lease


def build(db: Path, die_after: int = 0) -> tuple[DurableWorkflowRuntime, object]:
    """The runtime and the workflow, the same in both processes."""
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db), lease=LEASE)

    def make(name: str):
        def step(order_id: int) -> str:
            print(f"  [{os.getpid()}] {name} order {order_id}", flush=True)
            return f"{name} done"
        return step

    for name in STEPS:
        runtime.register(f"Order.{name}", make(name))

    @runtime.workflow("Order.process")
    def process(order: dict) -> dict:
        done = {}
        for count, name in enumerate(STEPS, 1):
            done[name] = runtime.do(f"Order.{name}", order["id"])
            if count == die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # the process dies between steps
        return done

    return runtime, process


def owner(db: Path) -> None:
    _, process = build(db, die_after=2)
    process.run({"id": 42}, run_id="order-42")  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="database file to keep")
    parser.add_argument("--owner", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.owner:
        owner(options.db)
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = options.db or Path(tmp) / "shop.db"
        print("process 1 starts order-42:")
        first = subprocess.run([sys.executable, __file__, "--owner", "--db", str(db)])
        print(f"process 1 was killed with SIGKILL (exit {first.returncode})")
        runtime, _ = build(db)
        run = runtime.get_run("order-42").status()
        print(f"order-42 is {run.status.value}, owned by a dead process until its lease ends")
        time.sleep(LEASE + 0.2)
        print(f"process 2 [{os.getpid()}] recovers:")
        report = runtime.recover()
        result = runtime.get_run("order-42").result(timeout=30)
        run = runtime.get_run("order-42").status()
        assert run.status is RunStatus.COMPLETED
        print(f"recovered {report.claimed}: {result}")
        print(f"recovery_count={run.recovery_count}, fence={run.fence}")
        runtime.close()


if __name__ == "__main__":
    main()
