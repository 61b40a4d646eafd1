"""Who may connect to the nanny: credentials derived from the connection key, and the
answers to ZeroMQ's authentication requests (ZAP, RFC 27), without sockets.

The log channel is a CurveZMQ server whose key pair is derived from the connection file's
``key`` (specs/log-channel.md §1.1): every holder of the key derives the same pair, and the
nanny's ZAP handler admits a client only if it proves it holds that pair's secret key. libzmq
asks the handler *during the handshake*, before any message of the peer (a subscription, a
request) reaches the socket, so a peer without the key costs the nanny one connection in
handshake and nothing more. With CurveZMQ keys in the connection file, control and iopub
admit only the connection's key pair too (specs/protocol.md §11).

The nanny's thread moves the frames; :class:`ZapPolicy` decides.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ANY_CLIENT",
    "FRONTEND_DOMAIN",
    "HEARTBEAT_DOMAIN",
    "LOG_DOMAIN",
    "LOG_KEY_LABEL",
    "ZapDecision",
    "ZapPolicy",
    "ZapRequest",
    "decode_zap_request",
    "log_curve_secretkey",
    "z85_decode",
    "z85_encode",
]

#: What is fed to HMAC-SHA256 (keyed with the connection key) to derive the log channel's
#: CurveZMQ secret key. Changing it is an incompatible change of the log channel.
LOG_KEY_LABEL = b"nanny-io log channel curve secret key, format 2"
#: ZAP domains of the nanny's sockets: which clients each admits.
LOG_DOMAIN = "nanny-io-log"
FRONTEND_DOMAIN = "nanny-io"
HEARTBEAT_DOMAIN = "nanny-io-hb"
#: A domain's allowed keys when any CurveZMQ client is admitted (the heartbeat, whose
#: jupyter_client clients present a fresh key pair of their own).
ANY_CLIENT: frozenset[bytes] = frozenset({b"*"})

ZAP_VERSION = b"1.0"
_Z85 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}


def z85_encode(data: bytes) -> str:
    """Z85 (ZeroMQ RFC 32) text of ``data``, whose length must be a multiple of 4."""
    if len(data) % 4:
        raise LocalProtocolError(f"z85 needs a multiple of 4 bytes, got {len(data)!r}")
    out = bytearray()
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i : i + 4], "big")
        chunk = bytearray(5)
        for j in range(4, -1, -1):
            value, digit = divmod(value, 85)
            chunk[j] = _Z85[digit]
        out += chunk
    return out.decode("ascii")


def z85_decode(text: str | bytes) -> bytes:
    """The bytes of Z85 ``text`` (length a multiple of 5); RemoteProtocolError if invalid."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if len(raw) % 5:
        raise RemoteProtocolError(f"z85 text length must be a multiple of 5, got {len(raw)!r}")
    out = bytearray()
    for i in range(0, len(raw), 5):
        value = 0
        for c in raw[i : i + 5]:
            digit = _Z85_VALUE.get(c)
            if digit is None:
                raise RemoteProtocolError(f"invalid z85 character {chr(c)!r}")
            value = value * 85 + digit
        if value >= 2**32:
            raise RemoteProtocolError("invalid z85 group")
        out += value.to_bytes(4, "big")
    return bytes(out)


def log_curve_secretkey(key: bytes | str) -> str | None:
    """The log channel's CurveZMQ secret key (Z85) for connection key ``key``; None for an
    empty key, which disables authentication as it disables signing.

    HMAC-SHA256(key, LOG_KEY_LABEL): 32 bytes nobody can compute without the key. Any 32
    bytes are a valid Curve25519 secret key; the public key is the curve's base point
    multiplied by it (``zmq_curve_public``), which the caller computes.
    """
    if isinstance(key, str):
        key = key.encode("utf-8")  # as jupyter_client encodes the connection key
    if not key:
        return None
    return z85_encode(hmac.new(key, LOG_KEY_LABEL, hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class ZapRequest:
    """One ZAP request (RFC 27), as a ZAP handler's REP socket receives it."""

    request_id: bytes
    domain: str
    address: str
    mechanism: bytes
    credentials: tuple[bytes, ...]


def decode_zap_request(frames: Sequence[bytes]) -> ZapRequest:
    """Parse ``[version, request_id, domain, address, identity, mechanism, *credentials]``."""
    if len(frames) < 6:
        raise RemoteProtocolError(f"a ZAP request has at least 6 frames, got {len(frames)!r}")
    if bytes(frames[0]) != ZAP_VERSION:
        raise RemoteProtocolError(f"unsupported ZAP version {bytes(frames[0])!r}")
    return ZapRequest(
        request_id=bytes(frames[1]),
        domain=bytes(frames[2]).decode("utf-8", "replace"),
        address=bytes(frames[3]).decode("utf-8", "replace"),
        mechanism=bytes(frames[5]),
        credentials=tuple(bytes(f) for f in frames[6:]),
    )


@dataclass(frozen=True, slots=True)
class ZapDecision:
    """The reply to send (``frames``) and what it said."""

    frames: list[bytes]
    accepted: bool
    domain: str
    reason: str


class ZapPolicy:
    """Which CurveZMQ clients each ZAP domain admits.

    ``allowed`` maps a domain to the raw 32-byte public keys it admits (``ANY_CLIENT``: any
    client that completed the CurveZMQ handshake). Everything else is refused: another
    mechanism (NULL, PLAIN), an unknown domain, an unknown key, a malformed request.
    """

    def __init__(self, allowed: Mapping[str, Collection[bytes]]) -> None:
        self.allowed = {domain: frozenset(keys) for domain, keys in allowed.items()}

    def answer(self, frames: Sequence[bytes]) -> ZapDecision:
        """The decision on one request; a malformed one is refused, never raised."""
        try:
            req = decode_zap_request(frames)
        except RemoteProtocolError as exc:
            request_id = bytes(frames[1]) if len(frames) > 1 else b""
            return self._reply(request_id, "", False, f"malformed ZAP request: {exc}")
        keys = self.allowed.get(req.domain)
        if keys is None:
            return self._reply(req.request_id, req.domain, False, "unknown domain")
        if req.mechanism != b"CURVE" or len(req.credentials) != 1:
            mechanism = req.mechanism.decode("ascii", "replace")
            return self._reply(req.request_id, req.domain, False, f"{mechanism} not allowed")
        if keys != ANY_CLIENT and req.credentials[0] not in keys:
            return self._reply(req.request_id, req.domain, False, "unknown client key")
        return self._reply(req.request_id, req.domain, True, "OK")

    @staticmethod
    def _reply(request_id: bytes, domain: str, accepted: bool, reason: str) -> ZapDecision:
        status = b"200" if accepted else b"400"
        user = b"nanny-io-client" if accepted else b""
        frames = [ZAP_VERSION, request_id, status, reason.encode("utf-8"), user, b""]
        return ZapDecision(frames, accepted, domain, reason)
