"""The heartbeat, answered by the nanny in a thread that never takes the GIL per ping.

A ROUTER socket proxied to itself echoes every ping in libzmq's C loop (the classic
ipykernel design), so neither the kernel's user code nor a busy nanny event loop can delay
it. While the kernel is dead the echo is paused (the port is unbound), so frontends that only
watch the heartbeat still notice; it resumes when a new incarnation runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from .sockthread import SocketThread


class _EchoThread(SocketThread):
    """One binding of the heartbeat port, echoing until stopped."""

    socket_type = zmq.ROUTER
    name = "nanny-io-heartbeat"

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        url: str,
        configure: Callable[[zmq.Socket[bytes]], None] | None,
    ) -> None:
        self._url = url
        self._configure = configure
        super().__init__(context)

    def bind(self, sock: zmq.Socket[Any]) -> None:
        if self._configure:
            self._configure(sock)
        sock.bind(self._url)

    def serve(self, sock: zmq.Socket[Any], ctl: zmq.Socket[Any]) -> None:
        zmq.proxy_steerable(sock, sock, None, ctl)


class Heartbeat:
    """Echo pings on ``url`` until :meth:`stop`; :meth:`pause` / :meth:`resume` the echo."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        url: str,
        configure: Callable[[zmq.Socket[bytes]], None] | None = None,
    ) -> None:
        self._context = context
        self._url = url
        self._configure = configure
        self._echo: _EchoThread | None = None

    def start(self) -> None:
        """Bind and start echoing; a bind error is raised here, in the caller's thread."""
        if self._echo is None:
            self._echo = _EchoThread(self._context, self._url, self._configure)

    resume = start

    def pause(self) -> None:
        """Stop echoing and unbind, so pings go unanswered until :meth:`resume`."""
        if self._echo is not None:
            self._echo.stop()
            self._echo = None

    stop = pause
