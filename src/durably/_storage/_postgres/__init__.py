"""The PostgreSQL backend (the ``postgres`` extra: psycopg 3 and psycopg_pool). Imported only
by ``durably.postgres``; nothing else in the package imports psycopg."""

from __future__ import annotations

from ._schema import SCHEMA_VERSION
from ._store import PostgresStorage

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]
