"""The communication port of ``nanny-io launch``: signals by number, interrupts by the
kernelspec's interrupt mode, the whole tree for SIGTERM and SIGKILL, shutdown, and bad input
logged and survived."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import iopub_until, reply_to, wait_for

pytestmark = pytest.mark.timeout(120)


def _interrupted(kc: Any, launcher: Any, flag_dir: Path) -> None:
    """A sleeping cell, interrupted through the communication port once it runs its code
    (execute_input comes before the code runs: an interrupt then hits the kernel itself)."""
    running = flag_dir / f"running-{time.monotonic_ns()}"
    msg_id = kc.execute(
        f"import pathlib, time; pathlib.Path({str(running)!r}).touch(); time.sleep(60)"
    )
    wait_for(running.exists, 20, "the cell to run")
    launcher.comm({"signum": signal.SIGINT})
    reply = reply_to(kc, msg_id, timeout=20)
    assert reply["content"]["ename"] == "KeyboardInterrupt"


def test_bad_input_is_logged_and_the_port_keeps_serving(
    launcher_factory: Any, tmp_path: Path
) -> None:
    launcher = launcher_factory()
    kc = launcher.client()
    stalled = socket.create_connection(("127.0.0.1", launcher.comm_port))  # sends nothing
    for bad in (
        b"\x00garbage\xff",
        b"[1, 2]",
        json.dumps({"signum": "SIGKILL"}).encode(),
        json.dumps({"signum": -9}).encode(),
        json.dumps({"signum": 99}).encode(),  # a number, but no such signal
        json.dumps({"shutdown": "please"}).encode(),
    ):
        launcher.comm(bad)
    with contextlib.suppress(OSError):  # far over the limit: the launcher stops reading
        launcher.comm(b'{"signum": 9, "pad": "' + b"x" * 200_000 + b'"}')
    wait_for(lambda: "ignored a request" in "".join(launcher.stderr), 10, "a log line")
    # Still serving, and still acting on good requests.
    assert launcher.alive()
    _interrupted(kc, launcher, tmp_path)
    assert kc.execute_interactive("1 + 1", timeout=20)["content"]["status"] == "ok"
    stalled.close()
    assert launcher.proc.poll() is None


def test_signals_reach_the_kernel_group_and_sigterm_the_whole_tree(
    launcher_factory: Any, tmp_path: Path
) -> None:
    launcher = launcher_factory()
    kc = launcher.client()
    flag = tmp_path / "usr1"
    kc.execute_interactive(
        "import signal, subprocess\n"
        f"signal.signal(signal.SIGUSR1, lambda *a: open({str(flag)!r}, 'w').close())\n"
        "child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print(child.pid)",
        timeout=20,
    )
    launcher.comm({"signum": signal.SIGUSR1})
    wait_for(flag.exists, 10, "the kernel's SIGUSR1 handler")
    tree = launcher.tree()
    assert len(tree) >= 3  # guardian, kernel, and the kernel's child in its own session
    launcher.comm({"signum": signal.SIGTERM})
    died = iopub_until(kc, lambda m: m["msg_type"] == "kernel_died")[-1]["content"]
    assert died["signal"] == signal.SIGTERM
    assert launcher.proc.wait(10) == 128 + signal.SIGTERM
    assert not launcher.alive()


def test_interrupt_follows_the_kernelspecs_interrupt_mode(
    launcher_factory: Any, jupyter_env: Any, tmp_path: Path
) -> None:
    import sys

    jupyter_env.add_kernelspec(
        "py-message",
        [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        interrupt_mode="message",
    )
    launcher = launcher_factory(kernel="py-message")
    kc = launcher.client()
    flag = tmp_path / "interrupt_request"
    kc.execute_interactive(  # note every interrupt_request the kernel gets on control
        "kernel = get_ipython().kernel\n"
        "handle = kernel.control_handlers['interrupt_request']\n"
        "async def noted(*args):\n"
        f"    open({str(flag)!r}, 'w').close()\n"
        "    return await handle(*args)\n"
        "kernel.control_handlers['interrupt_request'] = noted",
        timeout=20,
    )
    _interrupted(kc, launcher, tmp_path)
    assert flag.exists()  # a message, not the nanny's SIGINT


def test_shutdown_request_ends_the_launcher_cleanly(launcher_factory: Any) -> None:
    launcher = launcher_factory()
    kc = launcher.client()
    started = time.monotonic()
    launcher.comm({"shutdown": 1})
    assert launcher.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert not launcher.alive()
    kc.stop_channels()
    assert "shutdown requested" in "".join(launcher.stderr)
