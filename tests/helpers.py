"""Helpers for tests that run real nannies, kernels and clients."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


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


@dataclass
class NannyProcess:
    """A ``nanny-io start`` process with its output collected in the background."""

    proc: subprocess.Popen[bytes]
    kernel_id: str
    connection_file: Path
    stderr_lines: list[str] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def client(self, timeout: float = 60) -> Any:
        """An unmodified jupyter_client BlockingKernelClient, ready."""
        from jupyter_client import BlockingKernelClient

        kc = BlockingKernelClient()
        kc.load_connection_file(str(self.connection_file))
        kc.start_channels()
        self.clients.append(kc)
        kc.wait_for_ready(timeout=timeout)
        return kc

    def state(self) -> dict[str, Any]:
        path = self.connection_file.parent / "nanny-io" / f"nanny-{self.kernel_id}.json"
        return json.loads(path.read_text())

    def wait_status(self, status: str, timeout: float = 10) -> dict[str, Any]:
        """The state once it reads ``status`` (the nanny writes it a moment after clients can
        see the change)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                state = self.state()
                if state["status"] == status:
                    return state
            if time.monotonic() > deadline:
                raise AssertionError(f"nanny status never became {status!r}")
            time.sleep(0.02)

    def tree_pids(self) -> list[int]:
        """The nanny's descendants: the guardian, every kernel and their children."""
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30) -> int:
        for kc in self.clients:
            kc.stop_channels()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _pump(stream: Any, sink: list[str], lines: queue.Queue[str] | None) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        sink.append(line)
        if lines is not None:
            lines.put(line)
    stream.close()


def spawn_nanny(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> NannyProcess:
    """Start ``python -m nanny_io start ARGS`` and wait for its kernel id and connection file."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanny_io", "start", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out_lines: queue.Queue[str] = queue.Queue()
    stdout: list[str] = []
    stderr: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, stdout, out_lines), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, stderr, None), daemon=True).start()
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(found) < 2:
        try:
            line = out_lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            detail = "".join(stderr)
            raise RuntimeError(f"nanny printed no connection file; stderr: {detail}") from None
        key, _, value = line.partition(": ")
        found[key] = value.strip()
    return NannyProcess(proc, found["kernel_id"], Path(found["connection_file"]), stderr)


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


def start_sleeping_cell(kc: Any) -> str:
    """Run a cell that sleeps for a minute; return once it is inside the sleep.

    Its ``execute_input`` is not enough: it is published before the code runs, and an
    interrupt that arrives before the sleep starts may hit ipykernel's own code instead.
    """
    msg_id: str = kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    iopub_until(
        kc,
        lambda m: m["msg_type"] == "stream"
        and m["parent_header"].get("msg_id") == msg_id
        and "sleeping" in m["content"]["text"],
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
