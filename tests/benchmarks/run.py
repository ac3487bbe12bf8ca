"""durably's benchmark suite: every figure beside a baseline measured in the same run.

    python tests/benchmarks/run.py            # the full suite (a few minutes on 2 cores)
    python tests/benchmarks/run.py --quick    # a smaller version (well under 20 s): CI smoke
    python tests/benchmarks/run.py --json results.json

Each scenario runs durably and its baseline interleaved, several repetitions, and prints the
median and min-max of both, their ratio, and PASS/MISS against the target from the speed issue.
Standard library only (scenario 11 also needs the postgres extra and DURABLY_TEST_PG_DSN);
not collected by pytest. The exit status is 0 whatever the ratios (CI
checks that the suite runs; noise must not fail it).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import postgres  # noqa: E402
import runs  # noqa: E402
import scale  # noqa: E402
import steps  # noqa: E402
import waits  # noqa: E402
from common import Row, report  # noqa: E402

import durably  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster version")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--only", help="run only the scenarios whose number is in this list, "
                        "e.g. 1,2")
    options = parser.parse_args()
    quick = options.quick
    reps = 3 if quick else 7
    started = time.perf_counter()
    print(f"durably {durably.__version__}, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
          + (" (quick)" if quick else ""))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        wanted = set(options.only.split(",")) if options.only else {
            str(n) for n in range(1, 14)}
        scenarios: list[tuple[str, Callable[[], list[Row]]]] = [
            ("1", lambda: steps.scenario_sqlite(directory, 200 if quick else 2000, reps)),
            ("2", lambda: steps.scenario_memory(2000 if quick else 20000, reps)),
            ("3", lambda: steps.scenario_sqlite_replay(directory, 1000 if quick else 10000, reps)),
            ("4", lambda: steps.scenario_retries(1000 if quick else 10000, reps)),
            ("5", lambda: steps.scenario_scale(directory, [10**3, 10**4] if quick
                                         else [10**3, 10**4, 10**5, 10**6],
                                         200 if quick else 2000, 2 if quick else 3)),
            ("6", lambda: steps.scenario_processes(directory, 200 if quick else 2000,
                                             1 if quick else 3)),
            ("7", lambda: steps.scenario_import(5 if quick else 15)),
            ("8", lambda: steps.scenario_dbos(directory, 20 if quick else 200,
                                              1 if quick else 3)),
            ("9", lambda: runs.scenario_step_in_run(directory, 200 if quick else 2000, reps)),
            ("9", lambda: runs.scenario_ten_step_run(directory, 20 if quick else 200, reps)),
            ("9", lambda: runs.scenario_recover(directory, 500 if quick else 10000,
                                                1 if quick else 3)),
            ("10", lambda: waits.scenario_due_waits(directory, 200 if quick else 2000, reps)),
            ("10", lambda: waits.scenario_send_event(directory, 200 if quick else 2000, reps)),
            ("10", lambda: waits.scenario_due_scan(directory, 100 if quick else 1000,
                                                   1000 if quick else 10000,
                                                   1 if quick else 3)),
            ("11", lambda: postgres.scenario_steps(200 if quick else 2000, reps)),
            ("11", lambda: postgres.scenario_ten_step_run(10 if quick else 100, reps)),
            ("11", lambda: postgres.scenario_claims(200 if quick else 2000,
                                                    1 if quick else 3)),
            ("11", lambda: postgres.scenario_dbos(20 if quick else 200, 1 if quick else 3)),
            ("12", lambda: scale.scenario_async(directory, 200 if quick else 2000, reps)),
            ("12", lambda: scale.scenario_gather(directory, 200 if quick else 2000,
                                                 1 if quick else 3)),
            ("13", lambda: scale.scenario_long_workflow(directory, 5000 if quick else 100_000,
                                                        3 if quick else 7)),
        ]
        for number, scenario in scenarios:
            if number in wanted:
                rows += scenario()
    report(rows)
    print(f"\n{time.perf_counter() - started:.1f} s")
    if options.json is not None:
        options.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()
