"""Storage backends: the :class:`StepStorage` protocol and the two built-in adapters."""

from ._base import StepStorage
from ._memory import InMemoryStepStorage
from ._sqlite import SqliteStepStorage

__all__ = ["InMemoryStepStorage", "SqliteStepStorage", "StepStorage"]
