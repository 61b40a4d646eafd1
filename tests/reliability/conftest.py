"""The slow part of this suite runs only when asked for: ``pytest -m slow tests/reliability``."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr"):
        return  # an explicit -m decides
    skip = pytest.mark.skip(reason="slow: run with -m slow (see tests/reliability/README.md)")
    for item in items:
        if "slow" in item.keywords and _HERE in Path(str(item.path)).parents:
            item.add_marker(skip)
