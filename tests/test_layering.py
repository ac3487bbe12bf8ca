"""Lower modules never import higher ones (the order drawn in durably/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "durably"

# Rank of each module; a module may import only modules of a strictly lower rank
# (modules of the same rank are siblings and do not import each other).
LAYERS: dict[str, int] = {
    "_errors": 0,
    "_records": 1,
    "_codec": 2, "_retry": 2,
    "_ids": 3, "_registry": 3,
    "_storage": 4, "_storage._base": 4, "_storage._memory": 5, "_storage._sqlite": 5,
    "_contract": 6,
    "_core": 7,
    "_api": 8,
    "_runtime": 9, "_aio": 9,
    "testing": 10,
    "__init__": 11, "__main__": 12,
}


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


def _rank(target: str) -> int:
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
    assert "_codec" in _imports(PACKAGE / "_ids.py", "_ids")
    assert "_records" in _imports(PACKAGE / "_storage" / "_sqlite.py", "_storage._sqlite")
    assert "_storage" in _imports(PACKAGE / "__init__.py", "__init__")
