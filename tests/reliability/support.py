"""Helpers for the reliability suite: kernels, polling, reading the store, counting resources."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

import psutil
import zmq
from helpers import IPYKERNEL, reply_to

from nanny_io_proto.logrecords import LogRecord, parse_nanny_event
from nanny_io_proto.streams import Stream


def add_kernel(jupyter_env: Any, name: str = "rel", *, capture: bool = False) -> str:
    """Install an ipykernel kernelspec ``name``; capture opt-in when ``capture``."""
    metadata = {"capture_stdstreams": True} if capture else {}
    jupyter_env.add_kernelspec(name, IPYKERNEL, metadata=metadata)
    return name


def shell_reply(kc: Any, msg_id: str, timeout: float = 60) -> dict[str, Any]:
    content: dict[str, Any] = reply_to(kc, msg_id, timeout)["content"]
    return content


def run(kc: Any, code: str, timeout: float = 60, **kwargs: Any) -> dict[str, Any]:
    """Execute ``code`` and return its execute_reply content (which must be ok)."""
    msg_id = kc.execute(code, **kwargs)
    reply = shell_reply(kc, msg_id, timeout)
    assert reply["status"] == "ok", reply
    return reply


def expression(reply: dict[str, Any], name: str) -> Any:
    """A user_expressions value evaluated by the kernel, as a Python literal."""
    import ast

    value = reply["user_expressions"][name]
    assert value["status"] == "ok", value
    return ast.literal_eval(value["data"]["text/plain"])


def is_dead(msg: dict[str, Any]) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "dead"


def nanny_events(records: Iterable[LogRecord]) -> list[tuple[int, dict[str, Any]]]:
    return [(r.seq, parse_nanny_event(r.data)) for r in records if r.stream is Stream.NANNY]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], capture_output=True, text=True, timeout=timeout
    )


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class PeakRSS:
    """Samples a process's RSS in a thread; ``stop()`` returns the peak seen."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._every = every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except psutil.Error:
                return

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def hb_ping(ctx: zmq.Context, url: str, timeout_ms: int = 1500) -> bool:
    """One REQ ping to a heartbeat port: True when echoed within ``timeout_ms``."""
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.sndtimeo = timeout_ms  # a REQ without a peer would block in send
    try:
        sock.connect(url)
        try:
            sock.send(b"ping")
        except zmq.Again:
            return False
        if not sock.poll(timeout_ms):
            return False
        return sock.recv() == b"ping"
    finally:
        sock.close()
