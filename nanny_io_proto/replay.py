"""Replay of stored log records on the ROUTER ``log_replay_port``; specs/log-channel.md.

A client (DEALER) sends ``[signature, request_json]``. The answer is a stream of messages
``[signature, header_json, body]``: an optional ``truncated`` notice, record batches, then
exactly one ``end`` (or a single ``error`` instead of all of that).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import (
    BadSignature,
    DuplicateSignature,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnsupportedVersion,
)
from .logrecords import (
    U64,
    LogRecord,
    check_body_matches,
    check_epoch,
    check_increasing,
    get_any,
    get_epoch,
    get_str,
    get_uint,
    json_header,
    pack_records,
    parse_header,
    trusted,
    unpack_records,
)
from .signing import DigestHistory, Signer
from .streams import Stream

__all__ = [
    "REPLAY_ERROR_CODES",
    "ReplayBatch",
    "ReplayEnd",
    "ReplayError",
    "ReplayPlan",
    "ReplayRequest",
    "ReplayResponse",
    "ReplayTruncated",
    "decode_replay_request",
    "decode_replay_response",
    "encode_packed_replay_batch",
    "encode_replay_request",
    "encode_replay_response",
    "error_response",
    "plan_replay",
]

_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

REPLAY_ERROR_CODES = frozenset(
    {"malformed", "bad_signature", "duplicate", "unsupported_version", "busy"}
)


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise LocalProtocolError(f"{name} must match [A-Za-z0-9._:@-]{{1,128}}, got {value!r}")


def _check_optional_uint(name: str, value: object, minimum: int) -> None:
    if value is not None and (type(value) is not int or not minimum <= value <= U64):
        raise LocalProtocolError(f"{name} must be None or an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Ask for stored records; every field but the ids narrows the answer.

    ``nonce`` is chosen by the client at random for every request, so that two identical
    honest requests have different signatures and the server can refuse captured replays.
    """

    request_id: str
    nonce: str
    since_seq: int | None = None  # inclusive; None: from seq 1 (the start of the epoch)
    until_seq: int | None = None  # inclusive; None: up to the newest record
    last: int | None = None  # only the last N matching records of the range
    streams: tuple[Stream, ...] | None = None  # None: every stream
    limit: int | None = None  # at most this many records in the answer

    def __post_init__(self) -> None:
        _check_id("request_id", self.request_id)
        _check_id("nonce", self.nonce)
        _check_optional_uint("since_seq", self.since_seq, 1)
        _check_optional_uint("until_seq", self.until_seq, 1)
        _check_optional_uint("last", self.last, 0)
        _check_optional_uint("limit", self.limit, 1)
        if (
            self.since_seq is not None
            and self.until_seq is not None
            and self.since_seq > self.until_seq
        ):
            raise LocalProtocolError(
                f"since_seq {self.since_seq!r} is after until_seq {self.until_seq!r}"
            )
        if self.streams is not None and (
            type(self.streams) is not tuple
            or not self.streams
            or not all(isinstance(s, Stream) for s in self.streams)
            or len(set(self.streams)) != len(self.streams)
        ):
            raise LocalProtocolError(
                f"streams must be None or a non-empty tuple of distinct Streams, "
                f"got {self.streams!r}"
            )


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    """Consecutive stored records of the answer, in seq order (streams may be mixed)."""

    request_id: str
    epoch: str
    records: tuple[LogRecord, ...]
    #: The last seq of the answer's previous ``records`` message (0: this is the first), so
    #: a client sees that a message of the answer was lost (spec 8.3).
    prev_seq: int = 0

    def __post_init__(self) -> None:
        _check_id("request_id", self.request_id)
        check_epoch(self.epoch)
        if type(self.records) is not tuple or not self.records:
            raise LocalProtocolError("a replay batch needs a non-empty tuple of records")
        if not all(type(r) is LogRecord for r in self.records):
            raise LocalProtocolError("a replay batch carries LogRecords only")
        check_increasing(self.records)
        if type(self.prev_seq) is not int or not 0 <= self.prev_seq < self.records[0].seq:
            raise LocalProtocolError(
                f"prev_seq must be a u64 below the first seq {self.records[0].seq!r}, "
                f"got {self.prev_seq!r}"
            )


