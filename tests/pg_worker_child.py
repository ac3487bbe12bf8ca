"""A worker machine for tests/test_postgres_processes.py: serve() runs of "Job.steps" from a
PostgreSQL schema until SIGTERM (not collected by pytest).

    python pg_worker_child.py SCHEMA NAME [step_seconds]

Its executor id is NAME-<pid> (a new one for every process, as a new machine would have),
and its connections carry that id as their application_name, so the audit triggers of the
test can tell which worker wrote each row. The server is DURABLY_TEST_PG_DSN.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import DurableWorkflowRuntime, RetryPolicy
from durably.postgres import PostgresStorage

STEPS = 5


def main() -> None:
    schema, name = sys.argv[1], sys.argv[2]
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.02
    executor = f"{name}-{os.getpid()}"
    dsn = f"{os.environ['DURABLY_TEST_PG_DSN']} application_name={executor}"
    runtime = DurableWorkflowRuntime(
        storage=PostgresStorage(dsn, schema=schema, pool_size=6), executor_id=executor,
        lease=2.0, max_runs=4, shutdown_timeout=0.5,
        retry_policy=RetryPolicy(max_attempts=5, initial_delay=0.05))

    def step(data: dict) -> str:
        time.sleep(pause)
        return f"{data['run']}:{data['step']}"

    runtime.register("Job.step", step)

    @runtime.workflow("Job.steps")
    def job(run: int) -> list[str]:
        return [runtime.do("Job.step", {"run": run, "step": n}) for n in range(STEPS)]

    signal.signal(signal.SIGTERM, lambda *_: runtime.close())
    print("ready", flush=True)
    runtime.serve(poll=0.2)


if __name__ == "__main__":
    main()
