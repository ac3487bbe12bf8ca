"""Contention: processes and threads race to run one workflow on one SQLite file.

The default suite runs 8 processes x 4 threads x 50 steps; ``pytest -m torture`` runs a
larger version (1000 steps, three rounds).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durably import JsonCodec, SqliteStepStorage, StepStatus

CHILD = Path(__file__).with_name("contention_child.py")


def race(db: Path, processes: int, threads: int, steps: int) -> float:
    """Run the race; check every caller got the recorded results; return the seconds taken."""
    started = time.monotonic()
    children = [
        subprocess.Popen([sys.executable, str(CHILD), str(db), str(threads), str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ})
        for _ in range(processes)
    ]
    outcomes = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        outcomes.extend(json.loads(out))
    elapsed = time.monotonic() - started

    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert errors == []  # no "database is locked", no WorkflowStepError: nothing reached a caller
    assert len(outcomes) == processes * threads
    first = outcomes[0]
    assert all(outcome == first for outcome in outcomes)

    storage = SqliteStepStorage(db)
    records = storage.list(workflow_id="race")
    storage.close()
    assert len(records) == steps
    assert all(record.status is StepStatus.COMPLETED for record in records)
    recorded = {JsonCodec().decode(record.result)["n"]: JsonCodec().decode(record.result)
                for record in records}
    assert [recorded[n] for n in range(steps)] == first
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    return elapsed


@pytest.mark.slow
def test_processes_and_threads_agree_on_every_result(tmp_path: Path) -> None:
    """8 processes x 4 threads, 50 steps with random results: one answer, no lock errors."""
    race(tmp_path / "race.db", processes=8, threads=4, steps=50)


@pytest.mark.torture
def test_contention_long(tmp_path: Path) -> None:
    """The long form: 8 processes x 4 threads x 1000 steps, three rounds."""
    for round_number in range(3):
        elapsed = race(tmp_path / f"race-{round_number}.db", processes=8, threads=4, steps=1000)
        print(f"round {round_number}: {elapsed:.1f} s")