@dataclass(frozen=True, slots=True)
class ReplayTruncated:
    """History was asked for that the store no longer holds: ``lost`` seqs before ``oldest_seq``.

    The lost seqs are ``since_seq .. since_seq + lost - 1`` of the request.
    """

    request_id: str
    oldest_seq: int  # the oldest seq the store still holds
    lost: int  # how many requested seqs are gone (counted in seqs, every stream)

    def __post_init__(self) -> None:
        _check_id("request_id", self.request_id)
        if type(self.oldest_seq) is not int or not 1 <= self.oldest_seq <= U64:
            raise LocalProtocolError(f"oldest_seq must be a u64 >= 1, got {self.oldest_seq!r}")
        if type(self.lost) is not int or not 1 <= self.lost <= U64:
            raise LocalProtocolError(f"lost must be a u64 >= 1, got {self.lost!r}")


@dataclass(frozen=True, slots=True)
class ReplayEnd:
    """The last message of an answer."""

    request_id: str
    epoch: str
    last_seq: int  # the store's newest seq when the request was served
    sent: int  # records in the answer
    complete: bool  # False when ``limit`` cut the answer short
    prev_seq: int = 0  # the last seq of the answer's last ``records`` message (0: none)

    def __post_init__(self) -> None:
        _check_id("request_id", self.request_id)
        check_epoch(self.epoch)
        if type(self.last_seq) is not int or not 0 <= self.last_seq <= U64:
            raise LocalProtocolError(f"last_seq must be a u64, got {self.last_seq!r}")
        if type(self.sent) is not int or not 0 <= self.sent <= U64:
            raise LocalProtocolError(f"sent must be a u64, got {self.sent!r}")
        if type(self.prev_seq) is not int or not 0 <= self.prev_seq <= U64:
            raise LocalProtocolError(f"prev_seq must be a u64, got {self.prev_seq!r}")
        if type(self.complete) is not bool:
            raise LocalProtocolError(f"complete must be a bool, got {self.complete!r}")


@dataclass(frozen=True, slots=True)
class ReplayError:
    """The request was refused; the server keeps serving others."""

    request_id: str | None  # None when the request could not be read
    code: str  # one of REPLAY_ERROR_CODES
    message: str

    def __post_init__(self) -> None:
        if self.request_id is not None:
            _check_id("request_id", self.request_id)
        if self.code not in REPLAY_ERROR_CODES:
            raise LocalProtocolError(f"unknown replay error code {self.code!r}")
        if not isinstance(self.message, str):
            raise LocalProtocolError(f"message must be a string, got {self.message!r}")


ReplayResponse = ReplayBatch | ReplayTruncated | ReplayEnd | ReplayError


# -- requests ---------------------------------------------------------------------------------


def encode_replay_request(req: ReplayRequest, signer: Signer) -> list[bytes]:
    """Frames ``[signature, request_json]`` for a DEALER socket."""
    body = json_header(
        {
            "type": "replay_request",
            "request_id": req.request_id,
            "nonce": req.nonce,
            "since_seq": req.since_seq,
            "until_seq": req.until_seq,
            "last": req.last,
            "streams": None if req.streams is None else [s.value for s in req.streams],
            "limit": req.limit,
        }
    )
    return [signer.sign((body,)), body]


def _strip_delimiter(frames: Sequence[bytes], n: int) -> Sequence[bytes]:
    """Accept ``n`` frames, or ``n + 1`` with a leading empty frame (REQ-style envelope)."""
    if len(frames) == n + 1 and frames[0] == b"":
        return frames[1:]
    if len(frames) != n:
        raise MalformedMessage(f"expected {n!r} frames, got {len(frames)!r}")
    return frames


