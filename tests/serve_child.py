"""A worker process for tests/test_waits_processes.py: serve() until SIGTERM (not collected).

    python serve_child.py DB LOG

Its workflow mixes a step, a sleep that suspends (odd inputs), a wait for the event "go",
and a second step. Every step body appends "<step> <n> <pid>" to LOG.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import DurableWorkflowRuntime, RetryPolicy, SqliteStepStorage


def main() -> None:
    db, logfile = sys.argv[1], sys.argv[2]
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db, busy_timeout=60),
                                     retry_policy=RetryPolicy(max_attempts=1),
                                     lease=5.0, suspend_after=0.05, max_runs=4)

    def log(line: str) -> None:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (line + "\n").encode())
        os.close(fd)

    @runtime.step("Mix.before")
    def before(n: int) -> int:
        log(f"before {n} {os.getpid()}")
        return n

    @runtime.step("Mix.after")
    def after(n: int, event: dict) -> str:
        log(f"after {n} {os.getpid()}")
        return f"{n}:{event['n']}"

    @runtime.workflow("Mix.flow")
    def mix(n: int) -> str:
        before(n)
        if n % 2:
            runtime.sleep(0.2)  # past suspend_after: the run suspends, then wakes
        event = runtime.wait_for_event("go", timeout=120)
        return after(n, event)

    signal.signal(signal.SIGTERM, lambda *_: runtime.close())
    print("ready", flush=True)
    runtime.serve(poll=0.05)


if __name__ == "__main__":
    main()
