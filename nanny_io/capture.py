"""Reading the kernel's stdout/stderr pipes without ever blocking the event loop or the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable

from nanny_io_proto.streams import Stream

#: Largest single read; big reads keep the per-byte cost low under heavy output.
READ_SIZE = 1 << 20
#: Pipe capacity asked for with F_SETPIPE_SZ (the kernel caps it at pipe-max-size).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def make_pipe(size: int = PIPE_SIZE) -> tuple[int, int]:
    """A pipe whose read end is non-blocking, enlarged as far as the system allows.

    Both ends are close-on-exec; the write end is handed to the kernel by the guardian.
    """
    read_fd, write_fd = os.pipe()
    for want in (size, 256 * 1024, 64 * 1024):
        try:
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, want)
            break
        except OSError:  # EPERM above pipe-max-size for unprivileged users
            continue
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


class PipeReader:
    """Reads one pipe whenever it is readable and hands the bytes to ``on_data``.

    ``drain()`` reads synchronously until the pipe is empty: bytes the kernel wrote before
    it sent ``status: idle`` or before it exited are already in the pipe, so a drain at that
    moment catches all of them. EOF only means every writer closed the pipe (grandchildren
    may hold it open after the kernel died), so it is not taken as the kernel's exit.
    """

    def __init__(self, fd: int, stream: Stream, on_data: Callable[[Stream, bytes], None]) -> None:
        self.fd = fd
        self.stream = stream
        self._on_data = on_data
        self._loop: asyncio.AbstractEventLoop | None = None
        self.eof = False
        self.bytes_read = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One read; True when something was read."""
        if self.fd < 0:
            return False
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self._stop_watching()
            return False
        self.bytes_read += len(data)
        self._on_data(self.stream, data)
        return True

    def drain(self) -> None:
        """Read until the pipe is empty right now (or at EOF)."""
        while self._read_once():
            pass

    def _stop_watching(self) -> None:
        if self._loop is not None and self.fd >= 0:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.fd)
            self._loop = None

    def close(self) -> None:
        """Stop reading and close the fd (set to -1: its number may be reused once closed)."""
        self._stop_watching()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
