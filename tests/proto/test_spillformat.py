"""The spill segment format (nanny_io_proto.spillformat): encoding and the incremental decoder."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.errors import LocalProtocolError, RemoteProtocolError
from nanny_io_proto.logrecords import LogRecord, pack_records
from nanny_io_proto.spillformat import (
    CHUNK_HEAD,
    END,
    NEED_DATA,
    SEGMENT_HEADER,
    SPILL_MAGIC,
    BadEpoch,
    Chunk,
    CorruptChunk,
    DamagedChunk,
    Event,
    MalformedSegment,
    NotASegment,
    SegmentDecoder,
    SegmentHeader,
    TruncatedHeader,
    chunk_head,
    encode_chunk,
    encode_segment_header,
)
from nanny_io_proto.streams import Stream
from nanny_io_proto.version import LOG_FORMAT_VERSION

EXAMPLES = settings(max_examples=200, deadline=None)


def decode(data: bytes, step: int | None = None) -> tuple[list[Event], MalformedSegment | None]:
    """Every event up to END (or the error), feeding ``data`` whole or ``step`` bytes at a time."""
    decoder = SegmentDecoder()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    events: list[Event] = []
    try:
        for piece in [p for p in pieces if p] + [b""]:
            decoder.receive_data(piece)
            while (event := decoder.next_event()) is not NEED_DATA:
                if event is END:
                    return events, None
                events.append(event)
    except MalformedSegment as exc:
        return events, exc
    raise AssertionError("the decoder never ended after the end of the file")


def outcome(data: bytes, step: int | None = None) -> tuple[list[Event], str | None]:
    events, error = decode(data, step)
    return events, None if error is None else f"{type(error).__name__}: {error}"


records_st = st.builds(
    LogRecord,
    seq=st.integers(1, 50),
    time_ns=st.integers(0, 2**64 - 1),
    incarnation=st.integers(0, 2**32 - 1),
    stream=st.sampled_from(list(Stream)),
    data=st.binary(max_size=40),
    flags=st.integers(0, 255),
)


@st.composite
def chunks(draw: st.DrawFn) -> list[list[LogRecord]]:
    """Chunks of records with seqs increasing across the whole segment."""
    out: list[list[LogRecord]] = []
    seq = 0
    for n in draw(st.lists(st.integers(0, 4), max_size=6)):
        chunk = []
        for _ in range(n):
            rec = draw(records_st)
            seq += draw(st.integers(1, 3))
            chunk.append(
                LogRecord(seq, rec.time_ns, rec.incarnation, rec.stream, rec.data, rec.flags)
            )
        out.append(chunk)
    return out


epochs = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)


def segment(epoch: str, body_chunks: list[list[LogRecord]]) -> bytes:
    return encode_segment_header(epoch) + b"".join(
        encode_chunk([pack_records(c)]) for c in body_chunks
    )


# -- properties --------------------------------------------------------------------------------


@EXAMPLES
@given(st.binary(max_size=300), st.integers(1, 7))
def test_any_bytes_give_events_or_a_malformed_segment_whole_or_piecewise(
    data: bytes, step: int
) -> None:
    whole = outcome(data)  # raises nothing but MalformedSegment (decode lets others escape)
    assert outcome(data, step) == whole
    assert outcome(data, 1) == whole


@EXAMPLES
@given(st.binary(max_size=200), epochs, st.integers(1, 5))
def test_garbage_after_a_valid_header_is_decoded_the_same_in_pieces(
    tail: bytes, epoch: str, step: int
) -> None:
    data = encode_segment_header(epoch) + tail
    events, error = decode(data)
    assert events[:1] == [SegmentHeader(epoch)]
    assert error is None or isinstance(error, CorruptChunk)
    assert outcome(data, step) == outcome(data)


@EXAMPLES
@given(epochs, chunks())
def test_round_trip(epoch: str, body_chunks: list[list[LogRecord]]) -> None:
    data = segment(epoch, body_chunks)
    events, error = decode(data, 3)
    assert error is None
    assert events[0] == SegmentHeader(epoch)
    assert [list(e.records) for e in events[1:] if isinstance(e, Chunk)] == body_chunks
    assert all(isinstance(e, Chunk) and e.complete for e in events[1:])
    offsets = [e.offset for e in events[1:] if isinstance(e, Chunk)]
    assert offsets[:1] in ([], [len(encode_segment_header(epoch))])


@EXAMPLES
@given(epochs, chunks(), st.data())
def test_a_segment_cut_anywhere_gives_a_prefix_of_its_records(
    epoch: str, body_chunks: list[list[LogRecord]], data: st.DataObject
) -> None:
    """A nanny killed mid-write leaves a cut file: what it yields was written, in order."""
    full = segment(epoch, body_chunks)
    cut = data.draw(st.integers(0, len(full)))
    events, error = decode(full[:cut])
    header_size = len(encode_segment_header(epoch))
    if 0 < cut < header_size:
        assert isinstance(error, TruncatedHeader) and error.length == cut
        return
    assert error is None
    got = [r for e in events if isinstance(e, Chunk) for r in e.records]
    written = [r for c in body_chunks for r in c]
    assert got == written[: len(got)]
    whole_chunks = [e for e in events if isinstance(e, Chunk) and e.complete]
    assert [list(e.records) for e in whole_chunks] == body_chunks[: len(whole_chunks)]
    assert all(e.complete for e in events[:-1] if isinstance(e, Chunk))


# -- examples ----------------------------------------------------------------------------------


def test_an_empty_file_is_a_segment_killed_before_its_header() -> None:
    assert outcome(b"") == ([], None)


def test_header_faults_are_told_apart() -> None:
    header = SEGMENT_HEADER.pack(b"NOTSPILL", 1, 2) + b"ep"
    _, error = decode(header)
    assert isinstance(error, NotASegment) and error.magic == b"NOTSPILL" and error.version == 1
    _, error = decode(SEGMENT_HEADER.pack(SPILL_MAGIC, 99, 2) + b"ep")
    assert isinstance(error, NotASegment) and error.version == 99
    for epoch in (b"", b"bad epoch", b"\xff\xfe", b"x" * 65):
        _, error = decode(SEGMENT_HEADER.pack(SPILL_MAGIC, LOG_FORMAT_VERSION, len(epoch)) + epoch)
        assert isinstance(error, BadEpoch), epoch
    cut = SEGMENT_HEADER.pack(SPILL_MAGIC, LOG_FORMAT_VERSION, 10) + b"abc"  # cut in the epoch
    _, error = decode(cut)
    assert isinstance(error, TruncatedHeader) and error.length == SEGMENT_HEADER.size + 3
    assert isinstance(error, RemoteProtocolError)


def test_a_corrupt_chunk_reports_its_offset_after_the_good_ones() -> None:
    good = encode_chunk([pack_records([LogRecord(1, 0, 1, Stream.STDOUT, b"ok\n")])])
    bad = encode_chunk([b"xyz"])  # checksums right, body not a record body
    start = encode_segment_header("ep")
    events, error = decode(start + good + bad + good)
    assert [type(e) for e in events] == [SegmentHeader, Chunk]
    assert isinstance(error, CorruptChunk) and error.offset == len(start) + len(good)


def test_a_flipped_byte_is_damage_not_the_end_and_decoding_goes_on() -> None:
    """Format 1 read a flipped data byte as wrong data and a damaged length as the end of
    the file; the checksums tell both apart from a cut."""
    recs = [LogRecord(s, 0, 1, Stream.STDOUT, b"line %d\n" % s) for s in (1, 2, 3)]
    start = encode_segment_header("ep")
    chunks = [encode_chunk([pack_records([r])]) for r in recs]
    data = bytearray(start + b"".join(chunks))
    data[len(start) + len(chunks[0]) + len(chunks[1]) - 2] ^= 0x20  # record 2's data
    events, error = decode(bytes(data))
    assert error is None
    assert events[1] == Chunk(len(start), (recs[0],))
    assert events[2] == DamagedChunk(len(start) + len(chunks[0]), len(chunks[1]) - CHUNK_HEAD.size)
    assert events[3] == Chunk(len(start) + len(chunks[0]) + len(chunks[1]), (recs[2],))
    data = bytearray(start + b"".join(chunks))
    data[len(start) + len(chunks[0]) + 1] ^= 0x01  # record 2's length: a cut? no, damage
    events, error = decode(bytes(data))
    assert isinstance(error, CorruptChunk) and "checksum" in error.reason


def test_the_decoder_stays_broken_and_refuses_data_after_the_end() -> None:
    decoder = SegmentDecoder()
    decoder.receive_data(b"NOTSPILL" + bytes(4))
    with pytest.raises(NotASegment):
        decoder.next_event()
    with pytest.raises(NotASegment):
        decoder.next_event()
    decoder = SegmentDecoder()
    decoder.receive_data(b"")
    assert decoder.next_event() is END and decoder.next_event() is END
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"late")


def test_a_chunk_cut_in_its_body_keeps_the_complete_records() -> None:
    recs = [LogRecord(s, 0, 1, Stream.LOG, b"line %d\n" % s) for s in (1, 2, 3)]
    full = encode_segment_header("ep") + encode_chunk([pack_records(recs)])
    events, error = decode(full[:-3])  # the last record's data is cut
    assert error is None
    assert events[-1] == Chunk(len(encode_segment_header("ep")), tuple(recs[:2]), complete=False)
    events, _ = decode(full[: len(encode_segment_header("ep")) + 2])  # inside the length
    assert events == [SegmentHeader("ep")]


@given(parts=st.lists(st.binary(max_size=300), max_size=5))
def test_chunk_head_checksums_are_zlibs_crc32_of_the_joined_body(parts: list[bytes]) -> None:
    """Whichever CRC-32 implementation is installed, the values are zlib's (the format)."""
    body = b"".join(parts)
    head = chunk_head(parts)
    size = len(body)
    assert head == struct.pack("<III", size, zlib.crc32(struct.pack("<I", size)), zlib.crc32(body))
    assert encode_chunk(parts) == head + body
