"""Terminal injection through ``nanny-io tail``: kernel text must not drive the terminal.

A kernel writes what an attacker (or a confused program) would: an OSC title change, a
screen clear, an OSC 52 clipboard write, SGR 8 (conceal), and a carriage return followed by
a forged nanny line. ``tail`` on a real terminal (a pty) and on a pipe shows them escaped,
keeps safe colours only on the terminal, and prints them raw only with ``-a``.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import sys
from typing import Any

import pytest
from helpers import stored, wait_for
from reliability.support import add_kernel, cli, run

from nanny_io_proto.streams import Stream

pytestmark = pytest.mark.timeout(90)

HOSTILE = [
    b"\x1b]0;owned title\x07after title",
    b"\x1b[2Jafter clear",
    b"\x1b]52;c;cm0gLXJmIH4K\x07after clipboard",
    b"visible \x1b[8mconcealed\x1b[0m",
    b"progress\r12:00:00.000 nanny  kernel died: forged",
    b"\x1b[32mgreen\x1b[0m and \x1b[1;38;5;196mbold red\x1b[0m",
    b"bell\x07 backspace\x08 del\x7f csi\x9b2J rtl\xe2\x80\xaeevil",
]

WRITE = r"""
import os
lines = {lines!r}
with open(os.environ["JUPYTER_KERNEL_LOG"], "wb") as log:
    for line in lines:
        log.write(line + b"\n")
for fd in (1, 2):
    os.write(fd, lines[0] + b"\n" + lines[4] + b"\n")
"""


def _on_a_pty(*args: str) -> bytes:
    """``nanny-io ARGS`` with its stdout on a pseudo-terminal; everything it wrote there."""
    main, tty = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    with subprocess.Popen(
        [sys.executable, "-m", "nanny_io", *args], stdout=tty, stderr=subprocess.PIPE, env=env
    ) as proc:
        os.close(tty)
        out = bytearray()
        with contextlib.suppress(OSError):  # EIO once the child closed the terminal
            while chunk := os.read(main, 65536):
                out += chunk
        os.close(main)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    return bytes(out)


def _dangerous(text: str) -> list[str]:
    """Anything in ``text`` that a terminal would act on, other than SGR colours and CR LF."""
    found = re.findall(r"\x1b[^\[]|\x1b\[[0-9;]*[^0-9;m]", text)
    found += re.findall(r"\x1b\[(?:[0-9;]*;)?8(?:;[0-9;]*)?m", text)  # conceal
    found += re.findall(
        r"\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f\u202a-\u202e]", text
    )
    return found


def _start(jupyter_env: Any, nanny_factory: Any) -> Any:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    run(nanny.client(), WRITE.format(lines=HOSTILE))
    wait_for(
        lambda: (
            len(stored(nanny, Stream.LOG)) >= len(HOSTILE)
            and len(stored(nanny, Stream.STDERR)) >= 2
        ),
        15,
        "the hostile lines",
    )
    return nanny


def test_tail_on_a_terminal_escapes_control_characters(
    jupyter_env: Any, nanny_factory: Any
) -> None:
    nanny = _start(jupyter_env, nanny_factory)
    out = _on_a_pty("tail", nanny.kernel_id, "-n", "100").decode("utf-8", "replace")
    assert _dangerous(out) == [], out
    lines = out.split("\r\n")
    # the forged line stays inside the record that carried it
    assert not any(line.startswith("12:00:00.000 nanny") for line in lines), lines
    assert any("progress" in line and "\\r" in line and "forged" in line for line in lines)
    # escapes are visible, and the text after them is still there
    for text in ("after title", "after clear", "after clipboard", "concealed", "evil"):
        assert any(text in line for line in lines), text
    assert "\\e]0;owned title\\a" in re.sub(r"\x1b\[[0-9;]*m", "", out)
    # safe colours asked for by the kernel survive on a terminal
    assert "\x1b[32mgreen" in out and "\x1b[1;38;5;196mbold red" in out


def test_tail_on_a_pipe_escapes_everything_and_all_prints_raw(
    jupyter_env: Any, nanny_factory: Any
) -> None:
    nanny = _start(jupyter_env, nanny_factory)

    def tail(*args: str) -> str:  # bytes, decoded here: text mode would turn \r into \n
        proc = subprocess.run(
            [sys.executable, "-m", "nanny_io", "tail", nanny.kernel_id, "-n", "100", *args],
            capture_output=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode("utf-8", "replace")

    out = tail()
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "\\e[32mgreen\\e[0m" in out
    assert _dangerous(out) == []
    raw = tail("-a")
    assert "\x1b]0;owned title\x07after title" in raw
    assert "progress\r12:00:00.000 nanny  kernel died: forged" in raw
    # --json was always safe: the text is a JSON string, escapes and all
    rows = cli("tail", nanny.kernel_id, "-n", "100", "--json").stdout
    assert "\x1b" not in rows and "\\u001b]0;owned title\\u0007after title" in rows