def decode_replay_request(
    frames: Sequence[bytes], signer: Signer, history: DigestHistory | None = None
) -> ReplayRequest:
    """Verify (signature, then replay history) and decode a request; RemoteProtocolError only.

    ``frames`` are what follows the ROUTER identity; a leading empty frame is stripped.
    """
    signature, body = _strip_delimiter(frames, 2)
    signer.verify(signature, (body,))
    if history is not None:
        history.check(signature)
    obj = parse_header(body)
    if obj.get("type") != "replay_request":
        raise MalformedMessage(f"not a replay request: type {obj.get('type')!r}")
    streams_raw = obj.get("streams")
    streams: tuple[Stream, ...] | None = None
    if streams_raw is not None:
        if not isinstance(streams_raw, list):
            raise MalformedMessage(f"streams must be a list or null, got {streams_raw!r}")
        try:
            streams = tuple(Stream(s) for s in streams_raw)
        except (ValueError, TypeError) as exc:
            raise MalformedMessage(f"unknown stream in {streams_raw!r}") from exc
    try:
        return ReplayRequest(
            request_id=get_any(obj, "request_id"),  # type checks happen in __post_init__
            nonce=get_any(obj, "nonce"),
            since_seq=get_any(obj, "since_seq"),
            until_seq=get_any(obj, "until_seq"),
            last=get_any(obj, "last"),
            streams=streams,
            limit=get_any(obj, "limit"),
        )
    except LocalProtocolError as exc:
        raise MalformedMessage(str(exc)) from exc


def peek_request_id(frames: Sequence[bytes]) -> str | None:
    """Best-effort request id of a request that failed to decode (to echo in the error)."""
    try:
        obj = json.loads(frames[-1])
        rid = obj["request_id"]
    except Exception:  # anything at all: this is only a courtesy
        return None
    return rid if isinstance(rid, str) and _ID_RE.fullmatch(rid) else None


def error_response(exc: RemoteProtocolError, frames: Sequence[bytes] = ()) -> ReplayError:
    """The error reply for a request that raised ``exc`` while decoding."""
    if isinstance(exc, DuplicateSignature):
        code = "duplicate"
    elif isinstance(exc, BadSignature):
        code = "bad_signature"
    elif isinstance(exc, UnsupportedVersion):
        code = "unsupported_version"
    else:
        code = "malformed"
    return ReplayError(peek_request_id(frames) if frames else None, code, str(exc))


# -- responses --------------------------------------------------------------------------------


def encode_packed_replay_batch(
    request_id: str,
    epoch: str,
    count: int,
    first_seq: int,
    last_seq: int,
    body: bytes,
    signer: Signer,
    prev_seq: int = 0,
) -> list[bytes]:
    """Frames of a ``records`` answer whose body is already packed (see pack_records).

    Lets a server stream straight from its store without building a LogRecord per record;
    the caller vouches that ``body`` holds ``count`` records from ``first_seq`` to ``last_seq``
    and that ``prev_seq`` is the last seq of the answer's previous batch (0: none).
    """
    header = json_header(
        {
            "type": "records",
            "request_id": request_id,
            "epoch": epoch,
            "count": count,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "prev_seq": prev_seq,
        }
    )
    return [signer.sign((header, body)), header, body]


def encode_replay_response(event: ReplayResponse, signer: Signer) -> list[bytes]:
    """Frames ``[signature, header_json, body]``; the server prepends the client's envelope."""
    body = b""
    if isinstance(event, ReplayBatch):
        recs = event.records
        return encode_packed_replay_batch(
            event.request_id,
            event.epoch,
            len(recs),
            recs[0].seq,
            recs[-1].seq,
            pack_records(recs),
            signer,
            event.prev_seq,
        )
    if isinstance(event, ReplayTruncated):
        header_obj = {
            "type": "truncated",
            "request_id": event.request_id,
            "oldest_seq": event.oldest_seq,
            "lost": event.lost,
        }
    elif isinstance(event, ReplayEnd):
        header_obj = {
            "type": "end",
            "request_id": event.request_id,
            "epoch": event.epoch,
            "last_seq": event.last_seq,
            "sent": event.sent,
            "complete": event.complete,
            "prev_seq": event.prev_seq,
        }
    elif isinstance(event, ReplayError):
        header_obj = {
            "type": "error",
            "request_id": event.request_id,
            "code": event.code,
            "message": event.message,
        }
    else:
        raise LocalProtocolError(f"not a replay response: {event!r}")
    header = json_header(header_obj)
    return [signer.sign((header, body)), header, body]


