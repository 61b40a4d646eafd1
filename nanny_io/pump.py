"""Messages of a plain zmq socket handed to a function as they arrive, on the asyncio loop.

A hop through the nanny is on the path of every control round trip and of every iopub message
a frontend waits for. An awaited ``zmq.asyncio`` receive costs a future, a task step and the
loop's callbacks per wake-up; a reader callback on the socket's file descriptor that receives
with ``NOBLOCK`` and calls the handler directly costs none of them.

The receives, sends and ``EVENTS`` checks here call pyzmq's compiled socket methods with
plain int flags: its Python layer (``send_multipart``, ``recv_multipart``, ``zmq.Again``
raised to end a drain) costs about 5-10 us per message more, and a message through the
nanny is received and sent once per hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
from zmq.backend import Socket as _CSocket

_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_send: Callable[..., Any] = _CSocket.send
_recv: Callable[..., Any] = _CSocket.recv
_get: Callable[[Any, int], Any] = _CSocket.get

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
                while not later.done() and _get(sock, _EVENTS) & _POLLIN:
                    frames = recv_frames(sock)
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

    def read_now(self) -> None:
        """Handle what waits on the socket now, from another pump's handler (a message of
        this socket that must not wait behind the other's work)."""
        readable = self._readable
        if readable is not None:
            readable()

    def kick(self) -> None:
        """Read soon if a message waits (call after any other operation on the socket)."""
        readable = self._readable
        if readable is None or self._loop is None:
            return
        if _get(self.sock, _EVENTS) & _POLLIN:
            self._loop.call_soon(readable)


def recv_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """The next multipart message of ``sock`` (one is waiting: ``EVENTS`` said so)."""
    frame = _recv(sock, _NOBLOCK, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
    return frames


def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """``sock.send_multipart(frames, zmq.NOBLOCK)``: raises ``zmq.Again`` (nothing sent) when
    the socket would block; a ROUTER drops what it cannot route, a PUB what is over its HWM."""
    for frame in frames[:-1]:
        _send(sock, frame, _MORE_NOBLOCK)
    _send(sock, frames[-1], _NOBLOCK)


def _close_unawaited(later: asyncio.Future[Awaitable[Any]]) -> None:
    """A handler's coroutine that the cancelled pump will never await: close it (else Python
    warns that it was never awaited)."""
    if later.done() and not later.cancelled() and later.exception() is None:
        pending = later.result()
        if asyncio.iscoroutine(pending):
            pending.close()
