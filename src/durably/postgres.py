"""PostgreSQL storage for durably: the same code on many machines.

    pip install 'durably[postgres]'

    from durably import DurableWorkflowRuntime
    from durably.postgres import PostgresStorage

    runtime = DurableWorkflowRuntime(storage=PostgresStorage("postgresql://app@db/app"))

``PostgresStorage`` implements ``StepStorage`` and ``RunStorage`` and passes the same contract
suites as the built-in backends. See docs/postgres.md.
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401  # the extra's presence, checked here with a clear message
    import psycopg_pool  # noqa: F401
except ImportError as missing:  # pragma: no cover - exercised in a venv without the extra
    raise ImportError(
        "durably.postgres needs the postgres extra (psycopg 3 and psycopg_pool): pip install"
        f" 'durably[postgres]' ({missing})") from missing

from ._storage._postgres import SCHEMA_VERSION, PostgresStorage

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]
