"""Log records, the binary body and the log-channel framing (specs/log-channel.md)."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.errors import (
    BadSignature,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnsupportedVersion,
)
from nanny_io_proto.logrecords import (
    FLAG_NO_EOL,
    RECORD_HEADER,
    TICK_TOPIC,
    LogRecord,
    RecordBatch,
    Stream,
    StreamSeqs,
    Tick,
    decode_log_message,
    encode_batch,
    encode_packed_batch,
    encode_tick,
    nanny_event_data,
    pack_records,
    parse_nanny_event,
    topic_for,
    unpack_records,
)
from nanny_io_proto.signing import Signer

KEY = Signer(b"a-secret-key")
NOKEY = Signer(b"")
EXAMPLES = settings(max_examples=150, deadline=None)

u64 = st.integers(0, 2**64 - 1)
streams = st.sampled_from(list(Stream))
epochs = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)


@st.composite
def record_lists(draw: st.DrawFn, stream: Stream | None = None, min_size: int = 0) -> list:
    n = draw(st.integers(min_size, 12))
    seqs = sorted(draw(st.sets(st.integers(1, 2**64 - 1), min_size=n, max_size=n)))
    return [
        LogRecord(
            seq=seq,
            time_ns=draw(u64),
            incarnation=draw(st.integers(0, 2**32 - 1)),
            stream=stream if stream is not None else draw(streams),
            data=draw(st.binary(max_size=40)),
            flags=draw(st.integers(0, 255)),
        )
        for seq in seqs
    ]


@st.composite
def batches(draw: st.DrawFn) -> RecordBatch:
    records = draw(record_lists(stream=draw(streams), min_size=1))
    below = records[0].seq - 1
    seqs = [draw(st.integers(0, below)) for _ in range(4)]
    return RecordBatch(draw(epochs), tuple(records), StreamSeqs(*seqs))


@st.composite
def ticks(draw: st.DrawFn) -> Tick:
    seqs = StreamSeqs(*(draw(u64) for _ in range(4)))
    return Tick(
        epoch=draw(epochs),
        last_seq=seqs.latest(),
        time_ns=draw(u64),
        incarnation=draw(st.integers(0, 2**32 - 1)),
        kernel_state=draw(st.sampled_from(["starting", "running", "dead", "restarting"])),
        last_seqs=seqs,
        curve_batches=draw(st.booleans()),
    )


def rec(
    seq: int, data: bytes = b"x\n", stream: Stream = Stream.STDOUT, flags: int = 0
) -> LogRecord:
    return LogRecord(seq, 1_000 + seq, 1, stream, data, flags)


# -- records ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seq": 0},
        {"seq": -1},
        {"seq": 2**64},
        {"seq": True},
        {"time_ns": -1},
        {"incarnation": 2**32},
        {"stream": "stdout"},
        {"data": "text"},
        {"data": bytearray(b"x")},
        {"flags": 256},
    ],
)
def test_invalid_record_is_a_local_error(kwargs: dict) -> None:
    fields = {"seq": 1, "time_ns": 0, "incarnation": 1, "stream": Stream.STDOUT, "data": b""}
    with pytest.raises(LocalProtocolError):
        LogRecord(**(fields | kwargs))


def test_body_layout_is_little_endian_count_headers_then_data() -> None:
    records = [rec(1, b"ab\n"), LogRecord(2, 7, 3, Stream.NANNY, b"cd", FLAG_NO_EOL)]
    body = pack_records(records)
    assert RECORD_HEADER.size == 26
    expected = (
        struct.pack("<I", 2)
        + struct.pack("<QQIBBI", 1, 1001, 1, 0, 0, 3)
        + struct.pack("<QQIBBI", 2, 7, 3, 3, 1, 2)
        + b"ab\ncd"
    )
    assert body == expected
    assert unpack_records(body) == records


@EXAMPLES
@given(record_lists())
def test_pack_unpack_round_trip(records: list[LogRecord]) -> None:
    assert unpack_records(pack_records(records)) == records


@EXAMPLES
@given(st.binary(max_size=200))
def test_unpack_any_bytes_gives_records_or_malformed(data: bytes) -> None:
    try:
        out = unpack_records(data)
    except MalformedMessage:
        return
    assert unpack_records(pack_records(out)) == out


@EXAMPLES
@given(record_lists(min_size=1), st.data())
def test_unpack_mutated_body_gives_records_or_malformed(records: list, data: st.DataObject) -> None:
    body = bytearray(pack_records(records))
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if action == "flip" and body:
            i = data.draw(st.integers(0, len(body) - 1))
            body[i] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del body[data.draw(st.integers(0, len(body))) :]
        else:
            body += data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(MalformedMessage):
        unpack_records(bytes(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01\x00",
        struct.pack("<I", 1),  # count says 1, no header
        struct.pack("<I", 0) + b"x",  # trailing bytes
        struct.pack("<I", 1) + struct.pack("<QQIBBI", 1, 0, 0, 0, 0, 5) + b"abc",  # short data
        struct.pack("<I", 1) + struct.pack("<QQIBBI", 1, 0, 0, 9, 0, 0),  # stream code
        struct.pack("<I", 1) + struct.pack("<QQIBBI", 0, 0, 0, 0, 0, 0),  # seq 0
        struct.pack("<I", 2) + struct.pack("<QQIBBI", 5, 0, 0, 0, 0, 0) * 2,  # not increasing
        struct.pack("<I", 2**32 - 1),  # huge count, nothing behind it
    ],
)
def test_unpack_rejects_bad_bodies(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        unpack_records(body)


def test_pack_refuses_out_of_order_records() -> None:
    with pytest.raises(LocalProtocolError):
        pack_records([rec(2), rec(1)])
    with pytest.raises(LocalProtocolError):
        pack_records([rec(2), rec(2)])


def test_flags_and_no_eol_pieces_concatenate_to_the_original_bytes() -> None:
    pieces = [rec(1, b"hel", flags=FLAG_NO_EOL), rec(2, b"lo\n"), rec(3, b"tail", flags=1)]
    out = unpack_records(pack_records(pieces))
    assert b"".join(r.data for r in out) == b"hello\ntail"
    assert [r.flags & FLAG_NO_EOL for r in out] == [1, 0, 1]


# -- batches and ticks ------------------------------------------------------------------------


def test_topics_are_stream_names_and_prefix_free() -> None:
    topics = [topic_for(s) for s in Stream] + [TICK_TOPIC]
    assert topics == [b"stdout", b"stderr", b"log", b"nanny", b"tick"]
    curve = [topic_for(s, curve=True) for s in Stream]
    assert curve == [b"curve.stdout", b"curve.stderr", b"curve.log", b"curve.nanny"]
    topics += curve
    for a in topics:
        for b in topics:
            assert a == b or not b.startswith(a)


def test_record_batch_validation() -> None:
    with pytest.raises(LocalProtocolError):
        RecordBatch("e", (), StreamSeqs())
    with pytest.raises(LocalProtocolError):  # one stream per batch
        RecordBatch("e", (rec(1), rec(2, stream=Stream.STDERR)), StreamSeqs())
    with pytest.raises(LocalProtocolError):  # prev seqs must be before the batch
        RecordBatch("e", (rec(3),), StreamSeqs(stderr=3))
    with pytest.raises(LocalProtocolError):
        RecordBatch("bad epoch!", (rec(1),), StreamSeqs())
    with pytest.raises(LocalProtocolError):
        Tick("e", 5, 0, 1, "running", StreamSeqs(stdout=4))  # last_seq is the max
    with pytest.raises(LocalProtocolError):
        Tick("e", 0, 0, 1, "sleeping", StreamSeqs())


@EXAMPLES
@given(st.one_of(batches(), ticks()), st.sampled_from([KEY, NOKEY]))
def test_log_message_round_trip(item: RecordBatch | Tick, signer: Signer) -> None:
    frames = (
        encode_batch(item, signer) if isinstance(item, RecordBatch) else encode_tick(item, signer)
    )
    assert len(frames) == 4
    assert decode_log_message(frames, signer) == item


@EXAMPLES
@given(batches(), st.booleans())
def test_an_unsigned_batch_is_taken_only_from_a_curve_connection(
    batch: RecordBatch, signed_too: bool
) -> None:
    """Spec 4.3: the curve. topics carry batches with an empty signature frame, which a
    receiver accepts only when CurveZMQ authenticated the connection they came over."""
    body = pack_records(list(batch.records))
    first, last = batch.records[0].seq, batch.records[-1].seq
    args = (batch.epoch, batch.stream, len(batch.records), first, last, batch.prev_seqs, body, KEY)
    frames = encode_packed_batch(*args, curve=True)
    assert frames[0] == topic_for(batch.stream, curve=True) and frames[1] == b""
    assert decode_log_message(frames, KEY, curve=True) == batch
    with pytest.raises(BadSignature):
        decode_log_message(frames, KEY)
    with pytest.raises(MalformedMessage):  # a signature where none belongs
        decode_log_message([frames[0], KEY.sign(frames[2:]), *frames[2:]], KEY, curve=True)
    if signed_too:  # the signed form is the same message, on the stream's topic
        signed = encode_packed_batch(*args)
        assert signed[2:] == frames[2:] and decode_log_message(signed, KEY, curve=True) == batch
    other = next(s for s in Stream if s is not batch.stream)
    with pytest.raises(MalformedMessage):  # the topic names another stream
        decode_log_message([topic_for(other, curve=True), *frames[1:]], KEY, curve=True)


def test_a_tick_says_whether_unsigned_batches_are_offered() -> None:
    tick = Tick("ep", 0, 1, 1, "running", StreamSeqs(), curve_batches=True)
    frames = encode_tick(tick, KEY)
    assert json.loads(frames[2])["curve_batches"] is True
    assert decode_log_message(frames, KEY) == tick
    plain = encode_tick(Tick("ep", 0, 1, 1, "running", StreamSeqs()), KEY)
    assert "curve_batches" not in json.loads(plain[2])  # as older nannies write it
    header = json.loads(plain[2])
    header["curve_batches"] = "yes"
    forged = json.dumps(header).encode()
    with pytest.raises(MalformedMessage):
        decode_log_message([b"tick", KEY.sign([forged, b""]), forged, b""], KEY)


def test_batch_frames_and_header() -> None:
    batch = RecordBatch("ep1", (rec(5), rec(6)), StreamSeqs(stdout=4, stderr=2))
    topic, sig, header, body = encode_batch(batch, KEY)
    assert topic == b"stdout"
    assert sig == KEY.sign([header, body])
    assert json.loads(header) == {
        "version": 2,
        "type": "records",
        "epoch": "ep1",
        "stream": "stdout",
        "count": 2,
        "first_seq": 5,
        "last_seq": 6,
        "prev_seqs": {"stdout": 4, "stderr": 2, "log": 0, "nanny": 0},
    }
    assert unpack_records(body) == list(batch.records)


@EXAMPLES
@given(st.lists(st.binary(max_size=40), max_size=6), st.sampled_from([KEY, NOKEY]))
def test_decode_any_frames_gives_message_or_remote_error(frames: list, signer: Signer) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_log_message(frames, signer)


def resign(frames: list[bytes], signer: Signer) -> list[bytes]:
    return [frames[0], signer.sign(frames[2:4]), *frames[2:]]


@EXAMPLES
@given(st.one_of(batches(), ticks()), st.data())
def test_decode_signed_garbage_gives_message_or_remote_error(item, data: st.DataObject) -> None:
    """Mutate a valid message and sign the result, so the parser itself is exercised."""
    frames = encode_batch(item, KEY) if isinstance(item, RecordBatch) else encode_tick(item, KEY)
    which = data.draw(st.sampled_from([0, 2, 3]))
    frame = bytearray(frames[which])
    if frame and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    else:
        frame = bytearray(data.draw(st.binary(max_size=60)))
    frames[which] = bytes(frame)
    with contextlib.suppress(RemoteProtocolError):
        decode_log_message(resign(frames, KEY), KEY)


@EXAMPLES
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "type",
                "epoch",
                "stream",
                "count",
                "first_seq",
                "last_seq",
                "prev_seqs",
                "last_seqs",
                "time_ns",
                "incarnation",
                "kernel_state",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-2, 2**65),
            st.text(max_size=8),
            st.floats(),
            st.lists(st.integers(), max_size=2),
            st.sampled_from(["records", "tick", "stdout", "ep"]),
        ),
    ),
    st.sampled_from([b"stdout", b"tick", b"x"]),
)
def test_decode_signed_random_headers(header: dict, topic: bytes) -> None:
    head = json.dumps(header).encode()
    body = pack_records([rec(1)])
    for b in (body, b""):
        with contextlib.suppress(RemoteProtocolError):
            decode_log_message([topic, NOKEY.sign([head, b]), head, b], NOKEY)


def test_forged_and_unsigned_messages_are_bad_signatures() -> None:
    frames = encode_batch(RecordBatch("e", (rec(1),), StreamSeqs()), KEY)
    with pytest.raises(BadSignature):
        decode_log_message([frames[0], b"0" * 64, *frames[2:]], KEY)
    with pytest.raises(BadSignature):
        decode_log_message([frames[0], b"", *frames[2:]], KEY)
    with pytest.raises(BadSignature):
        decode_log_message(frames, Signer(b"other-key"))
    with pytest.raises(BadSignature):  # body swapped under a valid header signature
        decode_log_message([*frames[:3], pack_records([rec(1, b"evil\n")])], KEY)


def test_topic_must_match_the_records() -> None:
    frames = encode_batch(RecordBatch("e", (rec(1),), StreamSeqs()), KEY)
    with pytest.raises(MalformedMessage):
        decode_log_message([b"stderr", *frames[1:]], KEY)
    with pytest.raises(MalformedMessage):
        decode_log_message([b"tick", *frames[1:]], KEY)
    tick = encode_tick(Tick("e", 0, 0, 0, "starting", StreamSeqs()), KEY)
    with pytest.raises(MalformedMessage):
        decode_log_message([b"stdout", *tick[1:]], KEY)


def _signed_header(header: dict, body: bytes, topic: bytes = b"stdout") -> list[bytes]:
    head = json.dumps(header).encode()
    return [topic, KEY.sign([head, body]), head, body]


def test_header_must_describe_the_body_exactly() -> None:
    body = pack_records([rec(1), rec(2)])
    good = {
        "version": 2,
        "type": "records",
        "epoch": "e",
        "stream": "stdout",
        "count": 2,
        "first_seq": 1,
        "last_seq": 2,
        "prev_seqs": {"stdout": 0, "stderr": 0, "log": 0, "nanny": 0},
    }
    assert len(decode_log_message(_signed_header(good, body), KEY).records) == 2  # type: ignore[union-attr]
    for change in [
        {"count": 3},
        {"first_seq": 2},
        {"last_seq": 3},
        {"stream": "stderr"},
        {"prev_seqs": {"stdout": 1, "stderr": 0, "log": 0, "nanny": 0}},
        {"prev_seqs": {"stdout": 0}},
        {"epoch": ""},
        {"type": "other"},
        {"count": True},
    ]:
        with pytest.raises(MalformedMessage):
            decode_log_message(_signed_header(good | change, body), KEY)
    with pytest.raises(MalformedMessage):  # records of another stream under this topic
        other = pack_records([rec(1, stream=Stream.STDERR), rec(2, stream=Stream.STDERR)])
        decode_log_message(_signed_header(good, other), KEY)
    with pytest.raises(UnsupportedVersion):
        decode_log_message(_signed_header(good | {"version": 1}, body), KEY)


# -- nanny events -----------------------------------------------------------------------------


def test_nanny_event_round_trip() -> None:
    data = nanny_event_data(
        "kernel_died", "kernel exited with code 7", incarnation=1, exit_code=7, signal=None
    )
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert parse_nanny_event(data) == {
        "event": "kernel_died",
        "text": "kernel exited with code 7",
        "incarnation": 1,
        "exit_code": 7,
        "signal": None,
    }
    multi = nanny_event_data("note", "two\nlines ✓")
    assert multi.count(b"\n") == 1 and parse_nanny_event(multi)["text"] == "two\nlines ✓"
    with pytest.raises(LocalProtocolError):
        nanny_event_data("", "x")
    with pytest.raises(LocalProtocolError):
        nanny_event_data("e", "x", bad=object())
    with pytest.raises(LocalProtocolError):
        nanny_event_data("e", "x", bad=float("nan"))


@EXAMPLES
@given(st.binary(max_size=60))
def test_parse_nanny_event_any_bytes(data: bytes) -> None:
    try:
        event = parse_nanny_event(data)
    except MalformedMessage:
        return
    assert isinstance(event["event"], str) and isinstance(event["text"], str)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}\n",
        b'{"event":"x"}\n',
        b'{"event":"","text":""}\n',
        b"[]\n",
        b'{"event":"x","text":"y"}',
    ],
)
def test_parse_nanny_event_rejects(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_nanny_event(data)
