"""Issue 10: the JupyterLab extension, in a real JupyterLab in headless Chromium.

The Kernel Log panel (opened from the Kernel menu) shows what a cell writes to
``$JUPYTER_KERNEL_LOG``; a killed kernel raises a notification with the signal that stays, and
its action opens the panel at the death, after which the new incarnation's lines follow; 50 000
lines into an open panel leave the page responsive; a kernel not under the nanny has the
command disabled, with a tooltip that says why. Screenshots (light and dark) are artifacts;
docs/jupyterlab.md shows the best of them.

The server links this checkout's built extension (``nanny_io/labextension``) into its private
data directory (tests/browser/server.py), so these tests run the committed build.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from browser.notebook_ui import NotebookUI, browser_unavailable
from browser.server import JupyterServer

if reason := browser_unavailable():
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import expect  # only once we know it is there

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

COMMAND = "nanny-io:show-kernel-log"
NANNY_SPEC, STOCK_SPEC = "python3-nanny", "python3"
#: The panel's DOM bound (labextension/src/panel.ts, MAX_ROWS).
MAX_ROWS = 5000

#: Cells are one line each (the harness types them and compares what the editor shows).
WRITE_LOG = "import os; open(os.environ['JUPYTER_KERNEL_LOG'], 'w').write({text!r} + '\\n');"
KILL = "import os; os.write(2, b'last words before the kill\\n'); os.kill(os.getpid(), 9)"
#: 50 000 lines to the kernel's log, 10 000 a second.
FLOOD = (
    "import os, time; log = open(os.environ['JUPYTER_KERNEL_LOG'], 'w'); "
    "[(log.write(''.join(f'flood line {b * 1000 + i}\\n' for i in range(1000))), log.flush(), "
    "time.sleep(0.1)) for b in range(50)]; log.close()"
)

#: The WCAG contrast ratio of a row's text against what is behind it, in the browser.
CONTRAST_JS = """(el) => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  let node = el, bg = null;
  while (node && !bg) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length >= 3 && (c.length === 3 || c[3] > 0.5)) bg = c;
    node = node.parentElement;
  }
  bg = bg || [255, 255, 255];
  const fg = rgb(getComputedStyle(el).color);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def _open(ui: NotebookUI, path: str) -> None:
    """Open the notebook in Lab, with the left sidebar collapsed (room for the panel)."""
    ui.open(path, "lab")
    ui.page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
    expect(ui.page.locator("#jp-left-stack")).to_be_hidden()


def _panel(ui: NotebookUI) -> Any:
    return ui.page.locator(".jp-NannyLog:visible")


def _rows(ui: NotebookUI) -> Any:
    return _panel(ui).locator(".jp-NannyLog-row")


def _open_from_kernel_menu(ui: NotebookUI) -> None:
    """Kernel menu → Show Kernel Log, as a user would."""
    page = ui.page
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
    item = page.locator(".lm-Menu-item", has_text="Show Kernel Log")
    expect(item).to_be_visible()
    expect(item).not_to_have_class(re.compile(r"lm-mod-disabled"))
    item.click()
    expect(_panel(ui)).to_be_visible(timeout=10_000)


def _command_state(ui: NotebookUI) -> dict[str, Any]:
    return dict(
        ui.page.evaluate(
            """(id) => ({enabled: window.jupyterapp.commands.isEnabled(id),
                         caption: window.jupyterapp.commands.caption(id)})""",
            COMMAND,
        )
    )


def _set_theme(ui: NotebookUI, theme: str) -> None:
    ui.page.evaluate(
        "(theme) => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", theme
    )
    expect(ui.page.locator("body")).to_have_attribute("data-jp-theme-name", theme, timeout=10_000)
    ui.page.wait_for_timeout(500)  # the theme's CSS variables applied


def _assert_readable(ui: NotebookUI, theme: str) -> None:
    """Every kind of row shown has text that stands out from its background (WCAG AA for
    normal text: a contrast ratio of 4.5 at least)."""
    ratios = {}
    for row in _rows(ui).all()[-200:]:
        kind = row.get_attribute("data-marker") or row.get_attribute("data-stream")
        if kind not in ratios:
            ratios[kind] = row.locator(".jp-NannyLog-text").evaluate(CONTRAST_JS)
    poor = {kind: round(r, 2) for kind, r in ratios.items() if r < 4.5}
    assert ratios and not poor, f"{theme}: rows hard to read (contrast ratio): {poor} of {ratios}"


