"""The on-disk spill segment format, without files: encoding and an incremental decoder.

A nanny keeps its log readable after it exits (``nanny-io tail`` post mortem) in segment
files. A segment is a header, then one chunk per store append::

    header   magic b"NIOSPILL" (8 bytes), log format version u16, epoch length u16,
             the epoch (ASCII)
    chunk    length u32, CRC-32 of the length field u32, CRC-32 of the body u32, then a
             body of that many bytes in exactly the log channel's binary layout
             (specs/log-channel.md §2.1: count, headers, data)

All integers little-endian. The nanny writes every chunk with one ``write`` and may be
killed at any moment, so a segment can end anywhere: inside its header (nothing to read),
inside a chunk head (the chunks before it are whole), or inside a body. Because a body
puts all record headers first, the complete records at the start of a cut body can still
be recovered, and the decoder returns them (``Chunk.complete`` is then False).

The checksums tell damage from a cut (format 2; format 1 had none, so flipped bytes read
as wrong data and a damaged length as the end of the file): a length that fails its CRC
is corruption (:class:`CorruptChunk`, nothing after it can be found), and a whole body that
fails its CRC is a :class:`DamagedChunk` event, after which decoding goes on with the
next chunk.

:class:`SegmentDecoder` is sans-I/O in the manner of h11: feed it bytes with
:meth:`~SegmentDecoder.receive_data` (``b""`` for the end of the file), then call
:meth:`~SegmentDecoder.next_event` until it returns ``NEED_DATA`` or ``END``. Any input
gives events or a :class:`MalformedSegment` (a ``RemoteProtocolError``), never another
exception, and feeding a file whole or a byte at a time gives the same events.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from .errors import LocalProtocolError, MalformedMessage, RemoteProtocolError

try:  # ISA-L's CRC-32 is zlib's (same polynomial, same values), about 10x faster here
    from isal.isal_zlib import crc32
except ImportError:  # a platform without its wheel: zlib's
    from zlib import crc32
from .logrecords import RECORD_HEADER, STREAM_CODES, LogRecord, check_epoch, unpack_records
from .streams import Stream
from .version import LOG_FORMAT_VERSION

__all__ = [
    "CHUNK_HEAD",
    "END",
    "NEED_DATA",
    "SEGMENT_HEADER",
    "SPILL_MAGIC",
    "BadEpoch",
    "Chunk",
    "CorruptChunk",
    "DamagedChunk",
    "MalformedSegment",
    "NotASegment",
    "SegmentDecoder",
    "SegmentHeader",
    "TruncatedHeader",
    "chunk_head",
    "encode_chunk",
    "encode_segment_header",
    "tail_of_body",
]

#: First 8 bytes of every segment: the container format. The body layout inside is
#: versioned by LOG_FORMAT_VERSION, which the header carries too.
SPILL_MAGIC: Final = b"NIOSPILL"
#: magic, log format version, epoch length (the epoch follows)
SEGMENT_HEADER: Final = struct.Struct("<8sHH")
#: The head of a chunk: body length, CRC-32 of the 4 length bytes, CRC-32 of the body.
CHUNK_HEAD: Final = struct.Struct("<III")
_U32: Final = struct.Struct("<I")

_BY_CODE: tuple[Stream, ...] = tuple(sorted(STREAM_CODES, key=STREAM_CODES.__getitem__))


# -- errors ------------------------------------------------------------------------------------


class MalformedSegment(RemoteProtocolError):
    """A segment file that does not follow the format; what precedes the fault is valid."""


class TruncatedHeader(MalformedSegment):
    """The file ends inside its header: ``length`` bytes, nothing to read."""

    def __init__(self, length: int) -> None:
        super().__init__(f"segment ends inside its header, after {length!r} bytes")
        self.length = length


class NotASegment(MalformedSegment):
    """The magic or the log format version is not ours."""

    def __init__(self, magic: bytes, version: int) -> None:
        super().__init__(f"not a nanny-io spill segment (magic {magic!r}, version {version!r})")
        self.magic = magic
        self.version = version


class BadEpoch(MalformedSegment):
    """The header's epoch is not a valid epoch id."""


