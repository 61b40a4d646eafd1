"""A thread that serves one ZeroMQ socket until it is told to stop (the heartbeat, ZAP).

The socket is bound in the thread that uses it (ZeroMQ sockets are not shared between
threads), yet a bind error is raised in the thread that created the server; the stop order
travels on an inproc PAIR, which ``zmq.proxy_steerable`` and a poll loop both understand.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

log = logging.getLogger("nanny_io")


class SocketThread:
    """Serve a socket of ``socket_type`` in a daemon thread named ``name`` until :meth:`stop`.

    Subclasses bind the socket in :meth:`bind` and serve it in :meth:`serve`, which returns
    when ``ctl`` (the stop order's end) becomes readable; a ``ZMQError`` there (the context
    being destroyed) also ends the thread.
    """

    socket_type: int
    name: str

    def __init__(self, context: zmq.Context[Any]) -> None:
        self._context = context
        self._ctl_url = f"inproc://{self.name}-{id(self)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._ctl = context.socket(zmq.PAIR)
        self._ctl.linger = 0
        self._ctl.bind(self._ctl_url)
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._ctl.close()
            raise self._error

    def bind(self, sock: zmq.Socket[Any]) -> None:
        raise NotImplementedError

    def serve(self, sock: zmq.Socket[Any], ctl: zmq.Socket[Any]) -> None:
        raise NotImplementedError

    def _main(self) -> None:
        sock = self._context.socket(self.socket_type)
        sock.linger = 0
        ctl = self._context.socket(zmq.PAIR)
        ctl.linger = 0
        try:
            self.bind(sock)
            ctl.connect(self._ctl_url)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            sock.close()
            ctl.close()
            return
        self._ready.set()
        try:
            self.serve(sock, ctl)
        except zmq.ZMQError as exc:  # the context is being destroyed
            log.debug("%s stopped: %s", self.name, exc)
        finally:
            sock.close()
            ctl.close()

    def stop(self) -> None:
        """Tell the thread to stop, wait for it, and close the stop order's end."""
        if self._thread.is_alive():
            self._ctl.send(b"TERMINATE")  # what zmq.proxy_steerable understands
        self._thread.join(timeout=5)
        self._ctl.close()
