"""Fixtures for the browser tests: one real Jupyter server and one headless Chromium per
module, a fresh browser context per test, and screenshots of every step.

Screenshots, the browser console and the server's log go to ``$NANNY_IO_ARTIFACTS``
(default ``tests/browser/artifacts/``, not committed), one directory per test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser.notebook_ui import CHROMIUM, NotebookUI, browser_unavailable
from browser.server import JupyterServer, log_tail, start_server

ARTIFACTS = Path(os.environ.get("NANNY_IO_ARTIFACTS") or Path(__file__).parent / "artifacts")
VIEWPORT = {"width": 1280, "height": 800}


def _module_artifacts(request: pytest.FixtureRequest) -> Path:
    return ARTIFACTS / Path(str(request.node.path)).stem


@pytest.fixture(scope="module")
def jupyter_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterServer]:
    """``jupyter lab`` with private directories, the stock ``python3`` kernelspec and
    ``python3-nanny`` (installed by ``nanny-io install python3 --capture``). At teardown it
    is shut down, and no process it started may survive it."""
    log_path = _module_artifacts(request) / "jupyter-server.log"
    server = start_server(tmp_path_factory.mktemp("jupyter"), log_path)
    yield server
    survivors = server.stop()
    assert not survivors, f"processes outlived the jupyter server: {survivors}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (``--no-sandbox``: CI runs as root, where its sandbox cannot)."""
    if reason := browser_unavailable():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's artifacts directory, emptied."""
    path = _module_artifacts(request) / request.node.name.replace("/", "-")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def notebook_ui(
    browser: Any, jupyter_server: JupyterServer, artifacts: Path
) -> Iterator[NotebookUI]:
    """A page in a fresh browser context. At teardown: a last screenshot and the console
    log are kept, and every kernel is shut down, none of its processes surviving."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    ui = NotebookUI(page, jupyter_server, artifacts)
    try:
        yield ui
    finally:
        try:
            page.screenshot(path=artifacts / "99-final.png")
        finally:
            (artifacts / "console.log").write_text("\n".join(console) + "\n")
            context.close()
    survivors = jupyter_server.shut_down_kernels()
    assert not survivors, (
        f"processes outlived their kernel's shutdown: {survivors}\n{log_tail(jupyter_server)}"
    )
