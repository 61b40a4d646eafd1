"""The nanny's ZAP handler: a thread answering libzmq's authentication requests.

libzmq asks it, during every CurveZMQ handshake on a socket with a ZAP domain, whether the
client may connect; the decision is ``nanny_io_proto.auth.ZapPolicy``'s. It runs in a thread
of its own, like the heartbeat, so a busy event loop never holds a handshake up, and it is
bound before any frontend-facing socket, so no handshake happens without it (and the
sockets also set ``ZAP_ENFORCE_DOMAIN`` where libzmq has it: no handler, no connection).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import zmq

from nanny_io_proto.auth import (
    ANY_CLIENT,
    FRONTEND_DOMAIN,
    HEARTBEAT_DOMAIN,
    LOG_DOMAIN,
    ZapPolicy,
    log_curve_secretkey,
    z85_decode,
)
from nanny_io_proto.connection_files import ConnectionInfo

from .sockthread import SocketThread

log = logging.getLogger("nanny_io")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: At most one log line about refused connections per this many seconds.
_REPORT_EVERY = 1.0


class ZapHandler(SocketThread):
    """Answer ZAP requests on ``context`` with ``policy`` until :meth:`stop`."""

    socket_type = zmq.REP
    name = "nanny-io-zap"

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], policy: ZapPolicy) -> None:
        self.policy = policy
        self.accepted = 0
        self.refused = 0
        self._reported = 0.0
        super().__init__(context)

    def bind(self, sock: zmq.Socket[Any]) -> None:
        sock.bind(ZAP_ENDPOINT)

    def serve(self, sock: zmq.Socket[Any], ctl: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(ctl, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if ctl in ready:
                return
            if sock in ready:
                decision = self.policy.answer(sock.recv_multipart())
                sock.send_multipart(decision.frames)
                if decision.accepted:
                    self.accepted += 1
                else:
                    self.refused += 1
                    self._report(decision.domain, decision.reason)

    def _report(self, domain: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._reported >= _REPORT_EVERY:
            self._reported = now
            log.info(
                "refused a connection to %s (%s); %d refused so far", domain, reason, self.refused
            )


# ---------------------------------------------------------------------- credentials

#: The channels of the log channel, whose credentials derive from the connection key.
LOG_CHANNELS = ("log", "log_replay")
#: Largest message a log channel peer may send: subscriptions (a topic of a few bytes) and
#: replay requests (well under 1 KiB). libzmq drops a connection that sends a larger one
#: before it is buffered, so no peer can make the nanny hold a large message.
LOG_MAXMSGSIZE = 16384


def log_keypair(info: ConnectionInfo) -> tuple[bytes, bytes] | None:
    """The log channel's CurveZMQ key pair (public, secret; Z85) derived from the
    connection key; None with an empty key (no signing, no authentication)."""
    secret = log_curve_secretkey(info.key)
    if secret is None:
        return None
    return zmq.curve_public(secret.encode()), secret.encode()


def _keys_and_domain(info: ConnectionInfo, channel: str) -> tuple[bytes, bytes, str] | None:
    if channel in LOG_CHANNELS:
        pair = log_keypair(info)
        return None if pair is None else (*pair, LOG_DOMAIN)
    if info.curve_publickey and info.curve_secretkey:
        domain = HEARTBEAT_DOMAIN if channel == "hb" else FRONTEND_DOMAIN
        return info.curve_publickey.encode(), info.curve_secretkey.encode(), domain
    return None


def secure_server(sock: zmq.Socket[Any], info: ConnectionInfo, channel: str) -> None:
    """Make a frontend-facing socket a CurveZMQ server that asks the ZAP handler about every
    client (before bind: a listener copies the options it is bound with)."""
    creds = _keys_and_domain(info, channel)
    if channel in LOG_CHANNELS:
        sock.maxmsgsize = LOG_MAXMSGSIZE
    if creds is None:
        return
    public, secret, domain = creds
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    sock.zap_domain = domain.encode()
    with contextlib.suppress(AttributeError, zmq.ZMQError):  # libzmq < 4.3: no such option
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def secure_client(sock: zmq.Socket[Any], info: ConnectionInfo, channel: str) -> None:
    """Give a client socket the credentials the nanny's ``channel`` admits (before connect)."""
    creds = _keys_and_domain(info, channel)
    if creds is None:
        return
    public, secret, _ = creds
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = public


def zap_policy(info: ConnectionInfo) -> ZapPolicy:
    """Who each of the nanny's ZAP domains admits, for connection info ``info``."""
    allowed: dict[str, frozenset[bytes]] = {}
    pair = log_keypair(info)
    if pair is not None:
        allowed[LOG_DOMAIN] = frozenset({z85_decode(pair[0])})
    if info.curve_publickey:
        allowed[FRONTEND_DOMAIN] = frozenset({z85_decode(info.curve_publickey)})
        allowed[HEARTBEAT_DOMAIN] = ANY_CLIENT
    return ZapPolicy(allowed)
