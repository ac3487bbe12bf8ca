"""A reminder that sleeps across a process restart, on the real clock.

Process 1 starts the run; its sleep (3 s) is longer than suspend_after, so the run suspends
and process 1 exits. Process 2 starts a second later and serves: the run wakes at the time
recorded by process 1 (not 3 s after process 2 started), and the reminder is sent once.

    python examples/10_reminder.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from durably import DurableWorkflowRuntime, RunStatus, SqliteStepStorage


def build(db: Path) -> tuple[DurableWorkflowRuntime, object]:
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db), suspend_after=1.0)

    @runtime.step("Reminder.send")
    def send(text: str) -> str:
        print(f"  sent at +{time.time() % 1000:.1f}: {text}", flush=True)
        return f"sent: {text}"

    @runtime.workflow("Reminder.later")
    def later(text: str) -> str:
        runtime.sleep(3, name="until-it-is-time")
        return send(text)

    return runtime, later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.first:
        runtime, later = build(options.first)
        later.start("water the plants", run_id="reminder-1")  # type: ignore[attr-defined]
        time.sleep(0.5)  # the body runs until its sleep suspends it
        run = runtime.get_run("reminder-1").status()
        print(f"process 1: the run is {run.status.value}, wake at +{run.wake_at % 1000:.1f};"
              " exiting", flush=True)
        runtime.close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "reminders.db"
        subprocess.run([sys.executable, __file__, "--first", str(db)], check=True)
        time.sleep(1.0)  # nothing runs while no process is alive
        runtime, _ = build(db)
        handle = runtime.get_run("reminder-1")
        wake = handle.status().wake_at
        print(f"process 2 starts at +{time.time() % 1000:.1f}")
        worker = runtime.start_worker(poll=0.1)
        result = handle.result(timeout=30)
        worker.stop()
        assert handle.status().status is RunStatus.COMPLETED
        sleep = next(s for s in handle.steps() if s.action.startswith("durably.sleep"))
        print(f"process 2: {result}; it woke at the time process 1 recorded:"
              f" {sleep.next_attempt_at == wake}")
        runtime.close()


if __name__ == "__main__":
    main()
