"""HMAC signing and constant-time verification, as jupyter_client's Session does it.

A signature is the lowercase hex digest of an HMAC over the frames that follow it, fed in
order. An empty key disables signing: signatures are ``b""`` and are not checked, which is
what Jupyter does for an empty ``key`` in a connection file.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterable

from .errors import BadSignature, DuplicateSignature, LocalProtocolError


class Signer:
    """Signs and verifies frames with one key and one ``hmac-<digest>`` scheme."""

    __slots__ = ("_digestmod", "_mac", "key", "scheme")

    def __init__(self, key: bytes | str, scheme: str = "hmac-sha256") -> None:
        if isinstance(key, str):
            key = key.encode("utf-8")  # as jupyter_client encodes the connection key
        kind, _, digest = scheme.partition("-")
        if kind != "hmac" or digest not in hashlib.algorithms_available:
            raise LocalProtocolError(f"unsupported signature scheme {scheme!r}; use 'hmac-sha256'")
        self.key = key
        self.scheme = scheme
        self._digestmod = digest
        self._mac = hmac.new(key, digestmod=digest) if key else None

    @property
    def enabled(self) -> bool:
        """Whether messages are signed at all (a non-empty key)."""
        return self._mac is not None

    def sign(self, frames: Iterable[bytes]) -> bytes:
        """The signature of ``frames``: hex digest as ASCII bytes, or ``b""`` without a key."""
        if self._mac is None:
            return b""
        mac = self._mac.copy()
        for frame in frames:
            mac.update(frame)
        return mac.hexdigest().encode("ascii")

    def verify(self, signature: bytes, frames: Iterable[bytes]) -> None:
        """Raise :class:`BadSignature` unless ``signature`` signs ``frames`` (constant time)."""
        if self._mac is None:
            return
        if not signature:
            raise BadSignature("message is unsigned but a key is configured")
        if not hmac.compare_digest(signature, self.sign(frames)):
            raise BadSignature("signature does not match the message")


class DigestHistory:
    """A bounded memory of signatures already accepted, to refuse replayed messages.

    jupyter_client's Session keeps such a history too. The oldest entries are forgotten
    first once ``maxsize`` is reached.
    """

    __slots__ = ("_seen", "maxsize")

    def __init__(self, maxsize: int = 65536) -> None:
        if maxsize < 1:
            raise LocalProtocolError(f"digest history size must be positive, got {maxsize!r}")
        self.maxsize = maxsize
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def check(self, signature: bytes) -> None:
        """Record ``signature``; raise :class:`DuplicateSignature` if it was seen before.

        Empty signatures (signing disabled) are never recorded.
        """
        if not signature:
            return
        if signature in self._seen:
            raise DuplicateSignature("signature was already used (replayed message)")
        self._seen[signature] = None
        if len(self._seen) > self.maxsize:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
