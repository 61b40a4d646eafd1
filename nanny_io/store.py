"""The log store: a byte-bounded ring of captured records, optionally spilled to disk.

The capture path appends thousands of lines per call, so the ring holds one *chunk* per
append. Usually that is a *block*, ``(first_seq, time_ns, incarnation, stream_code, data,
size, last_seq, lengths)``: the bytes of a read's whole lines as they were read and an
``array("I")`` of their lengths (``LineAssembler.feed_block``), no object per line at all.
Other appends keep ``(first_seq, time_ns, incarnation, stream_code, pieces, size,
last_seq)``, ``pieces`` being the appender's list of ``(data, flags)`` pairs, kept as it is
(a single record, a nanny event, is kept as its entry tuple, which is smaller). Storing a
chunk costs the same whatever its number of lines; the per-record tuples ``(seq, time_ns,
incarnation, stream_code, flags, data)`` (``logrecords.Entry``) and :class:`LogRecord`
objects are built only when someone reads, and give exactly the records a ring of one entry
per line would (a test compares the two). Seqs are assigned here, start at 1 and are
consecutive; a seq is found by bisecting the chunks' first seqs. The stream is kept as its
wire code (``STREAM_CODES``), not the enum member. The store is not thread-safe: the nanny
owns it from one event loop.

Every append is also written to the :class:`~nanny_io.spill.Spill` (the on-disk history,
see ``spill.py``) when there is one, and then announced to the store's listeners.
"""

from __future__ import annotations

import heapq
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Any, Final, cast

from nanny_io_proto.logrecords import (
    RECORD_HEADER,
    STREAM_CODES,
    Entry,
    LogRecord,
    check_epoch,
    pack_entries,
)
from nanny_io_proto.priorities import priority_of
from nanny_io_proto.spillformat import SPILL_MAGIC
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL, Stream

from .limits import DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES, DEFAULT_SPILL_BYTES
from .spill import Spill, read_spill

# Entry, pack_entries, SPILL_MAGIC, Spill and read_spill live elsewhere now; they stay
# importable from here, where the rest of the package and its users have always found them.
__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "DEFAULT_SPILL_BYTES",
    "RECORD_OVERHEAD",
    "SPILL_MAGIC",
    "Entry",
    "LogStore",
    "Spill",
    "StoreListener",
    "StoreStats",
    "pack_entries",
    "read_spill",
]

#: Bytes charged per record on top of its data. It was measured with tracemalloc for a ring
#: of one 6-tuple per record (the tuple, two ints, the bytes header, the slot); a chunk holds
#: a (data, flags) pair per record and a block 4 bytes per record, which is less, so real
#: memory stays under ``max_bytes`` even when every record is a single byte.
RECORD_OVERHEAD: Final = 200

_U32 = struct.Struct("<I")
_ONE = _U32.pack(1)  # the count of a one-record body
_BY_CODE: tuple[Stream, ...] = tuple(sorted(STREAM_CODES, key=STREAM_CODES.__getitem__))

#: Called after every append with ``(stream, first_seq, last_seq)`` of the records added.
StoreListener = Callable[[Stream, int, int], None]

#: Several records of one append in the ring:
#: (first_seq, time_ns, incarnation, stream_code, pieces, bytes charged, last_seq).
Chunk = tuple[int, int, int, int, list[tuple[bytes, int]], int, int]
#: Whole lines of one append (flags 0, no b"\r", each ending in b"\n"), no object per line:
#: (first_seq, time_ns, incarnation, stream_code, data, bytes charged, last_seq, lengths).
Block = tuple[int, int, int, int, bytes, int, int, "array[int]"]
#: A ring slot: a block (len 8), a chunk (len 7) or the entry of a one-record append (len 6).
Slot = Block | Chunk | Entry
#: What an evicted slot holds until the list is compacted (one shared object).
_GONE: Entry = (0, 0, 0, 0, 0, b"")

_data = itemgetter(0)
_flags = itemgetter(1)
#: Records expanded at a time when a chunk is read from its newest record back.
_NEWEST_STEP: Final = 256


