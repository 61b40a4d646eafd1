"""A real jupyter_server (pytest-jupyter) with the nanny-io extension, and nanny kernels.

pytest-jupyter's fixtures and hooks are imported here rather than named in ``pytest_plugins``,
so they apply to this directory only: its autouse fixtures (an event loop per test, a server
cleanup) would otherwise run around every test of the suite.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_gone
from pytest_jupyter.jupyter_server import *  # noqa: F403
from server_helpers import body, settle
from traitlets.config import Config

from nanny_io.install import IPYKERNEL_NO_FD_CAPTURE, wrapped_spec

NANNY_KERNEL = "python3-nanny"
IPYKERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@pytest.fixture
def jp_server_config() -> Config:
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {
                    "nanny_io.serverext": True,
                    "jupyter_server_terminals": False,
                }
            }
        }
    )


@pytest.fixture
def nanny_kernelspec(jp_environ: Any, jp_kernel_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """``python3-nanny``: ipykernel under the nanny-io provisioner, in the server's data dir.

    ipykernel's own fd capture is off, so what the kernel writes to fds 1 and 2 goes straight
    to the nanny's pipes (and its log store); the nanny does not forward it to iopub.
    """
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no shared history or config
    spec = wrapped_spec({"argv": IPYKERNEL_ARGV, "display_name": "Python 3"}, "python3", False)
    spec["argv"].append(IPYKERNEL_NO_FD_CAPTURE)
    path = jp_kernel_dir / NANNY_KERNEL
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.json").write_text(json.dumps(spec))
    return path


class Kernels:
    """Kernels a test started through the server's REST API, and clients connected to them."""

    def __init__(self, serverapp: Any, fetch: Callable[..., Awaitable[Any]]) -> None:
        self.serverapp = serverapp
        self.fetch = fetch
        self.started: list[str] = []
        self.clients: list[Any] = []

    async def start(self, name: str = NANNY_KERNEL) -> str:
        body_ = json.dumps({"name": name})
        r = await self.fetch("api", "kernels", method="POST", body=body_)
        kernel_id: str = body(r)["id"]
        self.started.append(kernel_id)
        return kernel_id

    async def client(self, kernel_id: str) -> Any:
        """A ready AsyncKernelClient of the kernel (through the nanny, as JupyterLab's is)."""
        kc = self.serverapp.kernel_manager.get_kernel(kernel_id).client()
        kc.start_channels()
        self.clients.append(kc)
        await kc.wait_for_ready(timeout=60)
        return kc

    def nanny_pid(self, kernel_id: str) -> int:
        return int(self.serverapp.kernel_manager.get_kernel(kernel_id).provisioner.process.pid)

    async def shutdown_all(self) -> list[int]:
        """Shut every kernel down through the API; the pids that must be gone now."""
        for kc in self.clients:
            kc.stop_channels()
        km = self.serverapp.kernel_manager
        trees: list[int] = []
        for kernel_id in self.started:
            if kernel_id not in km:
                continue
            with contextlib.suppress(psutil.Error, AttributeError):
                nanny = psutil.Process(self.nanny_pid(kernel_id))
                trees += [nanny.pid, *(p.pid for p in nanny.children(recursive=True))]
            await self.fetch("api", "kernels", kernel_id, method="DELETE")
        bridge = self.serverapp.web_app.settings["nanny_io_bridge"]
        await settle(lambda: not bridge.kernels and bridge.open_sockets() == 0, "bridge cleanup")
        return trees


@pytest.fixture
def kernels(
    jp_serverapp: Any,
    jp_fetch: Callable[..., Awaitable[Any]],
    jp_asyncio_loop: Any,
    nanny_kernelspec: Path,
) -> Iterator[Kernels]:
    """Start kernels; at teardown shut them down through the API and check that no process of
    theirs and no ZeroMQ socket of the bridge survives."""
    started = Kernels(jp_serverapp, jp_fetch)
    yield started
    trees = jp_asyncio_loop.run_until_complete(started.shutdown_all())
    assert wait_gone(trees) == [], "kernel processes outlived their shutdown"


@pytest.fixture
def bridge(jp_serverapp: Any) -> Any:
    return jp_serverapp.web_app.settings["nanny_io_bridge"]
