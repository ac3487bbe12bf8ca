"""A worker process running serve(), fed by a process that only submits work.

The submitter starts runs by name: it does not import the workflow (it has not registered
it), so the runs are created PENDING for a worker that has it. The worker claims them,
executes them, and stops cleanly on SIGTERM (its handler calls runtime.close()).

    python examples/08_worker.py
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from durably import DurableWorkflowRuntime, SqliteStepStorage


def worker(db: Path) -> None:
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db), max_runs=4)

    @runtime.step("Mail.render")
    def render(user: str) -> str:
        return f"Hello {user}, your invoice is ready."

    @runtime.step("Mail.deliver")
    def deliver(user: str, body: str) -> str:
        print(f"  worker [{os.getpid()}] sends to {user}: {body!r}", flush=True)
        return f"sent to {user}"

    @runtime.workflow("Mail.invoice")
    def invoice(user: str) -> str:
        return deliver(user, render(user))

    signal.signal(signal.SIGTERM, lambda *_: runtime.close())
    print("worker ready", flush=True)
    runtime.serve(poll=0.2)  # until close(): then it hands back what it has not finished
    print("worker stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mail.db"
        submitter = DurableWorkflowRuntime(storage=SqliteStepStorage(db))
        handles = [submitter.start("Mail.invoice", user, run_id=f"invoice-{user}")
                   for user in ("ann", "bob", "cyd")]
        print("submitted:", [h.status().status.value for h in handles])
        with subprocess.Popen([sys.executable, __file__, "--worker", str(db)],
                              stdout=subprocess.PIPE, text=True) as process:
            assert process.stdout is not None
            print(process.stdout.readline().strip())
            results = [h.result(timeout=60) for h in handles]
            print("results:", results)
            process.send_signal(signal.SIGTERM)
            for line in process.stdout:
                print(line.rstrip())
        submitter.close()


if __name__ == "__main__":
    main()
