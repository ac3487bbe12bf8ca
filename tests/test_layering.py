"""Lower modules never import higher ones (the order drawn in durably/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "durably"

# Rank of each module; a module may import only modules of a strictly lower rank
# (modules of the same rank are siblings and do not import each other).
LAYERS: dict[str, float] = {
    "_errors": 0,
    "_records": 1, "_display": 1,
    "_tags": 2, "_retry": 2, "_clock": 2,
    "_codec": 3,
    "_ids": 3, "_registry": 3,
    "_forks": 3.5, "_export": 3.5,
    "_view": 4,
    "_context": 5,
    "_storage": 6, "_storage._base": 6, "_storage._runs": 6,
    "_storage._memory": 7, "_storage._sqlite": 8,
    "_storage._rows": 6.5,
    "_storage._sqlite._schema": 8,
    "_storage._sqlite._connection": 9, "_storage._sqlite._runs": 9.5,
    "_storage._sqlite._store": 9.7,
    "_storage._postgres._schema": 8, "_storage._postgres._connection": 9,
    "_storage._postgres._runs": 9.5,
    "_storage._postgres._store": 9.7, "_storage._postgres": 9.8,
    "_core": 10, "_waits": 10.2, "_workflows": 10.5,
    "_threads": 11, "_tasks": 11, "_handles": 11, "_proxy": 11, "_step": 11,
    "_runs_api": 11.5,
    "_runtime_base": 12,
    "_runtime": 13, "_aio": 13,
    "postgres": 13.5,
    "testing": 14, "testing._suite": 13.9, "testing._contract": 14,
    "testing._run_contract": 14,
    "__init__": 15,
    "_cli._session": 15.2, "_cli._reading": 15.4, "_cli._writing": 15.4,
    "_cli._moving": 15.4, "_cli": 15.6, "__main__": 16,
}
# Every module the layout of docs/layout.md names must be placed above.


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    package_parts = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package_parts = []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("durably"):
                target = node.module.removeprefix("durably").lstrip(".")
            else:
                continue
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("durably").lstrip(".")
                         for alias in node.names if alias.name.startswith("durably."))
    return found


def _rank(target: str) -> float:
    while target not in LAYERS and "." in target:
        target = target.rsplit(".", 1)[0]
    return LAYERS[target]


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in the layer map before it can be imported anywhere."""
    names = {_module_name(path) for path in PACKAGE.rglob("*.py")}
    assert names <= set(LAYERS), names - set(LAYERS)


def test_no_module_imports_upwards() -> None:
    """Each import points to a strictly lower layer (or, in a package, its own parts)."""
    violations = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for target in _imports(path, name):
            if target == "" or target.startswith(name + "."):
                continue  # a package importing its own submodules
            if _rank(target) >= LAYERS[name]:
                violations.append(f"{name} imports {target}")
    assert not violations, violations


def test_import_parsing_sees_relative_imports() -> None:
    """The checker really reads imports (guards the test above against passing vacuously)."""
    assert "_tags" in _imports(PACKAGE / "_ids.py", "_ids")
    assert "_records" in _imports(PACKAGE / "_storage" / "_rows.py",
                                  "_storage._rows")
    assert "_storage" in _imports(PACKAGE / "__init__.py", "__init__")
