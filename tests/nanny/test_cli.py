"""CLI verbs against real nannies: list, interrupt, signal, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import NannyProcess, reply_to, start_sleeping_cell, wait_gone

pytestmark = pytest.mark.timeout(90)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], capture_output=True, text=True, timeout=timeout
    )


def test_list_json_describes_running_kernels(nanny: NannyProcess) -> None:
    nanny.client()
    nanny.wait_status("running")
    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["kernel_id"] == nanny.kernel_id
    assert row["kernel_name"] == "python3"
    assert row["nanny_pid"] == nanny.proc.pid
    assert row["kernel_pid"] == nanny.state()["kernel_pid"]
    assert row["incarnation"] == 1
    assert row["status"] == "running"
    assert row["uptime"] >= 0
    assert row["memory"] > 1 << 20
    assert row["connection_file"] == str(nanny.connection_file)
    table = cli("list")
    assert nanny.kernel_id in table.stdout and "running" in table.stdout


def test_list_cleans_stale_entries(nanny: NannyProcess) -> None:
    nanny.client()
    tree = nanny.tree_pids()
    os.kill(nanny.proc.pid, signal.SIGKILL)
    nanny.proc.wait(10)
    wait_gone(tree)
    rows = json.loads(cli("list", "--json").stdout)
    assert rows == []


def test_interrupt_by_id_prefix(nanny: NannyProcess) -> None:
    kc = nanny.client()
    msg_id = start_sleeping_cell(kc)
    proc = cli("interrupt", nanny.kernel_id[:8])
    assert proc.returncode == 0, proc.stderr
    shell = reply_to(kc, msg_id, timeout=15)
    assert shell["content"]["ename"] == "KeyboardInterrupt"


def test_signal_by_connection_file(nanny: NannyProcess) -> None:
    kc = nanny.client()
    kc.execute_interactive(
        "import signal, threading\ngot = threading.Event()\n"
        "signal.signal(signal.SIGUSR2, lambda *a: got.set())",
        timeout=30,
    )
    proc = cli("signal", str(nanny.connection_file), "USR2")
    assert proc.returncode == 0, proc.stderr
    assert "SIGUSR2" in proc.stdout
    out: list[str] = []
    kc.execute_interactive(
        "print(got.wait(10))",
        timeout=30,
        output_hook=lambda m: out.append(m["content"].get("text", "")),
    )
    assert "True" in "".join(out)


def test_shutdown_restart_then_shutdown(nanny: NannyProcess) -> None:
    nanny.client()
    proc = cli("shutdown", nanny.kernel_id, "--restart")
    assert proc.returncode == 0, proc.stderr
    assert nanny.state()["incarnation"] == 2
    tree = nanny.tree_pids()
    proc = cli("shutdown", nanny.kernel_id)
    assert proc.returncode == 0, proc.stderr
    assert nanny.proc.wait(30) == 0
    assert wait_gone(tree) == []


@pytest.mark.parametrize("verb", [["interrupt"], ["signal", "_", "SIGINT"], ["shutdown"]])
def test_unknown_kernel_is_one_clear_line(jupyter_env, verb: list[str]) -> None:
    args = [verb[0], "deadbeef", *verb[2:]]
    proc = cli(*args)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "nanny-io: error: no running kernel matches 'deadbeef'; see 'nanny-io list'"
    ]


def test_list_with_nothing_running(jupyter_env) -> None:
    proc = cli("list")
    assert proc.returncode == 0
    assert "no kernels" in proc.stdout


def test_start_gives_up_after_the_startup_timeout_and_leaves_nothing(jupyter_env) -> None:
    jupyter_env.add_kernelspec(
        "mute",
        [
            sys.executable,
            "-c",
            "import sys, time; print('booting', file=sys.stderr); time.sleep(600)",
        ],
    )
    proc = cli("start", "mute", "--startup-timeout", "1.5", "--term-grace", "0.5", timeout=60)
    assert proc.returncode == 1
    assert "kernel 'mute' did not answer kernel_info within 1.5 s" in proc.stderr
    assert "booting" in proc.stderr  # the tail of its stderr says what it was doing
    assert "Traceback" not in proc.stderr
    leftovers = [
        p for p in jupyter_env.runtime.rglob("*") if p.name.startswith(("kernel-", "nanny-io-"))
    ]
    assert leftovers == []
