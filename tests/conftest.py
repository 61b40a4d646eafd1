"""Shared fixtures: private Jupyter dirs, test kernelspecs, and nannies run as real processes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import NannyProcess, spawn_nanny, wait_gone


@dataclass
class JupyterEnv:
    """A private runtime dir and kernelspec dir, exported to every process the test starts."""

    root: Path
    runtime: Path
    data: Path

    def add_kernelspec(self, name: str, argv: list[str], **extra: Any) -> Path:
        """Install a kernelspec ``name`` visible to nannies started by this test."""
        path = self.data / "kernels" / name
        path.mkdir(parents=True, exist_ok=True)
        spec = {"argv": argv, "display_name": name, "language": "python", **extra}
        (path / "kernel.json").write_text(json.dumps(spec))
        return path


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JupyterEnv:
    env = JupyterEnv(tmp_path, tmp_path / "runtime", tmp_path / "data")
    env.data.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(env.runtime))
    monkeypatch.setenv("JUPYTER_PATH", str(env.data))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no shared history or config
    return env


@pytest.fixture
def nanny_factory(jupyter_env: JupyterEnv) -> Iterator[Callable[..., NannyProcess]]:
    """Start nannies; at teardown stop them and check no process of theirs survives."""
    started: list[NannyProcess] = []

    def start(*args: str, **kwargs: Any) -> NannyProcess:
        nanny = spawn_nanny(*args, **kwargs)
        started.append(nanny)
        return nanny

    yield start
    leftovers = []
    for nanny in started:
        pids = nanny.tree_pids()
        nanny.stop()
        leftovers += wait_gone(pids)
    assert not leftovers, f"processes survived their nanny: {leftovers}"


@pytest.fixture
def nanny(nanny_factory: Callable[..., NannyProcess]) -> NannyProcess:
    """A nanny running the python3 kernel (ipykernel)."""
    return nanny_factory("python3")
