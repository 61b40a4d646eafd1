"""Messages of a plain zmq socket handed to a function as they arrive, on the asyncio loop.

A hop through the nanny is on the path of every control round trip and of every iopub message
a frontend waits for. An awaited ``zmq.asyncio`` receive costs a future, a task step and the
loop's callbacks per wake-up; a reader callback on the socket's file descriptor that receives
with ``NOBLOCK`` and calls the handler directly costs none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import zmq

#: A handler returns None once it is done with a message, or something to await before the
#: next message is handled (order is kept: the pump stops reading until it is done).
Handler = Callable[[list[bytes]], Awaitable[Any] | None]


class Pump:
    """Drains ``sock`` into ``handle`` from a reader callback; :meth:`run` is its owning task.

    The file descriptor of a zmq socket is edge-triggered: it signals that the socket has
    something to process, not that a message is waiting, and any operation on the socket
    (a send too) may consume that signal. So the callback receives until ``zmq.Again``, and
    whoever sends on a socket that a pump reads calls :meth:`kick` afterwards.
    """

    def __init__(self, sock: zmq.Socket[Any], handle: Handler) -> None:
        self.sock = sock
        self._handle = handle
        self._readable: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        """Read until cancelled (the reader is removed on the way out)."""
        loop = self._loop = asyncio.get_running_loop()
        sock = self.sock
        handle = self._handle
        fd = sock.FD
        while True:
            later: asyncio.Future[Awaitable[Any]] = loop.create_future()

            def readable(later: asyncio.Future[Awaitable[Any]] = later) -> None:
                while not later.done():
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        return
                    try:
                        pending = handle(frames)
                    except BaseException as exc:  # to the owning task, as an awaited receive would
                        later.set_exception(exc)
                        return
                    if pending is not None:
                        later.set_result(pending)

            self._readable = readable
            loop.add_reader(fd, readable)
            try:
                readable()  # what queued while nobody was reading
                pending = await later
            except asyncio.CancelledError:
                _close_unawaited(later)
                raise
            finally:
                self._readable = None
                loop.remove_reader(fd)
            await pending

    def kick(self) -> None:
        """Read soon if a message waits (call after any other operation on the socket)."""
        readable = self._readable
        if readable is None or self._loop is None:
            return
        if cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._loop.call_soon(readable)


def _close_unawaited(later: asyncio.Future[Awaitable[Any]]) -> None:
    """A handler's coroutine that the cancelled pump will never await: close it (else Python
    warns that it was never awaited)."""
    if later.done() and not later.cancelled() and later.exception() is None:
        pending = later.result()
        if asyncio.iscoroutine(pending):
            pending.close()
