"""Jupyter wire messages: frames to :class:`Message` and back, byte-compatible with jupyter_client.

A message on the wire is ``identities + [DELIM, signature, header, parent_header, metadata,
content] + buffers``. The four JSON frames are signed with HMAC (see :mod:`.signing`); the
signature is checked in constant time *before* any JSON is parsed, so unauthenticated bytes
never reach the parser. specs/protocol.md is the authority.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LocalProtocolError, MalformedMessage
from .signing import DigestHistory, Signer
from .version import JUPYTER_PROTOCOL_VERSION

_simd_dumps: Callable[[str], bytes] | None
try:  # orjson escapes ASCII text as json.dumps(ensure_ascii=False) does, in one SIMD pass
    from orjson import dumps as _simd_dumps
except ImportError:  # a platform without its wheel: the memchr passes of _quoted
    _simd_dumps = None

__all__ = [
    "DEFAULT_USERNAME",
    "DELIM",
    "Message",
    "decode_message",
    "encode_message",
    "encode_stream",
    "json_string",
    "make_header",
    "make_message",
    "peek_header",
    "split_identities",
    "stream_content",
]

#: The frame that separates routing identities (or a PUB topic) from the message proper.
DELIM = b"<IDS|MSG>"
#: The ``username`` the nanny puts in headers of messages it sends itself.
DEFAULT_USERNAME = "nanny-io"

# The frames after DELIM: signature, header, parent_header, metadata, content.
_MIN_FRAMES = 5
# What jupyter_client's jsonutil recognises as a date (it turns these into datetimes).
_ISO8601 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:?\d{2})?")


def _check_header(header: object, exc: type[Exception]) -> dict[str, Any]:
    """Return ``header`` if it is an object with string ``msg_id`` and ``msg_type``."""
    if not isinstance(header, dict):
        raise exc(f"header must be an object, got {type(header).__name__}")
    for key in ("msg_id", "msg_type"):
        if not isinstance(header.get(key), str):
            raise exc(f"header {key!r} must be a string, got {header.get(key)!r}")
    return header


@dataclass(frozen=True)
class Message:
    """One Jupyter message, with the routing prefix it arrived with or is to be sent with."""

    header: dict[str, Any]
    parent_header: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    content: dict[str, Any] = field(default_factory=dict)
    buffers: tuple[bytes, ...] = ()
    #: ROUTER identities, or the PUB topic, that precede DELIM.
    identities: tuple[bytes, ...] = ()

    # The dict fields make a field-based hash impossible; say so instead of failing late.
    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_header(self.header, LocalProtocolError)
        for name in ("parent_header", "metadata", "content"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise LocalProtocolError(f"{name} must be a dict, got {type(value).__name__}")
        for name in ("buffers", "identities"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(b, bytes) for b in value):
                raise LocalProtocolError(f"{name} must be a tuple of bytes, got {value!r:.80}")
        if DELIM in self.identities:
            raise LocalProtocolError(f"an identity must not be the delimiter {DELIM!r}")

    @property
    def msg_type(self) -> str:
        """The header's ``msg_type``."""
        return str(self.header["msg_type"])

    @property
    def msg_id(self) -> str:
        """The header's ``msg_id``."""
        return str(self.header["msg_id"])

    @property
    def parent_msg_id(self) -> str | None:
        """The ``msg_id`` of the message this one answers, or None when it has no parent."""
        parent_id = self.parent_header.get("msg_id")
        return parent_id if isinstance(parent_id, str) else None


def make_header(
    msg_type: str,
    *,
    msg_id: str,
    session: str,
    date: str,
    username: str = DEFAULT_USERNAME,
    version: str = JUPYTER_PROTOCOL_VERSION,
) -> dict[str, Any]:
    """A message header; ``date`` is an ISO 8601 string (the caller owns the clock)."""
    for name, value in (
        ("msg_type", msg_type),
        ("msg_id", msg_id),
        ("session", session),
        ("username", username),
        ("version", version),
    ):
        if not isinstance(value, str):
            raise LocalProtocolError(f"{name} must be a string, got {value!r}")
    if not msg_type or not msg_id:
        raise LocalProtocolError(f"msg_type and msg_id must be non-empty: {msg_type!r}, {msg_id!r}")
    if not isinstance(date, str) or not _ISO8601.fullmatch(date):
        raise LocalProtocolError(f"date must be an ISO 8601 string, got {date!r}")
    return {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "username": username,
        "session": session,
        "date": date,
        "version": version,
    }


def _parent_header(parent: Message | Mapping[str, Any] | None) -> dict[str, Any]:
    """The header of ``parent``: a Message, a message dict with a "header", or a header."""
    if parent is None:
        return {}
    if isinstance(parent, Message):
        return dict(parent.header)
    if not isinstance(parent, Mapping):
        raise LocalProtocolError(f"parent must be a Message, a dict or None, got {parent!r:.80}")
    header = parent.get("header", parent)
    if not isinstance(header, Mapping):
        raise LocalProtocolError(f"parent header must be a dict, got {header!r:.80}")
    return dict(header)


