"""What the contract suites share: how a suite lists its checks and runs them without pytest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["ContractSuite"]


class ContractSuite:
    """A class of ``test_*`` checks, each taking a fresh storage; usable as a pytest base
    class (with a ``storage`` fixture) or on its own through :meth:`run`."""

    #: Threads used by the concurrency checks.
    threads: ClassVar[int] = 8

    @classmethod
    def check_names(cls) -> list[str]:
        """Return the names of every check, in a stable order."""
        return sorted(name for name in dir(cls) if name.startswith("test_"))

    @classmethod
    def run(cls, make_storage: Callable[[], Any]) -> list[str]:
        """Run every check on a fresh storage from ``make_storage``; return their names (the
        first failure raises ``AssertionError``)."""
        suite = cls()
        for name in cls.check_names():
            storage = make_storage()
            try:
                getattr(suite, name)(storage)
            finally:
                storage.close()
        return cls.check_names()
