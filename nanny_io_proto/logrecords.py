"""Log records and the log channel (ZeroMQ PUB) framing; specs/log-channel.md is the authority.

Every byte the kernel writes becomes a :class:`LogRecord` with a sequence number. The nanny
publishes records in :class:`RecordBatch` messages, one stream per message so that SUB prefix
filtering by topic works, and a :class:`Tick` about once a second. Message frames are
``[topic, signature, header_json, body]``; the signature covers the header and the body.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import attrgetter, itemgetter, lt
from typing import Any, cast

from .errors import BadSignature, LocalProtocolError, MalformedMessage, UnsupportedVersion
from .signing import Signer
from .streams import FLAG_NO_EOL, Stream
from .version import LOG_FORMAT_VERSION

__all__ = [
    "CURVE_TOPIC_PREFIX",
    "FLAG_NO_EOL",
    "KERNEL_STATES",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "NANNY_SILENT_AFTER",
    "RECORD_HEADER",
    "STREAM_CODES",
    "TICK_INTERVAL",
    "TICK_TOPIC",
    "Entry",
    "LogRecord",
    "RecordBatch",
    "Stream",
    "StreamSeqs",
    "Tick",
    "check_epoch",
    "decode_log_message",
    "encode_batch",
    "encode_packed_batch",
    "encode_tick",
    "json_header",
    "nanny_event_data",
    "pack_entries",
    "pack_records",
    "parse_header",
    "parse_nanny_event",
    "topic_for",
    "unpack_records",
]

U8 = 0xFF
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF

#: Fixed per-record header, little-endian, 26 bytes: seq u64, time_ns u64, incarnation u32,
#: stream u8, flags u8, data length u32. See specs/log-channel.md, "Binary body".
RECORD_HEADER = struct.Struct("<QQIBBI")
_COUNT = struct.Struct("<I")

#: Stream <-> one-byte code in the binary body. Never renumber: codes are on the wire.
STREAM_CODES: dict[Stream, int] = {
    Stream.STDOUT: 0,
    Stream.STDERR: 1,
    Stream.LOG: 2,
    Stream.NANNY: 3,
}
_STREAM_BY_CODE: tuple[Stream, ...] = tuple(sorted(STREAM_CODES, key=STREAM_CODES.__getitem__))

#: One record as a plain tuple: (seq, time_ns, incarnation, stream code, flags, data), the
#: stream code being ``STREAM_CODES[stream]``. The nanny's store keeps and serves records in
#: this shape, because a tuple of ints and bytes costs a fraction of a LogRecord and is
#: untracked by the garbage collector; :func:`pack_entries` packs them without building one.
Entry = tuple[int, int, int, int, int, bytes]

#: SUB topic of the heartbeat tick. Record batches use the stream's name as their topic,
#: or ``curve.`` and the name for the unsigned batches of a CurveZMQ channel (spec 4.3).
#: The nine topics are prefix-free: no topic is a prefix of another.
TICK_TOPIC = b"tick"
CURVE_TOPIC_PREFIX = b"curve."
_TOPICS: dict[bytes, Stream] = {s.value.encode("ascii"): s for s in Stream}
_CURVE_TOPICS: dict[bytes, Stream] = {CURVE_TOPIC_PREFIX + t: s for t, s in _TOPICS.items()}

#: The nanny publishes a tick about this often (seconds) ...
TICK_INTERVAL = 1.0
#: ... and a subscriber that saw no message for this long concludes the nanny is gone.
NANNY_SILENT_AFTER = 3.0

#: A batch (live or replay) carries at most this many records and about this many data bytes.
MAX_BATCH_RECORDS = 16384
MAX_BATCH_BYTES = 1 << 20

KERNEL_STATES = frozenset({"starting", "running", "dead", "restarting"})

_EPOCH_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _is_uint(value: object, limit: int) -> bool:
    return type(value) is int and 0 <= value <= limit


def check_epoch(epoch: object) -> str:
    """Return ``epoch`` if it is a valid epoch id, else raise LocalProtocolError."""
    if not isinstance(epoch, str) or not _EPOCH_RE.fullmatch(epoch):
        raise LocalProtocolError(f"epoch must match [A-Za-z0-9._:-]{{1,64}}, got {epoch!r}")
    return epoch


def topic_for(stream: Stream, curve: bool = False) -> bytes:
    """The SUB topic of a stream's record batches: its name (ASCII), signed batches; with
    ``curve``, ``curve.`` and its name, the unsigned batches of a CurveZMQ channel."""
    topic = stream.value.encode("ascii")
    return CURVE_TOPIC_PREFIX + topic if curve else topic


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One piece of captured output: a line (ending in ``b"\\n"``) or a partial line."""

    seq: int  # u64, >= 1, strictly increasing within an epoch, never reused
    time_ns: int  # u64 unix time in ns, stamped when the nanny read the bytes
    incarnation: int  # u32, >= 1 (0 for nanny records before the first launch)
    stream: Stream
    data: bytes  # raw bytes, including the trailing b"\n" when the record ends a line
    flags: int = 0  # u8; FLAG_NO_EOL: the record does not end a line

    def __post_init__(self) -> None:
        if not _is_uint(self.seq, U64) or self.seq < 1:
            raise LocalProtocolError(f"seq must be a u64 >= 1, got {self.seq!r}")
        if not _is_uint(self.time_ns, U64):
            raise LocalProtocolError(f"time_ns must be a u64, got {self.time_ns!r}")
        if not _is_uint(self.incarnation, U32):
            raise LocalProtocolError(f"incarnation must be a u32, got {self.incarnation!r}")
        if not isinstance(self.stream, Stream):
            raise LocalProtocolError(f"stream must be a Stream, got {self.stream!r}")
        if type(self.data) is not bytes or len(self.data) > U32:
            raise LocalProtocolError(f"data must be bytes under 4 GiB, got {type(self.data)!r}")
        if not _is_uint(self.flags, U8):
            raise LocalProtocolError(f"flags must be a u8, got {self.flags!r}")


