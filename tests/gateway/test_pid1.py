"""``nanny-io launch`` as a container's PID 1 (a PID namespace of its own, made with
``unshare``): a SIGTERM, as a pod deletion sends it, is a clean shutdown, and processes
re-parented to it are collected."""

from __future__ import annotations

import functools
import queue
import signal
import subprocess
from typing import Any

import psutil
import pytest
from gateway.support import Launcher
from helpers import wait_for

pytestmark = pytest.mark.timeout(120)

#: A new PID namespace whose init is the launcher; unshare passes its own SIGTERM on.
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM")


@functools.cache
def _namespaces() -> bool:
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture
def pid1(launcher_factory: Any) -> tuple[Launcher, psutil.Process]:
    if not _namespaces():
        pytest.skip("cannot make a PID namespace here (unshare --pid needs privileges)")
    launcher = launcher_factory(prefix=UNSHARE)
    (nanny,) = psutil.Process(launcher.proc.pid).children()
    with open(f"/proc/{nanny.pid}/status") as status:
        nspids = next(line for line in status if line.startswith("NSpid:")).split()
    assert nspids[-1] == "1"  # the launcher is PID 1 in its namespace
    return launcher, nanny


def test_sigterm_to_pid1_shuts_the_kernel_down_cleanly(pid1: tuple[Launcher, Any]) -> None:
    launcher, nanny = pid1
    kc = launcher.client()
    assert kc.execute_interactive("x = 1", timeout=20)["content"]["status"] == "ok"
    nanny.send_signal(signal.SIGTERM)
    assert launcher.proc.wait(20) == 0
    seen = []
    while True:
        try:
            seen.append(kc.get_iopub_msg(timeout=0.5)["msg_type"])
        except queue.Empty:
            break
    assert "kernel_died" not in seen  # a shutdown, not a death
    assert "shutting down the kernel" in "".join(launcher.stderr)


def test_pid1_collects_orphans(pid1: tuple[Launcher, Any]) -> None:
    launcher, nanny = pid1
    # As `kubectl exec` does: a process entering the namespace from outside, whose child
    # outlives it and is re-parented to PID 1.
    subprocess.run(
        ["nsenter", "--target", str(nanny.pid), "--pid", "--mount", "sh", "-c", "sleep 0.5 &"],
        check=True,
        timeout=10,
    )
    orphans = wait_for(
        lambda: [p for p in nanny.children() if p.name() == "sleep"], 10, "the orphan"
    )

    def collected() -> bool:
        try:
            psutil.Process(orphans[0].pid).status()  # a zombie still has a status
        except psutil.NoSuchProcess:
            return True
        return False

    wait_for(collected, 10, "PID 1 to collect the orphan")
    assert launcher.proc.poll() is None
