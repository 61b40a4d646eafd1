"""The chunked store gives exactly the records of a store of one entry per line.

``perline_store.LogStore`` is the store as it was before it kept one chunk per append; both
get the same appends (of any pieces, streams, flags and sizes, with eviction; blocks of
whole lines mixed with pieces), and every way of reading must agree: entries, records, last
N, tail text, packed bodies, statistics, the spill.
"""

from __future__ import annotations

import tempfile
from array import array
from dataclasses import astuple
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perline_store import LogStore as PerLineStore

from nanny_io.store import RECORD_OVERHEAD, LogStore, Spill, _headers, read_spill
from nanny_io_proto.lines import LineAssembler, LineBlock
from nanny_io_proto.logrecords import RECORD_HEADER, STREAM_CODES, pack_entries
from nanny_io_proto.logserver import LogPublisher
from nanny_io_proto.priorities import PriorityLines
from nanny_io_proto.signing import Signer
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL, FLAG_PRIORITY, Stream

T0 = 1_700_000_000_000_000_000
STREAMS = list(STREAM_CODES)

_flags = st.sampled_from(
    [0, FLAG_NO_EOL, FLAG_IOPUB, FLAG_NO_EOL | FLAG_IOPUB, FLAG_PRIORITY | 0x30]
)
_piece = st.tuples(st.binary(max_size=40), _flags)
#: Whole lines as a block holds them: each ends in b"\n", none holds b"\r".
_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"\n")
_append = st.one_of(
    st.tuples(st.just("many"), st.sampled_from(STREAMS), st.lists(_piece, max_size=30)),
    st.tuples(st.just("one"), st.sampled_from(STREAMS), _piece),
    st.tuples(st.just("block"), st.sampled_from(STREAMS), st.lists(_line, max_size=30)),
)


def _block(lines: list[bytes]) -> LineBlock:
    return LineBlock(b"".join(lines), array("I", map(len, lines)))


