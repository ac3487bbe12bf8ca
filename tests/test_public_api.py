"""The public face: what is exported, documented and listed in docs/api.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import durably
import durably.testing

API_DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
PUBLIC = [(durably, name) for name in durably.__all__] + [
    (durably.testing, name) for name in durably.testing.__all__
]


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and every name in it exists."""
    for module in (durably, durably.testing):
        assert module.__all__ == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name


def test_nothing_public_is_left_out_of_all() -> None:
    """Every public attribute of the package is exported on purpose."""
    public = {name for name in vars(durably) if not name.startswith("_")
              and not inspect.ismodule(getattr(durably, name))}
    lazy = durably._LAZY  # the asyncio flavour, imported on first use
    assert (public | lazy) - {"annotations"} == set(durably.__all__)


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=lambda item: getattr(item, "__name__",
                                                                              str(item)))
def test_every_public_name_is_documented(module: object, name: str) -> None:
    """Each public name has a docstring and a place in docs/api.md."""
    obj = getattr(module, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    assert f"`{name}" in API_DOC, f"{name} is missing from docs/api.md"


@pytest.mark.parametrize("name", [n for n in durably.__all__ if inspect.isclass(getattr(durably,
                                                                                        n))])
def test_public_methods_have_docstrings(name: str) -> None:
    """Public methods of public classes say what they do."""
    cls = getattr(durably, name)
    for attr, value in vars(cls).items():
        if attr.startswith("_") or not callable(value):
            continue
        assert inspect.getdoc(value), f"{name}.{attr} has no docstring"
