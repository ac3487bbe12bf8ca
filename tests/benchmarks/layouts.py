"""The floor of a two-commit step under other SQLite layouts (not collected by pytest; not
part of run.py: a design experiment, kept so that its figures in docs/performance.md can be
measured again).

    python tests/benchmarks/layouts.py

For each layout, 20,000 completed rows are written first (a realistic b-tree), then a step's
two statements by hand (the RUNNING marker's INSERT and the COMPLETED UPDATE, each its own
commit, hashed step ids) alternate with raw single-INSERT commits into a small table of the
same file; the figure is raw commits per second ÷ steps per second.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any

ROW = json.dumps({"order": 4242, "customer": "c" * 40, "items": ["sku-1", "sku-2", "sku-3"],
                  "total": 129.5, "paid": True, "note": "n" * 60})
COLUMNS = ("step_id TEXT NOT NULL, workflow_id TEXT NOT NULL, action TEXT NOT NULL, status TEXT"
           " NOT NULL, result TEXT, error TEXT, attempts INTEGER NOT NULL, created_at REAL NOT"
           " NULL, started_at REAL, updated_at REAL NOT NULL, completed_at REAL, next_attempt_at"
           " REAL, budget_started_at REAL")
LAYOUTS = {
    "durably's: rowid seq, unique step_id, (workflow_id, seq)": [
        f"CREATE TABLE s (seq INTEGER PRIMARY KEY, {COLUMNS}, UNIQUE (step_id))",
        "CREATE INDEX s_wf ON s (workflow_id, seq)"],
    "WITHOUT ROWID keyed by step_id, (workflow_id, seq)": [
        f"CREATE TABLE s (seq INTEGER NOT NULL, {COLUMNS}, PRIMARY KEY (step_id)) WITHOUT ROWID",
        "CREATE INDEX s_wf ON s (workflow_id, seq)"],
    "WITHOUT ROWID keyed by (workflow_id, seq), unique step_id": [
        f"CREATE TABLE s (seq INTEGER NOT NULL, {COLUMNS}, PRIMARY KEY (workflow_id, seq))"
        " WITHOUT ROWID", "CREATE UNIQUE INDEX s_id ON s (step_id)"],
    "rowid seq, unique step_id only": [
        f"CREATE TABLE s (seq INTEGER PRIMARY KEY, {COLUMNS}, UNIQUE (step_id))"],
    "rowid seq only (no index: the ideal)": [
        f"CREATE TABLE s (seq INTEGER PRIMARY KEY, {COLUMNS})"],
}


def _open(directory: str, name: str, synchronous: str, statements: list[str]) -> Any:
    conn = sqlite3.connect(os.path.join(directory, f"{len(os.listdir(directory))}.db"),
                           isolation_level=None)
    for pragma in ("page_size = 1024", "journal_mode = WAL", f"synchronous = {synchronous}",
                   "wal_autocheckpoint = 16384"):
        conn.execute(f"PRAGMA {pragma}")
    for statement in [*statements, "CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT)"]:
        conn.execute(statement)
    conn.execute("BEGIN")
    for n in range(20000):
        step_id = "s1_" + hashlib.sha256(f"pre{n}".encode()).hexdigest()[:32]
        conn.execute("INSERT INTO s (seq, step_id, workflow_id, action, status, result,"
                     " attempts, created_at, updated_at) VALUES (?, ?, ?, 'B.s', 'completed',"
                     " ?, 1, 1, 1)", (n - 20000, step_id, f"wf{n % 50}", ROW))
    conn.execute("COMMIT")
    return conn


def _steps(conn: Any, ideal: bool, first: int, count: int) -> float:
    started = time.perf_counter()
    for n in range(first, first + count):
        step_id = "s1_" + hashlib.sha256(str(n).encode()).hexdigest()[:32]
        cursor = conn.execute(
            "INSERT INTO s (seq, step_id, workflow_id, action, status, attempts, created_at,"
            " started_at, updated_at, budget_started_at) VALUES (?, ?, 'bench', 'B.s',"
            " 'running', 1, 1, 1, 1, 1)", (n, step_id))
        where, key = ("seq = ?", cursor.lastrowid) if ideal else ("step_id = ?", step_id)
        conn.execute(f"UPDATE s SET status = 'completed', result = ?, updated_at = 2,"
                     f" completed_at = 2 WHERE {where}", (ROW, key))
    return time.perf_counter() - started


def _raw(conn: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (data) VALUES (?)", (ROW,))
        conn.execute("COMMIT")
    return time.perf_counter() - started


def main() -> None:
    directory = tempfile.mkdtemp()
    for synchronous, count in (("NORMAL", 2000), ("FULL", 500)):
        print(synchronous)
        for name, statements in LAYOUTS.items():
            conn = _open(directory, name, synchronous, statements)
            rates = [_raw(conn, count) / _steps(conn, name.startswith("rowid seq only"),
                                                rep * count, count) for rep in range(5)]
            print(f"  {name:60s} floor rate {statistics.median(rates):.2f}")
            conn.close()


if __name__ == "__main__":
    main()