def make_message(
    msg_type: str,
    content: Mapping[str, Any],
    *,
    parent: Message | Mapping[str, Any] | None,
    msg_id: str,
    session: str,
    date: str,
    identities: Sequence[bytes] = (),
    metadata: Mapping[str, Any] | None = None,
    buffers: Sequence[bytes] = (),
    username: str = DEFAULT_USERNAME,
) -> Message:
    """A new message answering ``parent`` (its header becomes our ``parent_header``)."""
    if not isinstance(content, Mapping):
        raise LocalProtocolError(f"content must be a dict, got {content!r:.80}")
    header = make_header(msg_type, msg_id=msg_id, session=session, date=date, username=username)
    return Message(
        header=header,
        parent_header=_parent_header(parent),
        metadata=dict(metadata) if metadata is not None else {},
        content=dict(content),
        buffers=tuple(buffers),
        identities=tuple(identities),
    )


#: json.dumps(ensure_ascii=False) escapes exactly these: the quote, the backslash (first, so
#: that the escapes added after it stay intact) and the control characters below U+0020.
_SHORT_ESCAPES = {8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r"}
_JSON_ESCAPES: tuple[tuple[bytes, bytes], ...] = (
    (b"\\", b"\\\\"),
    (b'"', b'\\"'),
    *((bytes([c]), _SHORT_ESCAPES.get(c, b"\\u%04x" % c)) for c in range(0x20)),
)
#: Below this many characters json.dumps is as fast; above, its per-character loop is not.
_FAST_TEXT = 4096


def json_string(text: str) -> bytes:
    """``json.dumps(text, ensure_ascii=False).encode()``, at memory speed for long text.

    CPython's JSON encoder escapes one character at a time (about 2 ms per MiB); this
    encodes to UTF-8 once and replaces each escapable byte present (one ``memchr`` pass per
    candidate), which gives the same bytes: UTF-8 bytes of characters above U+007F never
    equal an escapable ASCII byte. Lone surrogates raise ``UnicodeEncodeError`` as json does.
    """
    return _quoted(b"", text.encode("utf-8"), b"")


#: The escapable bytes other than the newline, which nearly every output has: their absence is
#: checked first, then the newlines are escaped in the joined frame with one ``replace``.
_RARE_ESCAPES = tuple(pair for pair in _JSON_ESCAPES if pair[0] != b"\n")


def _quoted(head: bytes, data: bytes, tail: bytes) -> bytes:
    """``head`` + ``data`` as a JSON string (quotes included) + ``tail``.

    ``data`` is UTF-8; ``head`` and ``tail`` are JSON without a raw newline. ASCII data goes
    through orjson when it is installed (one SIMD pass, about 0.1 ms per MiB; its escapes are
    json.dumps's for every ASCII character, a test checks them all). Otherwise one ``memchr``
    pass per rare escapable byte finds that none is present in the usual output (about
    0.3 ms per MiB, less than ``bytes.translate`` or a regex character class), and then the
    frame is one join and one ``replace``.
    """
    if _simd_dumps is not None:
        try:
            ascii_text = data.decode("ascii")  # (one pass: no isascii() before it)
        except UnicodeDecodeError:
            pass  # UTF-8 text is escaped faster below than decoded for orjson
        else:
            return b"".join((head, _simd_dumps(ascii_text), tail))
    first = next((i for i, (raw, _) in enumerate(_RARE_ESCAPES) if raw in data), None)
    if first is None:
        return b"".join((head, b'"', data, b'"', tail)).replace(b"\n", b"\\n")
    # Something rarer than a newline: replace each one present, in _JSON_ESCAPES's order
    # (the backslash first; those before ``first`` were just found absent).
    for raw, escaped in _RARE_ESCAPES[first:]:
        if raw in data:
            data = data.replace(raw, escaped)
    return b"".join((head, b'"', data.replace(b"\n", b"\\n"), b'"', tail))


def stream_content(name: str, text: bytes) -> bytes:
    """The ``stream`` content ``{"name": name, "text": text}`` as jupyter_client packs it.

    ``text`` is valid UTF-8 (the caller has checked it); the result is
    ``json.dumps({"name": name, "text": text.decode()}, ensure_ascii=False).encode()``,
    built from the bytes without decoding them: UTF-8 bytes of characters above U+007F never
    equal an escapable ASCII byte.
    """
    if type(name) is not str or not isinstance(text, bytes):
        raise LocalProtocolError(f"stream name and text must be str and bytes, got {name!r:.40}")
    return _quoted(b"".join((b'{"name": ', json_string(name), b', "text": ')), text, b"}")


def encode_stream(
    header: dict[str, Any],
    parent: Message | Mapping[str, Any] | None,
    name: str,
    text: bytes,
    signer: Signer,
) -> list[bytes]:
    """The frames of a ``stream`` message whose text is given as valid UTF-8 bytes: what
    :func:`encode_message` gives for it with ``text.decode()``, without the ``str``.
    ``parent`` is what :func:`make_message` takes."""
    _check_header(header, LocalProtocolError)
    parts = [_pack(header), _pack(_parent_header(parent)), b"{}", stream_content(name, text)]
    return [DELIM, signer.sign(parts), *parts]


def _pack_stream(obj: dict[str, Any]) -> bytes | None:
    """A ``stream`` message's content with long text, packed fast; None for anything else."""
    if len(obj) != 2:
        return None
    keys = iter(obj)
    if next(keys) != "name" or next(keys) != "text":
        return None
    name, text = obj["name"], obj["text"]
    if type(name) is not str or type(text) is not str or len(text) < _FAST_TEXT:
        return None
    # Lone surrogates raise UnicodeEncodeError, as json does.
    return stream_content(name, text.encode("utf-8"))


def _pack(obj: dict[str, Any]) -> bytes:
    """JSON exactly as jupyter_client's json_packer writes it; LocalProtocolError if impossible."""
    try:
        fast = _pack_stream(obj)
        if fast is not None:
            return fast
        return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf8")
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise LocalProtocolError(f"message part is not JSON-serialisable: {exc}") from exc


def encode_message(msg: Message, signer: Signer) -> list[bytes]:
    """The frames to send for ``msg``: identities, DELIM, signature, 4 JSON parts, buffers."""
    parts = [_pack(msg.header), _pack(msg.parent_header), _pack(msg.metadata), _pack(msg.content)]
    return [*msg.identities, DELIM, signer.sign(parts), *parts, *msg.buffers]


def split_identities(frames: Sequence[bytes]) -> tuple[tuple[bytes, ...], list[bytes]]:
    """Split at the first DELIM: (routing prefix, frames after DELIM)."""
    for index, frame in enumerate(frames):
        if frame == DELIM:
            return tuple(frames[:index]), list(frames[index + 1 :])
    raise MalformedMessage(f"no {DELIM!r} delimiter in {len(frames)} frames")


def _unpack(frame: bytes, what: str) -> Any:
    """Parse one JSON frame the way jupyter_client does (invalid UTF-8 is replaced)."""
    try:
        return json.loads(frame.decode("utf8", "replace"))
    # ValueError covers JSONDecodeError and over-long integer literals; deep nesting
    # exhausts the recursion limit.
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"{what} is not valid JSON: {exc}") from exc
    except (TypeError, AttributeError) as exc:  # a frame that is not bytes at all
        raise MalformedMessage(f"{what} frame must be bytes, got {type(frame).__name__}") from exc


