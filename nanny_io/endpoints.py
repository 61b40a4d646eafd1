"""The nanny's sockets: frontend-facing (bound, CurveZMQ servers when keys are provisioned)
and kernel-facing (connected to the kernel's private ports), and how messages leave them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio

from nanny_io_proto.connection_files import ConnectionInfo, NannyConnectionInfo
from nanny_io_proto.control import error_reply_content
from nanny_io_proto.messages import Message

from .heartbeat import Heartbeat
from .logchannel import REPLAY_SNDHWM
from .pump import Handler, Pump
from .session import NannySession
from .zap import ZapHandler, secure_client, secure_server, zap_policy

log = logging.getLogger("nanny_io")

_LOOPBACK_IPS = {"127.0.0.1", "localhost", "::1"}
#: How long a nanny that exits with its kernel lets its last iopub and log messages (the
#: death report) leave before it closes the frontend-facing sockets.
FINAL_LINGER_MS = 500
#: How soon a kernel-facing socket retries a refused connection (the kernel is booting).
KERNEL_RECONNECT_MS = 5


class Endpoints:
    """Every socket of the nanny, bound or connected once for its whole life.

    The kernel-facing sockets live as long as the nanny: every incarnation binds the same
    private ports, so ZeroMQ reconnects them by itself (XSUB resends its subscription on
    reconnect), and no socket is closed under a task still reading it.
    """

    def __init__(
        self, frontend: NannyConnectionInfo, kernel: ConnectionInfo, session: NannySession
    ) -> None:
        self.frontend = frontend
        self.kernel = kernel
        self.session = session
        self.ctx = zmq.asyncio.Context()
        # The sockets on the round-trip paths are plain ones, read by pumps (nanny_io/pump.py)
        # and written with NOBLOCK: no future or task step per message.
        self._plain_ctx: zmq.Context[Any] = zmq.Context.shadow(self.ctx.underlying)
        self._pumps: list[Pump] = []
        self._warn_if_exposed()
        # Bound before any frontend-facing socket: no client is admitted without its verdict.
        self.zap = ZapHandler(zmq.Context.shadow(self.ctx.underlying), zap_policy(frontend))
        self.control: zmq.Socket[Any] = self._bind(zmq.ROUTER, "control", plain=True)
        self.control.router_mandatory = 0
        self.iopub = self._bind(zmq.XPUB, "iopub")
        self.iopub.setsockopt(zmq.XPUB_VERBOSE, 1)
        #: Topics with at least one iopub subscriber (the proxy keeps it up to date).
        self.iopub_topics: set[bytes] = set()
        # The log channel is bound now so its ports are fixed for the nanny's life.
        # A subscriber that does not read costs at most this many batches; beyond it PUB
        # drops and the subscriber repairs the gap from replay (specs/log-channel.md).
        self.log = self._bind(zmq.XPUB, "log", sndhwm=REPLAY_SNDHWM)
        self.log.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber, to greet each
        # A small send queue per client: an answer to a client that does not read waits in
        # the store, not in memory (the limit only applies when set before bind).
        self.log_replay = self._bind(zmq.ROUTER, "log_replay", sndhwm=REPLAY_SNDHWM)
        self.heartbeat = Heartbeat(
            zmq.Context.shadow(self.ctx.underlying),
            frontend.url("hb"),
            configure=lambda sock: secure_server(sock, frontend, "hb"),
        )
        self.kernel_control: zmq.Socket[Any] = self.kernel_socket(zmq.DEALER, "control", plain=True)
        self.kernel_iopub: zmq.Socket[Any] = self.kernel_socket(zmq.XSUB, "iopub", plain=True)
        self.kernel_iopub.send(b"\x01")  # everything: the nanny forwards and watches it all

    def _warn_if_exposed(self) -> None:
        f = self.frontend
        if f.transport == "tcp" and f.ip not in _LOOPBACK_IPS and not f.curve_secretkey:
            log.warning(
                "frontend-facing sockets bind to %r without CurveZMQ: messages are signed but "
                "not encrypted; prefer 127.0.0.1 with an SSH tunnel, or provision curve keys",
                f.ip,
            )

    def _bind(self, socket_type: int, channel: str, plain: bool = False, **options: int) -> Any:
        """A frontend-facing socket; ``options`` are set before bind (some only apply then).
        ``plain``: a ``zmq.Socket`` for a pump rather than a ``zmq.asyncio.Socket``."""
        sock = (self._plain_ctx if plain else self.ctx).socket(socket_type)
        sock.linger = 1000
        for name, value in options.items():
            setattr(sock, name, value)
        secure_server(sock, self.frontend, channel)
        sock.bind(self.frontend.url(channel))
        return sock

    def kernel_socket(self, socket_type: int, channel: str, plain: bool = False) -> Any:
        """A socket connected to the kernel; a CurveZMQ client when the kernel is a server."""
        sock = (self._plain_ctx if plain else self.ctx).socket(socket_type)
        sock.linger = 0
        # The kernel binds these ports while it boots, after the nanny connected: libzmq
        # retries a refused connection after RECONNECT_IVL (100 ms by default), which would
        # add up to that much to every start and restart. A refused loopback connect costs
        # microseconds, so retry often.
        sock.reconnect_ivl = KERNEL_RECONNECT_MS
        secure_client(sock, self.frontend, channel)
        url = self.kernel.url(channel)
        sock.connect(url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//*:", "//127.0.0.1:"))
        return sock

    def pump(self, sock: zmq.Socket[Any], handle: Handler) -> Pump:
        """A pump for one of the plain sockets; run its ``run()`` as a task."""
        pump = Pump(sock, handle)
        self._pumps.append(pump)
        return pump

    def kick(self, sock: zmq.Socket[Any]) -> None:
        """After an operation on a plain socket: let its pump read what may wait there."""
        for pump in self._pumps:
            if pump.sock is sock:
                pump.kick()

    # ------------------------------------------------------------------ sending

    async def to_kernel_control(self, frames: list[bytes]) -> None:
        """A message to the kernel's control channel, in order with the forwarded ones.

        A DEALER queues up to its high-water mark even while the kernel is away, so this
        only waits (a millisecond at a time) when a thousand messages are already queued.
        """
        sock = self.kernel_control
        while True:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
                break
            except zmq.Again:
                await asyncio.sleep(0.001)
        self.kick(sock)

    async def publish(
        self, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None = None
    ) -> None:
        """A message of the nanny's own on iopub, signed with the kernel's key."""
        await self.iopub.send_multipart(self.session.frames(msg_type, content, parent or {}))

    def send_stream(self, name: str, text: bytes, parent: dict[str, Any]) -> None:
        """Captured output (valid UTF-8) as an iopub ``stream`` message (the forwarder's sink).

        With no frontend subscribed the message is not built at all (libzmq would drop it):
        a kernel printing with nobody watching costs the nanny only the storing.
        """
        if not self.iopub_topics:
            return
        self.iopub.send_multipart(self.session.stream_frames(name, text, parent))

    def reply(self, request: Message, msg_type: str, content: dict[str, Any]) -> None:
        """A control reply, routed back to the frontend that sent ``request`` (a ROUTER
        routes or drops, it never waits)."""
        self.control.send_multipart(
            self.session.frames(msg_type, content, request, request.identities), zmq.NOBLOCK
        )
        self.kick(self.control)

    def reply_error(self, request: Message, ename: str, evalue: str) -> None:
        reply_type = request.msg_type.replace("_request", "_reply")
        self.reply(request, reply_type, error_reply_content(ename, evalue))

    def close(self, final: bool = False) -> None:
        """Close every socket; ``final``: give iopub and the log FINAL_LINGER_MS to send
        what is queued (the death report of a nanny that exits with its kernel)."""
        self.heartbeat.stop()
        if final:
            for sock in (self.iopub, self.log):
                sock.close(linger=FINAL_LINGER_MS)
        for plain in (self.control, self.kernel_control, self.kernel_iopub):
            plain.close(linger=0)
        self.zap.stop()  # its sockets are on this context: closed before the context ends
        self.ctx.destroy(linger=0)
