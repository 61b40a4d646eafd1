"""The log store: a byte-bounded ring of captured records plus a rotating on-disk spill.

The capture path appends thousands of lines per call, so entries are kept as plain tuples
``(seq, time_ns, incarnation, stream_code, flags, data)`` and :class:`LogRecord` objects are
built only when someone reads. The stream is kept as its wire code (``STREAM_CODES``), not
the enum member: a tuple of ints and bytes is untracked by the garbage collector, so a ring
of a million entries adds nothing to the cost of a full collection. Seqs are assigned here,
start at 1 and are consecutive, so a seq maps to a ring index by arithmetic. The store is not
thread-safe: the nanny owns it from one event loop.

The spill keeps history readable after the nanny has exited (``nanny-io tail`` post mortem).
A spill directory holds segment files ``seg-<index:08d>-<first_seq:020d>.nlog``; each is a
header (magic, log format version, epoch) followed by chunks, one per append: a u32 length
and a body in exactly the log channel's binary layout (``logrecords.pack_records``).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import re
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from nanny_io_proto.errors import LocalProtocolError, MalformedMessage
from nanny_io_proto.logrecords import (
    RECORD_HEADER,
    STREAM_CODES,
    Entry,
    LogRecord,
    check_epoch,
    pack_entries,
    unpack_records,
)
from nanny_io_proto.streams import FLAG_NO_EOL, Stream
from nanny_io_proto.version import LOG_FORMAT_VERSION

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

logger = logging.getLogger("nanny_io")

from .limits import DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES, DEFAULT_SPILL_BYTES  # noqa: E402

#: Bytes charged per record on top of its data: the 6-tuple (88), seq and time ints (2 x 32),
#: the bytes object header (33, rounded up) and the ring slot. Measured with tracemalloc; it
#: keeps real memory under ``max_bytes`` even when every record is a single byte.
RECORD_OVERHEAD: Final = 200

#: First 8 bytes of every spill segment; the container format. The body layout inside is
#: versioned by LOG_FORMAT_VERSION, which the header carries too.
SPILL_MAGIC: Final = b"NIOSPILL"
_SEG_HEADER = struct.Struct("<8sHH")  # magic, log format version, epoch length (then epoch)
_U32 = struct.Struct("<I")
_ONE = _U32.pack(1)  # the count of a one-record body
_SEG_NAME = re.compile(r"seg-(\d{8,})-(\d{20})\.nlog")
_HEAD = RECORD_HEADER.size
_BY_CODE: tuple[Stream, ...] = tuple(sorted(STREAM_CODES, key=STREAM_CODES.__getitem__))

#: Called after every append with ``(stream, first_seq, last_seq)`` of the records added.
StoreListener = Callable[[Stream, int, int], None]

#: What an evicted ring slot holds until the list is compacted (one shared object).
_GONE: Entry = (0, 0, 0, 0, 0, b"")

_data = itemgetter(0)
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
        # Evicted slots are overwritten with _GONE at once (so memory follows bytes_used)
        # and cut off the list once they are half of it (amortised O(1) per record).
        self._ring: list[Entry] = []
        self._start = 0
        self._last_seq = 0
        self._bytes_used = 0
        self._evicted = 0
        self._listeners: list[StoreListener] = []

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
    ) -> tuple[int, int]:
        """Store ``pieces`` ((data, flags) from LineAssembler) as consecutive records.

        Returns ``(first_seq, last_seq)`` assigned (``(n + 1, n)`` for no pieces). The
        records reach the spill file with os.write before this returns; spill errors are
        logged once and never raised. Listeners are told unless there were no pieces.
        """
        first = self._last_seq + 1
        n = len(pieces)
        if not n:
            return first, first - 1
        _check_scalars(stream, incarnation, time_ns)
        if not set(map(type, map(_data, pieces))) <= {bytes} or not set(
            map(type, map(_flags, pieces))
        ) <= {int}:
            raise TypeError("pieces must be (bytes, int) pairs")
        if not set(map(_flags, pieces)) <= _U8_VALUES:
            raise ValueError("flags must be u8 values")
        if self.spill is not None and self.spill.active:
            self.spill.write_parts(first, _body_parts(first, time_ns, incarnation, stream, pieces))
        last = first + n - 1
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
        while used > limit:
            used -= len(ring[i][5]) + RECORD_OVERHEAD
            ring[i] = _GONE
            i += 1
        self._evicted += i - start
        self._bytes_used = used
        if i > 64 and 2 * i >= len(ring):
            del ring[:i]
            i = 0
        self._start = i

    # -- reading ------------------------------------------------------------------------------

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
    ) -> list[tuple[str, str]]:
        """The kernel's last words: the newest lines of ``streams`` as (stream, text), oldest first.

        Pieces flagged FLAG_NO_EOL are joined into their line before decoding (UTF-8,
        'replace'); the trailing newline is dropped. Lines are ordered by their last piece.
        With ``incarnation``, only that launch's records count (a dead kernel's last words
        are its own, not its predecessor's). At most ``max_lines`` lines and ``max_chars``
        characters: the oldest line that does
        not fit is cut from its start and marked with "…". The backward scan stops after
        about ``4 * max_chars`` bytes, so the oldest line returned may lack its beginning.
        """
        if max_lines <= 0 or max_chars <= 0:
            return []
        wanted = _codes(streams)
        by_code = _BY_CODE
        byte_budget = 4 * max_chars + 4  # a char is at most 4 bytes: enough to fill max_chars
        # per stream: [seq of the line's last piece, pieces newest first]
        pending: dict[int, tuple[int, list[bytes]]] = {}
        lines: list[tuple[int, int, list[bytes]]] = []  # a min-heap of the newest max_lines
        scanned = 0
        ring = self._ring
        for i in range(len(ring) - 1, self._start - 1, -1):
            seq, _, inc, stream, flags, data = ring[i]  # stream: its code
            if stream not in wanted or (incarnation is not None and inc != incarnation):
                continue
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
                # done once no unfinished line could still be among the newest max_lines
                if len(lines) == max_lines and all(k < lines[0][0] for k, _ in pending.values()):
                    break
            if scanned > byte_budget:
                break
        lines.extend((s, stream, p) for stream, (s, p) in pending.items())
        lines.sort(key=itemgetter(0))
        out: list[tuple[str, str]] = []
        room = max_chars
        for _, stream, pieces in reversed(lines[-max_lines:]):
            text = b"".join(reversed(pieces)).decode("utf-8", "replace")
            if text.endswith("\n"):
                text = text[:-1]
            if len(text) > room:
                if room > 1:
                    out.append((by_code[stream].value, "…" + text[len(text) - room + 1 :]))
                break
            out.append((by_code[stream].value, text))
            room -= len(text)
        out.reverse()
        return out


_U8_VALUES: Final = frozenset(range(256))


def _codes(streams: Collection[Stream]) -> frozenset[int]:
    return frozenset(STREAM_CODES[s] for s in streams)


def _check_scalars(stream: object, incarnation: object, time_ns: object) -> None:
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a Stream, got {stream!r}")
    if type(incarnation) is not int or not 0 <= incarnation <= 0xFFFF_FFFF:
        raise ValueError(f"incarnation must be a u32, got {incarnation!r}")
    if type(time_ns) is not int or not 0 <= time_ns <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"time_ns must be a u64, got {time_ns!r}")


# -- the spill ---------------------------------------------------------------------------------


class Spill:
    """Rotating segment files that keep the log readable after the nanny exits.

    Every chunk is handed to the OS with os.write before :meth:`write_parts` returns, so a
    SIGKILL of the nanny loses nothing already acknowledged (no fsync: a machine crash may).
    Any OSError turns the spill off for good, with one warning: the store goes on in memory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        epoch: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_total_bytes: int = DEFAULT_SPILL_BYTES,
    ) -> None:
        if segment_bytes < 1 or max_total_bytes < segment_bytes:
            raise ValueError(
                f"need 0 < segment_bytes <= max_total_bytes, got {segment_bytes!r}, "
                f"{max_total_bytes!r}"
            )
        self.directory = Path(directory)
        self.epoch = check_epoch(epoch)
        self.segment_bytes = segment_bytes
        self.max_total_bytes = max_total_bytes
        self.error: str | None = None
        self.bytes_written = 0
        self._fd = -1  # -1: no segment open yet, -2: closed for good
        self._path = self.directory  # the open segment's path
        self._seg_size = 0  # bytes in the open segment
        self._next_index = 1
        self._closed: deque[tuple[Path, int]] = deque()  # finished segments, oldest first
        self._closed_bytes = 0
        self._header = _SEG_HEADER.pack(SPILL_MAGIC, LOG_FORMAT_VERSION, len(epoch)) + (
            epoch.encode("ascii")
        )
        try:
            self._prepare()
        except OSError as exc:
            self._fail("cannot use", exc)

    @property
    def active(self) -> bool:
        """False once the spill has failed or was closed: the store is memory-only."""
        return self.error is None and self._fd != -2

    def _prepare(self) -> None:
        """Create the directory (0700) and account for segments of earlier epochs."""
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.directory.mkdir(mode=0o700)
        except FileExistsError:
            if not self.directory.is_dir():
                raise
        os.chmod(self.directory, 0o700)
        for index, _, path in _segments(self.directory):
            size = path.stat().st_size
            self._closed.append((path, size))
            self._closed_bytes += size
            self._next_index = index + 1

    def write_parts(self, first_seq: int, parts: list[bytes]) -> bool:
        """Write one body (the log channel layout, given as parts to join) as one chunk.

        ``first_seq`` is the body's first seq (it names a new segment). Returns False when
        the spill is off. Never raises OSError.
        """
        if not self.active:
            return False
        size = sum(map(len, parts))
        chunk = b"".join([_U32.pack(size), *parts])
        try:
            if self._fd < 0 or (
                self._seg_size and self._seg_size + len(chunk) > self.segment_bytes
            ):
                self._rotate(first_seq)
            _write_all(self._fd, chunk)
        except OSError as exc:
            self._fail("cannot write to", exc)
            return False
        self._seg_size += len(chunk)
        self.bytes_written += len(chunk)
        return True

    def write_entries(self, entries: Sequence[Entry]) -> bool:
        """Write raw store entries (one chunk); see :meth:`write_parts`."""
        if not entries:
            return self.active
        return self.write_parts(entries[0][0], [pack_entries(entries)])

    def _rotate(self, first_seq: int) -> None:
        """Close the open segment, drop the oldest ones over the bound, open a new one."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._closed.append((self._path, self._seg_size))
            self._closed_bytes += self._seg_size
        while self._closed and self._closed_bytes + self.segment_bytes > self.max_total_bytes:
            path, size = self._closed.popleft()
            self._closed_bytes -= size
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):  # another writer in the same directory: take the next index
            self._path = self.directory / f"seg-{self._next_index:08d}-{first_seq:020d}.nlog"
            self._next_index += 1
            try:
                self._fd = os.open(self._path, flags, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, "no free segment name", str(self.directory))
        self._seg_size = 0
        _write_all(self._fd, self._header)
        self._seg_size = len(self._header)
        self.bytes_written += len(self._header)

    def _fail(self, what: str, exc: OSError) -> None:
        self.error = f"{what} {str(self.directory)!r}: {exc.strerror or exc}"
        logger.warning(
            "log spill off, %s; history will not survive the nanny (memory only)", self.error
        )
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close the open segment; later writes are ignored (the files stay)."""
        self._close_fd()
        self._fd = -2

    def __enter__(self) -> Spill:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _segments(directory: Path) -> list[tuple[int, int, Path]]:
    """(index, first_seq, path) of the segment files in ``directory``, in write order."""
    found = []
    for entry in os.scandir(directory):
        m = _SEG_NAME.fullmatch(entry.name)
        if m:
            found.append((int(m[1]), int(m[2]), Path(entry.path)))
    found.sort()
    return found