def _unpack_object(frame: bytes, what: str) -> dict[str, Any]:
    obj = _unpack(frame, what)
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def decode_message(
    frames: Sequence[bytes], signer: Signer, *, history: DigestHistory | None = None
) -> Message:
    """Verify and parse a received message.

    The signature is checked first and in constant time; a correctly signed message seen
    before raises DuplicateSignature when ``history`` is given. Raises only
    RemoteProtocolError subclasses (MalformedMessage, BadSignature, DuplicateSignature).
    """
    identities, rest = split_identities(frames)
    if len(rest) < _MIN_FRAMES:
        raise MalformedMessage(
            f"message needs {_MIN_FRAMES} frames after the delimiter, got {len(rest)}"
        )
    signature, parts, buffers = rest[0], rest[1:_MIN_FRAMES], rest[_MIN_FRAMES:]
    if not all(isinstance(f, bytes) for f in rest[:_MIN_FRAMES]):
        raise MalformedMessage("message frames must be bytes")
    signer.verify(signature, parts)
    if history is not None and signer.enabled:
        # Only after verify: a forged signature must not enter (and poison) the history.
        history.check(signature)
    header = _check_header(_unpack(parts[0], "header"), MalformedMessage)
    try:
        return Message(
            header=header,
            parent_header=_unpack_object(parts[1], "parent_header"),
            metadata=_unpack_object(parts[2], "metadata"),
            content=_unpack_object(parts[3], "content"),
            buffers=tuple(b if isinstance(b, bytes) else bytes(b) for b in buffers),
            identities=tuple(identities),
        )
    except (LocalProtocolError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"invalid message frames: {exc}") from exc


def peek_header(frames: Sequence[bytes]) -> dict[str, Any]:
    """Parse only the header of a trusted message (e.g. our own kernel's iopub); no signature check.

    Cheap enough for every forwarded message: buffers and content stay unparsed.
    """
    _, rest = split_identities(frames)
    if len(rest) < 2:
        raise MalformedMessage(f"message has no header frame ({len(rest)} frames after delimiter)")
    return _check_header(_unpack(rest[1], "header"), MalformedMessage)
