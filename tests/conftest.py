"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import InMemoryStepStorage, SqliteStepStorage, StepStorage


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StepStorage]:
    """Every storage backend, one at a time."""
    store: StepStorage
    if request.param == "memory":
        store = InMemoryStepStorage()
    else:
        store = SqliteStepStorage(tmp_path / "steps.db")
    yield store
    store.close()


class Flavour:
    """Runs the shared runtime tests against one runtime flavour.

    ``flavour.make(**options)`` builds a runtime (test defaults: in-memory storage, FakeClock,
    workflow "test", one attempt without delay); ``flavour.run(x)`` returns ``x`` for the sync
    runtime and awaits it on the test's event loop for the async one.
    """

    name = "sync"

    def make(self, **options: object) -> Any:
        from durably.testing import create_test_runtime

        return create_test_runtime(**options)

    def run(self, value: Any) -> Any:
        return value

    def flush(self, runtime: Any, timeout: float | None = None) -> bool:
        return bool(runtime.flush(timeout))

    def close(self, runtime: Any) -> None:
        runtime.close()


@pytest.fixture(params=["sync"])
def flavour(request: pytest.FixtureRequest) -> Iterator[Flavour]:
    """Each runtime flavour in turn."""
    yield Flavour()
