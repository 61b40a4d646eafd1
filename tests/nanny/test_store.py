"""Tests for nanny_io.store: the byte-bounded ring, the on-disk spill and post-mortem reading."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import tracemalloc
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanny_io.store import (
    RECORD_OVERHEAD,
    SPILL_MAGIC,
    LogStore,
    Spill,
    pack_entries,
    read_spill,
)
from nanny_io_proto.errors import LocalProtocolError
from nanny_io_proto.logrecords import LogRecord, pack_records, unpack_records
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL, Stream

OUT, ERR, LOG, NANNY = Stream.STDOUT, Stream.STDERR, Stream.LOG, Stream.NANNY
T0 = 1_700_000_000_000_000_000
REPO = Path(__file__).resolve().parents[2]


def lines(n: int, size: int = 20, tag: bytes = b"") -> list[tuple[bytes, int]]:
    """``n`` distinct complete lines of ``size`` bytes."""
    return [((tag + b"%d:" % i).ljust(size - 1, b"x") + b"\n", 0) for i in range(n)]


def cost(data: bytes) -> int:
    return len(data) + RECORD_OVERHEAD


def spill_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nanny_io" and r.levelno == logging.WARNING]


# -- the ring ------------------------------------------------------------------------------------


def test_fresh_store() -> None:
    store = LogStore(epoch="e1")
    assert (store.oldest_seq, store.last_seq, store.count, store.bytes_used) == (1, 0, 0, 0)
    assert store.records(1) == [] and store.last(5) == [] and store.tail_text() == []
    assert store.append(OUT, 1, T0, []) == (1, 0)
    stats = store.statistics()
    assert stats.max_bytes == 64 << 20 and not stats.spill_active and stats.spill_directory is None


def test_append_assigns_consecutive_seqs() -> None:
    store = LogStore(epoch="e1")
    assert store.append(OUT, 1, T0, lines(3)) == (1, 3)
    assert store.append_one(NANNY, 0, T0 + 1, b"started\n") == 4
    assert store.append(ERR, 2, T0 + 2, [(b"par", FLAG_NO_EOL), (b"tial\n", 0)]) == (5, 6)
    recs = store.records(1)
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[3] == LogRecord(4, T0 + 1, 0, NANNY, b"started\n")
    assert recs[4] == LogRecord(5, T0 + 2, 2, ERR, b"par", FLAG_NO_EOL)
    assert store.bytes_used == sum(cost(r.data) for r in recs)


def test_append_rejects_bad_input_and_stores_nothing() -> None:
    store = LogStore(epoch="e1")
    with pytest.raises(TypeError):
        store.append("stdout", 1, T0, lines(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.append(OUT, 1, T0, [(b"ok\n", 0), ("text\n", 0)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        store.append(OUT, 1, T0, [(b"ok\n", 256)])
    with pytest.raises(ValueError):
        store.append(OUT, -1, T0, lines(1))
    with pytest.raises(ValueError):
        store.append(OUT, 1, -5, lines(1))
    with pytest.raises(TypeError):
        store.append_one(OUT, 1, T0, "text\n")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.append_one(OUT, 1, T0, b"ok\n", 300)
    with pytest.raises(TypeError):
        store.append_one(LOG.value, 1, T0, b"ok\n")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        LogStore(epoch="bad epoch")
    with pytest.raises(ValueError):
        LogStore(epoch="e1", max_bytes=0)
    assert store.last_seq == 0 and store.count == 0


@pytest.mark.parametrize("size", [1, 100, 5000])
def test_eviction_keeps_the_byte_bound(size: int) -> None:
    max_bytes = 64 << 10
    store = LogStore(epoch="e1", max_bytes=max_bytes)
    per_call = 37
    appended = 0
    prev_oldest = 1
    while appended < 10 * max_bytes:
        first, last = store.append(OUT, 1, T0, lines(per_call, size))
        assert first == last - per_call + 1
        appended += per_call * cost(lines(1, size)[0][0])
        assert store.bytes_used <= max_bytes
        assert store.oldest_seq >= prev_oldest
        prev_oldest = store.oldest_seq
    recs = store.records(1)
    assert [r.seq for r in recs] == list(range(store.oldest_seq, store.last_seq + 1))
    assert store.bytes_used == sum(cost(r.data) for r in recs)
    # evicting was minimal: the next older record would not have fitted
    assert store.bytes_used + cost(recs[0].data) > max_bytes
    stats = store.statistics()
    assert stats.evicted_records == store.oldest_seq - 1 == stats.last_seq - stats.count


@pytest.mark.parametrize("per_call", [1, 300, 5000])
def test_eviction_of_large_appends_is_minimal(per_call: int) -> None:
    """Appends of thousands of records of mixed sizes evict exactly what must go."""
    max_bytes = 256 << 10
    store = LogStore(epoch="e1", max_bytes=max_bytes)
    sizes = [1, 7, 300, 2000, 40]
    appended: list[bytes] = []  # every record's data, by seq - 1
    for call in range(40):
        pieces = [(b"x" * sizes[(call + k) % len(sizes)] + b"\n", 0) for k in range(per_call)]
        store.append(OUT, 1, T0, pieces)
        appended += [data for data, _ in pieces]
        recs = store.records(1)
        assert store.bytes_used == sum(cost(r.data) for r in recs) <= max_bytes
        if store.oldest_seq > 1:  # the newest evicted record would not have fitted
            assert store.bytes_used + cost(appended[store.oldest_seq - 2]) > max_bytes
        assert store.statistics().evicted_records == store.oldest_seq - 1
    assert [r.seq for r in store.records(1)] == list(range(store.oldest_seq, store.last_seq + 1))


def test_listeners_are_told_after_every_append_and_can_read_it_back() -> None:
    store = LogStore(epoch="e1", spill=None)
    seen: list[tuple[Stream, int, int, list[bytes]]] = []

    def listener(stream: Stream, first: int, last: int) -> None:
        seen.append((stream, first, last, [r.data for r in store.records(first, last)]))

    order: list[str] = []
    store.append(OUT, 1, T0, lines(1))  # before registering: not told
    store.add_listener(listener)
    store.add_listener(lambda *_: order.append("second"))
    assert store.append(OUT, 1, T0, [(b"a\n", 0), (b"b", FLAG_NO_EOL)]) == (2, 3)
    assert store.append_one(NANNY, 0, T0, b"event\n") == 4
    assert store.append(ERR, 1, T0, []) == (5, 4)  # nothing stored: nobody is told
    assert seen == [(OUT, 2, 3, [b"a\n", b"b"]), (NANNY, 4, 4, [b"event\n"])]
    assert order == ["second", "second"]  # in registration order, after the first
    store.remove_listener(listener)
    store.append_one(LOG, 1, T0, b"x\n")
    assert len(seen) == 2 and len(order) == 3
    with pytest.raises(ValueError):
        store.remove_listener(listener)


def test_a_failing_listener_fails_the_writer_after_the_records_are_stored() -> None:
    store = LogStore(epoch="e1")

    def broken(stream: Stream, first: int, last: int) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    with pytest.raises(RuntimeError, match="listener bug"):
        store.append(OUT, 1, T0, lines(2))
    assert store.last_seq == 2 and [r.seq for r in store.records(1)] == [1, 2]


def test_record_larger_than_the_ring_is_evicted_at_once() -> None:
    store = LogStore(epoch="e1", max_bytes=1000)
    store.append(OUT, 1, T0, lines(2))
    assert store.append(OUT, 1, T0, [(b"y" * 5000, FLAG_NO_EOL)]) == (3, 3)
    assert (store.count, store.bytes_used, store.oldest_seq, store.last_seq) == (0, 0, 4, 3)
    assert store.records(1) == [] and store.last(3) == []
    assert store.append(OUT, 1, T0, lines(1)) == (4, 4)
    assert [r.seq for r in store.records(1)] == [4]


def test_memory_stays_bounded_for_tiny_records() -> None:
    """Real memory (tracemalloc), not just the accounting, stays under max_bytes."""
    max_bytes = 1 << 20
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = LogStore(epoch="e1", max_bytes=max_bytes)
        for i in range(10 * max_bytes // RECORD_OVERHEAD):
            store.append_one(OUT, 1, T0 + i, b"\n")  # distinct time ints: the worst case
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.oldest_seq > 1
    assert used <= max_bytes * 1.05, used


def test_reads_by_seq_across_eviction() -> None:
    store = LogStore(epoch="e1", max_bytes=50 * cost(lines(1)[0][0]))
    for _ in range(40):
        store.append(OUT, 1, T0, lines(7))
    oldest, last = store.oldest_seq, store.last_seq
    assert (last, last - oldest + 1) == (280, 50)
    assert [r.seq for r in store.records(1)] == list(range(oldest, last + 1))
    assert [r.seq for r in store.records(oldest + 10, oldest + 12)] == [
        oldest + i for i in (10, 11, 12)
    ]
    assert [r.seq for r in store.records(last - 1, last + 100)] == [last - 1, last]
    assert store.records(last + 1) == [] and store.records(10, 20) == []
    assert store.records(oldest + 5, oldest + 4) == []
    assert [r.seq for r in store.records(0, limit=3)] == [oldest, oldest + 1, oldest + 2]
    assert store.records(1, limit=0) == []
    # entries are the raw tuples behind the records
    entries = store.entries(oldest + 3, oldest + 3)
    assert len(entries) == 1 and entries[0][0] == oldest + 3 and entries[0][5].endswith(b"\n")


def mixed_store() -> LogStore:
    store = LogStore(epoch="e1")
    for i in range(30):
        stream = (OUT, ERR, LOG)[i % 3]
        store.append(stream, 1 + i // 10, T0 + i, [(b"%s %d\n" % (stream.value.encode(), i), 0)])
    return store


def test_stream_filters() -> None:
    store = mixed_store()
    errs = store.records(1, streams=frozenset({ERR}))
    assert [r.seq for r in errs] == list(range(2, 31, 3))
    assert all(r.stream is ERR for r in errs)
    both = store.records(5, 20, streams=(OUT, LOG))
    assert [r.seq for r in both] == [s for s in range(5, 21) if s % 3 != 2]
    assert [r.seq for r in store.records(1, streams={LOG}, limit=2)] == [3, 6]
    assert store.records(1, streams=()) == [] and store.records(1, streams={NANNY}) == []


def test_last_n_with_filters() -> None:
    store = mixed_store()
    assert [r.seq for r in store.last(4)] == [27, 28, 29, 30]
    assert [r.seq for r in store.last(3, {OUT})] == [22, 25, 28]
    assert [r.seq for r in store.last(100, {ERR})] == list(range(2, 31, 3))
    assert [r.seq for r in store.last(2, {ERR, LOG}, to_seq=10)] == [8, 9]
    assert [r.seq for r in store.last(5, from_seq=28)] == [28, 29, 30]
    assert store.last(0) == [] and store.last(3, {NANNY}) == []
    assert [e[0] for e in store.last_entries(2)] == [29, 30]


def test_materialised_records_equal_validated_ones() -> None:
    store = mixed_store()
    for rec in store.records(1):
        again = LogRecord(rec.seq, rec.time_ns, rec.incarnation, rec.stream, rec.data, rec.flags)
        assert again == rec and hash(again) == hash(rec)


def test_pack_entries_matches_pack_records() -> None:
    store = mixed_store()
    store.append(NANNY, 0, T0, [(b"", FLAG_NO_EOL), (b"\xff\xfe" * 300, FLAG_NO_EOL), (b"\n", 0)])
    store.append(LOG, 4_000_000_000, 2**64 - 1, [(b"x", 255)])
    entries = store.entries(1)
    body = pack_entries(entries)
    assert body == pack_records(store.records(1))
    assert unpack_records(body) == store.records(1)
    assert pack_entries([]) == pack_records([])


# -- last words ----------------------------------------------------------------------------------


def test_tail_text_assembles_pieces_across_streams() -> None:
    store = LogStore(epoch="e1")
    snowman = "☃".encode()
    store.append(OUT, 1, T0, [(b"stdout is ignored\n", 0)])
    store.append(ERR, 1, T0, [(b"Traceback (most recent call last):\n", 0)])
    store.append(ERR, 1, T0, [(b"  File " + snowman[:1], FLAG_NO_EOL)])  # split UTF-8
    store.append(LOG, 1, T0, [(b"log line\n", 0)])  # interleaved with the split line
    store.append(ERR, 1, T0, [(snowman[1:] + b", line 1", FLAG_NO_EOL), (b"\n", 0)])
    store.append(ERR, 1, T0, [(b"Segmentation fault", FLAG_NO_EOL)])  # unterminated, at EOF
    assert store.tail_text() == [
        ("stderr", "Traceback (most recent call last):"),
        ("log", "log line"),
        ("stderr", "  File ☃, line 1"),
        ("stderr", "Segmentation fault"),
    ]
    assert store.tail_text(streams=(OUT,)) == [("stdout", "stdout is ignored")]
    assert store.tail_text(max_lines=2) == [
        ("stderr", "  File ☃, line 1"),
        ("stderr", "Segmentation fault"),
    ]
    assert store.tail_text(max_lines=0) == []


def test_tail_text_bounds() -> None:
    store = LogStore(epoch="e1")
    for i in range(1000):
        store.append(ERR, 1, T0, [(b"line %d\n" % i, 0)])
    assert store.tail_text(max_lines=3) == [("stderr", f"line {i}") for i in (997, 998, 999)]
    got = store.tail_text(max_lines=100, max_chars=30)
    assert sum(len(text) for _, text in got) <= 30
    assert got[-3:] == [("stderr", f"line {i}") for i in (997, 998, 999)]
    assert got[0][1].startswith("…")  # the oldest line is cut from its start
    # a huge unterminated line is cut to its end, and the scan stays bounded
    store.append(LOG, 1, T0, [(b"a" * 65536, FLAG_NO_EOL)] * 50 + [(b"b" * 10 + b"\n", 0)])
    (only,) = store.tail_text(streams=(LOG,), max_chars=100)
    assert only[0] == "log" and len(only[1]) == 100 and only[1].endswith("a" * 89 + "b" * 10)
    # invalid UTF-8 is replaced, never raised
    store.append(ERR, 1, T0, [(b"bad \xff\xfe bytes\n", 0)])
    assert store.tail_text(max_lines=1) == [("stderr", "bad \ufffd\ufffd bytes")]


def test_tail_text_from_a_seq_keeps_iopub_and_fd_pieces_apart() -> None:
    """Last words since a cell started: older output is left out, and a partial line sent
    on iopub is not glued to a partial line of the same stream read from the pipe."""
    store = LogStore(epoch="e1")
    store.append(OUT, 1, T0, [(b"banner\n", 0)])
    first = store.last_seq + 1
    store.append(OUT, 1, T0, [(b"fd ", FLAG_NO_EOL)])
    store.append(OUT, 1, T0, [(b"printed\n", FLAG_IOPUB)])
    store.append(OUT, 1, T0, [(b"line\n", 0)])
    streams = (OUT, ERR, LOG)
    assert store.tail_text(streams=streams, from_seq=first) == [
        ("stdout", "printed"),
        ("stdout", "fd line"),
    ]
    assert store.tail_text(streams=streams, from_seq=store.last_seq + 1) == []
    assert store.tail_text(streams=streams)[0] == ("stdout", "banner")


def test_tail_text_waits_for_a_newer_line_of_another_stream() -> None:
    """A long NO_EOL line that ended last is among the newest lines even if it began early."""
    store = LogStore(epoch="e1")
    store.append(LOG, 1, T0, [(b"long ", FLAG_NO_EOL)])
    for i in range(10):
        store.append(ERR, 1, T0, [(b"err %d\n" % i, 0)])
    store.append(LOG, 1, T0, [(b"line ends\n", 0)])
    assert store.tail_text(max_lines=2) == [("stderr", "err 9"), ("log", "long line ends")]


# -- property ------------------------------------------------------------------------------------

piece = st.tuples(st.binary(max_size=300), st.sampled_from([0, FLAG_NO_EOL]))
op = st.tuples(st.sampled_from(list(Stream)), st.lists(piece, max_size=12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_bytes=st.integers(min_value=1, max_value=6000),
    ops=st.lists(op, max_size=30),
    probe=st.integers(min_value=0, max_value=400),
)
def test_property_surviving_tail(
    max_bytes: int, ops: list[tuple[Stream, list[tuple[bytes, int]]]], probe: int
) -> None:
    store = LogStore(epoch="e1", max_bytes=max_bytes)
    model: list[LogRecord] = []
    for i, (stream, pieces) in enumerate(ops):
        first, last = store.append(stream, 1, T0 + i, pieces)
        assert first == len(model) + 1 and last == first + len(pieces) - 1
        model += [LogRecord(first + k, T0 + i, 1, stream, d, f) for k, (d, f) in enumerate(pieces)]
        # the survivors are the longest tail of the model that fits
        keep = 0
        total = 0
        for rec in reversed(model):
            if total + cost(rec.data) > max_bytes:
                break
            total += cost(rec.data)
            keep += 1
        tail = model[len(model) - keep :]
        assert store.bytes_used == total <= max_bytes
        assert store.last_seq == len(model)
        assert store.oldest_seq == len(model) - keep + 1
        assert store.records(1) == tail
        assert store.records(probe) == [r for r in tail if r.seq >= probe]
        seqs = [r.seq for r in store.records(1)]
        assert all(a + 1 == b for a, b in pairwise(seqs))


# -- spill ---------------------------------------------------------------------------------------


def test_spill_round_trip_and_permissions(tmp_path: Path) -> None:
    spill_dir = tmp_path / "nanny-io" / "spill-k1"
    spill = Spill(spill_dir, epoch="ep-1")
    store = LogStore(epoch="ep-1", max_bytes=4000, spill=spill)
    store.append(OUT, 1, T0, lines(50))
    store.append_one(NANNY, 1, T0 + 1, b'{"event":"died"}\n')
    store.append(ERR, 2, T0 + 2, [(b"\xff" * 70000, FLAG_NO_EOL), (b"\n", 0)])
    store.append(LOG, 2, T0 + 3, [(b"", FLAG_NO_EOL)])
    stats = store.statistics()
    assert stats.spill_active and stats.spill_error is None
    assert stats.spill_directory == str(spill_dir) and stats.spill_bytes_written > 70000
    got = list(read_spill(spill_dir))
    assert [e for e, _ in got] == ["ep-1"] * 54
    assert [r.seq for _, r in got] == list(range(1, 55))
    assert got[-3][1] == LogRecord(52, T0 + 2, 2, ERR, b"\xff" * 70000, FLAG_NO_EOL)
    assert [r for _, r in got][-store.count :] == store.records(1)  # the ring has the tail
    spill.close()
    assert stat.S_IMODE(spill_dir.stat().st_mode) == 0o700
    (seg,) = spill_dir.iterdir()
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    assert seg.name == "seg-00000001-00000000000000000001.nlog"
    assert seg.read_bytes().startswith(SPILL_MAGIC)
    store.append(OUT, 1, T0, lines(1))  # a closed spill is ignored: memory only
    assert len(list(read_spill(spill_dir))) == 54
    assert list(read_spill(tmp_path / "missing")) == []


def test_spill_rotation_and_total_bound(tmp_path: Path) -> None:
    spill = Spill(tmp_path, epoch="e1", segment_bytes=4096, max_total_bytes=16384)
    store = LogStore(epoch="e1", spill=spill)
    for _ in range(200):
        store.append(OUT, 1, T0, lines(5, 40))
    segs = sorted(p.name for p in tmp_path.iterdir())
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]
    assert len(segs) >= 4 and sum(sizes) <= 16384 and max(sizes) <= 4096
    got = [r for _, r in read_spill(tmp_path)]
    assert got[-1].seq == 1000 and [r.seq for r in got] == list(range(got[0].seq, 1001))
    assert got == store.records(got[0].seq)
    first_seqs = [int(name.split("-")[2].split(".")[0]) for name in segs]
    assert first_seqs == sorted(first_seqs) and first_seqs[0] == got[0].seq


def test_new_epoch_starts_a_new_segment(tmp_path: Path) -> None:
    with Spill(tmp_path, epoch="first") as spill:
        LogStore(epoch="first", spill=spill).append(OUT, 1, T0, lines(3, tag=b"a"))
    with Spill(tmp_path, epoch="second") as spill:
        store = LogStore(epoch="second", spill=spill)
        store.append(OUT, 1, T0, lines(2, tag=b"b"))
        with pytest.raises(ValueError):
            LogStore(epoch="third", spill=spill)
    assert len(list(tmp_path.iterdir())) == 2
    got = [(e, r.seq, r.data[:3]) for e, r in read_spill(tmp_path)]
    assert got == [
        ("first", 1, b"a0:"),
        ("first", 2, b"a1:"),
        ("first", 3, b"a2:"),
        ("second", 1, b"b0:"),
        ("second", 2, b"b1:"),
    ]


def test_old_epochs_count_towards_the_total(tmp_path: Path) -> None:
    for epoch in ("e1", "e2", "e3"):
        with Spill(tmp_path, epoch=epoch, segment_bytes=4096, max_total_bytes=8192) as spill:
            store = LogStore(epoch=epoch, spill=spill)
            for _ in range(10):
                store.append(OUT, 1, T0, lines(10, 30))
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 8192
    assert {e for e, _ in read_spill(tmp_path)} == {"e3"}


CHILD = textwrap.dedent(
    """
    import os, sys
    from nanny_io.store import LogStore, Spill
    from nanny_io_proto.streams import Stream

    def data(seq):
        return b"%d:" % seq + b"y" * (seq % 97) + b"\\n"

    spill = Spill(sys.argv[1], epoch="doomed", segment_bytes=64 << 10)
    store = LogStore(epoch="doomed", max_bytes=1 << 20, spill=spill)
    i = 0
    while True:
        first = store.last_seq + 1
        n = 1 + i % 50
        store.append((Stream.STDOUT, Stream.STDERR)[i % 2], 1, i,
                     [(data(s), 0) for s in range(first, first + n)])
        os.write(1, b"%d\\n" % store.last_seq)  # acknowledged: append() has returned
        i += 1
    """
)


def test_post_mortem_read_after_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO
    )
    assert proc.stdout is not None
    acked = 0
    try:
        while acked < 30_000:
            line = proc.stdout.readline()
            assert line, "the writer died early"
            acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    got = list(read_spill(tmp_path))
    assert len(got) >= acked
    for expected_seq, (epoch, rec) in enumerate(got, start=1):
        assert (epoch, rec.seq) == ("doomed", expected_seq)
        assert rec.data == b"%d:" % rec.seq + b"y" * (rec.seq % 97) + b"\n"
    assert len(list(tmp_path.iterdir())) > 1  # it rotated on the way


def test_truncated_segment_yields_the_complete_records(tmp_path: Path) -> None:
    with Spill(tmp_path / "s", epoch="e1") as spill:
        store = LogStore(epoch="e1", spill=spill)
        store.append(OUT, 1, T0, lines(3, 10))
        store.append(ERR, 1, T0, lines(4, 15))
    (seg,) = (tmp_path / "s").iterdir()
    full = seg.read_bytes()
    expected = store.records(1)
    prev = 0
    for cut in range(len(full) + 1):
        seg.write_bytes(full[:cut])
        got = [r for _, r in read_spill(tmp_path / "s")]
        assert got == expected[: len(got)]
        assert len(got) >= prev  # more bytes never give fewer records
        prev = len(got)
    assert prev == 7
    # a cut just before the last record's final byte loses only that record
    seg.write_bytes(full[:-1])
    assert [r.seq for _, r in read_spill(tmp_path / "s")] == [1, 2, 3, 4, 5, 6]


def test_garbage_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spill(tmp_path, epoch="e1", segment_bytes=200, max_total_bytes=1 << 20) as spill:
        store = LogStore(epoch="e1", spill=spill)
        for _ in range(4):
            store.append(OUT, 1, T0, lines(3, 40))
    good = sorted(tmp_path.iterdir())
    assert len(good) == 4
    # a wrong magic, random bytes, a corrupt body, a directory and an empty file
    (tmp_path / "seg-00000000-00000000000000000000.nlog").write_bytes(b"PK\x03\x04" * 100)
    good[1].write_bytes(good[1].read_bytes()[:30] + b"\xab" * 200)  # lengths too big
    body_start = good[2].read_bytes()
    # the chunk's count field says 1000 records: the body cannot hold them
    header_len = 12 + len("e1")
    good[2].write_bytes(
        body_start[: header_len + 4] + b"\xe8\x03\x00\x00" + body_start[header_len + 8 :]
    )
    (tmp_path / "seg-00000099-00000000000000000001.nlog").mkdir()
    (tmp_path / "seg-00000098-00000000000000000001.nlog").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a segment")
    with caplog.at_level(logging.WARNING, logger="nanny_io"):
        got = [r.seq for _, r in read_spill(tmp_path)]
    assert got == [1, 2, 3, 10, 11, 12]  # segments 1 and 4 are intact
    assert len(spill_warnings(caplog)) == 4


# -- degrading to memory -------------------------------------------------------------------------


def unwritable_dirs(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return [a_file / "nanny-io" / "spill-k1", Path("/proc/nanny-io-test/spill-k1")]


@pytest.mark.parametrize("which", [0, 1], ids=["under-a-file", "in-proc"])
def test_unwritable_directory_degrades_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, which: int
) -> None:
    directory = unwritable_dirs(tmp_path)[which]
    with caplog.at_level(logging.WARNING, logger="nanny_io"):
        spill = Spill(directory, epoch="e1")
        store = LogStore(epoch="e1", spill=spill)
        for _ in range(20):
            store.append(OUT, 1, T0, lines(100))
    (warning,) = spill_warnings(caplog)
    message = warning.getMessage()
    assert str(directory) in message and "will not survive the nanny" in message
    assert store.last_seq == 2000 and len(store.records(1)) == 2000
    stats = store.statistics()
    assert not stats.spill_active and stats.spill_error and stats.spill_bytes_written == 0


def test_disk_full_degrades_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev
    calls = 0

    def writev(fd: int, buffers: list[memoryview]) -> int:
        """Let 5 writes to the spill through, half of the 6th, then the disk is full."""
        nonlocal calls
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            return real_writev(fd, buffers)
        calls += 1
        if calls == 6:
            data = b"".join(buffers)
            return real_writev(fd, [data[: len(data) // 2]])
        if calls > 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)  # delegates for every other fd
    with caplog.at_level(logging.WARNING, logger="nanny_io"):
        store = LogStore(epoch="e1", spill=Spill(tmp_path, epoch="e1"))
        for i in range(30):
            store.append(OUT, 1, T0, lines(10, tag=b"%d-" % i))
    monkeypatch.undo()
    (warning,) = spill_warnings(caplog)
    assert "No space left on device" in warning.getMessage()
    assert store.last_seq == 300 and not store.statistics().spill_active
    # the header and 4 batches made it, then half of the 5th: its complete records survive
    got = [r for _, r in read_spill(tmp_path)]
    assert 40 <= len(got) < 50 and got == store.records(1)[: len(got)]


def test_short_writes_to_the_spill_are_resumed_where_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writev may take fewer bytes than given (a signal, a pipe-like file): the spill writes
    the rest, across and inside the head and the parts, and the history reads back whole."""
    real_writev = os.writev
    sizes: list[int] = []

    def writev(fd: int, buffers: list[memoryview]) -> int:
        data = b"".join(buffers)[:7]  # at most 7 bytes a call: every boundary gets crossed
        sizes.append(len(data))
        return real_writev(fd, [data])

    monkeypatch.setattr(os, "writev", writev)
    store = LogStore(epoch="e1", spill=Spill(tmp_path, epoch="e1"))
    for i in range(5):
        store.append(OUT, 1, T0, lines(3, tag=b"%d-" % i))
    monkeypatch.undo()
    assert store.statistics().spill_active and max(sizes) == 7
    assert [r for _, r in read_spill(tmp_path)] == store.records(1)