def test_panel_shows_the_kernel_log(jupyter_server: JupyterServer, notebook_ui: NotebookUI) -> None:
    """A cell writes a warning to $JUPYTER_KERNEL_LOG; the panel opened from the Kernel menu
    shows the line within 5 s, and the notebook's Log Console has it as a warning."""
    ui = notebook_ui
    path = jupyter_server.create_notebook("log-line.ipynb", NANNY_SPEC, ["", ""])
    _open(ui, path)
    assert _command_state(ui)["enabled"], _command_state(ui)
    _open_from_kernel_menu(ui)
    expect(_rows(ui).filter(has_text="Kernel started")).to_be_visible(timeout=10_000)
    ui.run_cell(0, WRITE_LOG.format(text="<4>hello from the kernel log"))
    started = time.monotonic()
    line = _rows(ui).filter(has_text="hello from the kernel log")
    expect(line).to_be_visible(timeout=5_000)
    took = time.monotonic() - started
    assert line.get_attribute("data-stream") == "log"
    assert line.get_attribute("data-priority") == "4"
    expect(line).not_to_contain_text("<4>")  # the priority prefix is not text
    ui.shot("panel-log-line")
    # search narrows the rows to the matches, and marks them
    _panel(ui).locator(".jp-NannyLog-search").fill("hello")
    expect(_panel(ui).locator(".jp-NannyLog-row:not([data-marker])")).to_have_count(1)
    expect(_panel(ui).locator("mark", has_text="hello")).to_be_visible()
    ui.shot("panel-search")
    # the Log Console of the notebook got it at warning level
    ui.cell(1).click()  # the notebook is the Log Console's source
    ui.page.evaluate("window.jupyterapp.commands.execute('logconsole:open')")
    console = ui.page.locator(".jp-LogConsole:visible")
    expect(console).to_contain_text("hello from the kernel log", timeout=10_000)
    ui.shot("log-console")
    print(f"panel showed the line {took:.2f} s after the cell ran")


#: One line per priority that matters, to the log; one unprefixed line to stderr (a warning).
LEVELS = (
    "import os; open(os.environ['JUPYTER_KERNEL_LOG'], 'w').write('<3>database connection lost"
    "\\n<4>slow query: 12 s\\n<6>connected to the database\\n<7>query plan: seq scan\\n'); "
    "os.write(2, b'a warning on stderr\\n')"
)


def test_level_filter_and_log_console_levels(
    jupyter_server: JupyterServer, notebook_ui: NotebookUI
) -> None:
    """Lines written with priorities: the panel marks each row with its priority, the Level
    filter keeps that priority and more severe ones (markers always), and the Log Console has
    each line at its own level (errors as errors, warnings as warnings)."""
    ui = notebook_ui
    path = jupyter_server.create_notebook("levels.ipynb", NANNY_SPEC, ["", ""])
    _open(ui, path)
    _open_from_kernel_menu(ui)
    expect(_rows(ui).filter(has_text="Kernel started")).to_be_visible(timeout=10_000)
    ui.run_cell(0, LEVELS)
    lines = {
        "database connection lost": "3",
        "slow query: 12 s": "4",
        "connected to the database": "6",
        "query plan: seq scan": "7",
        "a warning on stderr": "4",
    }
    for text, priority in lines.items():
        row = _rows(ui).filter(has_text=text)
        expect(row).to_be_visible(timeout=10_000)
        assert row.get_attribute("data-priority") == priority, text
    ui.shot("levels-all")
    level = _panel(ui).locator(".jp-NannyLog-level select")
    shown = _panel(ui).locator(".jp-NannyLog-row:not([data-marker])")

    def texts() -> list[str]:
        return [t.strip() for t in shown.locator(".jp-NannyLog-text").all_inner_texts()]

    level.select_option(label="warning+")
    expect(shown.filter(has_text="connected to the database")).to_have_count(0)
    # the log FIFO and stderr are separate pipes: their relative order is approximate
    assert sorted(t for t in texts() if t in lines) == [
        "a warning on stderr",
        "database connection lost",
        "slow query: 12 s",
    ], texts()
    expect(_rows(ui).filter(has_text="Kernel started")).to_be_visible()  # markers stay
    ui.shot("levels-warning")
    level.select_option(label="err+")
    expect(shown.filter(has_text="database connection lost")).to_be_visible()
    expect(shown).to_have_count(1)
    level.select_option(label="all levels")
    expect(shown.filter(has_text="query plan: seq scan")).to_be_visible()
    # the Log Console: each line at its own level
    ui.cell(1).click()
    ui.page.evaluate("window.jupyterapp.commands.execute('logconsole:open')")
    console = ui.page.locator(".jp-LogConsole:visible")
    expect(console).to_contain_text("database connection lost", timeout=10_000)
    expect(console).to_contain_text("slow query: 12 s")
    expect(console).to_contain_text("a warning on stderr")  # its own pipe: maybe a later batch

    def console_level(text: str) -> str | None:
        entry = console.locator(".jp-OutputArea-child", has_text=text).last
        return entry.locator(".jp-OutputArea-prompt").get_attribute("title")

    assert (console_level("database connection lost") or "").endswith("Error level")
    assert (console_level("slow query: 12 s") or "").endswith("Warning level")
    assert (console_level("a warning on stderr") or "").endswith("Warning level")
    ui.shot("levels-log-console")