class CorruptChunk(MalformedSegment):
    """The chunk whose length prefix starts at byte ``offset`` has an invalid body."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"corrupt chunk at byte {offset!r}: {reason}")
        self.offset = offset
        self.reason = reason


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The segment's header: every record in it belongs to this nanny run."""

    epoch: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """The records of one chunk, whose length prefix starts at byte ``offset``.

    ``complete`` is False for the last chunk of a file cut inside its body: ``records``
    are then the complete ones at its start (possibly none).
    """

    offset: int
    records: tuple[LogRecord, ...]
    complete: bool = True


@dataclass(frozen=True, slots=True)
class DamagedChunk:
    """The chunk at byte ``offset`` is whole but its body fails its checksum: its records
    (``length`` bytes of body) are lost to corruption; the next chunk follows it."""

    offset: int
    length: int


class Sentinel(Enum):
    NEED_DATA = "need_data"  # feed more bytes (or b"" at the end of the file)
    END = "end"  # the segment is over: nothing more will come


NEED_DATA: Final = Sentinel.NEED_DATA
END: Final = Sentinel.END

Event = SegmentHeader | Chunk | DamagedChunk | Sentinel


# -- encoding ----------------------------------------------------------------------------------


def encode_segment_header(epoch: str) -> bytes:
    """The bytes a segment of ``epoch`` starts with."""
    check_epoch(epoch)
    return SEGMENT_HEADER.pack(SPILL_MAGIC, LOG_FORMAT_VERSION, len(epoch)) + epoch.encode("ascii")


def chunk_head(parts: Sequence[bytes]) -> bytes:
    """The head of the chunk whose body is ``parts`` joined; the body follows it as is
    (``os.writev`` can write head and parts without joining them)."""
    size = sum(map(len, parts))
    if size > 0xFFFF_FFFF:
        raise LocalProtocolError(f"a chunk body must be under 4 GiB, got {size!r} bytes")
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    return CHUNK_HEAD.pack(size, crc32(_U32.pack(size)), crc)


def encode_chunk(parts: Sequence[bytes]) -> bytes:
    """One chunk: its head and a body given as parts to join (no copy before)."""
    return b"".join([chunk_head(parts), *parts])


def tail_of_body(body: bytes, max_size: int) -> bytes | None:
    """The body of the newest records of ``body`` (the log channel layout, valid) whose
    body fits in ``max_size`` bytes; None if not even the last record fits.

    For an append larger than the whole spill: the spill keeps its newest part.
    """
    (count,) = _U32.unpack_from(body, 0)
    heads = list(
        RECORD_HEADER.iter_unpack(body[_U32.size : _U32.size + count * RECORD_HEADER.size])
    )
    data_start = _U32.size + count * RECORD_HEADER.size
    ends = []
    pos = data_start
    for head in heads:
        pos += head[5]
        ends.append(pos)
    size = _U32.size
    keep = 0
    for head in reversed(heads):
        grown = size + RECORD_HEADER.size + head[5]
        if grown > max_size:
            break
        size = grown
        keep += 1
    if not keep:
        return None
    first = count - keep
    data_from = ends[first - 1] if first else data_start
    return b"".join(
        [
            _U32.pack(keep),
            body[_U32.size + first * RECORD_HEADER.size : data_start],
            body[data_from:],
        ]
    )


# -- decoding ----------------------------------------------------------------------------------


class _State(Enum):
    HEADER = "header"
    CHUNKS = "chunks"
    DONE = "done"
    ERROR = "error"