def _both(ops: list[Any], max_bytes: int) -> tuple[LogStore, PerLineStore]:
    chunked = LogStore(epoch="e", max_bytes=max_bytes)
    perline = PerLineStore(epoch="e", max_bytes=max_bytes)
    for i, (kind, stream, arg) in enumerate(ops):
        if kind == "block":
            block = _block(arg)
            got = chunked.append_block(stream, 1 + i % 3, T0 + i, block.data, block.lengths)
            assert perline.append(stream, 1 + i % 3, T0 + i, [(d, 0) for d in arg]) == got
        for store in (chunked, perline):
            if kind == "many":
                got = store.append(stream, 1 + i % 3, T0 + i, list(arg), checked=i % 2 == 0)
            elif kind == "one":
                got = store.append_one(stream, 1 + i % 3, T0 + i, arg[0], arg[1])
        assert astuple(chunked.statistics())[:7] == astuple(perline.statistics())[:7]
        if kind != "one" and arg and chunked.oldest_seq <= got[0]:
            body = chunked.packed(*got)
            assert body is not None
            assert body == perline.packed(*got) == pack_entries(chunked.entries(*got))
    return chunked, perline


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_append, max_size=25),
    max_bytes=st.sampled_from([1, RECORD_OVERHEAD * 3, RECORD_OVERHEAD * 12 + 50, 1 << 20]),
    bounds=st.tuples(st.integers(-2, 200), st.one_of(st.none(), st.integers(-2, 200))),
    limit=st.one_of(st.none(), st.integers(-1, 50)),
    n=st.integers(-1, 60),
    streams=st.one_of(st.none(), st.sets(st.sampled_from(STREAMS))),
)
def test_chunks_read_back_as_one_entry_per_line(
    ops: list[Any],
    max_bytes: int,
    bounds: tuple[int, int | None],
    limit: int | None,
    n: int,
    streams: set[Stream] | None,
) -> None:
    chunked, perline = _both(ops, max_bytes)
    assert astuple(chunked.statistics()) == astuple(perline.statistics())
    lo, hi = bounds
    assert chunked.entries() == perline.entries()
    assert chunked.entries(lo, hi, streams, limit) == perline.entries(lo, hi, streams, limit)
    assert chunked.records(lo, hi, streams, limit) == perline.records(lo, hi, streams, limit)
    assert chunked.last_entries(n, streams, from_seq=lo, to_seq=hi) == perline.last_entries(
        n, streams, from_seq=lo, to_seq=hi
    )
    assert chunked.last(n, streams) == perline.last(n, streams)
    for start in (1, lo):
        for kinds in ((Stream.STDERR, Stream.LOG), tuple(STREAMS)):
            for incarnation in (None, 2):
                args: dict[str, Any] = {
                    "streams": kinds,
                    "max_lines": 5,
                    "max_chars": 60,
                    "incarnation": incarnation,
                    "from_seq": start,
                    "priorities": True,
                }
                assert chunked.tail_text(**args) == perline.tail_text(**args)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=400),
    batches=st.lists(st.integers(1, 120), min_size=1),
    cut=st.integers(1, 50),
    blocks=st.booleans(),
)
def test_eviction_inside_a_chunk_keeps_the_minimum(
    sizes: list[int], batches: list[int], cut: int, blocks: bool
) -> None:
    """Appends of many records into a ring that holds about ``cut`` of them: the head of
    the oldest chunk (or block) is evicted record by record, exactly as the per-line ring
    did, also when small appends follow a large one."""
    pieces = [(b"x" * size + b"\n", 0) for size in sizes]
    max_bytes = cut * (RECORD_OVERHEAD + 150)
    chunked = LogStore(epoch="e", max_bytes=max_bytes)
    perline = PerLineStore(epoch="e", max_bytes=max_bytes)
    i = 0
    for n, batch in enumerate(batches * (len(pieces) // sum(batches) + 1)):
        if i >= len(pieces):
            break
        part = pieces[i : i + batch]
        if blocks and n % 3:
            block = _block([data for data, _ in part])
            chunked.append_block(Stream.LOG, 1, T0 + i, block.data, block.lengths)
        else:
            chunked.append(Stream.LOG, 1, T0 + i, list(part), checked=True)  # kept and cut
        perline.append(Stream.LOG, 1, T0 + i, part, checked=True)
        assert astuple(chunked.statistics()) == astuple(perline.statistics())
        assert chunked.entries(chunked.oldest_seq, chunked.oldest_seq + 2) == perline.entries(
            perline.oldest_seq, perline.oldest_seq + 2
        )
        i += batch
    assert chunked.entries() == perline.entries()


_text = st.one_of(
    st.lists(
        st.sampled_from([b"a", b"bc", b"\n", b"\r", b"<3>", b"<9>", b"<", b"\xc3\xa9", b"x" * 30]),
        max_size=40,
    ).map(b"".join),
    # the usual case: lines without b"\r" or a prefix, which come as blocks
    st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\xc3\xa9", b"x" * 30]), max_size=40).map(
        b"".join
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.tuples(_text, st.booleans()), max_size=12),
    max_line=st.sampled_from([4, 7, 64, 1 << 16]),
    max_bytes=st.sampled_from([RECORD_OVERHEAD * 4, 1 << 20]),
    spill=st.booleans(),
)
def test_capture_path_appends_give_the_same_records(
    chunks: list[tuple[bytes, bool]], max_line: int, max_bytes: int, spill: bool
) -> None:
    """What the capture path does (PriorityLines over LineAssembler, blocks appended with
    ``append_block`` and other records with ``checked``) stores, packs and spills the
    records the per-line store did."""
    with tempfile.TemporaryDirectory() as directory:
        chunked = LogStore(
            epoch="e", max_bytes=max_bytes, spill=Spill(directory, epoch="e") if spill else None
        )
        perline = PerLineStore(epoch="e", max_bytes=max_bytes)
        everything = PerLineStore(epoch="e", max_bytes=1 << 30)
        lines = PriorityLines(LineAssembler(max_line))
        reference = PriorityLines(LineAssembler(max_line))
        for i, (data, flush) in enumerate(chunks):
            got_records = lines.flush() if flush else lines.feed_block(data)
            pieces = reference.flush() if flush else reference.feed(data)
            if isinstance(got_records, LineBlock):
                assert got_records.records() == pieces
                assert list(got_records.lengths) == [len(p) for p, _ in pieces]
                got = chunked.append_block(
                    Stream.LOG, 1, T0 + i, got_records.data, got_records.lengths
                )
            else:
                assert got_records == pieces
                got = chunked.append(Stream.LOG, 1, T0 + i, list(pieces), checked=True)
            perline.append(Stream.LOG, 1, T0 + i, pieces)
            everything.append(Stream.LOG, 1, T0 + i, pieces)
            if pieces and chunked.oldest_seq <= got[0]:
                assert chunked.packed(*got) == pack_entries(perline.entries(*got))
        assert astuple(chunked.statistics())[:7] == astuple(perline.statistics())[:7]
        assert chunked.entries() == perline.entries()
        if spill:
            assert chunked.spill is not None
            chunked.spill.close()
            assert [r for _, r in read_spill(directory)] == everything.records()


@pytest.mark.parametrize("first", [1, 2, 0xFFFF - 3, 0xFFFF, 0x10000, 3 << 16 | 5, (1 << 40) - 2])
@pytest.mark.parametrize("n", [1, 5, 0x10000 - 1, 0x10000, 0x10000 + 3])
def test_headers_by_columns_are_struct_packed_headers(first: int, n: int) -> None:
    """The column-wise headers, across the carry of a seq's low two bytes and longer than
    the seq tables, are those of one RECORD_HEADER.pack per record."""
    pieces = [(b"y" * (k % 300), k % 3 * FLAG_NO_EOL) for k in range(n)]
    code = STREAM_CODES[Stream.STDERR]
    expected = b"".join(
        RECORD_HEADER.pack(first + k, T0, 7, code, flags, len(data))
        for k, (data, flags) in enumerate(pieces)
    )
    lengths = array("I", [len(data) for data, _ in pieces])
    flags = bytes(flags for _, flags in pieces)
    assert _headers(first, T0, 7, code, lengths, flags) == expected
    expected_plain = b"".join(
        RECORD_HEADER.pack(first + k, T0, 7, code, 0, len(data))
        for k, (data, _) in enumerate(pieces)
    )
    assert _headers(first, T0, 7, code, lengths, None) == expected_plain


def test_live_batches_are_the_same_with_and_without_the_stores_packed_body() -> None:
    """The publisher sends the store's packed body of an append as it is; the frames are
    those it builds from the entries when the source offers no packed body."""

    class EntriesOnly:
        def __init__(self, store: LogStore) -> None:
            self.store = store
            self.oldest_seq = property(lambda _: store.oldest_seq)

        def __getattr__(self, name: str) -> Any:
            if name == "packed":
                raise AttributeError(name)
            return getattr(self.store, name)

    store = LogStore(epoch="e", max_bytes=1 << 20)
    fast = LogPublisher("e", Signer(b"key"), max_records=50, max_bytes=3000)
    slow = LogPublisher("e", Signer(b"key"), max_records=50, max_bytes=3000)
    for publisher in (fast, slow):
        publisher.subscription(b"\x01")
    for i, n in enumerate([1, 3, 50, 51, 10, 200]):
        pieces = [(b"%d line\n" % k * (k % 7), 0) for k in range(n)]
        first, last = store.append(Stream.STDOUT, 1, T0 + i, pieces)
        sent = fast.stored(Stream.STDOUT, first, last, store)
        assert sent == slow.stored(Stream.STDOUT, first, last, EntriesOnly(store))
        assert len(sent) >= 1


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 1200), min_size=1, max_size=6),
    max_bytes=st.sampled_from([40_000, 200_000, 1 << 24]),
    probes=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 600)), max_size=4),
)
def test_large_blocks_read_in_parts(
    counts: list[int], max_bytes: int, probes: list[tuple[int, int]]
) -> None:
    """Blocks of more lines than a read expands at a time (last words go back 256 records
    at a time): ranges inside them, the newest N and the last words are the per-line
    store's, before and after eviction cut them."""
    chunked = LogStore(epoch="e", max_bytes=max_bytes)
    perline = PerLineStore(epoch="e", max_bytes=max_bytes)
    for i, count in enumerate(counts):
        lines = [b"%d.%d %s\n" % (i, k, b"z" * (k * 7 % 90)) for k in range(count)]
        block = _block(lines)
        stream = Stream.STDERR if i % 2 else Stream.LOG
        got = chunked.append_block(stream, 1, T0 + i, block.data, block.lengths)
        assert perline.append(stream, 1, T0 + i, [(d, 0) for d in lines]) == got
        assert astuple(chunked.statistics()) == astuple(perline.statistics())
    for start, n in [(1, 700), *probes]:
        assert chunked.entries(start, start + n) == perline.entries(start, start + n)
        assert chunked.last_entries(n, from_seq=start) == perline.last_entries(n, from_seq=start)
        for streams in ((Stream.LOG,), (Stream.STDERR, Stream.LOG)):
            args: dict[str, Any] = {"streams": streams, "max_lines": n, "max_chars": 20 * n + 1}
            assert chunked.tail_text(**args, from_seq=start) == perline.tail_text(
                **args, from_seq=start
            )
