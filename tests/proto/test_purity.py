"""nanny_io_proto stays a pure protocol library: no I/O, clocks, threads or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nanny_io_proto"
FORBIDDEN = {
    "asyncio",
    "io",
    "os",
    "random",
    "secrets",
    "select",
    "selectors",
    "signal",
    "socket",
    "subprocess",
    "sys",
    "threading",
    "time",
    "uuid",
    "zmq",
    "multiprocessing",
    "pathlib",
    "shutil",
    "tempfile",
    "datetime",
}
#: What a module may import from FORBIDDEN, and the only attributes it may use of it:
#: lines.py sets numpy's thread variables in ``os.environ`` while it imports numpy.
ALLOWED = {"lines.py": {"os": {"environ"}}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_no_io(path: Path) -> None:
    allowed = ALLOWED.get(path.name, {})
    forbidden = (_imports(path) & FORBIDDEN) - allowed.keys()
    assert not forbidden, f"{path.name} imports {forbidden}"
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for module, attributes in allowed.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != module, f"{path.name}: from {module} import ..."
            elif isinstance(node, ast.Name) and node.id == module:
                use = parents[node]
                assert isinstance(use, ast.Attribute) and use.attr in attributes, (
                    f"{path.name} uses {module} beyond {sorted(attributes)} (line {node.lineno})"
                )


def test_every_module_is_checked() -> None:
    assert len(list(PACKAGE.glob("*.py"))) >= 12
