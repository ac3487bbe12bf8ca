"""Every example runs as `python examples/NN_name.py` and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))

EXPECTED = {
    "01_quickstart.py": ["second run: ran [], replayed ['reserve', 'charge', 'ship']"],
    "02_crash_and_resume.py": ["killed with SIGKILL inside 'transform'", "ran load"],
    "03_retries.py": ["attempt 3/4", "rate = 1.08", "WorkflowStepError after 1 attempt"],
    "04_events.py": ["mailer: order 1 created", "never raised: ['the mailer is down']"],
    "05_custom_storage.py": ["checks passed", "stored as"],
    "06_asyncio.py": ["request cancelled",
                      "rerun ran only: ['quote slowpost (attempt 2)', 'label slowpost']"],
    "07_recover_after_kill.py": ["process 1 was killed with SIGKILL", "pack order 42",
                                 "recovered ['order-42']", "recovery_count=1, fence=2"],
    "08_worker.py": ["submitted: ['pending', 'pending', 'pending']",
                     "results: ['sent to ann', 'sent to bob', 'sent to cyd']",
                     "worker stopped"],
    "09_approval.py": ["Tue 14:00: expense-7 is suspended, waiting for 'decision' until Wed",
                       "sent again (a double click): False",
                       "paid 120 EUR to ann (approved by bob)",
                       "Wed 14:00: expense-8: not approved in time (nobody)"],
    "10_reminder.py": ["process 1: the run is suspended", "water the plants",
                       "it woke at the time process 1 recorded: True"],
}


def _run(script: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_example_is_checked() -> None:
    """A new example must be added to EXPECTED."""
    assert [path.name for path in EXAMPLES] == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script: Path) -> None:
    """The example exits 0 and prints its key lines."""
    output = _run(script)
    for line in EXPECTED[script.name]:
        assert line in output


@pytest.mark.slow
def test_quickstart_replays_across_invocations(tmp_path: Path) -> None:
    """Run the quickstart twice on one database: the second process replays every step."""
    db = str(tmp_path / "orders.db")
    assert "ran ['reserve', 'charge', 'ship']" in _run(EXAMPLES[0], "--db", db)
    assert "ran [], replayed ['reserve', 'charge', 'ship']" in _run(EXAMPLES[0], "--db", db)
