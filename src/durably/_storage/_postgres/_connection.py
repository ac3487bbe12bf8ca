"""Connections to PostgreSQL: the pool, transient errors retried, the schema migrated once,
the server's clock, and LISTEN/NOTIFY wake-ups.

The only module besides ``_store`` that imports psycopg (``import durably`` never does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from ..._errors import StorageError
from ._schema import MIGRATIONS, SCHEMA_VERSION, channel, lock_key

__all__ = ["Database", "redacted"]

_T = TypeVar("_T")
_log = logging.getLogger("durably")

# Errors after which the same work may simply be tried again on a (new) connection: the
# connection dropped, the server is shutting down or starting, a serialization failure or a
# deadlock rolled the transaction back, or no connection could be had in time.
_TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError, pg_errors.SerializationFailure, pg_errors.DeadlockDetected,
    PoolTimeout,
)
# Operational errors that are not about the connection: retrying changes nothing.
_PERMANENT: tuple[type[BaseException], ...] = (
    pg_errors.InsufficientPrivilege, pg_errors.DiskFull, pg_errors.OutOfMemory,
    pg_errors.InvalidPassword, pg_errors.InvalidAuthorizationSpecification,
)
_RESYNC = 300.0  # seconds between readings of the server's clock


def redacted(conninfo: str) -> str:
    """``conninfo`` (a URL or ``key=value`` string) without its password."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<a connection string that could not be parsed>"
    parts.pop("password", None)
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


