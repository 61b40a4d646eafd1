"""The house rules, checked where CI runs: ruff over the tree, mypy on both packages
(pyproject's ``[tool.mypy]``: strict on the protocol library)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def _tool(name: str) -> list[str]:
    if shutil.which(name, path=str(Path(sys.executable).parent)) is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [str(Path(sys.executable).parent / name)]


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run(
        [*_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_protocol_library_is_strictly_typed() -> None:
    proc = subprocess.run(
        [*_tool("mypy"), "--no-incremental", "nanny_io_proto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nanny_package_type_checks() -> None:
    """nanny_io too: a typing error is a bug found before it runs (types-psutil gives
    psutil's types; the test extra installs it)."""
    proc = subprocess.run(
        [*_tool("mypy"), "--no-incremental", "nanny_io"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