def test_directory_vanishing_degrades_on_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill_dir = tmp_path / "spill"
    with caplog.at_level(logging.WARNING, logger="nanny_io"):
        store = LogStore(
            epoch="e1", spill=Spill(spill_dir, epoch="e1", segment_bytes=1024, max_total_bytes=4096)
        )
        store.append(OUT, 1, T0, lines(10))
        for p in spill_dir.iterdir():
            p.unlink()
        spill_dir.rmdir()
        for _ in range(50):
            store.append(OUT, 1, T0, lines(10))
    (warning,) = spill_warnings(caplog)
    assert "spill" in warning.getMessage()
    assert store.last_seq == 510 and store.statistics().spill_error


@pytest.mark.parametrize("spilled", [False, True])
def test_the_packed_body_of_the_last_append_is_pack_entries_of_its_records(
    tmp_path: Path, spilled: bool
) -> None:
    """The spill and the log channel share one body: it must be exactly what packing the
    stored entries gives, and only for exactly the last append."""
    spill = Spill(tmp_path / "spill", epoch="e1") if spilled else None
    store = LogStore(epoch="e1", spill=spill)
    store.append(OUT, 1, T0, lines(3))
    first, last = store.append(OUT, 2, T0 + 1, [(b"a\n", 0), (b"partial", FLAG_NO_EOL)])
    body = store.packed(first, last)
    assert body == pack_entries(store.entries(first, last))
    assert store.packed(first - 1, last) is None and store.packed(first, last - 1) is None
    store.append_one(Stream.NANNY, 2, T0 + 2, b"{}")
    assert store.packed(first, last) is None
    if spill is not None:
        spill.close()
        assert [r.data for _, r in read_spill(tmp_path / "spill")][-3:-1] == [b"a\n", b"partial"]
