"""The SQLite schema: ordered migrations keyed by ``PRAGMA user_version``, and the SQL text.

Applying ``MIGRATIONS[i]`` moves a database from version ``i`` to ``i + 1``. Statements are
formatted with the (validated) table names. Never edit an entry that has shipped; append one.

Version 1 (wave 1) kept steps in a rowid table keyed by ``step_id``. Version 2 rebuilds it with
an explicit ``seq INTEGER PRIMARY KEY``: the order in which records were first written, which
``list()`` returns and which ``VACUUM`` can never renumber (it may renumber implicit rowids).
The rebuild copies version-1 rows in their rowid order, which is their first-write order.
Version 2 (unreleased wave 2, so still open to change) also adds the runs and events tables
and the trigger that wakes a run when the event it waits for is stored.
"""

from __future__ import annotations

import re

from .._rows import EVENT_COLUMNS, HELD, RUN_COLUMNS, STEP_COLUMNS, WAKING

__all__ = [
    "EVENT_COLUMNS", "HELD", "MIGRATIONS", "OWN_SHAPES", "RUN_COLUMNS", "SCHEMA_VERSION",
    "STEP_COLUMNS", "STEP_SHAPE", "WAKING", "TableNames", "check_identifier",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# How durably's own tables are recognised in a file, under any table name: by the columns
# they have (a later version may add columns, never remove these).
STEP_SHAPE = frozenset(STEP_COLUMNS)
OWN_SHAPES: tuple[frozenset[str], ...] = (STEP_SHAPE, frozenset(RUN_COLUMNS),
                                          frozenset(EVENT_COLUMNS))

# The two partial indexes on runs are built on WAKING and HELD (shared with PostgreSQL, in
# _rows); the due and expiry scans repeat those texts and name the index: without ANALYZE
# figures SQLite would prefer by_status.

_STEPS_V2 = """CREATE TABLE {steps} (
    seq INTEGER PRIMARY KEY,
    step_id TEXT NOT NULL UNIQUE,
    workflow_id TEXT NOT NULL,
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL NOT NULL,
    completed_at REAL,
    next_attempt_at REAL,
    budget_started_at REAL
)"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1: wave 1
        """CREATE TABLE IF NOT EXISTS {steps} (
            step_id TEXT PRIMARY KEY NOT NULL,
            workflow_id TEXT NOT NULL,
            action TEXT NOT NULL,
            status TEXT NOT NULL,
            result TEXT,
            error TEXT,
            attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            updated_at REAL NOT NULL,
            completed_at REAL,
            next_attempt_at REAL,
            budget_started_at REAL
        )""",
        "CREATE INDEX IF NOT EXISTS {steps}_by_workflow"
        " ON {steps} (workflow_id, created_at, step_id)",
    ),
    (  # 1 -> 2: first-write order (seq)
        "ALTER TABLE {steps} RENAME TO {steps}_v1",
        "DROP INDEX IF EXISTS {steps}_by_workflow",
        _STEPS_V2,
        "INSERT INTO {steps} (seq, " + ", ".join(STEP_COLUMNS) + ") SELECT rowid, "
        + ", ".join(STEP_COLUMNS) + " FROM {steps}_v1 ORDER BY rowid",
        "DROP TABLE {steps}_v1",
        # A workflow's history, in call order: list(workflow_id=...) reads this index.
        "CREATE INDEX {steps}_by_workflow ON {steps} (workflow_id, seq)",
        # Workflow runs (additive): one row per run, keyed by its id.
        """CREATE TABLE IF NOT EXISTS {runs} (
            seq INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,
            workflow TEXT NOT NULL,
            status TEXT NOT NULL,
            input TEXT NOT NULL,
            input_hash TEXT NOT NULL,
            result TEXT,
            error TEXT,
            code_version TEXT,
            owner TEXT,
            lease_until REAL,
            fence INTEGER NOT NULL,
            recovery_count INTEGER NOT NULL,
            max_recoveries INTEGER NOT NULL,
            parent_run_id TEXT,
            forked_from TEXT,
            deadline REAL,
            wake_at REAL,
            waiting_for TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            completed_at REAL
        )""",
        # The due scan (claim, run_due, next_wake_at) and the expiry scan read only these
        # partial indexes, so their cost does not grow with runs that are not due.
        "CREATE INDEX IF NOT EXISTS {runs}_due ON {runs} (wake_at) WHERE " + WAKING,
        "CREATE INDEX IF NOT EXISTS {runs}_expiry ON {runs} (lease_until) WHERE " + HELD,
        "CREATE INDEX IF NOT EXISTS {runs}_by_workflow ON {runs} (workflow, seq)",
        "CREATE INDEX IF NOT EXISTS {runs}_by_status ON {runs} (status, seq)",
        # The inboxes: one row per event sent to a run.
        """CREATE TABLE IF NOT EXISTS {events} (
            seq INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            name TEXT NOT NULL,
            key TEXT,
            payload TEXT NOT NULL,
            sent_at REAL NOT NULL,
            consumed_by TEXT,
            consumed_at REAL,
            UNIQUE (run_id, name, key)
        )""",
        "CREATE INDEX IF NOT EXISTS {events}_unconsumed ON {events} (run_id, name, seq)"
        " WHERE consumed_by IS NULL",
        # list_events reads the unique index by its run_id prefix; no index of its own, so
        # that storing an event writes as few b-trees as possible.

        # An event wakes the run waiting for it in the statement that stores it: send_event
        # is one INSERT, with no moment where the event is stored but the SUSPENDED run
        # waiting for it is not yet due. (A timeout already past stays the wake time.)
        """CREATE TRIGGER IF NOT EXISTS {events}_wake AFTER INSERT ON {events}
        BEGIN
            UPDATE {runs} SET wake_at = min(coalesce(wake_at, NEW.sent_at), NEW.sent_at),
                updated_at = NEW.sent_at
            WHERE run_id = NEW.run_id AND status = 'suspended' AND waiting_for = NEW.name;
        END""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def check_identifier(name: object) -> bool:
    """Whether ``name`` is a plain SQL identifier (the only text ever put into SQL)."""
    return isinstance(name, str) and _IDENTIFIER.fullmatch(name) is not None


class TableNames:
    """The names of a store's tables, derived from the steps table's name: ``durably_steps``
    goes with ``durably_runs`` and ``durably_events``; a ``table=`` not ending in ``_steps``
    (``jobs``) with ``jobs_runs`` and ``jobs_events``.

    Attributes:
        steps: the steps table (``table=`` of the storage).
        runs: the runs table.
        events: the events table.
    """

    __slots__ = ("events", "runs", "steps")

    def __init__(self, steps: str) -> None:
        prefix = steps[: -len("_steps")] if steps.endswith("_steps") and steps != "_steps" \
            else steps
        self.steps = steps
        self.runs = f"{prefix}_runs"
        self.events = f"{prefix}_events"

    def format(self, statement: str) -> str:
        """Return ``statement`` with its ``{steps}``-style placeholders filled in."""
        return statement.format(steps=self.steps, runs=self.runs, events=self.events)
