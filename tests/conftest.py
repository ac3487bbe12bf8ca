"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