class Database:
    """A pool of autocommit connections to one server and schema.

    Args:
        conninfo: a libpq connection string or URL.
        schema: durably's own PostgreSQL schema (validated by the caller).
        pool_size: the most connections kept open.
        connect_timeout: seconds to wait for a connection before an attempt fails.
        retries: how many times transient failures are retried (with backoff from 50 ms,
            doubling, up to 2 s between attempts) before ``StorageError``.
        readonly: every transaction of every connection is read-only (the server refuses
            writes).
    """

    def __init__(self, conninfo: str, schema: str, *, pool_size: int, connect_timeout: float,
                 retries: int, readonly: bool = False) -> None:
        self.where = f"PostgreSQL {redacted(conninfo)} (schema {schema})"
        self.schema = schema
        self.retries = retries
        self.timeout = connect_timeout
        self._conninfo = conninfo
        self._listeners: list[Callable[[], None]] = []
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        self._clock_lock = threading.Lock()
        self._epoch = 0.0
        self._mono = -_RESYNC
        kwargs: dict[str, Any] = {"autocommit": True}
        if readonly:
            kwargs["options"] = "-c default_transaction_read_only=on"
        try:
            self.pool: ConnectionPool[Any] = ConnectionPool(
                conninfo, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
                kwargs=kwargs, name=f"durably-{schema}")
            self.pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, PoolTimeout) as error:
            raise StorageError(f"cannot connect to {self.where}: {error}",
                               path=self.where) from error

    # ------------------------------------------------------------------ running work

    def run(self, what: str, work: Callable[[psycopg.Connection[Any]], _T],
            subject: str | None = None) -> _T:
        """Run ``work(conn)`` on a pooled connection; retry transient failures, then raise
        ``StorageError`` naming ``what``, the server (without its password) and ``subject``.

        ``work`` must be safe to run again: every write of this adapter is (an upsert that
        never replaces a COMPLETED record, a fenced or conditional update, an insert that
        skips an existing key).
        """
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                with self.pool.connection() as conn:
                    return work(conn)
            except _PERMANENT as error:
                raise self._failure(what, error, subject) from error
            except _TRANSIENT as error:
                if attempt == self.retries or self._closed.is_set():
                    raise self._failure(what, error, subject) from error
                _log.warning("durably: %s failed on %s (%s); trying again", what, self.where,
                             type(error).__name__)
                self.pool.check()  # drop the connections a restart has broken
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except psycopg.Error as error:
                raise self._failure(what, error, subject) from error
        raise AssertionError("unreachable")

    def _failure(self, what: str, error: BaseException, subject: str | None) -> StorageError:
        about = f" ({subject})" if subject else ""
        return StorageError(f"{what}{about} failed on {self.where}: {error}", path=self.where,
                            step_id=subject)

    # ------------------------------------------------------------------ the schema

    def migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION``, once, under an advisory lock.

        Raises:
            StorageError: the schema holds tables that are not durably's, or a newer version.
        """
        schema = self.schema

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key(schema),))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                row = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename <>"
                    " 'durably_version'", (schema,)).fetchone()
                tables = 0 if row is None else int(row[0])
                conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.durably_version"
                             " (version integer NOT NULL)")
                found = conn.execute(f"SELECT version FROM {schema}.durably_version").fetchone()
                version = 0 if found is None else int(found[0])
                if found is None and tables:
                    raise StorageError(
                        f"schema {schema!r} on {self.where} holds tables that are not"
                        " durably's: give PostgresStorage a schema of its own (schema=...)",
                        path=self.where)
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"schema {schema!r} on {self.where} has durably schema version"
                        f" {version}, newer than the {SCHEMA_VERSION} this version knows;"
                        " upgrade durably", path=self.where)
                for statements in MIGRATIONS[version:]:
                    for statement in statements:
                        conn.execute(statement.format(s=schema, channel=channel(schema)))
                if found is None:
                    conn.execute(f"INSERT INTO {schema}.durably_version VALUES (%s)",
                                 (SCHEMA_VERSION,))
                elif version < SCHEMA_VERSION:
                    conn.execute(f"UPDATE {schema}.durably_version SET version = %s",
                                 (SCHEMA_VERSION,))

        self.run("migrating the schema", work)

    def check_version(self) -> None:
        """For a read-only open: the schema must exist at ``SCHEMA_VERSION`` (nothing is
        created or migrated).

        Raises:
            StorageError: no durably store in the schema, or another schema version.
        """
        schema = self.schema

        def work(conn: psycopg.Connection[Any]) -> int | None:
            present = conn.execute("SELECT to_regclass(%s)",
                                   (f"{schema}.durably_version",)).fetchone()
            if present is None or present[0] is None:
                return None
            row = conn.execute(f"SELECT version FROM {schema}.durably_version").fetchone()
            return None if row is None else int(row[0])

        version = self.run("reading the schema version", work)
        if version is None:
            raise StorageError(f"there is no durably store in schema {schema!r} on"
                               f" {self.where} (a read-only open never creates one)",
                               path=self.where)
        if version != SCHEMA_VERSION:
            raise StorageError(f"schema {schema!r} on {self.where} has durably schema version"
                               f" {version}; this durably reads version {SCHEMA_VERSION}"
                               " (a read-only open never migrates)", path=self.where)

    # ------------------------------------------------------------------ the server's clock

    def server_time(self) -> float:
        """Seconds since the epoch on the server's clock.

        Read from the server every few minutes and carried forward on this machine's
        monotonic clock in between (so a wall-clock jump here changes nothing).
        """
        mono = time.monotonic()
        if mono - self._mono >= _RESYNC:
            self._read_server_clock()
            mono = time.monotonic()
        return self._epoch + (mono - self._mono)

    def _read_server_clock(self) -> None:
        def work(conn: psycopg.Connection[Any]) -> tuple[float, float]:
            before = time.monotonic()
            row = conn.execute(
                "SELECT extract(epoch FROM clock_timestamp())::double precision").fetchone()
            after = time.monotonic()
            assert row is not None
            return float(row[0]), (before + after) / 2

        epoch, mono = self.run("reading the server's clock", work)
        with self._clock_lock:
            self._epoch, self._mono = epoch, mono

    # ------------------------------------------------------------------ wake-ups

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from a background thread) whenever another process announces
        a new PENDING run or an event: a hint to poll now, never the truth."""
        self._listeners.append(callback)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="durably-listen",
                                              daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        delay = 0.1
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True,
                                     connect_timeout=max(1, int(self.timeout))) as conn:
                    conn.execute(f"LISTEN {channel(self.schema)}")
                    delay = 0.1
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            for callback in list(self._listeners):
                                callback()
            except psycopg.Error:
                if self._closed.wait(delay):  # the server went away: listen again soon
                    return
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        """Close the pool and stop listening. Idempotent."""
        self._closed.set()
        self.pool.close()
