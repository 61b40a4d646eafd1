"""One notebook driven through the browser as a user drives it, in JupyterLab or Notebook 7.

Both UIs are built from the same widgets (``.jp-NotebookPanel``, ``.jp-Cell``, the toolbar's
``.jp-Notebook-ExecutionIndicator`` whose ``data-status`` is the kernel status the user
sees), so one driver serves both. Every step leaves a screenshot for a human to look at.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from browser.server import JupyterServer, wait_kernel_state

#: The class of the notebook's active cell.
ACTIVE = re.compile(r"\bjp-mod-active\b")
#: Lab's modal dialog when the server's restarter revives a dead kernel; a user clicks Ok.
RESTART_DIALOG = "Kernel Restarting"
FRONTENDS = ("lab", "notebook7")
#: Debian's Chromium: Playwright's own browser downloads are not available everywhere.
CHROMIUM = Path(os.environ.get("NANNY_IO_CHROMIUM", "/usr/bin/chromium"))


def browser_unavailable() -> str | None:
    """Why these tests cannot drive a browser here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return (
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or point NANNY_IO_CHROMIUM "
            "at one); Playwright's own browser downloads are not used"
        )
    return None


class NotebookUI:
    """A notebook open in a Playwright page: run cells, read outputs, see the kernel status."""

    def __init__(self, page: Any, server: JupyterServer, shots: Path) -> None:
        from playwright.sync_api import expect

        self.page = page
        self.server = server
        self.shots = shots
        self.expect = expect
        self.path = ""
        self.dialogs: list[str] = []  # the texts of the restart dialogs accepted
        self._step = 0

    # ------------------------------------------------------------------ navigation

    def open(self, path: str, frontend: str) -> None:
        """Open ``path`` in ``frontend`` (one of FRONTENDS) and wait until its kernel is idle."""
        assert frontend in FRONTENDS, frontend
        self.path = path
        quoted, token = urllib.parse.quote(path), self.server.token
        if frontend == "lab":
            # A workspace of its own, reset: nothing of another test's layout is restored
            # (the default workspace would reopen their notebooks and start their kernels).
            workspace = re.sub(r"[^A-Za-z0-9-]", "-", path)
            url = f"{self.server.url}/lab/workspaces/{workspace}/tree/{quoted}?reset&token={token}"
            shell = ".jp-LabShell"
        else:
            url = f"{self.server.url}/notebooks/{quoted}?token={token}"
            shell = "#main-panel"
        self.page.goto(url)
        # the UI really loaded (the built app was found), not an error page
        self.expect(self.page.locator(shell)).to_be_visible(timeout=60_000)
        self.expect(self.cell(0)).to_be_visible(timeout=60_000)
        # the kernel the notebook asks for is the one it got
        kernel = self.server.api("GET", f"/api/contents/{quoted}")["content"]["metadata"][
            "kernelspec"
        ]["name"]
        specs = self.server.api("GET", "/api/kernelspecs")["kernelspecs"]
        display = specs[kernel]["spec"]["display_name"]
        self.expect(self.panel.locator(".jp-Toolbar-kernelName")).to_have_accessible_name(
            display, timeout=30_000
        )
        self.wait_idle(60)
        assert (self.server.session_kernel(path) or {}).get("name") == kernel
        # a reload would wipe this; the scenario is about recovering without one
        self.page.evaluate("window.__nannyIoNotReloaded = true")
        self.shot(f"opened-{frontend}")

    def assert_not_reloaded(self) -> None:
        assert self.page.evaluate("window.__nannyIoNotReloaded === true"), "the page reloaded"

    @property
    def panel(self) -> Any:
        return self.page.locator(".jp-NotebookPanel:visible")

    def cell(self, index: int) -> Any:
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea")

    def prompt(self, index: int) -> Any:
        return self.cell(index).locator(".jp-InputPrompt")

    # ------------------------------------------------------------------ actions

    def run_cell(self, index: int, code: str) -> None:
        """Type ``code`` into cell ``index`` and press Shift+Enter; return once the notebook
        took the key (it moved on to the next cell, adding one after the last), not when the
        cell finished. (Its prompt is no sign: a cell that kills its kernel can go from
        ``[*]`` back to ``[ ]`` before anyone looks.)"""
        editor = self.cell(index).locator(".cm-content")
        editor.click()
        editor.fill(code)
        self.expect(editor).to_have_text(code)
        editor.press("Shift+Enter")
        self.expect(self.cell(index + 1)).to_have_class(ACTIVE, timeout=10_000)

    def wait_idle(self, timeout: float) -> None:
        """The kernel is idle both in the toolbar the user sees and on the server."""
        indicator = self.panel.locator(".jp-Notebook-ExecutionIndicator")
        self.expect(indicator).to_have_attribute("data-status", "idle", timeout=timeout * 1000)
        wait_kernel_state(self.server, self.path, "idle", timeout)

    def kernel_status(self) -> str:
        """What the toolbar's kernel status indicator says now."""
        indicator = self.panel.locator(".jp-Notebook-ExecutionIndicator")
        return str(indicator.get_attribute("data-status", timeout=5_000))

    def shot(self, step: str) -> Path:
        self._step += 1
        path = self.shots / f"{self._step:02d}-{step}.png"
        self.page.screenshot(path=path)
        return path

    @property
    def restart_dialog(self) -> Any:
        return self.page.locator(".jp-Dialog").filter(has_text=RESTART_DIALOG)

    def answer_restart_dialogs(self) -> None:
        """From now on, whenever the restart dialog is up as an action or assertion begins,
        answer it as a user would, keeping its text and a picture of it (after a death it may
        come up at any time, depending on when the server's restarter looks)."""
        self.page.add_locator_handler(self.restart_dialog, self._accept_dialog)

    def _accept_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.inner_text())
        self.shot("restart-dialog")
        dialog.locator(".jp-mod-accept").click()
