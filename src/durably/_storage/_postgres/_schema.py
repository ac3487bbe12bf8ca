"""The PostgreSQL schema: ordered migrations in a PostgreSQL schema of durably's own.

The version lives in ``<schema>.durably_version`` (one row). Migrating takes a transaction-level
advisory lock keyed by the schema's name first, so many workers starting at once migrate once:
the first applies the missing migrations, the others wait and then find nothing to do. Never
edit an entry that has shipped; append one.

Times are ``double precision`` seconds since the epoch (what the records hold: a Python float
round-trips exactly); encoded values and errors are ``text``, as on SQLite, so the two stores
hold the same rows and an export moves between them unchanged.
"""

from __future__ import annotations

import re

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "channel", "check_schema_name", "lock_key"]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        """CREATE TABLE {s}.steps (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            step_id text NOT NULL UNIQUE,
            workflow_id text NOT NULL,
            action text NOT NULL,
            status text NOT NULL,
            result text,
            error text,
            attempts integer NOT NULL,
            created_at double precision NOT NULL,
            started_at double precision,
            updated_at double precision NOT NULL,
            completed_at double precision,
            next_attempt_at double precision,
            budget_started_at double precision
        )""",
        # A run's history in call order, in one index range (list(workflow_id=...)).
        "CREATE INDEX steps_by_workflow ON {s}.steps (workflow_id, seq)",
        """CREATE TABLE {s}.runs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text NOT NULL UNIQUE,
            workflow text NOT NULL,
            status text NOT NULL,
            input text NOT NULL,
            input_hash text NOT NULL,
            result text,
            error text,
            code_version text,
            owner text,
            lease_until double precision,
            fence bigint NOT NULL,
            recovery_count integer NOT NULL,
            max_recoveries integer NOT NULL,
            parent_run_id text,
            forked_from text,
            deadline double precision,
            wake_at double precision,
            waiting_for text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            completed_at double precision
        )""",
        # The due scan and the expiry scan read only these partial indexes.
        "CREATE INDEX runs_due ON {s}.runs (wake_at) WHERE status IN ('pending', 'suspended')",
        "CREATE INDEX runs_expiry ON {s}.runs (lease_until) WHERE status = 'running'",
        "CREATE INDEX runs_by_workflow ON {s}.runs (workflow, seq)",
        "CREATE INDEX runs_by_status ON {s}.runs (status, seq)",
        """CREATE TABLE {s}.events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text NOT NULL,
            name text NOT NULL,
            key text,
            payload text NOT NULL,
            sent_at double precision NOT NULL,
            consumed_by text,
            consumed_at double precision,
            UNIQUE (run_id, name, key)
        )""",
        "CREATE INDEX events_unconsumed ON {s}.events (run_id, name, seq)"
        " WHERE consumed_by IS NULL",
        # An event makes the SUSPENDED run waiting for it due, in the statement that stores
        # it (never later than a wake time it already had), and tells the listeners.
        """CREATE FUNCTION {s}.event_stored() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {s}.runs SET wake_at = least(coalesce(wake_at, NEW.sent_at), NEW.sent_at),
                updated_at = NEW.sent_at
            WHERE run_id = NEW.run_id AND status = 'suspended' AND waiting_for = NEW.name;
            PERFORM pg_notify('{channel}', 'event');
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER events_wake AFTER INSERT ON {s}.events"
        " FOR EACH ROW EXECUTE FUNCTION {s}.event_stored()",
        # A run that becomes PENDING (started, released, resumed, restarted) is news for
        # every worker: a hint only; polling stays the truth.
        """CREATE FUNCTION {s}.run_pending() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{channel}', 'run');
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER runs_pending AFTER INSERT OR UPDATE OF status ON {s}.runs"
        " FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION {s}.run_pending()",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def check_schema_name(name: object) -> bool:
    """Whether ``name`` is a plain lower-case identifier (the only text put into SQL)."""
    return isinstance(name, str) and _IDENTIFIER.fullmatch(name) is not None


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's store."""
    return f"durably_{schema}"


def lock_key(schema: str) -> str:
    """The text whose hash keys the migration's advisory lock."""
    return f"durably migration {schema}"
