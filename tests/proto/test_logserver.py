"""The log channel's pure server: live batches and ticks (LogPublisher), replay answers
(ReplayAnswer) and the cutting of entries into messages (specs/log-channel.md 4, 5, 8)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import accumulate, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memstore import MemoryStore, entry

from nanny_io_proto.errors import BadSignature, LocalProtocolError
from nanny_io_proto.logrecords import (
    Entry,
    LogRecord,
    RecordBatch,
    StreamSeqs,
    Tick,
    decode_log_message,
    pack_entries,
    pack_records,
)
from nanny_io_proto.logserver import LogPublisher, ReplayAnswer, cut_entries, cut_packed
from nanny_io_proto.replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayRequest,
    ReplayResponse,
    ReplayTruncated,
    decode_replay_response,
)
from nanny_io_proto.signing import Signer
from nanny_io_proto.streams import Stream

KEY = Signer(b"a-secret-key")
EXAMPLES = settings(max_examples=150, deadline=None)
OUT, ERR, LOG = Stream.STDOUT, Stream.STDERR, Stream.LOG
SUBSCRIBE_ALL = b"\x01"


def rec(seq: int, stream: Stream = OUT, data: bytes | None = None) -> LogRecord:
    return LogRecord(seq, seq // 2, 1, stream, b"line %d\n" % seq if data is None else data)


# -- cutting -----------------------------------------------------------------------------------


def test_pack_entries_is_pack_records() -> None:
    records = [rec(1), rec(2, ERR, b""), rec(7, LOG, b"\xff" * 300)]
    assert pack_entries([entry(r) for r in records]) == pack_records(records)


def test_cut_entries_by_count_and_data_size() -> None:
    sizes = [10, 10, 10, 200, 10, 10]
    entries = [entry(rec(i + 1, data=b"x" * n)) for i, n in enumerate(sizes)]

    def seqs(runs: list[Sequence[Entry]]) -> list[list[int]]:
        return [[e[0] for e in run] for run in runs]

    assert seqs(cut_entries(entries, 2, 10_000)) == [[1, 2], [3, 4], [5, 6]]
    # at most 30 bytes of data per run; the 200-byte record is alone
    assert seqs(cut_entries(entries, 10, 30)) == [[1, 2, 3], [4], [5, 6]]
    assert seqs(cut_entries(entries, 10, 29)) == [[1, 2], [3], [4], [5, 6]]
    assert cut_entries(entries, 10, 250) == [entries]
    assert cut_entries([], 10, 10) == []
    with pytest.raises(LocalProtocolError):
        cut_entries(entries, 0, 10)


@EXAMPLES
@given(
    st.lists(st.integers(0, 100), max_size=60),
    st.integers(1, 8),
    st.integers(1, 400),
)
def test_cut_entries_keeps_everything_within_limits(
    sizes: list[int], max_records: int, max_bytes: int
) -> None:
    entries = [entry(rec(i + 1, data=b"y" * n)) for i, n in enumerate(sizes)]
    runs = cut_entries(entries, max_records, max_bytes)
    assert [e for run in runs for e in run] == entries
    for run in runs:
        assert 1 <= len(run) <= max_records
        assert sum(len(e[5]) for e in run) <= max_bytes or len(run) == 1
    for run, following in pairwise(runs):  # each run is as long as allowed
        data = sum(len(e[5]) for e in [*run, following[0]])
        assert len(run) == max_records or data > max_bytes


# -- live publishing ---------------------------------------------------------------------------


def _batches(messages: list[list[bytes]], curve: bool = False) -> list[RecordBatch]:
    out = []
    for frames in messages:
        item = decode_log_message(frames, KEY, curve=curve)
        assert isinstance(item, RecordBatch)
        out.append(item)
    return out


def test_publisher_batches_link_to_the_last_stored_seqs_and_ticks_count_them() -> None:
    store = MemoryStore()
    pub = LogPublisher("ep", KEY, max_records=2)
    assert pub.subscription(SUBSCRIBE_ALL)  # the empty topic covers ticks: greet
    out = pub.stored(OUT, *store.add(OUT, 3), store)
    out += pub.stored(ERR, *store.add(ERR, 1), store)
    out += pub.stored(OUT, *store.add(OUT, 1), store)
    batches = _batches(out)
    assert [(b.stream, b.first_seq, b.last_seq) for b in batches] == [
        (OUT, 1, 2),
        (OUT, 3, 3),
        (ERR, 4, 4),
        (OUT, 5, 5),
    ]
    assert [b.prev_seqs for b in batches] == [
        StreamSeqs(),
        StreamSeqs(stdout=2),
        StreamSeqs(stdout=3),
        StreamSeqs(stdout=3, stderr=4),
    ]
    assert [r.data for b in batches for r in b.records] == [r.data for r in store.records]
    assert pub.last_seqs == StreamSeqs(stdout=5, stderr=4) and pub.last_seq == 5
    tick = decode_log_message(pub.tick(time_ns=9, incarnation=2, kernel_state="running"), KEY)
    assert tick == Tick("ep", 5, 9, 2, "running", StreamSeqs(stdout=5, stderr=4))


def test_unwanted_streams_are_not_published_but_still_linked() -> None:
    """prev_seqs and ticks count *stored* records: a subscriber whose cursor is behind a
    record nobody was sent must still see the link and repair (spec 4.1)."""
    store = MemoryStore()
    pub = LogPublisher("ep", KEY)
    assert not pub.subscription(b"\x01stderr")  # not a tick subscriber: no greeting
    assert pub.wants(ERR) and not pub.wants(OUT)
    assert pub.stored(OUT, *store.add(OUT, 3), store) == []
    (batch,) = _batches(pub.stored(ERR, *store.add(ERR, 1), store))
    assert batch.prev_seqs == StreamSeqs(stdout=3) and batch.first_seq == 4
    assert pub.last_seqs == StreamSeqs(stdout=3, stderr=4)
    assert not pub.subscription(b"\x01std")  # a prefix: both std streams, no tick
    assert pub.subscription(b"\x01tick") and pub.wants(OUT)
    pub.subscription(b"\x00std")
    pub.subscription(b"\x00stderr")
    assert not pub.wants(ERR) and not pub.wants(OUT)
    assert not pub.subscription(b"") and not pub.subscription(b"\x02x")


# -- unsigned batches on a CurveZMQ channel (spec 4.3) ----------------------------------------


def test_a_curve_publisher_sends_each_form_to_whoever_asked_for_it() -> None:
    store = MemoryStore()
    pub = LogPublisher("ep", KEY, curve=True)
    pub.subscription(b"\x01curve.log")  # a client on the unsigned topic
    (unsigned,) = pub.stored(LOG, *store.add(LOG, 3), store)
    assert unsigned[:2] == [b"curve.log", b""]
    with pytest.raises(BadSignature):  # only a CurveZMQ connection vouches for it
        decode_log_message(unsigned, KEY)
    (batch,) = _batches([unsigned], curve=True)
    assert [r.seq for r in batch.records] == [1, 2, 3]
    pub.subscription(b"\x01log")  # and an older client on the signed one: both forms
    signed, unsigned = pub.stored(LOG, *store.add(LOG, 2), store)
    assert signed[0] == b"log" and unsigned[0] == b"curve.log"
    assert signed[2:] == unsigned[2:]  # the same header and body
    assert _batches([signed]) == _batches([unsigned], curve=True)
    pub.subscription(b"\x00curve.log")
    assert [m[0] for m in pub.stored(LOG, *store.add(LOG, 1), store)] == [b"log"]
    tick = decode_log_message(pub.tick(time_ns=1, incarnation=1, kernel_state="running"), KEY)
    assert isinstance(tick, Tick) and tick.curve_batches


def test_only_a_curve_subscription_asks_for_unsigned_batches() -> None:
    store = MemoryStore()
    curve = LogPublisher("ep", KEY, curve=True)
    curve.subscription(SUBSCRIBE_ALL)  # everything, but nobody asked for the curve. topics
    assert [m[0] for m in curve.stored(OUT, *store.add(OUT, 1), store)] == [b"stdout"]
    curve.subscription(b"\x01curve.std")  # a prefix of the two std topics
    assert curve.wants(OUT, curve=True) and curve.wants(ERR, curve=True)
    assert not curve.wants(LOG, curve=True)
    plain = LogPublisher("ep", KEY)  # a NULL-mechanism channel never sends them
    plain.subscription(b"\x01curve.stdout")
    assert not plain.wants(OUT, curve=True)
    other = MemoryStore()
    assert plain.stored(OUT, *other.add(OUT, 1), other) == []
    tick = decode_log_message(plain.tick(time_ns=1, incarnation=1, kernel_state="running"), KEY)
    assert isinstance(tick, Tick) and not tick.curve_batches


def test_publisher_skips_records_evicted_again_and_refuses_old_seqs() -> None:
    store = MemoryStore()
    pub = LogPublisher("ep", KEY)
    pub.subscription(SUBSCRIBE_ALL)
    first, last = store.add(LOG, 5)
    store.evict(4)  # an append larger than the ring: its head is gone already
    (batch,) = _batches(pub.stored(LOG, first, last, store))
    assert (batch.first_seq, batch.last_seq) == (4, 5)
    first, last = store.add(LOG, 1)
    store.evict(7)
    assert pub.stored(LOG, first, last, store) == []  # none left: nothing sent
    assert pub.last_seqs.log == 6
    assert pub.stored(LOG, 7, 6, store) == []  # an empty append
    with pytest.raises(LocalProtocolError):
        pub.stored(OUT, 6, 6, store)


# -- replay answers ----------------------------------------------------------------------------


def store_of(n: int, oldest: int = 1) -> MemoryStore:
    kinds = [OUT, ERR, OUT, LOG]
    return MemoryStore([rec(i, kinds[i % 4]) for i in range(1, n + 1)], oldest)


def answer_all(store: MemoryStore, req: ReplayRequest, **kw: int) -> list[ReplayResponse]:
    """Drive one answer to its end against an unchanging store; the decoded messages."""
    answer = ReplayAnswer(
        req, epoch="ep", signer=KEY, oldest_seq=store.oldest_seq, last_seq=store.last_seq, **kw
    )
    out: list[ReplayResponse] = []
    while not answer.finished:
        out += [decode_replay_response(m, KEY) for m in answer.next_messages(store)]
    assert answer.next_messages(store) == []
    return out


def seqs_of(answer: list[ReplayResponse]) -> list[int]:
    return [r.seq for m in answer if isinstance(m, ReplayBatch) for r in m.records]


def test_answer_last_n_with_stream_filter() -> None:
    answer = answer_all(store_of(100), ReplayRequest("r", "n", last=3, streams=(ERR,)))
    assert seqs_of(answer) == [89, 93, 97]
    assert answer[-1] == ReplayEnd("r", "ep", 100, 3, True, prev_seq=97)
    answer = answer_all(store_of(10), ReplayRequest("r", "n", last=50, streams=(LOG,)))
    assert seqs_of(answer) == [3, 7]
    assert answer[-1] == ReplayEnd("r", "ep", 10, 2, True, prev_seq=7)
    answer = answer_all(store_of(10), ReplayRequest("r", "n", last=5, limit=2))
    assert seqs_of(answer) == [6, 7]
    assert answer[-1] == ReplayEnd("r", "ep", 10, 2, False, prev_seq=7)


def test_answer_limit_cuts_and_says_incomplete() -> None:
    answer = answer_all(store_of(100), ReplayRequest("r", "n", since_seq=10, limit=5))
    assert seqs_of(answer) == [10, 11, 12, 13, 14]
    assert answer[-1] == ReplayEnd("r", "ep", 100, 5, False, prev_seq=14)
    answer = answer_all(store_of(14), ReplayRequest("r", "n", since_seq=10, limit=5))
    assert answer[-1] == ReplayEnd("r", "ep", 14, 5, True, prev_seq=14)


def test_answer_truncated_first_then_batches_then_end() -> None:
    answer = answer_all(store_of(100, 60), ReplayRequest("r", "n", since_seq=50), max_records=16)
    assert answer[0] == ReplayTruncated("r", 60, 10)
    assert [len(m.records) for m in answer[1:-1]] == [16, 16, 9]  # type: ignore[union-attr]
    # each batch links to the one before it, the first to the notice (seqs 50..59 are
    # gone), so a client sees any of them go missing
    assert [m.prev_seq for m in answer[1:-1]] == [59, 75, 91]  # type: ignore[union-attr]
    assert seqs_of(answer) == list(range(60, 101))
    assert answer[-1] == ReplayEnd("r", "ep", 100, 41, True, prev_seq=100)
    # nothing left after the notice: the end links to it
    answer = answer_all(store_of(100, 60), ReplayRequest("r", "n", since_seq=5, until_seq=20))
    assert answer == [ReplayTruncated("r", 60, 16), ReplayEnd("r", "ep", 100, 0, True, 20)]


def test_answer_empty_store() -> None:
    assert answer_all(MemoryStore(), ReplayRequest("r", "n")) == [ReplayEnd("r", "ep", 0, 0, True)]


def test_answer_reads_one_chunk_per_call_and_ends_incomplete_after_an_eviction() -> None:
    """Records evicted while the answer waited for its reader are never skipped silently."""
    store = store_of(40)
    answer = ReplayAnswer(
        ReplayRequest("r", "n"), epoch="ep", signer=KEY, oldest_seq=1, last_seq=40, max_records=10
    )
    first = [decode_replay_response(m, KEY) for m in answer.next_messages(store)]
    assert seqs_of(first) == list(range(1, 11)) and not answer.finished
    store.add(OUT, 5)  # stored after the request was served: not part of this answer
    store.evict(15)
    rest = [decode_replay_response(m, KEY) for m in answer.next_messages(store)]
    assert rest == [ReplayEnd("r", "ep", 40, 10, False, prev_seq=10)] and answer.finished
    assert answer.sent == 10 and not answer.complete


def test_answer_ends_with_its_last_chunk() -> None:
    store = store_of(20)
    answer = ReplayAnswer(
        ReplayRequest("r", "n", since_seq=11), epoch="ep", signer=KEY, oldest_seq=1,
        last_seq=20, max_records=10,
    )  # fmt: skip
    messages = [decode_replay_response(m, KEY) for m in answer.next_messages(store)]
    assert seqs_of(messages) == list(range(11, 21))
    assert messages[-1] == ReplayEnd("r", "ep", 20, 10, True, prev_seq=20) and answer.finished


@EXAMPLES
@given(
    st.integers(0, 60),
    st.integers(1, 70),
    st.one_of(st.none(), st.integers(1, 80)),
    st.integers(0, 80),
    st.one_of(st.none(), st.integers(0, 30)),
    st.one_of(st.none(), st.integers(1, 30)),
    st.one_of(st.none(), st.sets(st.sampled_from(list(Stream)), min_size=1).map(tuple)),
    st.integers(1, 6),
)
def test_answer_matches_a_reference_selection(
    n: int,
    oldest: int,
    since: int | None,
    span: int,
    last: int | None,
    limit: int | None,
    streams: tuple[Stream, ...] | None,
    max_records: int,
) -> None:
    oldest = min(oldest, n + 1)
    until = None if since is None or span == 0 else since + span
    req = ReplayRequest(
        "r", "n", since_seq=since, until_seq=until, last=last, limit=limit, streams=streams
    )
    store = store_of(n, oldest)
    answer = answer_all(store, req, max_records=max_records)
    lo, hi = max(since or 1, oldest), min(until or n, n)
    match = [
        s for s in range(lo, hi + 1) if streams is None or store.records[s - 1].stream in streams
    ]
    if last is not None:
        match = match[-last:] if last else []
    expected = match[:limit] if limit is not None else match
    assert seqs_of(answer) == expected
    assert all(len(m.records) <= max_records for m in answer if isinstance(m, ReplayBatch))
    end = answer[-1]
    assert isinstance(end, ReplayEnd) and end.sent == len(expected) and end.last_seq == n
    assert end.complete == (limit is None or len(match) <= limit)
    truncated = [m for m in answer if isinstance(m, ReplayTruncated)]
    if last is None and (since or 1) < oldest:
        gone_to = min(oldest - 1, until if until is not None else oldest - 1)
        assert truncated == [ReplayTruncated("r", oldest, gone_to - (since or 1) + 1)]
    else:
        assert truncated == []
    if truncated:  # the notice comes first, the end last
        assert answer[0] == truncated[0]
    assert [m for m in answer if isinstance(m, ReplayEnd)] == [end]


# -- replay from packed parts ------------------------------------------------------------------


def _packed_runs(entries: Sequence[Entry], max_records: int, max_bytes: int) -> list[object]:
    """What cut_packed must give: cut_entries' runs, packed."""
    return [
        (len(run), run[0][0], run[-1][0], pack_entries(run))
        for run in cut_entries(entries, max_records, max_bytes)
    ]


