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
from traitlets.config import Config

from server_helpers import body, settle

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


@pytest.fixture(autouse=True)
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


@pytest.fixture
def nanny_kernels(
    jp_serverapp: Any, jp_fetch: Callable[..., Awaitable[Any]], jp_asyncio_loop: Any
) -> Iterator[Callable[..., Awaitable[str]]]:
    """Start kernels through the REST API; at teardown shut them down through it and check
    that no process of theirs and no socket of the bridge survives."""
    started: list[str] = []

    async def start(name: str = NANNY_KERNEL) -> str:
        r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}))
        kernel_id: str = body(r)["id"]
        started.append(kernel_id)
        return kernel_id

    async def shutdown_all() -> list[int]:
        km = jp_serverapp.kernel_manager
        trees: list[int] = []
        for kernel_id in started:
            if kernel_id not in km:
                continue
            process = getattr(km.get_kernel(kernel_id).provisioner, "process", None)
            if process is not None:
                with contextlib.suppress(psutil.Error):
                    nanny = psutil.Process(process.pid)
                    trees += [nanny.pid, *(p.pid for p in nanny.children(recursive=True))]
            await jp_fetch("api", "kernels", kernel_id, method="DELETE")
        bridge = jp_serverapp.web_app.settings["nanny_io_bridge"]
        await settle(lambda: not bridge.kernels and bridge.open_sockets() == 0, "bridge cleanup")
        return trees

    yield start
    trees = jp_asyncio_loop.run_until_complete(shutdown_all())
    assert wait_gone(trees) == [], "kernel processes outlived their shutdown"