# -- post-mortem reading -----------------------------------------------------------------------


def read_spill(directory: str | os.PathLike[str]) -> Iterator[tuple[str, LogRecord]]:
    """Every record in a spill directory as (epoch, record), in write order.

    Within an epoch seqs increase; a later epoch (a new nanny) starts again from 1. A
    truncated last chunk (the nanny was killed mid-write) yields its complete records and
    ends that file; an unreadable or corrupt file is skipped with a warning. A missing
    directory yields nothing.
    """
    try:
        segments = _segments(Path(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    last_seq: dict[str, int] = {}
    for _, _, path in segments:
        try:
            buf = path.read_bytes()
        except OSError as exc:
            logger.warning("skipping spill segment %r: %s", str(path), exc.strerror or exc)
            continue
        yield from _read_segment(path, buf, last_seq)


def _read_segment(
    path: Path, buf: bytes, last_seq: dict[str, int]
) -> Iterator[tuple[str, LogRecord]]:
    if len(buf) < _SEG_HEADER.size:
        if buf:  # a zero-length file is a segment killed before its header: nothing to say
            logger.warning("skipping spill segment %r: truncated header", str(path))
        return
    magic, version, epoch_len = _SEG_HEADER.unpack_from(buf, 0)
    if magic != SPILL_MAGIC or version != LOG_FORMAT_VERSION:
        logger.warning(
            "skipping %r: not a nanny-io spill segment (magic %r, version %r)",
            str(path),
            magic,
            version,
        )
        return
    pos = _SEG_HEADER.size + epoch_len
    try:
        epoch = check_epoch(buf[_SEG_HEADER.size : pos].decode("ascii"))
    except (UnicodeDecodeError, LocalProtocolError):
        if len(buf) >= pos:
            logger.warning("skipping spill segment %r: bad epoch", str(path))
        return
    end = len(buf)
    while pos < end:
        if pos + 4 > end:
            return  # killed while writing a length prefix
        (size,) = _U32.unpack_from(buf, pos)
        body_end = pos + 4 + size
        try:
            if body_end > end:
                records = _salvage(buf[pos + 4 :])
            else:
                records = unpack_records(buf[pos + 4 : body_end])
        except MalformedMessage as exc:
            logger.warning(
                "spill segment %r is corrupt at byte %d (%s): skipping the rest",
                str(path),
                pos,
                exc,
            )
            return
        if records:
            if records[0].seq <= last_seq.get(epoch, 0):
                logger.warning(
                    "spill segment %r goes back to seq %d: skipping the rest",
                    str(path),
                    records[0].seq,
                )
                return
            last_seq[epoch] = records[-1].seq
        for rec in records:
            yield epoch, rec
        if body_end > end:
            return
        pos = body_end


def _salvage(body: bytes) -> list[LogRecord]:
    """The complete records at the start of a truncated body (headers first, then data)."""
    if len(body) < 4:
        return []
    (count,) = _U32.unpack_from(body, 0)
    heads_end = 4 + count * _HEAD
    if heads_end > len(body):
        return []
    out: list[LogRecord] = []
    start = heads_end
    prev = 0
    for seq, t, inc, code, flags, length in RECORD_HEADER.iter_unpack(body[4:heads_end]):
        stop = start + length
        if stop > len(body) or code >= len(_BY_CODE) or seq <= prev:
            break
        try:
            out.append(LogRecord(seq, t, inc, _BY_CODE[code], body[start:stop], flags))
        except LocalProtocolError:
            break
        prev = seq
        start = stop
    return out
