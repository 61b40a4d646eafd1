"""The chunked store gives exactly the records of a store of one entry per line.

``perline_store.LogStore`` is the store as it was before it kept one chunk per append; both
get the same appends (of any pieces, streams, flags and sizes, with eviction), and every way
of reading must agree: entries, records, last N, tail text, packed bodies, statistics.
"""

from __future__ import annotations

from dataclasses import astuple
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perline_store import LogStore as PerLineStore

from nanny_io.store import RECORD_OVERHEAD, LogStore
from nanny_io_proto.logrecords import STREAM_CODES, pack_entries
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL, FLAG_PRIORITY, Stream

T0 = 1_700_000_000_000_000_000
STREAMS = list(STREAM_CODES)

_flags = st.sampled_from(
    [0, FLAG_NO_EOL, FLAG_IOPUB, FLAG_NO_EOL | FLAG_IOPUB, FLAG_PRIORITY | 0x30]
)
_piece = st.tuples(st.binary(max_size=40), _flags)
_append = st.one_of(
    st.tuples(st.just("many"), st.sampled_from(STREAMS), st.lists(_piece, max_size=30)),
    st.tuples(st.just("one"), st.sampled_from(STREAMS), _piece),
)


def _both(ops: list[Any], max_bytes: int) -> tuple[LogStore, PerLineStore]:
    chunked = LogStore(epoch="e", max_bytes=max_bytes)
    perline = PerLineStore(epoch="e", max_bytes=max_bytes)
    for i, (kind, stream, arg) in enumerate(ops):
        for store in (chunked, perline):
            if kind == "many":
                got = store.append(stream, 1 + i % 3, T0 + i, list(arg), checked=i % 2 == 0)
            else:
                got = store.append_one(stream, 1 + i % 3, T0 + i, arg[0], arg[1])
        assert astuple(chunked.statistics()) == astuple(perline.statistics())
        if kind == "many" and arg and chunked.oldest_seq <= got[0]:
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
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=400), cut=st.integers(1, 50))
def test_eviction_inside_a_chunk_keeps_the_minimum(sizes: list[int], cut: int) -> None:
    """Appends of many records into a ring that holds about ``cut`` of them: the head of
    the oldest chunk is evicted record by record, exactly as the per-line ring did."""
    pieces = [(b"x" * size, 0) for size in sizes]
    max_bytes = cut * (RECORD_OVERHEAD + 150)
    chunked = LogStore(epoch="e", max_bytes=max_bytes)
    perline = PerLineStore(epoch="e", max_bytes=max_bytes)
    for i in range(0, len(pieces), 37):
        for store in (chunked, perline):
            store.append(Stream.LOG, 1, T0 + i, pieces[i : i + 37], checked=True)
        assert astuple(chunked.statistics()) == astuple(perline.statistics())
    assert chunked.entries() == perline.entries()