def decode_replay_response(frames: Sequence[bytes], signer: Signer) -> ReplayResponse:
    """Verify and decode one answer message; RemoteProtocolError only.

    A leading empty frame (REQ-style envelope) is accepted and stripped.
    """
    signature, header_frame, body = _strip_delimiter(frames, 3)
    signer.verify(signature, (header_frame, body))
    header = parse_header(header_frame)
    kind = header.get("type")
    if kind == "records":
        request_id = get_str(header, "request_id")
        epoch = get_epoch(header)
        records = unpack_records(body)
        check_body_matches(header, records)
        if not _ID_RE.fullmatch(request_id):
            raise MalformedMessage(f"invalid request_id {request_id!r}")
        prev_seq = get_uint(header, "prev_seq")
        if prev_seq >= records[0].seq:
            raise MalformedMessage(f"prev_seq {prev_seq!r} is not below the first seq")
        batch: ReplayBatch = trusted(
            ReplayBatch,
            request_id=request_id,
            epoch=epoch,
            records=tuple(records),
            prev_seq=prev_seq,
        )
        return batch
    if body:
        raise MalformedMessage(f"a {kind!r} message has an empty body")
    try:
        if kind == "truncated":
            return ReplayTruncated(
                request_id=get_any(header, "request_id"),  # type checks happen in __post_init__
                oldest_seq=get_uint(header, "oldest_seq"),
                lost=get_uint(header, "lost"),
            )
        if kind == "end":
            return ReplayEnd(
                request_id=get_any(header, "request_id"),
                epoch=get_epoch(header),
                last_seq=get_uint(header, "last_seq"),
                sent=get_uint(header, "sent"),
                complete=get_any(header, "complete"),
                prev_seq=get_uint(header, "prev_seq"),
            )
        if kind == "error":
            return ReplayError(
                request_id=get_any(header, "request_id"),
                code=get_any(header, "code"),
                message=get_any(header, "message"),
            )
    except LocalProtocolError as exc:
        raise MalformedMessage(str(exc)) from exc
    raise MalformedMessage(f"unknown replay message type {kind!r}")


# -- serving ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What the server reads from its store for one request (see :func:`plan_replay`)."""

    request_id: str
    first_seq: int  # inclusive
    last_seq: int  # inclusive; first_seq > last_seq means there is nothing to read
    streams: tuple[Stream, ...] | None  # None: every stream
    last: int | None  # keep only the last N matching records of the range
    limit: int | None  # then at most this many, from the start
    truncated: ReplayTruncated | None  # send first, when requested history is gone
    end_seq: int  # the store's newest seq, for ReplayEnd.last_seq

    @property
    def empty(self) -> bool:
        return self.first_seq > self.last_seq or self.last == 0


def plan_replay(req: ReplayRequest, oldest_seq: int, last_seq: int) -> ReplayPlan:
    """Pure selection logic against a store holding seqs ``oldest_seq .. last_seq``.

    An empty store has ``oldest_seq == last_seq + 1`` (a fresh one: 1 and 0). The range is
    ``max(since_seq or 1, oldest_seq) .. min(until_seq, last_seq)``. A truncation notice is
    due when ``since_seq`` (1 when omitted) is below ``oldest_seq`` and ``last`` is not set:
    ``lost`` counts the requested seqs that are gone.
    """
    if type(oldest_seq) is not int or oldest_seq < 1:
        raise LocalProtocolError(f"oldest_seq must be >= 1, got {oldest_seq!r}")
    if type(last_seq) is not int or last_seq < oldest_seq - 1:
        raise LocalProtocolError(f"last_seq {last_seq!r} is below oldest_seq {oldest_seq!r} - 1")
    since = 1 if req.since_seq is None else req.since_seq
    upper = last_seq if req.until_seq is None else min(req.until_seq, last_seq)
    truncated = None
    if req.last is None and since < oldest_seq:
        gone_until = oldest_seq if req.until_seq is None else min(oldest_seq, req.until_seq + 1)
        truncated = ReplayTruncated(req.request_id, oldest_seq, gone_until - since)
    return ReplayPlan(
        request_id=req.request_id,
        first_seq=max(since, oldest_seq),
        last_seq=upper,
        streams=req.streams,
        last=req.last,
        limit=req.limit,
        truncated=truncated,
        end_seq=last_seq,
    )
