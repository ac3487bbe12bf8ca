"""Storage backends: the :class:`StepStorage` protocol and the built-in adapters.

Backends are imported when first asked for (``__getattr__``), so that importing the protocol
costs nothing and an optional backend's dependencies are needed only by those who use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    StepStorage,
    StepWrite,
    batch_writer,
    history_reader,
    is_blocking,
    server_time,
)
from ._runs import RunStorage

if TYPE_CHECKING:
    from ._memory import InMemoryStepStorage
    from ._sqlite import SqliteStepStorage

__all__ = [
    "InMemoryStepStorage", "RunStorage", "SqliteStepStorage", "StepStorage", "StepWrite",
    "batch_writer", "default_storage", "history_reader", "is_blocking", "server_time",
]


def default_storage() -> StepStorage:
    """Return the storage a runtime uses when given none: a new :class:`InMemoryStepStorage`."""
    from ._memory import InMemoryStepStorage

    return InMemoryStepStorage()


def __getattr__(name: str) -> Any:
    if name == "InMemoryStepStorage":
        from ._memory import InMemoryStepStorage

        return InMemoryStepStorage
    if name == "SqliteStepStorage":
        from ._sqlite import SqliteStepStorage

        return SqliteStepStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
