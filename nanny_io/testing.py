"""Run ``nanny-io start`` as a child process: for the test suite, the benchmarks and yours.

The tests and the benchmarks both start real nannies the way a user does, and both need
the same few things: the kernel id and connection file the nanny prints, its stderr, its
process tree, and a stop that never leaves anything behind. They share this one helper so
that what the benchmarks measure is what the tests check.

Readiness is the nanny's own announcement (``kernel_id: ...`` and ``connection_file: ...``
on stdout, printed once the connection file is written), read as it happens rather than
polled for. Stderr goes to an anonymous temporary file, not a pipe: a nanny that echoes a
lot of output (the log FIFO) never blocks on a test that reads its stderr only at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from .errors import NannyIOError

__all__ = ["NannyProcess", "NannyStartFailed", "spawn_nanny"]

#: Seconds ``stop()`` waits after SIGTERM before it kills the nanny and its tree.
STOP_TIMEOUT = 30.0


class NannyStartFailed(NannyIOError):
    """The nanny exited, or said nothing in time, before announcing its kernel."""


class NannyProcess:
    """``nanny-io start ARGS`` as a child process, started at construction.

    :func:`spawn_nanny` also waits until it announced its kernel; construct one directly
    to time the start-up yourself, then call :meth:`wait_announced`.
    ``command`` replaces ``python -m nanny_io`` (e.g. the ``nanny-io`` script);
    ``new_session`` puts the nanny in a session of its own, so that a Ctrl-C meant for the
    caller (a benchmark) does not reach it.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.args = args
        self.clients: list[Any] = []
        self._kernel_id: str | None = None
        self._connection_file: Path | None = None
        self._stderr_file: IO[bytes] | None = tempfile.TemporaryFile()  # noqa: SIM115 -- stop() closes it
        self._stderr_final: bytes | None = None
        self._ps: psutil.Process | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        cmd = [*(command or [sys.executable, "-m", "nanny_io"]), "start", *args]
        #: ``time.perf_counter()`` just before the process was started: start-up times
        #: (the benchmarks') count from here.
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            env=env,
            start_new_session=new_session,
        )
        assert self.proc.stdout is not None
        threading.Thread(
            target=_announcements,
            args=(self.proc.stdout, self._lines),
            name="nanny-stdout",
            daemon=True,
        ).start()

    def wait_announced(self, timeout: float = 30) -> None:
        """Wait until the nanny printed its kernel id and connection file (written by then).

        Raises :class:`NannyStartFailed`, with the end of its stderr, if it exits or says
        nothing within ``timeout`` seconds; it is killed then.
        """
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while "kernel_id" not in found or "connection_file" not in found:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:  # EOF (it exited) or silence until the deadline
                self.proc.kill()
                code = self.proc.wait()
                self._close_stderr()
                raise NannyStartFailed(
                    f"nanny-io start {' '.join(self.args)} announced no kernel "
                    f"(exit status {code}){self.log_tail()}"
                )
            key, _, value = line.partition(": ")
            found[key] = value.strip()
        self._kernel_id = found["kernel_id"]
        self._connection_file = Path(found["connection_file"])

    @property
    def kernel_id(self) -> str:
        if self._kernel_id is None:
            raise NannyIOError("the nanny has not announced its kernel yet: wait_announced()")
        return self._kernel_id

    @property
    def connection_file(self) -> Path:
        if self._connection_file is None:
            raise NannyIOError("the nanny has not announced its kernel yet: wait_announced()")
        return self._connection_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- what it said ---------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        """Everything the nanny (and its guardian) wrote to stderr so far."""
        if self._stderr_file is None:
            data = self._stderr_final or b""
        else:
            data = _read_all(self._stderr_file)
        return data.decode("utf-8", "replace")

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines(keepends=True)

    def log_tail(self, lines: int = 15) -> str:
        """The end of stderr, to quote in an error message ("" when there is none)."""
        tail = self.stderr.splitlines()[-lines:]
        return "; its stderr ends:\n  " + "\n  ".join(tail) if tail else ""

    def connection_info(self) -> dict[str, Any]:
        """The frontend-facing connection file, parsed."""
        info: dict[str, Any] = json.loads(self.connection_file.read_bytes())
        return info

    def state(self) -> dict[str, Any]:
        """The nanny's state file (pids, status, incarnation), parsed."""
        path = self.connection_file.parent / "nanny-io" / f"nanny-{self.kernel_id}.json"
        state: dict[str, Any] = json.loads(path.read_text())
        return state

    def wait_status(self, status: str, timeout: float = 10) -> dict[str, Any]:
        """The state once it reads ``status`` (the nanny writes it a moment after clients
        can see the change)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                state = self.state()
                if state["status"] == status:
                    return state
            if time.monotonic() > deadline:
                raise AssertionError(f"nanny status never became {status!r}")
            time.sleep(0.02)

    # -- what it runs ---------------------------------------------------------------------

    def client(self, timeout: float = 60) -> Any:
        """An unmodified jupyter_client BlockingKernelClient, ready; stopped by ``stop()``."""
        from jupyter_client.blocking.client import BlockingKernelClient

        kc = BlockingKernelClient()
        kc.load_connection_file(str(self.connection_file))
        kc.start_channels()
        self.clients.append(kc)
        kc.wait_for_ready(timeout=timeout)
        return kc

    def tree_pids(self) -> list[int]:
        """The nanny's descendants: the guardian, every kernel and their children."""
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _process(self) -> psutil.Process:
        if self._ps is None:
            self._ps = psutil.Process(self.proc.pid)
        return self._ps

    def cpu_seconds(self) -> float:
        """User plus system CPU time the nanny process has used."""
        times = self._process().cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        """The nanny process's resident memory, in bytes."""
        return int(self._process().memory_info().rss)

    # -- stopping ---------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the clients, SIGTERM the nanny (it shuts its kernel down) and wait.

        A nanny that ignores SIGTERM for ``timeout`` seconds is reported on stderr and
        killed with its whole tree. Returns its exit status (``Popen.returncode``).
        """
        for kc in self.clients:
            kc.stop_channels()
        self.clients.clear()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(
                f"warning: nanny {self.proc.pid} ignored SIGTERM for {timeout:g} s; "
                "killing its process tree",
                file=sys.stderr,
            )
            for pid in self.tree_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            code = self.proc.wait()
        self._close_stderr()
        return code

    def _close_stderr(self) -> None:
        """Keep what stderr holds and close the file (the exited nanny adds nothing)."""
        if self._stderr_file is not None:
            self._stderr_final = _read_all(self._stderr_file)
            self._stderr_file.close()
            self._stderr_file = None


def _read_all(file: IO[bytes]) -> bytes:
    """The whole file, wherever the writer's offset is (pread: the nanny owns the offset)."""
    fd = file.fileno()
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _announcements(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Pass stdout lines on until EOF (then None), so the nanny never blocks on stdout."""
    with stream:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode("utf-8", "replace"))
    lines.put(None)


def spawn_nanny(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    command: Sequence[str] | None = None,
    new_session: bool = False,
) -> NannyProcess:
    """Start ``python -m nanny_io start ARGS`` and return once it announced its kernel.

    See :class:`NannyProcess` for ``command`` and ``new_session``; raises
    :class:`NannyStartFailed` as :meth:`NannyProcess.wait_announced` does.
    """
    nanny = NannyProcess(*args, env=env, command=command, new_session=new_session)
    nanny.wait_announced(timeout)
    return nanny
