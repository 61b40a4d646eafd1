"""Replay requests, responses and the pure selection logic (specs/log-channel.md)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.errors import (
    BadSignature,
    DuplicateSignature,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnsupportedVersion,
)
from nanny_io_proto.logrecords import LogRecord, Stream, unpack_records
from nanny_io_proto.replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    ReplayTruncated,
    decode_replay_request,
    decode_replay_response,
    encode_replay_request,
    encode_replay_response,
    error_response,
    plan_replay,
)
from nanny_io_proto.signing import DigestHistory, Signer

KEY = Signer(b"a-secret-key")
NOKEY = Signer(b"")
EXAMPLES = settings(max_examples=150, deadline=None)

ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True)
opt_seq = st.one_of(st.none(), st.integers(1, 2**64 - 1))


@st.composite
def requests(draw: st.DrawFn) -> ReplayRequest:
    since, until = draw(opt_seq), draw(opt_seq)
    if since is not None and until is not None and since > until:
        since, until = until, since
    streams = draw(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(list(Stream)), min_size=1, max_size=4, unique=True).map(tuple),
        )
    )
    return ReplayRequest(
        request_id=draw(ids),
        nonce=draw(ids),
        since_seq=since,
        until_seq=until,
        last=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        streams=streams,
        limit=draw(st.one_of(st.none(), st.integers(1, 2**64 - 1))),
    )


def rec(seq: int, stream: Stream = Stream.STDOUT) -> LogRecord:
    return LogRecord(seq, seq // 2, 1, stream, b"line %d\n" % seq)


@st.composite
def responses(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    rid = draw(ids)
    kind = draw(st.sampled_from(["batch", "truncated", "end", "error"]))
    if kind == "batch":
        seqs = sorted(draw(st.sets(st.integers(1, 2**64 - 1), min_size=1, max_size=8)))
        streams = st.sampled_from(list(Stream))
        return ReplayBatch(rid, "ep", tuple(rec(s, draw(streams)) for s in seqs))
    if kind == "truncated":
        return ReplayTruncated(
            rid, draw(st.integers(1, 2**64 - 1)), draw(st.integers(1, 2**64 - 1))
        )
    if kind == "end":
        return ReplayEnd(
            rid,
            "ep",
            draw(st.integers(0, 2**64 - 1)),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.booleans()),
        )
    code = draw(
        st.sampled_from(["malformed", "bad_signature", "duplicate", "unsupported_version", "busy"])
    )
    return ReplayError(draw(st.one_of(st.none(), ids)), code, draw(st.text(max_size=20)))


# -- requests ---------------------------------------------------------------------------------


@EXAMPLES
@given(requests(), st.sampled_from([KEY, NOKEY]), st.booleans())
def test_request_round_trip(req: ReplayRequest, signer: Signer, req_envelope: bool) -> None:
    frames = encode_replay_request(req, signer)
    assert len(frames) == 2
    if req_envelope:
        frames = [b"", *frames]
    assert decode_replay_request(frames, signer, DigestHistory()) == req


def test_request_json() -> None:
    req = ReplayRequest("r1", "n1", since_seq=5, until_seq=9, streams=(Stream.STDERR,))
    sig, body = encode_replay_request(req, KEY)
    assert sig == KEY.sign([body])
    assert json.loads(body) == {
        "version": 2,
        "type": "replay_request",
        "request_id": "r1",
        "nonce": "n1",
        "since_seq": 5,
        "until_seq": 9,
        "last": None,
        "streams": ["stderr"],
        "limit": None,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_id": ""},
        {"request_id": "has space"},
        {"nonce": ""},
        {"since_seq": 0},
        {"until_seq": 0},
        {"since_seq": 5, "until_seq": 4},
        {"last": -1},
        {"limit": 0},
        {"streams": ()},
        {"streams": ("stdout",)},
        {"streams": (Stream.STDOUT, Stream.STDOUT)},
        {"streams": [Stream.STDOUT]},
        {"since_seq": True},
    ],
)
def test_invalid_request_is_a_local_error(kwargs: dict) -> None:
    with pytest.raises(LocalProtocolError):
        ReplayRequest(**({"request_id": "r", "nonce": "n"} | kwargs))


@EXAMPLES
@given(st.lists(st.binary(max_size=40), max_size=4), st.sampled_from([KEY, NOKEY]))
def test_decode_request_any_frames(frames: list, signer: Signer) -> None:
    try:
        decode_replay_request(frames, signer, DigestHistory())
    except RemoteProtocolError as exc:
        assert error_response(exc, frames).code in {
            "malformed",
            "bad_signature",
            "duplicate",
            "unsupported_version",
        }


@EXAMPLES
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "type",
                "request_id",
                "nonce",
                "since_seq",
                "until_seq",
                "last",
                "streams",
                "limit",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-2, 2**65),
            st.floats(),
            st.text(max_size=6),
            st.lists(st.text(max_size=6), max_size=3),
            st.sampled_from(["replay_request", "stdout", "r1"]),
        ),
    )
)
def test_decode_signed_random_requests(obj: dict) -> None:
    body = json.dumps(obj).encode()
    with contextlib.suppress(RemoteProtocolError):
        decode_replay_request([KEY.sign([body]), body], KEY, None)


def test_forged_request_is_refused_and_server_keeps_serving() -> None:
    history = DigestHistory()
    req = ReplayRequest("r1", "n1", since_seq=1)
    sig, body = encode_replay_request(req, KEY)
    with pytest.raises(BadSignature) as bad:
        decode_replay_request([b"f" * 64, body], KEY, history)
    assert error_response(bad.value, [b"f" * 64, body]) == ReplayError(
        "r1", "bad_signature", str(bad.value)
    )
    with pytest.raises(BadSignature):
        decode_replay_request([b"", body], KEY, history)  # unsigned
    with pytest.raises(BadSignature):
        decode_replay_request(encode_replay_request(req, Signer(b"wrong")), KEY, history)
    assert len(history) == 0  # forgeries never enter the history
    assert decode_replay_request([sig, body], KEY, history) == req


def test_replayed_request_is_a_duplicate_but_a_fresh_nonce_is_fine() -> None:
    history = DigestHistory()
    req = ReplayRequest("r1", "nonce-1", last=10)
    frames = encode_replay_request(req, KEY)
    decode_replay_request(frames, KEY, history)
    with pytest.raises(DuplicateSignature) as dup:
        decode_replay_request(frames, KEY, history)
    assert error_response(dup.value, frames).code == "duplicate"
    again = ReplayRequest("r1", "nonce-2", last=10)  # same ask, new nonce
    assert decode_replay_request(encode_replay_request(again, KEY), KEY, history) == again


def test_unsupported_version_and_malformed_requests_map_to_error_codes() -> None:
    body = json.dumps({"version": 1, "type": "replay_request", "request_id": "r9"}).encode()
    frames = [KEY.sign([body]), body]
    with pytest.raises(UnsupportedVersion) as exc:
        decode_replay_request(frames, KEY)
    assert error_response(exc.value, frames) == ReplayError(
        "r9", "unsupported_version", str(exc.value)
    )
    body = b'{"version": 2, "type": "replay_request", "request_id": "r2", "nonce": "n", "last": -5}'
    frames = [KEY.sign([body]), body]
    with pytest.raises(MalformedMessage) as mal:
        decode_replay_request(frames, KEY)
    assert error_response(mal.value, frames).code == "malformed"
    assert error_response(mal.value).request_id is None
    with pytest.raises(MalformedMessage):
        decode_replay_request([b"x", *frames], KEY)  # envelope frame must be empty


# -- responses --------------------------------------------------------------------------------


@EXAMPLES
@given(responses(), st.sampled_from([KEY, NOKEY]), st.booleans())
def test_response_round_trip(event, signer: Signer, envelope: bool) -> None:  # type: ignore[no-untyped-def]
    frames = encode_replay_response(event, signer)
    assert len(frames) == 3
    if envelope:
        frames = [b"", *frames]
    assert decode_replay_response(frames, signer) == event


def test_batch_response_body_is_the_record_body() -> None:
    batch = ReplayBatch("r1", "ep", (rec(1), rec(3, Stream.STDERR)))
    _sig, header, body = encode_replay_response(batch, KEY)
    assert json.loads(header) == {
        "version": 2,
        "type": "records",
        "request_id": "r1",
        "epoch": "ep",
        "count": 2,
        "first_seq": 1,
        "last_seq": 3,
        "prev_seq": 0,
    }
    assert unpack_records(body) == list(batch.records)


def test_prev_seq_must_be_below_the_batch() -> None:
    with pytest.raises(LocalProtocolError):
        ReplayBatch("r1", "ep", (rec(5),), prev_seq=5)
    _sig, header, body = encode_replay_response(ReplayBatch("r1", "ep", (rec(5),), 4), KEY)
    forged = json.dumps(json.loads(header) | {"prev_seq": 5}).encode()
    with pytest.raises(MalformedMessage):
        decode_replay_response([KEY.sign([forged, body]), forged, body], KEY)
    missing = json.dumps({k: v for k, v in json.loads(header).items() if k != "prev_seq"})
    with pytest.raises(MalformedMessage):  # version 2 answers always carry it
        decode_replay_response([KEY.sign([missing.encode(), body]), missing.encode(), body], KEY)


@EXAMPLES
@given(st.lists(st.binary(max_size=40), max_size=5), st.sampled_from([KEY, NOKEY]))
def test_decode_response_any_frames(frames: list, signer: Signer) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_replay_response(frames, signer)


@EXAMPLES
@given(responses(), st.data())
def test_decode_signed_mutated_responses(event, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    _, header, body = encode_replay_response(event, KEY)
    frames = [header, body]
    which = data.draw(st.sampled_from([0, 1]))
    frame = bytearray(frames[which])
    if frame and data.draw(st.booleans()):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    else:
        frame = bytearray(data.draw(st.binary(max_size=40)))
    frames[which] = bytes(frame)
    with contextlib.suppress(RemoteProtocolError):
        decode_replay_response([KEY.sign(frames), *frames], KEY)


def test_forged_response_is_a_bad_signature() -> None:
    sig, header, body = encode_replay_response(ReplayEnd("r", "ep", 5, 5, True), KEY)
    with pytest.raises(BadSignature):
        decode_replay_response([b"0" * 64, header, body], KEY)
    with pytest.raises(MalformedMessage):
        decode_replay_response([sig, header, b"x"], NOKEY)  # end has an empty body


# -- planning ---------------------------------------------------------------------------------


def plan(oldest: int, newest: int, **kw):  # type: ignore[no-untyped-def]
    return plan_replay(ReplayRequest("r", "n", **kw), oldest, newest)


def test_plan_empty_store() -> None:
    p = plan(1, 0)
    assert p.empty and p.truncated is None and p.end_seq == 0
    p = plan(1, 0, since_seq=5)
    assert p.empty and p.truncated is None


def test_plan_everything_reports_evicted_history() -> None:
    p = plan(101, 500)
    assert (p.first_seq, p.last_seq, p.end_seq) == (101, 500, 500)
    assert p.truncated == ReplayTruncated("r", 101, 100)
    assert plan(1, 500).truncated is None


def test_plan_since_before_oldest_is_truncated() -> None:
    p = plan(101, 500, since_seq=40)
    assert p.truncated == ReplayTruncated("r", 101, 61)
    assert (p.first_seq, p.last_seq) == (101, 500)
    p = plan(101, 500, since_seq=101)
    assert p.truncated is None and p.first_seq == 101


def test_plan_until_bounds_range_and_loss() -> None:
    p = plan(101, 500, since_seq=40, until_seq=60)  # all of it is gone
    assert p.truncated == ReplayTruncated("r", 101, 21) and p.empty
    p = plan(101, 500, since_seq=40, until_seq=200)
    assert p.truncated == ReplayTruncated("r", 101, 61)
    assert (p.first_seq, p.last_seq) == (101, 200)
    p = plan(1, 500, since_seq=450, until_seq=9999)
    assert (p.first_seq, p.last_seq) == (450, 500)


def test_plan_since_in_the_future_is_empty() -> None:
    p = plan(1, 500, since_seq=501)
    assert p.empty and p.truncated is None and p.end_seq == 500


def test_plan_last_never_truncates() -> None:
    p = plan(101, 500, last=1000)
    assert p.truncated is None and p.last == 1000 and (p.first_seq, p.last_seq) == (101, 500)
    assert plan(1, 500, last=0).empty


def test_plan_rejects_impossible_store() -> None:
    with pytest.raises(LocalProtocolError):
        plan(0, 5)
    with pytest.raises(LocalProtocolError):
        plan(10, 5)
