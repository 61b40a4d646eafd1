"""The running launcher: the communication port beside the nanny, PID 1 duties, and the
records on stdout (``nanny-io launch``, after its connection info went to the server).

Imported only once the kernel has been spawned and the server answered: asyncio and zmq are
not on the path to the kernel's start (see gateway.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.gateway import CommRequest, CommRequestReader

from .jsonlog import JsonRecordWriter

if TYPE_CHECKING:
    from .nanny import Nanny

log = logging.getLogger("nanny_io")

#: How long the server may take to send one communication-port request.
COMM_READ_TIMEOUT = 5.0
#: Connections served at once; more are closed at once (a flood must not grow memory).
COMM_MAX_CONNECTIONS = 32


class CommPort:
    """Serves the communication port: one request per connection, acted on by the nanny.

    Anything that is not a request (garbage, wrong types, a request too long, a sender that
    stalls) is logged, at most once a second, and the port keeps serving.
    """

    def __init__(self, sock: socket.socket, nanny: Nanny) -> None:
        self.sock = sock
        self.nanny = nanny
        self.port: int = sock.getsockname()[1]
        self.rejected = 0
        self._active = 0
        self._last_complaint = -1.0

    async def serve(self) -> None:
        server = await asyncio.start_server(self._connection, sock=self.sock)
        async with server:
            await server.serve_forever()

    def _complain(self, peer: object, reason: str) -> None:
        self.rejected += 1
        now = time.monotonic()
        if now - self._last_complaint >= 1.0:
            self._last_complaint = now
            log.warning(
                "communication port: ignored a request from %s: %s (%d ignored so far)",
                peer,
                reason,
                self.rejected,
            )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        request: CommRequest | None = None
        try:
            if self._active >= COMM_MAX_CONNECTIONS:
                self._complain(peer, f"more than {COMM_MAX_CONNECTIONS} connections at once")
                return
            self._active += 1
            try:
                request = await asyncio.wait_for(_read_request(reader), COMM_READ_TIMEOUT)
            finally:
                self._active -= 1
        except RemoteProtocolError as exc:
            self._complain(peer, str(exc))
        except asyncio.TimeoutError:
            self._complain(peer, f"no complete request within {COMM_READ_TIMEOUT:g} s")
        except OSError as exc:
            self._complain(peer, f"connection failed: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if request is not None:
            await self.act(request)

    async def act(self, request: CommRequest) -> None:
        """Do what a request asks (the provisioner does not wait for an answer)."""
        from .signals import SIGNAL_NAMES

        nanny = self.nanny
        signum = request.signum
        if signum:  # 0 only asks whether the launcher is alive: accepting it said yes
            name = SIGNAL_NAMES.get(signum)
            if name is None:
                self._complain("the server", f"no signal {signum} on this platform")
            elif not nanny.kernel_running:
                log.info("communication port: %s for a kernel that is not running", name)
            elif signum == signal.SIGINT:
                log.info("communication port: interrupting the kernel")
                await nanny.interrupt()
            elif signum in (signal.SIGTERM, signal.SIGKILL):
                log.info("communication port: %s to the kernel's process tree", name)
                nanny.signal_tree(signum)
            else:
                log.info("communication port: %s to the kernel", name)
                nanny.signal_kernel(signum)
        if request.shutdown:
            log.info("communication port: shutdown requested")
            nanny.request_stop()


async def _read_request(reader: asyncio.StreamReader) -> CommRequest:
    decoder = CommRequestReader()
    while chunk := await reader.read(1024):
        decoder.feed(chunk)
    return decoder.finish()


def reap_orphans(keep: int) -> None:
    """As PID 1, collect processes re-parented to us that exited (``kubectl exec``
    leftovers...). The guardian (``keep``) is waited for by its handle, never here."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            if child.pid == keep:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(child.pid, os.WNOHANG)


async def serve_launcher(
    nanny: Nanny, comm_sock: socket.socket, kernel_id: str, log_stdout: str
) -> int:
    """The nanny and the communication port, side by side, until the nanny ends."""
    loop = asyncio.get_running_loop()
    writer = None
    if log_stdout == "json":
        writer = JsonRecordWriter(nanny.store, 1, kernel_id)
        nanny.store.add_listener(writer.stored)
    if os.getpid() == 1:
        loop.add_signal_handler(signal.SIGCHLD, reap_orphans, nanny.guardian.pid)
    comm = CommPort(comm_sock, nanny)
    serving = loop.create_task(comm.serve(), name="communication-port")
    serving.add_done_callback(lambda task: _comm_port_ended(task, nanny))
    try:
        return await nanny.run()
    finally:
        # Closed only now, after the death report: a poll that finds it closed may restart.
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        comm_sock.close()
        if writer is not None:
            writer.close()
        if os.getpid() == 1:
            loop.remove_signal_handler(signal.SIGCHLD)


def _comm_port_ended(task: asyncio.Task[None], nanny: Nanny) -> None:
    """Without its communication port a launcher is deaf to the server: stop cleanly."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the communication port failed; stopping", exc_info=task.exception())
        nanny.request_stop()
