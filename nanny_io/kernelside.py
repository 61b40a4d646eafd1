"""Kernel-side helpers: output-synchronisation delimiters, and a logging handler for the log.

For kernel authors; needs nothing beyond the standard library and nanny_io_proto.
Call :func:`emit_begin` before running an execute_request's code and :func:`emit_end` after
it (before publishing ``status: idle``), or wrap the code in :func:`delimited`
(specs/output-sync.md). :class:`KernelLogHandler` sends :mod:`logging` records to
``$JUPYTER_KERNEL_LOG`` with their syslog priority (specs/log-channel.md, section 2.2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from nanny_io_proto.delimiters import ENV_VAR, begin_marker, end_marker, is_valid_msg_id

__all__ = [
    "ENV_VAR",
    "LOG_ENV_VAR",
    "KernelLogHandler",
    "delimited",
    "emit_begin",
    "emit_end",
    "requested",
    "syslog_priority",
]

#: Where the nanny tells the kernel its log FIFO is.
LOG_ENV_VAR = "JUPYTER_KERNEL_LOG"

_libc_fflush: Callable[[Any], int] | None = None
_libc_looked_up = False


def requested() -> bool:
    """Whether the nanny asked this kernel for delimiters (``JUPYTER_NANNY_DELIMITERS=1``)."""
    return os.environ.get(ENV_VAR) == "1"


def emit_begin(msg_id: str) -> bool:
    """Flush buffered output, then write the BEGIN delimiter to fds 1 and 2.

    Returns False (and writes nothing) when ``msg_id`` cannot be carried by a delimiter;
    the nanny then attributes output by timing instead.
    """
    if not is_valid_msg_id(msg_id):
        return False
    _emit(begin_marker(msg_id))
    return True


def emit_end(msg_id: str) -> bool:
    """Flush buffered output, then write the END delimiter to fds 1 and 2."""
    if not is_valid_msg_id(msg_id):
        return False
    _emit(end_marker(msg_id))
    return True


@contextlib.contextmanager
def delimited(msg_id: str) -> Iterator[None]:
    """Run the body between BEGIN and END delimiters; END is written even if it raises."""
    emit_begin(msg_id)
    try:
        yield
    finally:
        emit_end(msg_id)


def _emit(marker: bytes) -> None:
    # Output buffered before the marker must reach the pipe before it, or it would be
    # attributed to the wrong request.
    _flush_python()
    _flush_libc()
    for fd in (1, 2):
        _write_all(fd, marker)


def _flush_python() -> None:
    seen: set[int] = set()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None or id(stream) in seen:
            continue
        seen.add(id(stream))
        with contextlib.suppress(Exception):  # closed, detached or exotic replacements
            stream.flush()


def _flush_libc() -> None:
    """fflush(NULL): C libraries' stdio buffers (block-buffered on a pipe) go out first."""
    global _libc_fflush, _libc_looked_up
    if not _libc_looked_up:
        _libc_looked_up = True
        if os.name == "posix":
            with contextlib.suppress(Exception):
                import ctypes

                fflush = ctypes.CDLL(None).fflush
                fflush.argtypes = [ctypes.c_void_p]
                fflush.restype = ctypes.c_int
                _libc_fflush = fflush
    if _libc_fflush is not None:
        with contextlib.suppress(Exception):
            _libc_fflush(None)


def _write_all(fd: int, data: bytes) -> None:
    # A delimiter (<= 151 bytes, under PIPE_BUF) goes out in one atomic write on a pipe;
    # the loop only matters for odd fds (short writes). A missing or broken fd is ignored:
    # the kernel must keep working without a nanny.
    while data:
        try:
            n = os.write(fd, data)  # EINTR is retried by Python itself (PEP 475)
        except OSError:
            return
        data = data[n:]


# ---------------------------------------------------------------------- the kernel log


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a :mod:`logging` level: CRITICAL 2 (crit), ERROR 3 (err),
    WARNING 4 (warning), 25 and up 5 (notice), INFO 6 (info), DEBUG and below 7 (debug)."""
    for floor, priority in ((50, 2), (40, 3), (30, 4), (25, 5), (20, 6)):
        if levelno >= floor:
            return priority
    return 7


class KernelLogHandler(logging.Handler):
    """A :mod:`logging` handler that writes to ``$JUPYTER_KERNEL_LOG`` with priorities.

    Every line of a formatted record (a traceback's too) starts with ``<N>``, N the record's
    syslog priority, so the nanny stores each with the right level. One record is one write:
    under 4 096 bytes it cannot interleave with other writers. Without the variable (not
    under a nanny), or once the log cannot be written (the nanny is gone), records go to
    stderr without prefixes instead; the handler never raises into the kernel.
    """

    def __init__(self, level: int = logging.NOTSET, path: str | None = None) -> None:
        super().__init__(level)
        self.path = path if path is not None else os.environ.get(LOG_ENV_VAR) or None
        # The FIFO's fd, or -1 once it failed (set to -1: its number may be reused after close).
        self._fd = -1
        if self.path:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError:
                self._fd = -1

    @property
    def to_kernel_log(self) -> bool:
        """Whether records go to the nanny's log (else to stderr)."""
        return self._fd >= 0

    def format_lines(self, record: logging.LogRecord) -> bytes:
        """The bytes written for ``record``: each line prefixed with its priority."""
        prefix = f"<{syslog_priority(record.levelno)}>"
        lines = self.format(record).splitlines() or [""]
        return "".join(f"{prefix}{line}\n" for line in lines).encode("utf-8", "replace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._fd >= 0:
                data = self.format_lines(record)
                try:
                    while data:
                        data = data[os.write(self._fd, data) :]
                    return
                except OSError:  # EPIPE: the nanny is gone; its guardian ends the kernel soon
                    self._close_fd()
            stream = sys.stderr
            if stream is not None:
                stream.write(self.format(record) + "\n")
                stream.flush()
        except Exception:  # a log call must never break the kernel
            self.handleError(record)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self.acquire()
        try:
            self._close_fd()
        finally:
            self.release()
        super().close()


# ---------------------------------------------------------------------- ipykernel / IPython


def _current_msg_id(shell: Any) -> str | None:
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent("shell")
    except TypeError:  # older ipykernel: get_parent() takes no channel
        parent = kernel.get_parent()
    except Exception:
        return None
    header = (parent or {}).get("header") or {}
    msg_id = header.get("msg_id")
    return msg_id if isinstance(msg_id, str) else None


def load_ipython_extension(shell: Any) -> None:
    """Make ipykernel write delimiters around every cell (``%load_ext nanny_io.kernelside``).

    Enable it for a kernelspec with ``--IPKernelApp.extensions=nanny_io.kernelside`` in argv.
    It only writes when the nanny asked for delimiters, so the kernel works anywhere.
    """
    if not requested():
        return
    current: list[str] = []

    def before(*_: Any) -> None:
        msg_id = _current_msg_id(shell)
        if msg_id and emit_begin(msg_id):
            current.append(msg_id)

    def after(*_: Any) -> None:
        while current:
            emit_end(current.pop())

    shell.events.register("pre_run_cell", before)
    shell.events.register("post_run_cell", after)
