"""The log store as it was with one entry tuple per record: the reference model that
``test_store_chunks.py`` compares the chunked ``nanny_io.store.LogStore`` with.

Kept from before the store held chunks, apart from its imports and the helpers that were
the same as the chunked store's (``_materialise``, ``_check_pieces``), which are written out
plainly here so that the comparison does not check that code against itself; do not
optimise it, its value is being the plain per-line version.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from operator import itemgetter
from typing import Any, Final

from nanny_io.limits import DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES, DEFAULT_SPILL_BYTES
from nanny_io.spill import Spill, read_spill
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

#: Bytes charged per record on top of its data: the 6-tuple (88), seq and time ints (2 x 32),
#: the bytes object header (33, rounded up) and the ring slot. Measured with tracemalloc; it
#: keeps real memory under ``max_bytes`` even when every record is a single byte.
RECORD_OVERHEAD: Final = 200

_U32 = struct.Struct("<I")
_ONE = _U32.pack(1)  # the count of a one-record body
_BY_CODE: tuple[Stream, ...] = tuple(sorted(STREAM_CODES, key=STREAM_CODES.__getitem__))

#: Called after every append with ``(stream, first_seq, last_seq)`` of the records added.
StoreListener = Callable[[Stream, int, int], None]

#: What an evicted ring slot holds until the list is compacted (one shared object).
_GONE: Entry = (0, 0, 0, 0, 0, b"")

_data = itemgetter(0)
_entry_data = itemgetter(5)
#: Records evicted at a time while the store is far over its bound, then closer.
_EVICT_BLOCKS = (256, 16, 1)
_flags = itemgetter(1)


# -- packing -----------------------------------------------------------------------------------


def _body_parts(
    first_seq: int,
    time_ns: int,
    incarnation: int,
    stream: Stream,
    pieces: Sequence[tuple[bytes, int]],
) -> list[bytes]:
    """Body parts (count, headers, data...) for consecutive records of one append."""
    n = len(pieces)
    heads = b"".join(
        map(
            RECORD_HEADER.pack,
            range(first_seq, first_seq + n),
            repeat(time_ns, n),
            repeat(incarnation, n),
            repeat(STREAM_CODES[stream], n),
            map(_flags, pieces),
            map(len, map(_data, pieces)),
        )
    )
    return [_U32.pack(n), heads, *map(_data, pieces)]


def _materialise(entries: Iterable[Entry]) -> list[LogRecord]:
    """LogRecords from entries, one constructor call each (the store's own conversion skips
    ``__post_init__``; this one does not, so the two are not the same code)."""
    return [
        LogRecord(seq, time_ns, incarnation, _BY_CODE[code], data, flags)
        for seq, time_ns, incarnation, code, flags, data in entries
    ]


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
        # Evicted slots are overwritten with _GONE at once (so memory follows bytes_used)
        # and cut off the list once they are half of it (amortised O(1) per record).
        self._ring: list[Entry] = []
        self._start = 0
        self._last_seq = 0
        self._bytes_used = 0
        self._evicted = 0
        self._listeners: list[StoreListener] = []
        # The last append (first, last, time_ns, incarnation, stream, pieces) and its body.
        self._last_append: tuple[int, int, int, int, Stream, Sequence[tuple[bytes, int]]] | None
        self._last_append = None
        self._last_body: bytes | None = None

    # -- state --------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest seq ever assigned (0 when nothing was stored)."""
        return self._last_seq

    @property
    def count(self) -> int:
        return len(self._ring) - self._start

    @property
    def oldest_seq(self) -> int:
        """The oldest seq still held; ``last_seq + 1`` when the store is empty."""
        return self._last_seq - (len(self._ring) - self._start) + 1

    @property
    def bytes_used(self) -> int:
        return self._bytes_used

    def __len__(self) -> int:
        return len(self._ring) - self._start

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
        LineAssembler's are; checking each one again costs the capture path more than
        storing it.
        """
        first = self._last_seq + 1
        n = len(pieces)
        if not n:
            return first, first - 1
        _check_scalars(stream, incarnation, time_ns)
        if not checked:
            _check_pieces(pieces)
        last = first + n - 1
        # One packed body for the spill and the log channel's live batch (see packed()).
        self._last_append = (first, last, time_ns, incarnation, stream, pieces)
        self._last_body = None
        if self.spill is not None and self.spill.active:
            self._last_body = b"".join(_body_parts(first, time_ns, incarnation, stream, pieces))
            self.spill.write_parts(first, [self._last_body])
        self._ring.extend(
            zip(
                range(first, last + 1),
                repeat(time_ns, n),
                repeat(incarnation, n),
                repeat(STREAM_CODES[stream], n),
                map(_flags, pieces),
                map(_data, pieces),
                strict=True,
            )
        )
        self._last_seq = last
        self._bytes_used += sum(map(len, map(_data, pieces))) + n * RECORD_OVERHEAD
        if self._bytes_used > self.max_bytes:
            self._evict()
        for listener in self._listeners:
            listener(stream, first, last)
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
        self._last_append = self._last_body = None
        if self.spill is not None and self.spill.active:
            head = RECORD_HEADER.pack(seq, time_ns, incarnation, code, flags, len(data))
            self.spill.write_parts(seq, [_ONE, head, data])
        self._ring.append((seq, time_ns, incarnation, code, flags, data))
        self._last_seq = seq
        self._bytes_used += len(data) + RECORD_OVERHEAD
        if self._bytes_used > self.max_bytes:
            self._evict()
        for listener in self._listeners:
            listener(stream, seq, seq)
        return seq

    def _evict(self) -> None:
        ring = self._ring
        i = self._start
        used = self._bytes_used
        limit = self.max_bytes
        start = i
        # Whole blocks (sums in C) while even the block leaves the store over its bound,
        # with ever smaller blocks, the last of one record.
        for size in _EVICT_BLOCKS:
            while used > limit:
                block = ring[i : i + size]
                freed = sum(map(len, map(_entry_data, block))) + len(block) * RECORD_OVERHEAD
                if used - freed < limit and size > 1:
                    break
                ring[i : i + len(block)] = repeat(_GONE, len(block))
                used -= freed
                i += len(block)
        self._evicted += i - start
        self._bytes_used = used
        if i > 64 and 2 * i >= len(ring):
            del ring[:i]
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
            first, _, time_ns, incarnation, stream, pieces = last
            self._last_body = b"".join(_body_parts(first, time_ns, incarnation, stream, pieces))
        return self._last_body

    def _span(self, from_seq: int, to_seq: int | None) -> tuple[int, int]:
        """Ring indexes [lo, hi) of the held seqs within from_seq..to_seq (inclusive)."""
        oldest = self.oldest_seq
        lo_seq = max(from_seq, oldest)
        hi_seq = self._last_seq if to_seq is None else min(to_seq, self._last_seq)
        if lo_seq > hi_seq:
            return 0, 0
        base = self._start - oldest
        return base + lo_seq, base + hi_seq + 1

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
        lo, hi = self._span(from_seq, to_seq)
        ring = self._ring
        if streams is None:
            if limit is not None:
                hi = min(hi, lo + max(limit, 0))
            return ring[lo:hi]
        wanted = _codes(streams)
        matches = (e for e in islice(ring, lo, hi) if e[3] in wanted)
        if limit is not None:
            return list(islice(matches, max(limit, 0)))
        return list(matches)

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
        lo, hi = self._span(from_seq, to_seq)
        if n <= 0 or lo >= hi:
            return []
        ring = self._ring
        if streams is None:
            return ring[max(lo, hi - n) : hi]
        wanted = _codes(streams)
        out: list[Entry] = []
        for i in range(hi - 1, lo - 1, -1):
            entry = ring[i]
            if entry[3] in wanted:
                out.append(entry)
                if len(out) == n:
                    break
        out.reverse()
        return out

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
        ring = self._ring
        lowest = self._start + max(0, from_seq - self.oldest_seq)
        for i in range(len(ring) - 1, lowest - 1, -1):
            seq, _, inc, code, flags, data = ring[i]
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


def _check_pieces(pieces: Sequence[tuple[bytes, int]]) -> None:
    """TypeError/ValueError unless every piece is a (bytes, u8 int) pair."""
    for data, flags in pieces:
        if type(data) is not bytes or type(flags) is not int:
            raise TypeError("pieces must be (bytes, int) pairs")
    for _, flags in pieces:
        if not 0 <= flags <= 0xFF:
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
