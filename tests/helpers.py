"""Helpers for tests that run real nannies, kernels and clients.

Nannies are started with ``nanny_io.testing`` (``spawn_nanny``, ``NannyProcess``), the one
helper the benchmarks use too; it is re-exported here for the tests' convenience.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from nanny_io.testing import NannyProcess, spawn_nanny

#: ipykernel with its own fd capture off: os.write(1, ...) goes straight into the nanny's pipe.
IPYKERNEL = [
    sys.executable,
    "-m",
    "ipykernel_launcher",
    "-f",
    "{connection_file}",
    "--IPKernelApp.capture_fd_output=False",
]

__all__ = [
    "NannyProcess",
    "execute_then_exit",
    "gone",
    "history",
    "iopub_until",
    "last_seq",
    "os_environ_with",
    "spawn_nanny",
    "stored",
    "stored_bytes",
    "wait_for",
    "wait_gone",
]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie counts as gone: it runs no code)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until every pid is gone; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not gone(p)]
    return alive


def iopub_until(
    kc: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> list[dict[str, Any]]:
    """Read iopub messages until one satisfies ``predicate``; return all read."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching iopub message; saw {[m['msg_type'] for m in seen]}")
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(msg)
        if predicate(msg):
            return seen


def reply_to(kc: Any, msg_id: str, timeout: float = 30) -> dict[str, Any]:
    """The shell reply to ``msg_id``; replies to other requests are skipped.

    ``wait_for_ready`` sends another ``kernel_info_request`` each second it waits, so on a
    loaded machine a second ``kernel_info_reply`` may still be queued on shell after it
    returned: the next ``get_shell_msg`` is not necessarily the reply one waits for.
    """
    deadline = time.monotonic() + timeout
    while True:
        reply: dict[str, Any] = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def start_sleeping_cell(kc: Any) -> str:
    """Run a cell that sleeps for a minute; return once it is inside the sleep.

    Its ``execute_input`` is not enough: it is published before the code runs, and an
    interrupt that arrives before the sleep starts may hit ipykernel's own code instead.
    """
    msg_id: str = kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    iopub_until(
        kc,
        lambda m: (
            m["msg_type"] == "stream"
            and m["parent_header"].get("msg_id") == msg_id
            and "sleeping" in m["content"]["text"]
        ),
    )
    return msg_id


def os_environ_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def history(nanny: NannyProcess, **kwargs: Any) -> list[Any]:
    """The nanny's log store, read the way any log-channel client reads it."""
    from nanny_io.discovery import load_connection_info
    from nanny_io.subscriber import BlockingLogClient

    with BlockingLogClient(load_connection_info(nanny.connection_file), **kwargs) as client:
        return client.history()


def last_seq(nanny: NannyProcess) -> int:
    records = history(nanny, last=1)
    return records[-1].seq if records else 0


def stored(nanny: NannyProcess, stream: Any, after: int = 0) -> list[Any]:
    """The records of ``stream`` after seq ``after``."""
    return history(nanny, since_seq=after + 1, streams=[stream])


def stored_bytes(nanny: NannyProcess, stream: Any, after: int = 0) -> bytes:
    """What ``stream`` carried after seq ``after``, byte for byte."""
    return b"".join(r.data for r in stored(nanny, stream, after))


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def execute_then_exit(kc: Any, flag_dir: Path, prelude: str, exit_code: int) -> str:
    """Run a cell that does ``prelude`` and then ``os._exit(exit_code)`` — but only once the
    test has seen the cell start (its execute_input, which follows its busy, is on iopub),
    so the death is attributed to that cell. Returns the cell's msg_id."""
    flag = flag_dir / f"go-{time.monotonic_ns()}"
    msg_id: str = kc.execute(
        f"import os, time\n{prelude}\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.01)\n"
        f"os._exit({exit_code})"
    )
    iopub_until(
        kc,
        lambda m: m["msg_type"] == "execute_input" and m["parent_header"].get("msg_id") == msg_id,
    )
    flag.touch()
    return msg_id