class SegmentDecoder:
    """Decodes one segment file, fed in pieces of any size."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0  # the next byte of _buf to decode
        self._base = 0  # the file offset of _buf[0]
        self._eof = False
        self._state = _State.HEADER
        self._error: MalformedSegment | None = None

    def receive_data(self, data: bytes) -> None:
        """The next bytes of the file; ``b""`` once the file has ended."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after the end of the file")
        if self._pos >= len(self._buf):  # nothing pending: keep the caller's object, no copy
            self._base += len(self._buf)
            self._buf = bytes(data)
        else:
            self._base += self._pos
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def next_event(self) -> Event:
        """The next event, ``NEED_DATA`` or ``END``; MalformedSegment at a fault.

        After a fault the decoder stays broken: every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            if self._state is _State.HEADER:
                return self._header()
            if self._state is _State.CHUNKS:
                return self._chunk()
            return END
        except MalformedSegment as exc:
            self._state, self._error = _State.ERROR, exc
            raise

    def _header(self) -> Event:
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        if have < SEGMENT_HEADER.size:
            if not self._eof:
                return NEED_DATA
            if have:
                raise TruncatedHeader(have)
            self._state = _State.DONE  # an empty file: killed before its header
            return END
        magic, version, epoch_len = SEGMENT_HEADER.unpack_from(buf, pos)
        if magic != SPILL_MAGIC or version != LOG_FORMAT_VERSION:
            raise NotASegment(magic, version)
        end = pos + SEGMENT_HEADER.size + epoch_len
        if end > len(buf):
            if not self._eof:
                return NEED_DATA
            raise TruncatedHeader(have)
        try:
            epoch = check_epoch(buf[pos + SEGMENT_HEADER.size : end].decode("ascii"))
        except (UnicodeDecodeError, LocalProtocolError) as exc:
            raise BadEpoch(f"bad epoch in the segment header: {exc}") from None
        self._pos = end
        self._state = _State.CHUNKS
        return SegmentHeader(epoch)

    def _chunk(self) -> Event:
        buf, pos = self._buf, self._pos
        offset = self._base + pos
        if pos + CHUNK_HEAD.size > len(buf):
            if not self._eof:
                return NEED_DATA
            self._state = _State.DONE  # nothing left, or killed while writing a chunk head
            return END
        size, size_crc, body_crc = CHUNK_HEAD.unpack_from(buf, pos)
        if crc32(buf[pos : pos + _U32.size]) != size_crc:
            raise CorruptChunk(offset, "its length fails its checksum")
        start = pos + CHUNK_HEAD.size
        body_end = start + size
        if body_end > len(buf):
            if not self._eof:
                return NEED_DATA
            self._state = _State.DONE  # killed while writing this body: keep what is whole
            return Chunk(offset, _salvage(buf[start:]), complete=False)
        body = buf[start:body_end]
        self._pos = body_end
        if crc32(body) != body_crc:
            return DamagedChunk(offset, size)
        try:
            records = unpack_records(body)
        except MalformedMessage as exc:
            self._pos = pos
            raise CorruptChunk(offset, str(exc)) from None
        return Chunk(offset, tuple(records))


def _salvage(body: bytes) -> tuple[LogRecord, ...]:
    """The complete records at the start of a cut body (headers first, then data)."""
    if len(body) < _U32.size:
        return ()
    (count,) = _U32.unpack_from(body, 0)
    heads_end = _U32.size + count * RECORD_HEADER.size
    if heads_end > len(body):
        return ()
    out: list[LogRecord] = []
    start = heads_end
    prev = 0
    for seq, t, inc, code, flags, length in RECORD_HEADER.iter_unpack(body[_U32.size : heads_end]):
        stop = start + length
        if stop > len(body) or code >= len(_BY_CODE) or seq <= prev:
            break
        try:
            out.append(LogRecord(seq, t, inc, _BY_CODE[code], body[start:stop], flags))
        except LocalProtocolError:
            break
        prev = seq
        start = stop
    return tuple(out)
