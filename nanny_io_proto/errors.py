"""The error hierarchy of the nanny protocol.

Modelled on h11: a :class:`LocalProtocolError` means *our* side tried to build or send
something the protocol forbids (a bug in the caller); a :class:`RemoteProtocolError` means
bytes that came from outside broke the protocol. Every decoder in this package turns any
input into events or raises a ``RemoteProtocolError`` subclass, never anything else.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error this package raises on purpose."""


class LocalProtocolError(ProtocolError):
    """Our own side built an event or frame that the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """Bytes from outside do not follow the protocol."""


class MalformedMessage(RemoteProtocolError):
    """Frames, JSON or a content schema that cannot be decoded or is invalid."""


class BadSignature(RemoteProtocolError):
    """A message whose HMAC signature is missing or does not match its frames."""


class DuplicateSignature(BadSignature):
    """A correctly signed message seen before: a replay of a captured message."""


class UnsupportedVersion(RemoteProtocolError):
    """A peer speaks a protocol version this package does not implement."""

    def __init__(self, got: str, supported: str) -> None:
        super().__init__(f"unsupported protocol version {got!r}; this side speaks {supported!r}")
        self.got = got
        self.supported = supported


class SequenceGap(RemoteProtocolError):
    """Log records arrived with seq numbers missing between ``expected`` and ``got``."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"sequence gap: expected seq {expected}, got {got}")
        self.expected = expected
        self.got = got


class ConnectionFileError(RemoteProtocolError):
    """A connection file that is not valid JSON or lacks a required key."""
