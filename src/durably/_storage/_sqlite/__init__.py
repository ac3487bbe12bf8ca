"""SQLite storage, split by question: opening and migrating (``_connection``), the schema and
its migrations (``_schema``), rows and records (``_rows``), and the storage itself
(``_store``)."""

from ._schema import SCHEMA_VERSION
from ._store import SqliteStepStorage

__all__ = ["SCHEMA_VERSION", "SqliteStepStorage"]