def _parts(entries: Sequence[Entry], sizes: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """Entries as packed parts of about ``sizes`` records, cut where seqs are not consecutive
    (a part is consecutive records, as one append of the store)."""
    parts, start, i = [], 0, 0
    for k in range(1, len(entries) + 1):
        size = sizes[i % len(sizes)] if sizes else 1
        if k == len(entries) or entries[k][0] != entries[k - 1][0] + 1 or k - start >= size:
            run = entries[start:k]
            parts.append((run[0][0], run[-1][0], pack_entries(run)))
            start, i = k, i + 1
    return parts


def test_cut_packed_cuts_like_cut_entries() -> None:
    sizes = [10, 10, 10, 200, 10, 10]
    entries = [entry(rec(i + 1, data=b"x" * n)) for i, n in enumerate(sizes)]
    parts = _parts(entries, [4, 2])
    assert [(p[0], p[1]) for p in parts] == [(1, 4), (5, 6)]
    for max_records, max_bytes in [(2, 10_000), (10, 30), (10, 29), (10, 250), (1, 1)]:
        got = cut_packed(parts, max_records, max_bytes)
        assert got == _packed_runs(entries, max_records, max_bytes)
    assert cut_packed([], 10, 10) == []
    with pytest.raises(LocalProtocolError):
        cut_packed(parts, 10, 0)


@EXAMPLES
@given(
    st.lists(st.tuples(st.integers(0, 100), st.integers(1, 3)), max_size=60),
    st.lists(st.integers(1, 12), max_size=5),
    st.integers(1, 8),
    st.integers(1, 400),
)
def test_cut_packed_gives_the_bodies_of_cut_entries(
    records: list[tuple[int, int]], sizes: list[int], max_records: int, max_bytes: int
) -> None:
    """Parts of any size, with holes between them (a stream filter), any limits: the same
    messages, byte for byte."""
    seqs = list(accumulate(step for _, step in records))
    kinds = [OUT, ERR, LOG]
    entries = [
        entry(LogRecord(seq, seq * 3, 1 + seq % 2, kinds[seq % 3], b"z" * n, seq % 2))
        for seq, (n, _) in zip(seqs, records, strict=True)
    ]
    parts = _parts(entries, sizes)
    assert cut_packed(parts, max_records, max_bytes) == _packed_runs(
        entries, max_records, max_bytes
    )


class PackedStore(MemoryStore):
    """A MemoryStore that also hands out packed parts (of at most 3 records), as the nanny's
    store does."""

    def packed_parts(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[Stream] | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, int, bytes]]:
        return _parts(self.entries(from_seq, to_seq, streams, limit), [3])


