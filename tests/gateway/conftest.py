"""Fixtures for gateway_provisioners' real provisioners running ``nanny-io launch``.

Each test runs one asyncio loop with a private ResponseManager (the provisioners' singleton
that receives the launchers' connection info), bound to 127.0.0.1 as GP_RESPONSE_IP says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway.support import Gateway, Launcher
from helpers import wait_gone

pytest.importorskip("Cryptodome", reason="the gateway extra is not installed")
pytest.importorskip("gateway_provisioners", reason="gateway_provisioners is not installed")


@pytest.fixture
def gateway(jupyter_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    import gateway_provisioners.distributed as distributed
    import gateway_provisioners.response_manager as response_manager

    # The provisioners refuse to launch for root unless the user is named.
    monkeypatch.setenv("KERNEL_USERNAME", "nanny-io-tester")
    monkeypatch.setenv("GP_RESPONSE_IP", "127.0.0.1")
    monkeypatch.setattr(response_manager, "response_ip", "127.0.0.1")
    monkeypatch.setattr(response_manager, "local_ip", "127.0.0.1")
    # Where DistributedProvisioner sends a local launcher's stdout and stderr.
    monkeypatch.setattr(distributed, "kernel_log_dir", str(tmp_path))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(jupyter_env.root / "user-data"))
    gw = Gateway(jupyter_env.root, jupyter_env.runtime, tmp_path)
    yield gw
    alive = wait_gone(sorted(gw.pids))
    assert not alive, f"processes outlived their kernels: {alive}"


@pytest.fixture
def launcher_factory(jupyter_env: Any) -> Iterator[Callable[..., Launcher]]:
    """Start ``nanny-io launch`` processes; at teardown stop them and check that no process
    of theirs survives."""
    started: list[Launcher] = []

    def start(*args: str, **kwargs: Any) -> Launcher:
        launcher = Launcher(*args, **kwargs)
        started.append(launcher)
        return launcher

    yield start
    leftovers = []
    for launcher in started:
        pids = [launcher.proc.pid, *launcher.tree()]
        launcher.stop()
        leftovers += wait_gone(pids)
    assert not leftovers, f"processes survived their launcher: {leftovers}"
