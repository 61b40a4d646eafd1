"""The heartbeat, answered by the nanny in a thread that never takes the GIL per ping.

A ROUTER socket proxied to itself echoes every ping in libzmq's C loop (the classic
ipykernel design), so neither the kernel's user code nor a busy nanny event loop can delay
it. While the kernel is dead the echo is paused (the port is unbound), so frontends that only
watch the heartbeat still notice; it resumes when a new incarnation runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq


class _EchoThread:
    """One binding of the heartbeat port, echoing until terminated."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        url: str,
        configure: Callable[[zmq.Socket[bytes]], None] | None,
    ) -> None:
        self._context = context
        self._url = url
        self._configure = configure
        self._ctl_url = f"inproc://nanny-io-hb-{id(self)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._ctl = context.socket(zmq.PAIR)
        self._ctl.linger = 0
        self._ctl.bind(self._ctl_url)
        self._thread = threading.Thread(target=self._run, name="nanny-io-heartbeat", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._ctl.close()
            raise self._error

    def _run(self) -> None:
        sock = self._context.socket(zmq.ROUTER)
        sock.linger = 0
        ctl = self._context.socket(zmq.PAIR)
        ctl.linger = 0
        try:
            if self._configure:
                self._configure(sock)
            sock.bind(self._url)
            ctl.connect(self._ctl_url)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            sock.close()
            ctl.close()
            return
        self._ready.set()
        try:
            zmq.proxy_steerable(sock, sock, None, ctl)
        except zmq.ZMQError:
            pass
        finally:
            sock.close()
            ctl.close()

    def terminate(self) -> None:
        if self._thread.is_alive():
            self._ctl.send(b"TERMINATE")
        self._thread.join(timeout=5)
        self._ctl.close()


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
            self._echo.terminate()
            self._echo = None

    stop = pause