def test_death_notification_marker_and_restart(
    jupyter_server: JupyterServer, notebook_ui: NotebookUI
) -> None:
    """A cell kills its kernel: a notification names the signal and stays; its action opens
    the panel at the death marker; after the restart the new incarnation's lines follow.
    Both themes are readable."""
    ui = notebook_ui
    path = jupyter_server.create_notebook("death.ipynb", NANNY_SPEC, ["", ""])
    _open(ui, path)
    ui.run_cell(0, KILL)
    toast = ui.page.locator(".Toastify__toast", has_text="SIGKILL")
    expect(toast).to_be_visible(timeout=15_000)
    expect(toast).to_contain_text("death.ipynb")
    expect(toast).to_contain_text("while running cell [1]")
    ui.page.wait_for_timeout(800)  # the toast's entrance animation, for the screenshot
    ui.shot("death-notification")
    # the server restarts the kernel (its restarter polls every 3 s) and Lab says so
    expect(ui.restart_dialog).to_contain_text("appears to have died", timeout=30_000)
    ui.answer_restart_dialogs()
    # autoClose is off: long after a default toast would have gone, it is still there
    expect(toast).to_be_visible()
    toast.get_by_role("button", name="Show kernel log").click()
    expect(toast).to_be_hidden()  # its action dismisses it
    died = _panel(ui).locator(".jp-NannyLog-row[data-marker=died]")
    expect(died).to_be_visible(timeout=10_000)
    expect(died).to_contain_text("SIGKILL")
    expect(died).to_contain_text("last words before the kill")
    ui.run_cell(1, WRITE_LOG.format(text="alive again"))
    after = _rows(ui).filter(has_text="alive again")
    expect(after).to_be_visible(timeout=10_000)
    kinds = _rows(ui).evaluate_all(
        "(rows) => rows.map((r) => r.dataset.marker || (r.textContent.includes('alive again')"
        " ? 'after' : ''))"
    )
    order = [k for k in kinds if k in ("died", "restarted", "after")]
    assert order == ["died", "restarted", "after"], order
    ui.shot("panel-death-and-restart")
    _assert_readable(ui, "JupyterLab Light")
    _set_theme(ui, "JupyterLab Dark")
    ui.shot("panel-death-and-restart-dark")
    _assert_readable(ui, "JupyterLab Dark")
    _set_theme(ui, "JupyterLab Light")


def test_fifty_thousand_lines_page_stays_responsive(
    jupyter_server: JupyterServer, notebook_ui: NotebookUI
) -> None:
    """50 000 lines (10 000 a second) into an open panel: every click during the flood is
    answered within 1 s, the DOM stays bounded, and the last line arrives."""
    ui = notebook_ui
    path = jupyter_server.create_notebook("flood.ipynb", NANNY_SPEC, [""])
    _open(ui, path)
    _open_from_kernel_menu(ui)
    expect(_rows(ui).filter(has_text="Kernel started")).to_be_visible(timeout=10_000)
    target = _panel(ui).locator(".jp-NannyLog-search")
    target.evaluate(
        "(el) => el.addEventListener('click', () => { window.__nannyClicks = "
        "(window.__nannyClicks || 0) + 1; })"
    )
    ui.run_cell(0, FLOOD)
    ui.page.wait_for_function(
        "() => document.querySelector('.jp-NannyLog-row:last-child')?.textContent"
        ".startsWith('flood line')",
        timeout=10_000,
    )
    delays = []
    for n in range(1, 6):
        started = time.monotonic()
        target.click(timeout=5_000)
        ui.page.wait_for_function(f"window.__nannyClicks >= {n}", timeout=5_000)
        delays.append(time.monotonic() - started)
        rows = _rows(ui).count()
        assert rows <= MAX_ROWS + 10, f"{rows} rows in the DOM"
        ui.page.wait_for_timeout(500)
    ui.shot("flood-during")
    last = _rows(ui).filter(has_text=re.compile(r"flood line 49999$"))
    expect(last).to_be_visible(timeout=30_000)
    assert max(delays) < 1.0, f"clicks during the flood took {delays} s"
    expect(_panel(ui).locator(".jp-NannyLog-elided")).to_contain_text("earlier lines not shown")
    ui.shot("flood-done")
    print(f"click delays during the flood: {[round(d, 3) for d in delays]} s")


def test_command_disabled_for_a_kernel_without_nanny(
    jupyter_server: JupyterServer, notebook_ui: NotebookUI
) -> None:
    """The stock kernel has no nanny: the menu item is disabled, and says why."""
    ui = notebook_ui
    path = jupyter_server.create_notebook("stock.ipynb", STOCK_SPEC, [""])
    _open(ui, path)
    state = _command_state(ui)
    assert not state["enabled"], state
    assert "does not run under nanny-io" in state["caption"], state
    ui.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
    item = ui.page.locator(".lm-Menu-item", has_text="Show Kernel Log")
    expect(item).to_have_class(re.compile(r"lm-mod-disabled"))
    item.hover()
    expect(item).to_have_attribute("title", re.compile("does not run under nanny-io"))
    ui.page.wait_for_timeout(1500)  # the browser's tooltip, for the screenshot (if it draws)
    ui.shot("command-disabled")
    ui.page.keyboard.press("Escape")
