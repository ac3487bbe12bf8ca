"""Crash and resume: a child process is killed with SIGKILL in the middle of a workflow, and
the rerun finishes it without repeating the steps that had completed.

    python examples/02_crash_and_resume.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from durably import DurableWorkflowRuntime, SqliteStepStorage


def workflow(db: Path, log: Path, hang_in: str | None) -> None:
    """Four steps; each appends to LOG when it really runs. HANG_IN hangs inside one step."""
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db), workflow_id="import-7")

    def step(name: str) -> None:
        def handler(batch: int) -> str:
            with log.open("a") as out:
                out.write(f"{time.strftime('%H:%M:%S')} pid {os.getpid()} ran {name}\n")
            if name == hang_in:
                Path(f"{log}.ready").touch()
                threading.Event().wait()  # the parent kills us here
            return f"{name} done"

        runtime.register(f"Import.{name}", handler)

    names = ["download", "validate", "transform", "load"]
    for name in names:
        step(name)
    for name in names:
        runtime.do(f"Import.{name}", 7)
    runtime.close()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        hang_in = sys.argv[4] if sys.argv[4] != "-" else None
        workflow(Path(sys.argv[2]), Path(sys.argv[3]), hang_in)
        return
    with tempfile.TemporaryDirectory() as directory:
        db, log = Path(directory) / "import.db", Path(directory) / "runs.log"
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(db), str(log), "transform"])
        ready = Path(f"{log}.ready")
        while not ready.exists():
            if child.poll() is not None:
                sys.exit("the child exited before reaching the crash point")
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        print(f"child {child.pid} killed with SIGKILL inside 'transform'")
        subprocess.run([sys.executable, __file__, "--child", str(db), str(log), "-"], check=True)
        print("what ran, when (download and validate ran once; transform twice; load once):")
        print(log.read_text(), end="")
        runs = [line.split()[-1] for line in log.read_text().splitlines()]
        assert runs == ["download", "validate", "transform", "transform", "load"], runs


if __name__ == "__main__":
    main()