@dataclass(frozen=True, slots=True)
class StreamSeqs:
    """The last seq published on each stream (0: none yet in this epoch).

    Carried by every batch (as of just before it) and every tick, so that a subscriber that
    filters streams can still tell a lost message from records of a stream it ignores.
    """

    stdout: int = 0
    stderr: int = 0
    log: int = 0
    nanny: int = 0

    def __post_init__(self) -> None:
        for name in ("stdout", "stderr", "log", "nanny"):
            value = getattr(self, name)
            if not _is_uint(value, U64):
                raise LocalProtocolError(f"{name} seq must be a u64, got {value!r}")

    def __getitem__(self, stream: Stream) -> int:
        return int(getattr(self, stream.value))

    def latest(self, streams: Iterable[Stream] | None = None) -> int:
        """The highest seq among ``streams`` (all streams when None)."""
        return max(self[s] for s in (Stream if streams is None else streams))

    def advanced(self, stream: Stream, seq: int) -> StreamSeqs:
        """A copy with ``stream``'s last seq set to ``seq``."""
        values = self.to_json()
        values[stream.value] = seq
        return StreamSeqs(**values)

    def to_json(self) -> dict[str, int]:
        return {"stdout": self.stdout, "stderr": self.stderr, "log": self.log, "nanny": self.nanny}

    @classmethod
    def from_json(cls, obj: object) -> StreamSeqs:
        """Parse ``{"stdout": n, ...}`` with exactly the four streams; MalformedMessage."""
        if not isinstance(obj, dict) or set(obj) != {s.value for s in Stream}:
            raise MalformedMessage(f"stream seqs must name exactly the four streams: {obj!r}")
        try:
            return cls(**obj)
        except LocalProtocolError as exc:
            raise MalformedMessage(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """One live log-channel message: records of a single stream, in seq order, one epoch.

    ``prev_seqs`` is the last seq of every stream published before ``records[0]``.
    """

    epoch: str
    records: tuple[LogRecord, ...]
    prev_seqs: StreamSeqs

    def __post_init__(self) -> None:
        check_epoch(self.epoch)
        if type(self.records) is not tuple or not self.records:
            raise LocalProtocolError("a record batch needs a non-empty tuple of records")
        if not isinstance(self.prev_seqs, StreamSeqs):
            raise LocalProtocolError(f"prev_seqs must be StreamSeqs, got {self.prev_seqs!r}")
        first = self.records[0]
        if not isinstance(first, LogRecord):
            raise LocalProtocolError(f"not a LogRecord: {first!r}")
        for rec in self.records:
            if not isinstance(rec, LogRecord) or rec.stream is not first.stream:
                raise LocalProtocolError(f"a record batch carries one stream: {rec!r}")
        check_increasing(self.records)
        if self.prev_seqs.latest() >= first.seq:
            raise LocalProtocolError(
                f"prev_seqs {self.prev_seqs!r} must all be below the first seq {first.seq!r}"
            )

    @property
    def stream(self) -> Stream:
        return self.records[0].stream

    @property
    def first_seq(self) -> int:
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq


@dataclass(frozen=True, slots=True)
class Tick:
    """The nanny's heartbeat on the log channel, about once a second."""

    epoch: str
    last_seq: int  # the latest seq published on any stream (0: none yet)
    time_ns: int
    incarnation: int
    kernel_state: str  # one of KERNEL_STATES
    last_seqs: StreamSeqs  # the latest seq published per stream; last_seq is their maximum
    #: The nanny publishes unsigned batches on the ``curve.`` topics (spec 4.3).
    curve_batches: bool = False

    def __post_init__(self) -> None:
        check_epoch(self.epoch)
        if type(self.curve_batches) is not bool:
            raise LocalProtocolError(f"curve_batches must be a bool, got {self.curve_batches!r}")
        if not _is_uint(self.last_seq, U64):
            raise LocalProtocolError(f"last_seq must be a u64, got {self.last_seq!r}")
        if not _is_uint(self.time_ns, U64):
            raise LocalProtocolError(f"time_ns must be a u64, got {self.time_ns!r}")
        if not _is_uint(self.incarnation, U32):
            raise LocalProtocolError(f"incarnation must be a u32, got {self.incarnation!r}")
        if self.kernel_state not in KERNEL_STATES:
            raise LocalProtocolError(
                f"kernel_state must be one of {sorted(KERNEL_STATES)}, got {self.kernel_state!r}"
            )
        if not isinstance(self.last_seqs, StreamSeqs):
            raise LocalProtocolError(f"last_seqs must be StreamSeqs, got {self.last_seqs!r}")
        if self.last_seqs.latest() != self.last_seq:
            raise LocalProtocolError(
                f"last_seq {self.last_seq!r} must be the highest of {self.last_seqs!r}"
            )


def check_increasing(records: Sequence[LogRecord]) -> None:
    seqs = list(map(attrgetter("seq"), records))
    if not all(map(lt, seqs, seqs[1:])):
        raise LocalProtocolError("record seqs must be strictly increasing")


# -- binary body -----------------------------------------------------------------------------


def pack_records(records: Iterable[LogRecord]) -> bytes:
    """Pack records (strictly increasing seq) into the binary body.

    Layout: u32 count, then ``count`` fixed 26-byte headers, then every record's data
    concatenated in the same order. All integers little-endian.
    """
    recs = records if isinstance(records, (list, tuple)) else list(records)
    if len(recs) > U32:
        raise LocalProtocolError(f"too many records for one body: {len(recs)!r}")
    check_increasing(recs)
    pack = RECORD_HEADER.pack
    codes = STREAM_CODES
    heads = b"".join(
        [pack(r.seq, r.time_ns, r.incarnation, codes[r.stream], r.flags, len(r.data)) for r in recs]
    )
    return b"".join([_COUNT.pack(len(recs)), heads, *map(attrgetter("data"), recs)])


def pack_entries(entries: Sequence[Entry]) -> bytes:
    """Pack :data:`Entry` tuples into the binary body, byte for byte like :func:`pack_records`.

    For servers that stream from a store: no LogRecord is built. The caller vouches that
    seqs are strictly increasing and every field is in range (the store checked them on the
    way in), so nothing is validated again on this hot path.
    """
    heads = b"".join(
        [
            RECORD_HEADER.pack(seq, t, inc, code, fl, len(data))
            for seq, t, inc, code, fl, data in entries
        ]
    )
    return b"".join([_COUNT.pack(len(entries)), heads, *map(itemgetter(5), entries)])


def unpack_records(body: bytes) -> list[LogRecord]:
    """Inverse of :func:`pack_records`: MalformedMessage unless the body is exact and valid.

    Fast path: headers are read with ``iter_unpack`` and records built without re-running
    ``__post_init__``, because struct already bounds every field and we check the rest here.
    """
    if len(body) < _COUNT.size:
        raise MalformedMessage(f"record body too short: {len(body)!r} bytes")
    (count,) = _COUNT.unpack_from(body, 0)
    heads_end = _COUNT.size + count * RECORD_HEADER.size
    if heads_end > len(body):
        raise MalformedMessage(f"record body too short for {count!r} records")
    view = memoryview(body)
    heads = list(RECORD_HEADER.iter_unpack(view[_COUNT.size : heads_end]))
    if not heads:
        if heads_end != len(body):
            raise MalformedMessage("trailing bytes after an empty record body")
        return []
    ends = list(accumulate([h[5] for h in heads], initial=heads_end))
    if ends[-1] != len(body):
        raise MalformedMessage(
            f"record lengths add up to {ends[-1] - heads_end!r} bytes, "
            f"body has {len(body) - heads_end!r}"
        )
    streams = _STREAM_BY_CODE
    nstreams = len(streams)
    new = object.__new__
    slots = LogRecord.__dict__  # the slot descriptors: set fields without __setattr__ checks
    set_seq = slots["seq"].__set__
    set_time = slots["time_ns"].__set__
    set_inc = slots["incarnation"].__set__
    set_stream = slots["stream"].__set__
    set_data = slots["data"].__set__
    set_flags = slots["flags"].__set__
    out: list[LogRecord] = []
    append = out.append
    prev = 0
    start = heads_end
    for (seq, time_ns, inc, code, flags, _), end in zip(heads, ends[1:], strict=True):
        if seq <= prev:
            raise MalformedMessage(f"record seq {seq!r} does not follow {prev!r}")
        if code >= nstreams:
            raise MalformedMessage(f"unknown stream code {code!r}")
        rec = new(LogRecord)
        set_seq(rec, seq)
        set_time(rec, time_ns)
        set_inc(rec, inc)
        set_stream(rec, streams[code])
        set_data(rec, body[start:end])
        set_flags(rec, flags)
        append(rec)
        prev = seq
        start = end
    return out


# -- JSON header helpers (shared with replay.py) ----------------------------------------------


def json_header(obj: dict[str, Any]) -> bytes:
    """Compact JSON for a header frame; always carries the log format version first."""
    return json.dumps({"version": LOG_FORMAT_VERSION, **obj}, separators=(",", ":")).encode()


def parse_header(frame: bytes) -> dict[str, Any]:
    """Parse a header frame into a dict and check its version; MalformedMessage otherwise."""
    try:
        obj = json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"header is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage(f"header must be a JSON object, got {type(obj).__name__}")
    version = obj.get("version")
    if type(version) is not int:
        raise MalformedMessage(f"header version must be an integer, got {version!r}")
    if version != LOG_FORMAT_VERSION:
        raise UnsupportedVersion(str(version), str(LOG_FORMAT_VERSION))
    return obj


def get_uint(obj: dict[str, Any], key: str, limit: int = U64) -> int:
    """``obj[key]`` as an unsigned int below ``limit``; MalformedMessage otherwise."""
    value = obj.get(key)
    if not _is_uint(value, limit):
        raise MalformedMessage(f"{key} must be an unsigned integer, got {value!r}")
    return cast(int, value)


def get_any(obj: dict[str, Any], key: str) -> Any:
    """``obj[key]`` or None, typed Any: for fields that a constructor validates next."""
    return obj.get(key)


def get_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedMessage(f"{key} must be a string, got {value!r}")
    return value


def get_epoch(obj: dict[str, Any]) -> str:
    epoch = get_str(obj, "epoch")
    if not _EPOCH_RE.fullmatch(epoch):
        raise MalformedMessage(f"invalid epoch {epoch!r}")
    return epoch


def trusted(cls: type[Any], **fields: Any) -> Any:
    """Build a frozen slots dataclass without ``__post_init__``: for already-checked input."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def check_body_matches(header: dict[str, Any], records: Sequence[LogRecord]) -> None:
    """The header's count and first/last seq must describe the body exactly."""
    count = get_uint(header, "count")
    first = get_uint(header, "first_seq")
    last = get_uint(header, "last_seq")
    if not records:
        raise MalformedMessage("a record message must carry at least one record")
    if count != len(records) or first != records[0].seq or last != records[-1].seq:
        raise MalformedMessage(
            f"header says {count!r} records {first!r}..{last!r}, body has "
            f"{len(records)!r} records {records[0].seq!r}..{records[-1].seq!r}"
        )


# -- log channel messages ---------------------------------------------------------------------


def encode_batch(batch: RecordBatch, signer: Signer) -> list[bytes]:
    """Frames ``[topic, signature, header, body]`` of a live record batch."""
    return encode_packed_batch(
        batch.epoch,
        batch.stream,
        len(batch.records),
        batch.first_seq,
        batch.last_seq,
        batch.prev_seqs,
        pack_records(batch.records),
        signer,
    )


def encode_packed_batch(
    epoch: str,
    stream: Stream,
    count: int,
    first_seq: int,
    last_seq: int,
    prev_seqs: StreamSeqs,
    body: bytes,
    signer: Signer,
    *,
    curve: bool = False,
) -> list[bytes]:
    """Frames of a live batch whose body is already packed (see pack_records).

    Lets the nanny publish straight from its store; the caller vouches that ``body`` holds
    ``count`` records of ``stream`` from ``first_seq`` to ``last_seq``. ``curve``: the
    unsigned form, on the stream's ``curve.`` topic, for a CurveZMQ channel (spec 4.3).
    """
    header = json_header(
        {
            "type": "records",
            "epoch": epoch,
            "stream": stream.value,
            "count": count,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "prev_seqs": prev_seqs.to_json(),
        }
    )
    if curve:
        return [topic_for(stream, curve=True), b"", header, body]
    return [topic_for(stream), signer.sign((header, body)), header, body]


def encode_tick(tick: Tick, signer: Signer) -> list[bytes]:
    """Frames ``[b"tick", signature, header, b""]`` of a heartbeat tick."""
    header = json_header(
        {
            "type": "tick",
            "epoch": tick.epoch,
            "last_seq": tick.last_seq,
            "last_seqs": tick.last_seqs.to_json(),
            "time_ns": tick.time_ns,
            "incarnation": tick.incarnation,
            "kernel_state": tick.kernel_state,
            **({"curve_batches": True} if tick.curve_batches else {}),
        }
    )
    return [TICK_TOPIC, signer.sign((header, b"")), header, b""]


def decode_log_message(
    frames: Sequence[bytes], signer: Signer, *, curve: bool = False
) -> RecordBatch | Tick:
    """Verify and decode one log-channel message; only RemoteProtocolError subclasses escape.

    The signature is checked before any JSON is parsed. ``curve``: the message came over a
    CurveZMQ connection to the nanny's key, which authenticated it; only then is an
    unsigned batch of a ``curve.`` topic accepted (spec 4.3).
    """
    if len(frames) != 4:
        raise MalformedMessage(f"a log message has 4 frames, got {len(frames)!r}")
    topic, signature, header_frame, body = frames
    curve_stream = _CURVE_TOPICS.get(topic)
    if curve_stream is None:
        signer.verify(signature, (header_frame, body))
    elif not curve:
        raise BadSignature(f"unsigned {topic!r} batch on a connection without CurveZMQ")
    elif signature:
        raise MalformedMessage(f"a {topic!r} batch has an empty signature frame")
    header = parse_header(header_frame)
    kind = header.get("type")
    epoch = get_epoch(header)
    if kind == "tick":
        if topic != TICK_TOPIC or body:
            raise MalformedMessage(f"a tick has topic b'tick' and an empty body, got {topic!r}")
        last_seqs = StreamSeqs.from_json(header.get("last_seqs"))
        state = get_str(header, "kernel_state")
        try:
            return Tick(
                epoch=epoch,
                last_seq=get_uint(header, "last_seq"),
                time_ns=get_uint(header, "time_ns"),
                incarnation=get_uint(header, "incarnation", U32),
                kernel_state=state,
                last_seqs=last_seqs,
                curve_batches=header.get("curve_batches", False),
            )
        except LocalProtocolError as exc:
            raise MalformedMessage(str(exc)) from exc
    if kind != "records":
        raise MalformedMessage(f"unknown log message type {kind!r}")
    stream = _TOPICS.get(topic) if curve_stream is None else curve_stream
    if stream is None or header.get("stream") != stream.value:
        raise MalformedMessage(
            f"topic {topic!r} does not match the header stream {header.get('stream')!r}"
        )
    prev_seqs = StreamSeqs.from_json(header.get("prev_seqs"))
    records = unpack_records(body)
    check_body_matches(header, records)
    for rec in records:
        if rec.stream is not stream:
            raise MalformedMessage(f"record {rec.seq!r} is {rec.stream.value!r}, topic {topic!r}")
    if prev_seqs.latest() >= records[0].seq:
        raise MalformedMessage(f"prev_seqs {prev_seqs!r} not below first seq {records[0].seq!r}")
    batch: RecordBatch = trusted(
        RecordBatch, epoch=epoch, records=tuple(records), prev_seqs=prev_seqs
    )
    return batch


# -- nanny events ----------------------------------------------------------------------------


def nanny_event_data(event: str, text: str, **details: Any) -> bytes:
    """A record body for the nanny stream: one JSON object line, ``"event"`` and ``"text"`` first.

    ``text`` is what ``tail`` shows a human; ``details`` are machine-readable extras.
    """
    if not isinstance(event, str) or not event:
        raise LocalProtocolError(f"event must be a non-empty string, got {event!r}")
    if not isinstance(text, str):
        raise LocalProtocolError(f"text must be a string, got {text!r}")
    try:
        line = json.dumps(
            {"event": event, "text": text, **details},
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        )
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"nanny event details must be JSON: {exc}") from exc
    return line.encode("utf-8") + b"\n"


def parse_nanny_event(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`nanny_event_data`; MalformedMessage for anything else."""
    if not data.endswith(b"\n"):
        raise MalformedMessage("a nanny event ends with a newline")
    try:
        obj = json.loads(data[:-1].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"nanny event is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage(f"a nanny event is a JSON object, got {type(obj).__name__}")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedMessage(f"nanny event needs a non-empty 'event', got {event!r}")
    if not isinstance(obj.get("text"), str):
        raise MalformedMessage(f"nanny event needs a string 'text', got {obj.get('text')!r}")
    return obj
