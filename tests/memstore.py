"""An in-memory stand-in for the nanny's store, for the pure log-server tests.

``nanny_io_proto.logserver`` reads a store through its ``EntrySource`` protocol; this one
holds LogRecords with seqs 1, 2, 3, ... in a list and forgets the oldest on request, which
is all a test of publishing or replay needs (``nanny_io.store.LogStore`` is tested apart).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from nanny_io_proto.logrecords import STREAM_CODES, Entry, LogRecord
from nanny_io_proto.streams import Stream


def entry(record: LogRecord) -> Entry:
    return (
        record.seq,
        record.time_ns,
        record.incarnation,
        STREAM_CODES[record.stream],
        record.flags,
        record.data,
    )


class MemoryStore:
    """Records with consecutive seqs from 1; ``oldest`` is the oldest one still held."""

    def __init__(self, records: Iterable[LogRecord] = (), oldest: int = 1) -> None:
        self.records = list(records)
        assert [r.seq for r in self.records] == list(range(1, len(self.records) + 1))
        self.oldest = oldest

    @property
    def oldest_seq(self) -> int:
        return min(self.oldest, self.last_seq + 1)

    @property
    def last_seq(self) -> int:
        return len(self.records)

    def add(self, stream: Stream, n: int = 1) -> tuple[int, int]:
        """Append ``n`` records of ``stream``; their (first_seq, last_seq)."""
        start = self.last_seq + 1
        for s in range(start, start + n):
            self.records.append(LogRecord(s, s, 1, stream, b"%s %d\n" % (stream.value.encode(), s)))
        return start, start + n - 1

    def evict(self, oldest: int) -> None:
        """Forget records before ``oldest`` (never un-forgets, never past the end)."""
        self.oldest = max(self.oldest, min(oldest, self.last_seq + 1))

    def entries(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[Stream] | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        lo = max(from_seq, self.oldest_seq)
        hi = self.last_seq if to_seq is None else min(to_seq, self.last_seq)
        out = [
            entry(r)
            for r in self.records[lo - 1 : max(hi, lo - 1)]
            if streams is None or r.stream in streams
        ]
        return out if limit is None else out[: max(limit, 0)]

    def last_entries(
        self,
        n: int,
        streams: Collection[Stream] | None = None,
        *,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[Entry]:
        return self.entries(from_seq, to_seq, streams)[-n:] if n > 0 else []
