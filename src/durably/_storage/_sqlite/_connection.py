"""Opening a SQLite store: where the file may live, what it must hold, how it is tuned.

Why the settings are what they are:

* WAL lets readers run beside the one writer and makes a commit one append to the log.
* ``synchronous=NORMAL`` in WAL mode survives any process crash (the log is written before a
  commit returns) but may lose the last commits on power loss; ``durability="full"`` adds an
  fsync to every commit of an outcome, through a second connection kept at ``FULL``.
* ``busy_timeout`` makes a writer wait for another process's transaction instead of failing
  with "database is locked".
* 1 KiB pages (new files only) and a checkpoint every 16 MiB of log: a step's write dirties a
  few pages of different b-trees, and each page dirtied is a frame appended to the log, so
  small pages make each commit cheaper; a larger log lets repeated writes to one page collapse
  into one copy at checkpoint time. The log is truncated back to 16 MiB after a checkpoint.
* Except on the ``FULL`` connection, which checkpoints every 1000 pages (SQLite's default):
  there every commit fsyncs the log, and an fsync of a log that grew (frames past its old end;
  a new log grows for its first 16 MiB, and every process starts a new one) also has to
  write the file's size, which costs more than the frames. A short log is rewritten in place
  after each checkpoint, so its commits rarely grow it: a step with ``durability="full"``
  went from ~1.9x to ~1.2x one raw FULL commit (``tests/benchmarks/run.py --only 1``). The
  ``NORMAL`` connection keeps 16 MiB: it syncs nothing per commit, and fewer checkpoints (each
  syncs the database file) are what make it faster.

Nothing is written to a file before it is known to be a durably store (or empty): the schema
version is read before the switch to WAL, which rewrites the header.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator

from ..._errors import StorageError
from ._schema import MIGRATIONS, OWN_SHAPES, SCHEMA_VERSION, TableNames

__all__ = [
    "busy", "check_location", "connect_readonly", "enable_wal", "is_memory", "migrate",
    "read_version", "transaction", "tune",
]

# Primary result codes (sqlite3 exports them only from Python 3.11).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def is_memory(path: str) -> bool:
    """Whether ``path`` names SQLite's private in-memory database."""
    return path == ":memory:"


def busy(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` says another connection holds a lock (worth retrying)."""
    # sqlite_errorcode exists from Python 3.11; on 3.10 any OperationalError here is retried
    # until the deadline, which is harmless: a real failure repeats and is raised then.
    code = getattr(error, "sqlite_errorcode", None)
    return code is None or code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def check_location(path: str) -> None:
    """Make sure ``path`` can hold a writable store; create it (mode 0600) if missing.

    Raises:
        StorageError: the directory is missing or read-only, or the file is read-only.
    """
    if os.path.isdir(path):
        raise StorageError(f"cannot open step database {path!r}: it is a directory",
                           path=path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageError(
            f"cannot open step database {path!r}: directory {directory!r} does not exist",
            path=path,
        )
    # Mode bits as well as access(): root passes access() on anything, but a file or
    # directory whose owner made it read-only is meant to stay unwritten.
    if not os.access(directory, os.W_OK) or not os.stat(directory).st_mode & 0o222:
        raise StorageError(
            f"cannot open step database {path!r}: directory {directory!r} is read-only"
            " (SQLite creates its -wal and -shm files beside the database)",
            path=path,
        )
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        if not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222:
            raise StorageError(f"cannot open step database {path!r}: the file is read-only",
                               path=path) from None
    except OSError as error:
        raise StorageError(f"cannot create step database {path!r}: {error}",
                           path=path) from error
    else:
        os.close(fd)


def connect_readonly(path: str, timeout: float) -> sqlite3.Connection:
    """Open ``path`` for reading only: never created, migrated, or switched to WAL.

    Raises:
        StorageError: the file does not exist.
    """
    if not os.path.isfile(path):
        raise StorageError(f"step database {path!r} does not exist", path=path)
    import urllib.parse  # only read-only opens need it

    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


def _foreign_tables(conn: sqlite3.Connection) -> tuple[list[str], bool]:
    """Return the tables that are not durably's, and whether any durably table is there."""
    foreign, own = [], False
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for name in names:
        if name.startswith("sqlite_"):
            continue  # SQLite's own (sqlite_sequence, sqlite_stat1...)
        columns = {row[0] for row in conn.execute(
            "SELECT name FROM pragma_table_info(?)", (name,))}
        if any(shape <= columns for shape in OWN_SHAPES):
            own = True
        else:
            foreign.append(name)
    return foreign, own


def read_version(conn: sqlite3.Connection, path: str) -> int:
    """Return the file's schema version, once it is known to be a durably store (or empty).

    A file is refused, and left untouched, if it holds tables that are not durably's, or has
    a ``user_version`` but no durably table (another application's database), or a schema
    newer than this code knows.

    Raises:
        StorageError: names the path, and the tables found or the version.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    foreign, own = _foreign_tables(conn)
    if foreign or (version and not own):
        found = ", ".join(foreign) if foreign else "no durably table"
        raise StorageError(
            f"{path!r} is not a durably database (user_version {version}; tables: {found});"
            " it is left as it is. Keep durably in a file of its own", path=path)
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"step database {path!r} has schema version {version}, newer than the"
            f" {SCHEMA_VERSION} this version of durably knows; upgrade durably",
            path=path,
        )
    return version


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the file holds a table called ``name``."""
    row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (name,)).fetchone()
    return bool(row[0])


def enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL, retrying while another process is opening it too."""
    # The switch to WAL answers SQLITE_BUSY at once, without calling the busy handler, when
    # another process is opening the same new file: retry it until busy_timeout.
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as error:
            if not busy(error) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def tune(conn: sqlite3.Connection, *, full: bool, new_file: bool = False) -> None:
    """Set the pragmas every connection of a store uses (see the module docs)."""
    if new_file:
        conn.execute("PRAGMA page_size = 1024")  # takes effect only on an empty file
    conn.execute("PRAGMA synchronous = FULL" if full else "PRAGMA synchronous = NORMAL")
    # In pages: 16 MiB of 1 KiB pages; 1000 on the FULL connection (see the module docs).
    conn.execute("PRAGMA wal_autocheckpoint = 1000" if full
                 else "PRAGMA wal_autocheckpoint = 16384")
    conn.execute("PRAGMA journal_size_limit = 16777216")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any ``BaseException``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, names: TableNames, path: str) -> None:
    """Bring the file to ``SCHEMA_VERSION`` inside one ``BEGIN IMMEDIATE`` transaction.

    Two processes opening a new file at once cannot both create it: the second one finds the
    schema made when it gets the lock.
    """
    with transaction(conn):
        version = read_version(conn, path)
        # A steps table added to a file that already holds another durably table starts
        # from nothing, whatever the file's version says.
        start = version if has_table(conn, names.steps) else 0
        for statements in MIGRATIONS[start:]:
            for statement in statements:
                conn.execute(names.format(statement))
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
