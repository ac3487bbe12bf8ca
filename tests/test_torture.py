"""Crash everywhere: a seven-step workflow is SIGKILLed at every kill point and at random
moments, then rerun until it finishes; after each scenario every promise is checked.

The default suite runs the short, seeded form; ``pytest -m torture`` runs the long form.
The workflow (tests/torture_child.py) has retried steps, a RetryAfterError, a non-retryable
failure with a fallback step, and a send.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import JsonCodec, SqliteStepStorage, StepStatus

CHILD = Path(__file__).with_name("torture_child.py")
sys.path.insert(0, str(CHILD.parent))
from torture_child import MAX_ATTEMPTS, STEPS  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork and SIGKILL")

Plan = Callable[[int], tuple[int | None, float | None]]


class Runner:
    """Talks to one torture_child.py process, which forks a worker per run."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def run(self, directory: Path, kill_point: int | None = None,
            kill_after: float | None = None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"db": str(directory / "wf.db"), "log": str(directory / "wf.log"),
                   "out": str(directory / "out.json"), "kill_point": kill_point,
                   "kill_after": kill_after}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the torture child died"
        return dict(json.loads(line))

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(30)
        self.process.stdout.close()


@pytest.fixture
def runner() -> Iterator[Runner]:
    """A torture child, started once per test."""
    child = Runner()
    yield child
    child.close()


def _events(lines: list[str], action: str) -> list[list[str]]:
    return [parts for parts in (line.split(" ", 3) for line in lines) if parts[1] == action]


def verify(directory: Path) -> None:
    """Check every promise on a finished scenario."""
    results: dict[str, Any] = json.loads((directory / "out.json").read_text())["results"]
    lines = (directory / "wf.log").read_text().splitlines()
    storage = SqliteStepStorage(directory / "wf.db")
    records = {record.action: record for record in storage.list()}
    storage.close()
    codec = JsonCodec()

    assert set(results) == {"Order.validate", "Inventory.reserve", "Payment.charge",
                            "Fraud.manual_review", "Shipping.ship", "Customer.notify"}
    for action, value in results.items():
        record = records[action]
        # The recorded result is what the finished workflow returned...
        assert record.status is StepStatus.COMPLETED, action
        assert codec.decode(record.result) == value, action
        # ...it is the value of the last run of the handler, and nothing ran after it: a step
        # that completed before a kill never ran again.
        events = _events(lines, action)
        assert events[-1][0] == "exit", (action, events)
        assert json.loads(events[-1][3]) == value, action
    assert records["Fraud.score"].status is StepStatus.FAILED

    # Attempts never exceed the budget, and an attempt that died still counted: within one
    # budget, attempt numbers only go up. Only a FAILED record starts a fresh budget.
    for action in STEPS:
        floor = 1
        for event in _events(lines, action):
            if event[0] == "enter":
                attempt = int(event[2])
                assert floor <= attempt <= MAX_ATTEMPTS, (action, _events(lines, action))
                floor = attempt + 1
            elif event[0] == "failing":
                floor = 1

    conn = sqlite3.connect(directory / "wf.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def scenario(runner: Runner, directory: Path, plan: Plan) -> int:
    """Run until the workflow finishes, killing as ``plan`` says; verify; return the kills."""
    directory.mkdir()
    kills = 0
    for run in range(100):
        kill_point, kill_after = plan(run) if run < 40 else (None, None)
        reply = runner.run(directory, kill_point, kill_after)
        if reply["status"] == "killed":
            kills += 1
        elif reply["code"] == 0:
            break
        else:
            assert reply["code"] == 3, reply  # a step gave up; the rerun gets a fresh budget
    else:
        raise AssertionError("the workflow never finished")
    verify(directory)
    return kills


def clean_points(runner: Runner, directory: Path) -> int:
    """Return how many kill points an uninterrupted run passes."""
    directory.mkdir()
    assert runner.run(directory) == {"status": "exit", "code": 0}
    verify(directory)
    return int(json.loads((directory / "out.json").read_text())["points"])


def random_plan(rng: random.Random, points: int, kill_rate: float) -> Plan:
    """Kill at a random point or after a random time, in about ``kill_rate`` of the runs."""

    def plan(run: int) -> tuple[int | None, float | None]:
        roll = rng.random()
        if roll < kill_rate / 2:
            return rng.randint(1, points), None
        if roll < kill_rate:
            return None, rng.uniform(0.0, 0.03)
        return None, None

    return plan


def sweep_and_random(runner: Runner, tmp_path: Path, seed: int, random_scenarios: int) -> int:
    points = clean_points(runner, tmp_path / "clean")
    assert points >= 25
    kills = 0
    for point in range(1, points + 1):  # every boundary: each storage write, handler, wait
        kills += scenario(runner, tmp_path / f"point-{point}",
                          lambda run, point=point: (point, None) if run == 0 else (None, None))
    rng = random.Random(seed)
    for number in range(random_scenarios):
        kills += scenario(runner, tmp_path / f"random-{number}", random_plan(rng, points, 0.7))
    return kills


@pytest.mark.slow
def test_crash_everywhere_short(runner: Runner, tmp_path: Path) -> None:
    """Every kill point once, plus seeded random kills: nothing is lost or repeated."""
    kills = sweep_and_random(runner, tmp_path, seed=20261125, random_scenarios=8)
    assert kills >= 50


@pytest.mark.torture
def test_crash_everywhere_long(runner: Runner, tmp_path: Path) -> None:
    """The long form: the sweep plus many multi-kill random scenarios (>= 500 kills)."""
    kills = sweep_and_random(runner, tmp_path, seed=7, random_scenarios=400)
    print(f"survived {kills} SIGKILLs")
    assert kills >= 500
