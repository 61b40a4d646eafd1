"""The log channel's server side, without sockets: live batches, ticks and replay answers.

specs/log-channel.md has one server. Its decisions live here, in the manner of h11: what to
publish for records just stored, which seqs a batch or tick links to, and what a replay
answer consists of. The nanny's ``LogChannel`` only moves the frames these objects return
onto its PUB and ROUTER sockets (non-blocking, waiting for slow replay readers).

Both objects read the nanny's store through :class:`EntrySource` and work on raw
:data:`~nanny_io_proto.logrecords.Entry` tuples or packed bodies, never on LogRecord
objects: a late joiner asking for a million records costs the store's packed bodies, sliced
and joined into messages (:func:`cut_packed`), or, from a source without them, a million
tuples packed straight into bodies.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from enum import Enum
from itertools import accumulate
from operator import itemgetter
from typing import Protocol

from .errors import LocalProtocolError
from .logrecords import (
    CURVE_TOPIC_PREFIX,
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    RECORD_HEADER,
    TICK_TOPIC,
    Entry,
    StreamSeqs,
    Tick,
    check_epoch,
    encode_packed_batch,
    encode_tick,
    pack_entries,
    topic_for,
)
from .replay import (
    ReplayEnd,
    ReplayPlan,
    ReplayRequest,
    encode_packed_replay_batch,
    encode_replay_response,
    plan_replay,
)
from .signing import Signer
from .streams import Stream

__all__ = ["EntrySource", "LogPublisher", "ReplayAnswer", "cut_entries"]

_data = itemgetter(5)


class EntrySource(Protocol):
    """What the server reads: the nanny's ring store (``nanny_io.store.LogStore``) or a test's.

    It holds seqs ``oldest_seq .. last_seq`` (an empty source: ``oldest_seq == last_seq +
    1``). Reads return entries in seq order, within ``from_seq .. to_seq`` (inclusive), of
    ``streams`` only (None: all). A source may also offer ``packed(first_seq, last_seq)``:
    the packed body of exactly those records if it has one at hand, else None; and
    ``packed_parts(from_seq, to_seq, streams, limit)``: what ``entries`` would return, as
    packed bodies of runs of consecutive records, ``[(first_seq, last_seq, body), ...]``
    (a replay answer then builds no tuple per record, see :func:`cut_packed`).
    """

    @property
    def oldest_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    def entries(
        self,
        from_seq: int = 1,
        to_seq: int | None = None,
        streams: Collection[Stream] | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """The first ``limit`` (None: all) matching entries."""
        ...

    def last_entries(
        self,
        n: int,
        streams: Collection[Stream] | None = None,
        *,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[Entry]:
        """The newest ``n`` matching entries, oldest first."""
        ...


def cut_entries(
    entries: Sequence[Entry],
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[Sequence[Entry]]:
    """Cut entries into message-sized runs of at most ``max_records`` records and at most
    ``max_bytes`` of data; a record with more data than that gets a run of its own (spec 4.1,
    8.3). Live batches and replay answers follow this one rule.

    The usual input (one pipe read, at most 1 MiB) fits one message and is returned whole
    after one pass in C; otherwise the cut points are found by bisection over running sizes,
    not by a Python loop per record, because a million-record replay goes through here.
    """
    if max_records < 1 or max_bytes < 1:
        raise LocalProtocolError(f"batch limits must be positive: {max_records!r}, {max_bytes!r}")
    n = len(entries)
    if not n:
        return []
    if n <= max_records and sum(map(len, map(_data, entries))) <= max_bytes:
        return [entries]
    ends = list(accumulate(map(len, map(_data, entries)), initial=0))  # data of entries[:i]
    runs: list[Sequence[Entry]] = []
    start = 0
    while start < n:
        hi = min(n, start + max_records)
        stop = bisect_right(ends, ends[start] + max_bytes, start + 1, hi + 1) - 1
        stop = max(stop, start + 1)
        runs.append(entries[start:stop])
        start = stop
    return runs


#: A packed run of records: (count, first_seq, last_seq, body), ``body`` as pack_entries'.
PackedRun = tuple[int, int, int, bytes]
_HEAD = RECORD_HEADER.size
_SWAP = array("H", [1]).tobytes() != b"\x01\x00"  # array is in the machine's byte order


def _lengths(body: bytes, count: int) -> array[int]:
    """The data lengths in the ``count`` record headers of a packed body, read by columns."""
    raw = bytearray(4 * count)
    for b in range(4):
        raw[b::4] = body[4 + 22 + b : 4 + count * _HEAD : _HEAD]
    lengths = array("I", raw)
    if _SWAP:
        lengths.byteswap()
    return lengths


def cut_packed(
    parts: Sequence[tuple[int, int, bytes]],
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[PackedRun]:
    """Message bodies for packed parts (``(first_seq, last_seq, body)``, consecutive in the
    answer), cut exactly as :func:`cut_entries` cuts their entries: the same runs, byte for
    byte the bodies :func:`~nanny_io_proto.logrecords.pack_entries` would give them.

    A part's records have consecutive seqs (one append of the store, or a piece of it). Its
    header block and data are sliced, never unpacked, so a million-record replay costs a
    few C loops per part rather than a Python iteration per record.
    """
    if max_records < 1 or max_bytes < 1:
        raise LocalProtocolError(f"batch limits must be positive: {max_records!r}, {max_bytes!r}")
    out: list[PackedRun] = []
    heads: list[memoryview] = []  # the message's header blocks ...
    datas: list[memoryview] = []  # ... and its data, sliced out of the parts
    count = size = run_first = run_last = 0

    def flush() -> None:
        nonlocal count, size
        body = b"".join([count.to_bytes(4, "little"), *heads, *datas])
        out.append((count, run_first, run_last, body))
        heads.clear()
        datas.clear()
        count = size = 0

    for first, last, body in parts:
        n = last - first + 1
        view = memoryview(body)
        data_at = 4 + n * _HEAD
        ends = list(accumulate(_lengths(body, n), initial=0))  # data of records [:i]
        p = 0
        while p < n:
            hi = min(n, p + max_records - count)
            q = bisect_right(ends, ends[p] + max_bytes - size, p + 1, hi + 1) - 1
            if q == p:  # the next record does not fit: it starts a message (alone if large)
                if count:
                    flush()
                    continue
                q = p + 1
            if not count:
                run_first = first + p
            heads.append(view[4 + p * _HEAD : 4 + q * _HEAD])
            datas.append(view[data_at + ends[p] : data_at + ends[q]])
            count += q - p
            size += ends[q] - ends[p]
            run_last = first + q - 1
            p = q
            if count == max_records or q < n:
                flush()
    if count:
        flush()
    return out


class LogPublisher:
    """The live side: what to publish on the PUB socket for records just stored, and ticks.

    ``prev_seqs`` and ticks carry, per stream, the seq of the last record **stored** (spec
    4.1, 5), whether or not it was published: records of a stream nobody subscribed to are
    not sent, but they are in the log, and a subscriber whose cursor is behind them must see
    the link and repair from replay. So :meth:`stored` is told about every append, wanted or
    not, and only packs what some subscriber's topic matches.
    """

    def __init__(
        self,
        epoch: str,
        signer: Signer,
        *,
        curve: bool = False,
        max_records: int = MAX_BATCH_RECORDS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.epoch = check_epoch(epoch)
        self.signer = signer
        #: The PUB socket is a CurveZMQ server: batches are also offered unsigned, on the
        #: ``curve.`` topics, to the subscribers that ask for those (spec 4.3).
        self.curve = curve
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._last: dict[Stream, int] = dict.fromkeys(Stream, 0)
        self._topics: set[bytes] = set()  # the topic prefixes live subscribers asked for

    @property
    def last_seqs(self) -> StreamSeqs:
        """The last seq stored per stream (0: none yet)."""
        return StreamSeqs(**{s.value: n for s, n in self._last.items()})

    @property
    def last_seq(self) -> int:
        """The last seq stored on any stream (0: none yet)."""
        return max(self._last.values())

    def subscription(self, event: bytes) -> bool:
        """Feed one message of a verbose XPUB socket: ``\\x01`` + topic (subscribe) or
        ``\\x00`` + topic (the topic's last subscriber left).

        Returns True when the subscriber should be greeted with a tick now: its topic
        covers ticks, and a tick is how it learns that live messages reach it.
        """
        if not event:
            return False
        topic = bytes(event[1:])
        if event[0] == 1:
            self._topics.add(topic)
            return TICK_TOPIC.startswith(topic)
        if event[0] == 0:
            self._topics.discard(topic)
        return False

    def wants(self, stream: Stream, curve: bool = False) -> bool:
        """Whether some live subscriber's topic (a prefix filter) matches ``stream``'s signed
        batches, or with ``curve`` its unsigned ones (only offered on a CurveZMQ channel)."""
        if not curve:
            topic = topic_for(stream)
            return any(topic.startswith(t) for t in self._topics)
        if not self.curve:
            return False
        # Only a subscription to the curve. topics themselves asks for them: an empty one
        # (everything) would otherwise have every batch sent twice for nobody.
        topic = topic_for(stream, curve=True)
        return any(t.startswith(CURVE_TOPIC_PREFIX) and topic.startswith(t) for t in self._topics)

    def stored(
        self, stream: Stream, first_seq: int, last_seq: int, source: EntrySource
    ) -> list[list[bytes]]:
        """The messages to publish for records ``first_seq .. last_seq`` of ``stream``, just
        appended to ``source`` (one append: one stream, seqs above every earlier one).

        Records already evicted again (an append larger than the ring) are not published.
        """
        if last_seq < first_seq:
            return []
        if first_seq <= self.last_seq:
            raise LocalProtocolError(
                f"records from seq {first_seq!r} are not above the last stored {self.last_seq!r}"
            )
        messages: list[list[bytes]] = []
        forms = [curve for curve in (False, True) if self.wants(stream, curve)]
        if forms:
            prev = self.last_seqs
            body = self._whole_body(first_seq, last_seq, source)
            if body is not None:  # the usual append: one body, no entry built
                runs = [(last_seq - first_seq + 1, first_seq, last_seq, body)]
            else:
                entries = source.entries(first_seq, last_seq)
                cut = cut_entries(entries, self.max_records, self.max_bytes)
                packed = getattr(source, "packed", None)  # a body the source already packed
                runs = []
                for run in cut:
                    first, last = run[0][0], run[-1][0]
                    whole = packed(first, last) if len(cut) == 1 and packed is not None else None
                    runs.append((len(run), first, last, whole or pack_entries(run)))
            for count, first, last, packed_body in runs:
                for curve in forms:
                    messages.append(
                        encode_packed_batch(
                            self.epoch,
                            stream,
                            count,
                            first,
                            last,
                            prev,
                            packed_body,
                            self.signer,
                            curve=curve,
                        )
                    )
                prev = prev.advanced(stream, last)
        self._last[stream] = last_seq
        return messages

    def _whole_body(self, first_seq: int, last_seq: int, source: EntrySource) -> bytes | None:
        """The source's packed body of the whole append when it is still held and fits one
        message (what ``cut_entries`` would leave whole), else None. (The body is a u32
        count, a header per record, then the data.)"""
        packed = getattr(source, "packed", None)
        count = last_seq - first_seq + 1
        if packed is None or count > self.max_records or first_seq < source.oldest_seq:
            return None
        body: bytes | None = packed(first_seq, last_seq)
        if body is None or len(body) - 4 - count * RECORD_HEADER.size > self.max_bytes:
            return None
        return body

    def tick(self, *, time_ns: int, incarnation: int, kernel_state: str) -> list[bytes]:
        """The heartbeat message; publish it about every ``TICK_INTERVAL`` seconds."""
        seqs = self.last_seqs
        tick = Tick(
            epoch=self.epoch,
            last_seq=seqs.latest(),
            time_ns=time_ns,
            incarnation=incarnation,
            kernel_state=kernel_state,
            last_seqs=seqs,
            curve_batches=self.curve,
        )
        return encode_tick(tick, self.signer)


class _Phase(Enum):
    NEW = "new"  # nothing returned yet
    STREAMING = "streaming"  # reading the range chunk by chunk
    ENDED = "ended"  # the end message was returned


class ReplayAnswer:
    """One replay answer (spec 8.2, 8.3), returned message by message as the store is read.

    Planned against the store as it is when the request is served (``oldest_seq``,
    ``last_seq``). Each :meth:`next_messages` reads at most one chunk of ``max_records``
    entries from the store, so the server can let capture run between chunks and wait for
    a slow reader without holding the whole answer in memory. Between two calls the store
    may evict records this answer has not sent yet: it then ends *incomplete*, never
    skipping them silently, and the client asks again and is told what was lost.
    """

    def __init__(
        self,
        request: ReplayRequest,
        *,
        epoch: str,
        signer: Signer,
        oldest_seq: int,
        last_seq: int,
        max_records: int = MAX_BATCH_RECORDS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.plan: ReplayPlan = plan_replay(request, oldest_seq, last_seq)
        self.epoch = check_epoch(epoch)
        self.signer = signer
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sent = 0  # records in the messages returned so far
        self.prev_seq = 0  # the last seq of the last batch returned (0: none yet)
        # A truncation notice is a link of the answer's prev_seq chain: it stands for the
        # seqs it says are gone, so a client that lost it sees the next message not link.
        truncated = self.plan.truncated
        since = 1 if request.since_seq is None else request.since_seq
        self._notice_seq = 0 if truncated is None else since + truncated.lost - 1
        self.complete = True  # False once a limit or an eviction cut the answer short
        self._cursor = self.plan.first_seq  # the next seq to read in range mode
        self._phase = _Phase.NEW

    @property
    def finished(self) -> bool:
        """The end message was returned; there is nothing more to send."""
        return self._phase is _Phase.ENDED

    def next_messages(self, source: EntrySource) -> list[list[bytes]]:
        """The next messages of the answer, in order (``[]`` once finished).

        The first call returns the truncation notice, if due; the last one ends with the
        ``end`` message. ``source`` is the store the answer was planned against.
        """
        if self._phase is _Phase.ENDED:
            return []
        plan = self.plan
        out: list[list[bytes]] = []
        if self._phase is _Phase.NEW:
            self._phase = _Phase.STREAMING
            if plan.truncated is not None:
                out.append(encode_replay_response(plan.truncated, self.signer))
                self.prev_seq = self._notice_seq
            if plan.empty:
                out.append(self._end())
                return out
            if plan.last is not None:  # "the last N": one read, cut by the limit
                selected = source.last_entries(
                    plan.last, plan.streams, from_seq=plan.first_seq, to_seq=plan.last_seq
                )
                if plan.limit is not None and len(selected) > plan.limit:
                    del selected[plan.limit :]
                    self.complete = False
                out += self._batches(selected)
                out.append(self._end())
                return out
        packed_parts = getattr(source, "packed_parts", None)
        if packed_parts is not None:  # no tuple per record: see cut_packed
            runs = self._read_packed(source, packed_parts)
            out += self._packed_batches(runs)
            done = runs is None
        else:
            chunk = self._read(source)
            out += self._batches(chunk)
            done = chunk is None
        if done or self._cursor > plan.last_seq:
            out.append(self._end())
        return out

    def _want(self, source: EntrySource) -> int | None:
        """How many records the next read may take; None when the answer is over
        (``complete`` set)."""
        plan = self.plan
        cursor = self._cursor
        if cursor > plan.last_seq:
            return None
        if cursor < source.oldest_seq:  # evicted while the answer waited for its reader
            self.complete = False
            return None
        want = self.max_records
        if plan.limit is not None:
            want = min(want, plan.limit - self.sent)
            if want <= 0:  # the limit is reached: complete only if nothing was left out
                self.complete = not source.entries(cursor, plan.last_seq, plan.streams, limit=1)
                return None
        return want

    def _read_packed(
        self, source: EntrySource, packed_parts: Callable[..., list[tuple[int, int, bytes]]]
    ) -> list[PackedRun] | None:
        """Like :meth:`_read`, as message bodies cut from the source's packed parts."""
        want = self._want(source)
        if want is None:
            return None
        plan = self.plan
        parts = packed_parts(self._cursor, plan.last_seq, plan.streams, want)
        if not parts:
            return None
        self._cursor = parts[-1][1] + 1
        return cut_packed(parts, self.max_records, self.max_bytes)

    def _read(self, source: EntrySource) -> list[Entry] | None:
        """The next chunk of the range; None when the answer is over (``complete`` set)."""
        want = self._want(source)
        if want is None:
            return None
        plan = self.plan
        chunk = source.entries(self._cursor, plan.last_seq, plan.streams, limit=want)
        if not chunk:
            return None
        self._cursor = chunk[-1][0] + 1
        return chunk

    def abandon(self, prev_seq: int) -> list[bytes]:
        """The ``end`` of an answer cut short by the server (its client stopped reading):
        ``complete`` false, ``prev_seq`` the last seq of the last batch actually sent, so
        the client asks again for the rest. The answer is finished after this."""
        self.complete = False
        self.prev_seq = prev_seq
        return self._end()

    def _batches(self, entries: Sequence[Entry] | None) -> list[list[bytes]]:
        if not entries:
            return []
        plan = self.plan
        out = []
        for run in cut_entries(entries, self.max_records, self.max_bytes):
            out.append(
                encode_packed_replay_batch(
                    plan.request_id,
                    self.epoch,
                    len(run),
                    run[0][0],
                    run[-1][0],
                    pack_entries(run),
                    self.signer,
                    self.prev_seq,
                )
            )
            self.prev_seq = run[-1][0]
        self.sent += len(entries)
        return out

    def _packed_batches(self, runs: Sequence[PackedRun] | None) -> list[list[bytes]]:
        out = []
        for count, first, last, body in runs or ():
            out.append(
                encode_packed_replay_batch(
                    self.plan.request_id,
                    self.epoch,
                    count,
                    first,
                    last,
                    body,
                    self.signer,
                    self.prev_seq,
                )
            )
            self.prev_seq = last
            self.sent += count
        return out

    def _end(self) -> list[bytes]:
        self._phase = _Phase.ENDED
        plan = self.plan
        end = ReplayEnd(
            plan.request_id, self.epoch, plan.end_seq, self.sent, self.complete, self.prev_seq
        )
        return encode_replay_response(end, self.signer)