def _freed(ends: list[int]) -> Callable[[int], int]:
    """The bytes freed by evicting the first k pieces, given their data's running sums."""
    return lambda k: ends[k - 1] + k * RECORD_OVERHEAD


def _block_lengths(lengths: array[int], m: int) -> Iterable[int]:
    return lengths[:m]


def _piece_lengths(pieces: list[tuple[bytes, int]], m: int) -> Iterable[int]:
    return map(len, map(_data, pieces[:m]))


def _head(lengths: Callable[[int], Iterable[int]], n: int, size: int, need: int) -> tuple[int, int]:
    """``(k, data bytes)`` of the fewest oldest of a chunk's ``n`` records (``size`` bytes
    charged) whose eviction frees ``need`` bytes; ``lengths(m)`` gives the first m lengths.

    Running sums (in C) over a head a little longer than the records' mean size says is
    needed, or over the whole chunk if that head falls short; k >= 1 since need > 0. (k is
    n only when the chunk's last record alone is larger than the ring: the slot then stays,
    empty, until it is evicted whole.)
    """
    m = min(n, need * n // size * 5 // 4 + 64)
    ends = list(accumulate(lengths(m)))  # the data of records [:k + 1]
    if ends[-1] + m * RECORD_OVERHEAD < need:
        ends = list(accumulate(lengths(n)))
    k = bisect_left(range(1, len(ends) + 1), need, key=_freed(ends)) + 1
    return k, ends[k - 1]


def _last(slot: Slot) -> int:
    """The last seq a ring slot holds."""
    return slot[0] if len(slot) == 6 else slot[6]


def _expand(slot: Slot, lo: int, hi: int) -> list[Entry]:
    """The entries of ``slot``'s records ``lo .. hi - 1`` (indexes within the slot)."""
    if len(slot) == 6:
        return [slot] if lo < hi else []
    flags: Iterable[int]
    datas: Sequence[bytes]
    if len(slot) == 8:
        first, time_ns, incarnation, code, data, _, last, lengths = slot
        if lo or hi <= last - first:  # a part: its bytes, then its lines
            start = sum(lengths[:lo])
            data = data[start : start + sum(lengths[lo:hi])]
        # A block's lines end in b"\n" and hold no b"\r": splitlines cuts exactly them.
        datas = data.splitlines(keepends=True)
        flags = repeat(0, len(datas))
    else:
        first, time_ns, incarnation, code, pieces, _, _ = slot
        part = pieces[lo:hi] if lo or hi < len(pieces) else pieces
        datas = list(map(_data, part))
        flags = map(_flags, part)
    n = len(datas)
    return list(
        zip(
            range(first + lo, first + lo + n),
            repeat(time_ns, n),
            repeat(incarnation, n),
            repeat(code, n),
            flags,
            datas,
            strict=True,
        )
    )


# -- packing -----------------------------------------------------------------------------------


#: Seqs are written into the headers two low bytes at a time from these tables (byte 0 and
#: byte 1 of 0, 1, 2, ... over two spans), so that consecutive seqs cost no int each.
_SPAN: Final = 1 << 16
_LOW0: Final = bytes(range(256)) * (2 * _SPAN // 256)
_LOW1: Final = b"".join(bytes([v]) * 256 for v in range(256)) * 2
_HEAD: Final = RECORD_HEADER.size  # 26: seq u64, time u64, incarnation u32, code, flags, len
_LITTLE: Final = sys.byteorder == "little"


def _headers(
    first_seq: int,
    time_ns: int,
    incarnation: int,
    code: int,
    lengths: array[int],
    flags: bytes | None,
) -> bytearray:
    """The record headers of one append, byte for byte those of ``RECORD_HEADER.pack``.

    Built by columns rather than one ``pack`` per record: the shared fields are a repeated
    template, and each varying byte (seq, flags, length) is one strided slice assignment.
    ``lengths``: the records' data lengths; ``flags``: theirs, one byte each, or None when
    every flag is 0, as the template has it.
    """
    n = len(lengths)
    size = _HEAD
    heads = bytearray(RECORD_HEADER.pack(first_seq & ~0xFFFF, time_ns, incarnation, code, 0, 0) * n)
    if n <= _SPAN:
        low = first_seq & 0xFFFF
        heads[0::size] = _LOW0[low : low + n]
        heads[1::size] = _LOW1[low : low + n]
        wrap = _SPAN - low  # the first record whose seq has the next high bytes
        if wrap < n:
            high = ((first_seq >> 16) + 1).to_bytes(6, "little")
            for b in range(6):
                heads[wrap * size + 2 + b :: size] = high[b : b + 1] * (n - wrap)
    else:
        seqs = array("Q", range(first_seq, first_seq + n))
        if not _LITTLE:
            seqs.byteswap()
        column = seqs.tobytes()
        for b in range(8):
            heads[b::size] = column[b::8]
    if flags is not None:
        heads[21::size] = flags
    if not _LITTLE:
        lengths = array("I", lengths)  # a copy: the caller's array stays as it is
        lengths.byteswap()
    column = lengths.tobytes()
    for b in range(4):
        heads[22 + b :: size] = column[b::4]
    return heads


def _body(
    first_seq: int,
    time_ns: int,
    incarnation: int,
    stream: Stream,
    pieces: Sequence[tuple[bytes, int]] | bytes,
    lengths: array[int] | None,
) -> list[bytes]:
    """The packed body (``pack_entries``) of consecutive records of one append, as parts to
    join: of its ``(data, flags)`` pieces, or of a block's bytes and ``lengths``."""
    code = STREAM_CODES[stream]
    if lengths is not None:
        assert isinstance(pieces, bytes)
        heads = _headers(first_seq, time_ns, incarnation, code, lengths, None)
        # (a bytearray: joined and checksummed as it is, no copy to bytes)
        return [_U32.pack(len(lengths)), cast(bytes, heads), pieces]
    assert not isinstance(pieces, bytes)
    lens = array("I", map(len, map(_data, pieces)))
    heads = _headers(first_seq, time_ns, incarnation, code, lens, bytes(map(_flags, pieces)))
    return [_U32.pack(len(pieces)), heads, *map(_data, pieces)]


def _part_body(slot: Slot, lo: int, hi: int) -> bytes:
    """The packed body of ``slot``'s records ``lo .. hi - 1`` (indexes within the slot)."""
    if len(slot) == 8:  # a block: a slice of its bytes and of its line lengths
        first, time_ns, incarnation, code, data, _, last, lengths = slot
        if lo or hi <= last - first:
            start = sum(lengths[:lo])
            lengths = lengths[lo:hi]
            data = data[start : start + sum(lengths)]
        return b"".join(_body(first + lo, time_ns, incarnation, _BY_CODE[code], data, lengths))
    if len(slot) == 7:
        first, time_ns, incarnation, code, pieces, _, _ = slot
        part = pieces[lo:hi] if lo or hi < len(pieces) else pieces
        return b"".join(_body(first + lo, time_ns, incarnation, _BY_CODE[code], part, None))
    return pack_entries(_expand(slot, lo, hi))


def _materialise(entries: Iterable[Entry]) -> list[LogRecord]:
    """LogRecords from entries without re-running ``__post_init__`` (append validated them)."""
    slots: Any = LogRecord.__dict__
    set_seq = slots["seq"].__set__
    set_time = slots["time_ns"].__set__
    set_inc = slots["incarnation"].__set__
    set_stream = slots["stream"].__set__
    set_flags = slots["flags"].__set__
    set_data = slots["data"].__set__
    new = object.__new__
    out: list[LogRecord] = []
    append = out.append
    by_code = _BY_CODE
    for seq, t, inc, code, fl, data in entries:
        rec = new(LogRecord)
        set_seq(rec, seq)
        set_time(rec, t)
        set_inc(rec, inc)
        set_stream(rec, by_code[code])
        set_flags(rec, fl)
        set_data(rec, data)
        append(rec)
    return out


# -- the ring ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the store (see :meth:`LogStore.statistics`)."""

    epoch: str
    count: int
    bytes_used: int  # data bytes + RECORD_OVERHEAD per record
    max_bytes: int
    oldest_seq: int  # last_seq + 1 when empty
    last_seq: int  # 0 when nothing was ever stored
    evicted_records: int
    spill_directory: str | None  # None: memory-only by configuration
    spill_active: bool  # False when memory-only (by configuration or after an error)
    spill_error: str | None  # why the spill stopped, if it did
    spill_bytes_written: int


class LogStore:
    """A ring of records bounded in bytes, evicting oldest first, optionally spilled to disk.

    ``oldest_seq .. last_seq`` are the seqs held; an empty store has ``oldest_seq ==
    last_seq + 1`` (1 and 0 when fresh), the convention of ``replay.plan_replay``.

    Whoever needs new records (the log channel) registers with :meth:`add_listener` and is
    told after each append, so that data flows one way, capture -> store -> channels, and
    no writer has to remember to pass its records on.
    """

    def __init__(
        self, *, epoch: str, max_bytes: int = DEFAULT_MAX_BYTES, spill: Spill | None = None
    ) -> None:
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.epoch = check_epoch(epoch)
        if spill is not None and spill.epoch != epoch:
            raise ValueError(f"spill epoch {spill.epoch!r} is not the store's {epoch!r}")
        self.max_bytes = max_bytes
        self.spill = spill
        # One chunk per append, with its first seq (for bisect) and bytes charged alongside.
        # Evicted slots are overwritten with _GONE at once (so memory follows bytes_used)
        # and cut off the lists once they are half of them (amortised O(1) per chunk); the
        # oldest chunk is cut down to its held records when only some of them are evicted.
        self._chunks: list[Slot] = []
        self._firsts: list[int] = []
        self._start = 0
        self._oldest = 1
        self._last_seq = 0
        self._bytes_used = 0
        self._evicted = 0
        self._listeners: list[StoreListener] = []
        # The last append (first, last, time_ns, incarnation, stream, pieces or a block's
        # data, a block's lengths) and its body.
        self._last_append: (
            tuple[
                int, int, int, int, Stream, Sequence[tuple[bytes, int]] | bytes, array[int] | None
            ]
            | None
        ) = None
        self._last_body: bytes | None = None
        # The parts of that body as the spill got them, joined only if someone asks for the
        # body (a live subscriber): without one, the spill's is the only copy of the data.
        self._last_parts: list[bytes] | None = None

    # -- state --------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest seq ever assigned (0 when nothing was stored)."""
        return self._last_seq

    @property
    def count(self) -> int:
        return self._last_seq - self._oldest + 1

    @property
    def oldest_seq(self) -> int:
        """The oldest seq still held; ``last_seq + 1`` when the store is empty."""
        return self._oldest

    @property
    def bytes_used(self) -> int:
        return self._bytes_used

    def __len__(self) -> int:
        return self._last_seq - self._oldest + 1

    def statistics(self) -> StoreStats:
        spill = self.spill
        return StoreStats(
            epoch=self.epoch,
            count=self.count,
            bytes_used=self._bytes_used,
            max_bytes=self.max_bytes,
            oldest_seq=self.oldest_seq,
            last_seq=self._last_seq,
            evicted_records=self._evicted,
            spill_directory=None if spill is None else str(spill.directory),
            spill_active=spill is not None and spill.active,
            spill_error=None if spill is None else spill.error,
            spill_bytes_written=0 if spill is None else spill.bytes_written,
        )

    def add_listener(self, listener: StoreListener) -> None:
        """Call ``listener(stream, first_seq, last_seq)`` after every append from now on.

        It runs synchronously, in registration order, once the records are in the ring
        (and the spill), so it can read them back; an exception from it propagates to the
        writer, as a bug should.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: StoreListener) -> None:
        """Stop calling ``listener`` (ValueError if it was not registered)."""
        self._listeners.remove(listener)

    # -- writing ------------------------------------------------------------------------------

    def append(
        self,
        stream: Stream,
        incarnation: int,
        time_ns: int,
        pieces: Sequence[tuple[bytes, int]],
        *,
        checked: bool = False,
    ) -> tuple[int, int]:
        """Store ``pieces`` ((data, flags) from LineAssembler) as consecutive records.

        Returns ``(first_seq, last_seq)`` assigned (``(n + 1, n)`` for no pieces). The
        records reach the spill file with os.write before this returns; spill errors are
        logged once and never raised. Listeners are told unless there were no pieces.
        ``checked``: the caller vouches that every piece is a (bytes, u8 int) pair, as
        LineAssembler's are, and hands over a list the store may keep and shorten;
        checking each piece again costs the capture path more than storing it.
        """
        first = self._last_seq + 1
        n = len(pieces)
        if not n:
            return first, first - 1
        _check_scalars(stream, incarnation, time_ns)
        if not checked:
            _check_pieces(pieces)
        # The appender's list is kept (LineAssembler's is fresh and never touched again);
        # anything else is copied, so that a caller's later change cannot reach the ring.
        if not checked or type(pieces) is not list:
            pieces = list(pieces)
        last = first + n - 1
        self._spill_append(first, last, time_ns, incarnation, stream, pieces, None)
        size = sum(map(len, map(_data, pieces))) + n * RECORD_OVERHEAD
        code = STREAM_CODES[stream]
        self._add(stream, (first, time_ns, incarnation, code, pieces, size, last), size)
        return first, last

    def append_block(
        self, stream: Stream, incarnation: int, time_ns: int, data: bytes, lengths: array[int]
    ) -> tuple[int, int]:
        """Store whole lines as consecutive records with flags 0, one per line, and keep them
        as they are (a :class:`~nanny_io_proto.lines.LineBlock` from the line assembler).

        The caller vouches that ``data`` is lines that each end in ``b"\\n"`` and hold no
        ``b"\\r"``, and that ``lengths`` (which the store keeps and shortens) are their
        lengths; otherwise as :meth:`append` with ``checked``.
        """
        first = self._last_seq + 1
        n = len(lengths)
        if not n:
            return first, first - 1
        _check_scalars(stream, incarnation, time_ns)
        last = first + n - 1
        self._spill_append(first, last, time_ns, incarnation, stream, data, lengths)
        size = len(data) + n * RECORD_OVERHEAD
        code = STREAM_CODES[stream]
        self._add(stream, (first, time_ns, incarnation, code, data, size, last, lengths), size)
        return first, last

    def append_one(
        self, stream: Stream, incarnation: int, time_ns: int, data: bytes, flags: int = 0
    ) -> int:
        """Store one record (e.g. a nanny event), tell the listeners; returns its seq."""
        _check_scalars(stream, incarnation, time_ns)
        if type(data) is not bytes or type(flags) is not int:
            raise TypeError(f"data must be bytes and flags an int, got {data!r}, {flags!r}")
        if not 0 <= flags <= 0xFF:
            raise ValueError(f"flags must be a u8, got {flags!r}")
        seq = self._last_seq + 1
        code = STREAM_CODES[stream]
        self._last_append = self._last_body = self._last_parts = None
        if self.spill is not None and self.spill.active:
            head = RECORD_HEADER.pack(seq, time_ns, incarnation, code, flags, len(data))
            self.spill.write_parts(seq, [_ONE, head, data])
        self._add(
            stream, (seq, time_ns, incarnation, code, flags, data), len(data) + RECORD_OVERHEAD
        )
        return seq

    def _spill_append(
        self,
        first: int,
        last: int,
        time_ns: int,
        incarnation: int,
        stream: Stream,
        data: Sequence[tuple[bytes, int]] | bytes,
        lengths: array[int] | None,
    ) -> None:
        """Remember an append of many records and write it to the spill: one packed body
        serves the spill and the log channel's live batch (see :meth:`packed`)."""
        self._last_append = (first, last, time_ns, incarnation, stream, data, lengths)
        self._last_body = self._last_parts = None
        if self.spill is not None and self.spill.active:
            self._last_parts = _body(first, time_ns, incarnation, stream, data, lengths)
            self.spill.write_parts(first, self._last_parts)

    def _add(self, stream: Stream, slot: Slot, size: int) -> None:
        """Put a new slot in the ring (``size`` bytes charged), evict what no longer fits,
        and tell the listeners."""
        first, last = slot[0], _last(slot)
        self._chunks.append(slot)
        self._firsts.append(first)
        self._last_seq = last
        self._bytes_used += size
        if self._bytes_used > self.max_bytes:
            self._evict()
        for listener in self._listeners:
            listener(stream, first, last)

    def _evict(self) -> None:
        """Evict the fewest oldest records that bring ``bytes_used`` within ``max_bytes``:
        whole slots while that is not too many, then the head of the oldest chunk."""
        chunks, firsts = self._chunks, self._firsts
        i = self._start
        used = self._bytes_used
        limit = self.max_bytes
        evicted = 0
        while used > limit:
            slot = chunks[i]
            if len(slot) == 6:  # one record
                chunks[i] = _GONE
                firsts[i] = 0  # (only seqs from self._start on are bisected)
                used -= len(slot[5]) + RECORD_OVERHEAD
                evicted += 1
                i += 1
                continue
            size = slot[5]
            if used - size >= limit:  # the whole chunk goes (no fewer records would do)
                chunks[i] = _GONE
                firsts[i] = 0
                used -= size
                evicted += slot[6] - slot[0] + 1
                i += 1
                continue
            # Keep the newest records: drop the shortest head whose bytes bring us to limit.
            need = used - limit
            if len(slot) == 8:
                first, time_ns, incarnation, code, data, _, last, lengths = slot
                k, cut = _head(partial(_block_lengths, lengths), len(lengths), size, need)
            else:
                first, time_ns, incarnation, code, pieces, _, last = slot
                k, cut = _head(partial(_piece_lengths, pieces), len(pieces), size, need)
            head = cut + k * RECORD_OVERHEAD
            if len(slot) == 8:
                del lengths[:k]  # in place: a memmove of what stays
                chunks[i] = (
                    first + k,
                    time_ns,
                    incarnation,
                    code,
                    data[cut:],
                    size - head,
                    last,
                    lengths,
                )
            else:
                del pieces[:k]  # in place: a memmove, where a slice would copy what stays
                chunks[i] = (first + k, time_ns, incarnation, code, pieces, size - head, last)
            firsts[i] = first + k
            used -= head
            evicted += k
        self._evicted += evicted
        self._oldest += evicted
        self._bytes_used = used
        if i > 64 and 2 * i >= len(chunks):
            del chunks[:i], firsts[:i]
            i = 0
        self._start = i

    # -- reading ------------------------------------------------------------------------------

    def packed(self, first_seq: int, last_seq: int) -> bytes | None:
        """The packed body (``pack_entries``) of records ``first_seq .. last_seq`` when they
        are exactly the last append, else None: the spill and the live batch share it."""
        last = self._last_append
        if last is None or last[0] != first_seq or last[1] != last_seq:
            return None
        if self._last_body is None:
            if first_seq < self._oldest:  # evicted at once: its pieces were cut down
                return None
            first, _, time_ns, incarnation, stream, pieces, lengths = last
            parts = self._last_parts or _body(first, time_ns, incarnation, stream, pieces, lengths)
            self._last_body = b"".join(parts)
            self._last_parts = None
        return self._last_body

    def _bounds(self, from_seq: int, to_seq: int | None) -> tuple[int, int]:
        """The held seqs within from_seq..to_seq (inclusive), as (lo, hi) seqs; lo > hi
        when there are none."""
        hi = self._last_seq if to_seq is None else min(to_seq, self._last_seq)
        return max(from_seq, self._oldest), hi

    def _chunk_of(self, seq: int) -> int:
        """The index of the chunk holding ``seq`` (a held seq)."""
        return bisect_right(self._firsts, seq, self._start) - 1

    def _slices(
        self,
        from_seq: int,
        to_seq: int | None,
        streams: Collection[Stream] | None,
        limit: int | None,
    ) -> Iterator[tuple[Slot, int, int]]:
        """``(slot, lo, hi)`` for each slot's matching records ``lo .. hi - 1`` (indexes
        within the slot), oldest first, at most ``limit`` records in all."""
        lo, hi = self._bounds(from_seq, to_seq)
        want = -1 if limit is None else max(limit, 0)
        if lo > hi or want == 0:
            return
        wanted = None if streams is None else _codes(streams)
        chunks = self._chunks
        got = 0
        for i in range(self._chunk_of(lo), len(chunks)):
            slot = chunks[i]
            first = slot[0]
            if first > hi:
                break
            if wanted is not None and slot[3] not in wanted:
                continue
            a = max(lo - first, 0)
            b = min(hi, _last(slot)) - first + 1
            if want >= 0:
                b = min(b, a + want - got)
            yield slot, a, b
            got += b - a
            if got == want:
                break

    def entries(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[Stream] | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Raw entries with seq in ``from_seq .. to_seq`` (inclusive), oldest first.

        ``streams`` keeps only those streams; ``limit`` keeps the first ``limit`` matches.
        """
        out: list[Entry] = []
        for slot, a, b in self._slices(from_seq, to_seq, streams, limit):
            out += _expand(slot, a, b)
        return out

    def packed_parts(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[Stream] | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, int, bytes]]:
        """What :meth:`entries` returns, as the packed bodies (``pack_entries``) of its runs
        of consecutive records of one append: ``[(first_seq, last_seq, body), ...]``.

        For a replay answer (``logserver.cut_packed``): a chunk's headers are built by
        columns, so reading a million records builds no tuple per record.
        """
        return [
            (slot[0] + a, slot[0] + b - 1, _part_body(slot, a, b))
            for slot, a, b in self._slices(from_seq, to_seq, streams, limit)
        ]

    def records(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[Stream] | None = None,
        limit: int | None = None,
    ) -> list[LogRecord]:
        """Like :meth:`entries`, as LogRecord objects."""
        return _materialise(self.entries(from_seq, to_seq, streams, limit))

    def last_entries(
        self,
        n: int,
        streams: Collection[Stream] | None = None,
        *,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[Entry]:
        """The newest ``n`` matching entries within ``from_seq .. to_seq``, oldest first."""
        lo, hi = self._bounds(from_seq, to_seq)
        if n <= 0 or lo > hi:
            return []
        wanted = None if streams is None else _codes(streams)
        chunks = self._chunks
        parts: list[list[Entry]] = []
        got = 0
        for i in range(self._chunk_of(hi), self._start - 1, -1):
            slot = chunks[i]
            first = slot[0]
            if _last(slot) < lo:
                break
            if wanted is not None and slot[3] not in wanted:
                continue
            b = min(hi, _last(slot)) - first + 1
            a = max(lo - first, 0, b - (n - got))
            parts.append(_expand(slot, a, b))
            got += b - a
            if got == n:
                break
        return [entry for part in reversed(parts) for entry in part]

    def _newest_first(self, lowest_seq: int) -> Iterator[Entry]:
        """Held entries from the newest down to ``lowest_seq``, expanded a part of a chunk
        at a time (the last words of a large read need only its last lines)."""
        chunks = self._chunks
        for i in range(len(chunks) - 1, self._start - 1, -1):
            slot = chunks[i]
            last = _last(slot)
            if last < lowest_seq:
                return
            lo = max(lowest_seq - slot[0], 0)
            for hi in range(last - slot[0] + 1, lo, -_NEWEST_STEP):
                yield from reversed(_expand(slot, max(lo, hi - _NEWEST_STEP), hi))

    def last(
        self,
        n: int,
        streams: Collection[Stream] | None = None,
        *,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[LogRecord]:
        """The newest ``n`` matching records, oldest first (for ``tail -n`` and replay last N)."""
        return _materialise(self.last_entries(n, streams, from_seq=from_seq, to_seq=to_seq))

    def tail_text(
        self,
        streams: Collection[Stream] = (Stream.STDERR, Stream.LOG),
        max_lines: int = 20,
        max_chars: int = 4096,
        incarnation: int | None = None,
        from_seq: int = 1,
        priorities: bool = False,
    ) -> list[Any]:
        """The kernel's last words: the newest lines of ``streams`` as (stream, text), oldest first.

        With ``priorities``, (stream, text, syslog priority) instead.

        Pieces flagged FLAG_NO_EOL are joined into their line before decoding (UTF-8,
        'replace'); the trailing newline is dropped. Lines are ordered by their last piece.
        With ``incarnation``, only that launch's records count (a dead kernel's last words
        are its own, not its predecessor's); with ``from_seq``, only records from that seq on.
        Output the kernel sent on iopub (FLAG_IOPUB) and bytes from its file descriptors are
        assembled apart, though they share a stream. At most ``max_lines`` lines and ``max_chars``
        characters: the oldest line that does
        not fit is cut from its start and marked with "…". The backward scan stops after
        about ``4 * max_chars`` bytes, so the oldest line returned may lack its beginning.
        """
        if max_lines <= 0 or max_chars <= 0 or from_seq > self._last_seq:
            return []
        wanted = _codes(streams)
        by_code = _BY_CODE
        byte_budget = 4 * max_chars + 4  # a char is at most 4 bytes: enough to fill max_chars
        # per stream code (+ 256 for iopub): [seq of the line's last piece, pieces newest first]
        pending: dict[int, tuple[int, list[bytes]]] = {}
        lines: list[tuple[int, int, list[bytes]]] = []  # a min-heap of the newest max_lines
        flags_of: dict[int, int] = {}  # seq of a line's last piece -> its flags
        scanned = 0
        for seq, _, inc, code, flags, data in self._newest_first(from_seq):
            if code not in wanted or (incarnation is not None and inc != incarnation):
                continue
            stream = code | (256 if flags & FLAG_IOPUB else 0)
            scanned += len(data)
            line = pending.get(stream)
            if line is not None and flags & FLAG_NO_EOL:
                line[1].append(data)  # an earlier piece of the same line
            else:
                if line is not None:
                    if len(lines) < max_lines:
                        heapq.heappush(lines, (line[0], stream, line[1]))
                    else:
                        heapq.heappushpop(lines, (line[0], stream, line[1]))
                pending[stream] = (seq, [data])
                if priorities:
                    flags_of[seq] = flags
                # done once no unfinished line could still be among the newest max_lines
                if len(lines) == max_lines and all(k < lines[0][0] for k, _ in pending.values()):
                    break
            if scanned > byte_budget:
                break
        lines.extend((s, stream, p) for stream, (s, p) in pending.items())
        lines.sort(key=itemgetter(0))
        out: list[Any] = []
        room = max_chars
        for last, stream, pieces in reversed(lines[-max_lines:]):
            text = b"".join(reversed(pieces)).decode("utf-8", "replace")
            if text.endswith("\n"):
                text = text[:-1]
            kind = by_code[stream & 0xFF]
            extra = (priority_of(kind, flags_of[last]),) if priorities else ()
            if len(text) > room:
                if room > 1:
                    out.append((kind.value, "…" + text[len(text) - room + 1 :], *extra))
                break
            out.append((kind.value, text, *extra))
            room -= len(text)
        out.reverse()
        return out


_U8_VALUES: Final = frozenset(range(256))


def _check_pieces(pieces: Sequence[tuple[bytes, int]]) -> None:
    """TypeError/ValueError unless every piece is a (bytes, u8 int) pair."""
    if not set(map(type, map(_data, pieces))) <= {bytes} or not set(
        map(type, map(_flags, pieces))
    ) <= {int}:
        raise TypeError("pieces must be (bytes, int) pairs")
    if not set(map(_flags, pieces)) <= _U8_VALUES:
        raise ValueError("flags must be u8 values")


def _codes(streams: Collection[Stream]) -> frozenset[int]:
    return frozenset(STREAM_CODES[s] for s in streams)


def _check_scalars(stream: object, incarnation: object, time_ns: object) -> None:
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a Stream, got {stream!r}")
    if type(incarnation) is not int or not 0 <= incarnation <= 0xFFFF_FFFF:
        raise ValueError(f"incarnation must be a u32, got {incarnation!r}")
    if type(time_ns) is not int or not 0 <= time_ns <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"time_ns must be a u64, got {time_ns!r}")
