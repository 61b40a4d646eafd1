"""The store's packed reads for replay answers: the same bodies as packing its entries."""

from __future__ import annotations

from array import array
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanny_io.store import RECORD_OVERHEAD, LogStore
from nanny_io_proto.logrecords import STREAM_CODES, pack_entries
from nanny_io_proto.logserver import cut_entries, cut_packed
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL, Stream

T0 = 1_700_000_000_000_000_000
STREAMS = list(STREAM_CODES)

_piece = st.tuples(st.binary(max_size=40), st.sampled_from([0, FLAG_NO_EOL, FLAG_IOPUB]))
_append = st.one_of(
    st.tuples(st.just("many"), st.sampled_from(STREAMS), st.lists(_piece, max_size=30)),
    st.tuples(st.just("one"), st.sampled_from(STREAMS), _piece),
    # a read of whole lines without b"\r", as the capture path stores it (bytes and lengths)
    st.tuples(
        st.just("block"),
        st.sampled_from(STREAMS),
        st.lists(
            st.binary(max_size=40).map(lambda b: b.translate(None, b"\r\n") + b"\n"), max_size=30
        ),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_append, max_size=25),
    max_bytes=st.sampled_from([RECORD_OVERHEAD * 3, RECORD_OVERHEAD * 12 + 50, 1 << 20]),
    bounds=st.tuples(st.integers(-2, 200), st.one_of(st.none(), st.integers(-2, 200))),
    limit=st.one_of(st.none(), st.integers(-1, 50)),
    streams=st.one_of(st.none(), st.sets(st.sampled_from(STREAMS), min_size=1)),
    cut=st.tuples(st.integers(1, 20), st.integers(1, 300)),
)
def test_packed_parts_cut_into_the_bodies_of_the_entries(
    ops: list[Any],
    max_bytes: int,
    bounds: tuple[int, int | None],
    limit: int | None,
    streams: set[Stream] | None,
    cut: tuple[int, int],
) -> None:
    """Appends of one and of many records and of blocks, a ring that evicts inside chunks,
    any range, stream filter and limit: the parts hold exactly the entries, and cut into
    messages they are byte for byte the messages of the entries."""
    store = LogStore(epoch="e", max_bytes=max_bytes)
    for i, (kind, stream, arg) in enumerate(ops):
        if kind == "many":
            store.append(stream, 1 + i % 3, T0 + i, list(arg), checked=i % 2 == 0)
        elif kind == "block":
            if arg:
                store.append_block(
                    stream, 1 + i % 3, T0 + i, b"".join(arg), array("I", map(len, arg))
                )
        else:
            store.append_one(stream, 1 + i % 3, T0 + i, arg[0], arg[1])
    lo, hi = bounds
    entries = store.entries(lo, hi, streams, limit)
    parts = store.packed_parts(lo, hi, streams, limit)
    assert [s for first, last, _ in parts for s in range(first, last + 1)] == [
        e[0] for e in entries
    ]
    max_records, max_message = cut
    expected = [
        (len(run), run[0][0], run[-1][0], pack_entries(run))
        for run in cut_entries(entries, max_records, max_message)
    ]
    assert cut_packed(parts, max_records, max_message) == expected