@EXAMPLES
@given(
    st.integers(0, 60),
    st.integers(1, 70),
    st.one_of(st.none(), st.integers(1, 80)),
    st.one_of(st.none(), st.integers(1, 30)),
    st.one_of(st.none(), st.sets(st.sampled_from(list(Stream)), min_size=1).map(tuple)),
    st.integers(1, 6),
    st.integers(1, 40),
)
def test_answers_from_packed_parts_are_the_same_messages(
    n: int,
    oldest: int,
    since: int | None,
    limit: int | None,
    streams: tuple[Stream, ...] | None,
    max_records: int,
    max_bytes: int,
) -> None:
    oldest = min(oldest, n + 1)
    req = ReplayRequest("r", "n", since_seq=since, limit=limit, streams=streams)
    plain, packed = store_of(n, oldest), PackedStore(store_of(n).records, oldest)

    def frames(store: MemoryStore) -> list[list[bytes]]:
        answer = ReplayAnswer(
            req, epoch="ep", signer=KEY, oldest_seq=oldest, last_seq=n,
            max_records=max_records, max_bytes=max_bytes,
        )  # fmt: skip
        out = []
        while not answer.finished:
            out += answer.next_messages(store)
        return out

    assert frames(packed) == frames(plain)


def test_an_answer_from_packed_parts_ends_incomplete_after_an_eviction() -> None:
    store = PackedStore(store_of(20).records)
    answer = ReplayAnswer(
        ReplayRequest("r", "n", since_seq=1), epoch="ep", signer=KEY, oldest_seq=1,
        last_seq=20, max_records=10,
    )  # fmt: skip
    first = [decode_replay_response(m, KEY) for m in answer.next_messages(store)]
    assert seqs_of(first) == list(range(1, 11))
    store.evict(15)
    rest = [decode_replay_response(m, KEY) for m in answer.next_messages(store)]
    assert rest == [ReplayEnd("r", "ep", 20, 10, False, prev_seq=10)] and answer.finished
