"""The late joiner, without I/O: subscribe, replay history, buffer live, repair gaps.

:class:`LogSubscription` is the reference implementation of the recipe in
specs/log-channel.md. The caller owns the SUB and DEALER sockets: it feeds decoded live
messages to :meth:`~LogSubscription.receive_live`, decoded replay answers to
:meth:`~LogSubscription.receive_replay`, sends what :meth:`~LogSubscription.requests_to_send`
returns, and gets back events with every record exactly once, in seq order.

Its phases (waiting for history, anchoring on live after a refusal, following) and the
moves between them are one table in :mod:`~nanny_io_proto.subscription_state`.

How gaps are found: every live batch carries ``prev_seqs``, the last seq of each stream
before it. For the streams we follow, ``max(prev_seqs[s] for s in ours)`` is the seq of the
record just before the batch in *our* part of the log, so a lost message shows up even when
we filter streams. Ticks carry the same numbers for a lost tail.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

from .errors import LocalProtocolError
from .logrecords import TICK_TOPIC, LogRecord, RecordBatch, Tick, topic_for
from .replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    ReplayResponse,
    ReplayTruncated,
)
from .streams import Stream
from .subscription_state import ESTABLISHED, Phase, Trigger, next_phase

__all__ = [
    "BUSY_RETRY_FIRST",
    "BUSY_RETRY_MAX",
    "REPLAY_ATTEMPTS",
    "Alive",
    "EpochChanged",
    "Event",
    "Gap",
    "LogSubscription",
    "Records",
    "ReplayFailed",
    "SubscriptionStats",
    "Truncated",
]


#: How many times a request is sent in all when its answer stops coming (see
#: :meth:`LogSubscription.replay_unanswered`) before it is reported as failed.
REPLAY_ATTEMPTS = 3
#: How long to wait before asking again a nanny that answered "busy" (all its replay slots
#: taken): the first time, and at most. The pause doubles with each busy answer in a row, so
#: a nanny whose slots stay taken (its readers are slow) is not asked twenty times a second.
BUSY_RETRY_FIRST = 0.05
BUSY_RETRY_MAX = 2.0


@dataclass(frozen=True, slots=True)
class Records:
    """Records to show, in seq order, continuing exactly where the previous event stopped."""

    records: tuple[LogRecord, ...]


@dataclass(frozen=True, slots=True)
class Gap:
    """Records of our streams with seq in this range were lost: the store no longer has them."""

    first_missing: int
    last_missing: int


@dataclass(frozen=True, slots=True)
class Truncated:
    """The history asked for at start begins before the store's oldest record."""

    oldest_seq: int
    lost: int  # seqs before oldest_seq that were asked for and are gone (all streams)


@dataclass(frozen=True, slots=True)
class EpochChanged:
    """The nanny process restarted: seqs start again at 1; history is re-requested."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Alive:
    """A heartbeat tick: the nanny is alive (tell the kernel's state from ``tick``)."""

    tick: Tick


@dataclass(frozen=True, slots=True)
class ReplayFailed:
    """The replay server refused a request, or never answered it (code ``unanswered``,
    see :meth:`LogSubscription.replay_unanswered`); delivery goes on (with a Gap for a
    repair, live only for the history)."""

    code: str
    message: str


Event = Records | Gap | Truncated | EpochChanged | Alive | ReplayFailed


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """A snapshot of counters, for status lines and tests."""

    delivered: int  # records delivered
    duplicates: int  # records dropped because they were already delivered
    repairs: int  # repair requests issued
    gaps: int  # Gap events
    buffered: int  # records waiting for earlier ones
    stale: int  # messages ignored (old epoch, unknown request, unwanted stream)


@dataclass(slots=True)
class _Segment:
    """Records in seq order whose predecessor among our streams is ``link``."""

    link: int
    records: tuple[LogRecord, ...]


@dataclass(slots=True)
class _Pending:
    kind: Literal["initial", "repair"]
    since: int  # the request's since_seq (1 when it had none)
    until: int | None
    link: int  # predecessor of the next batch of the answer
    sent: int = 0
    received: int = 0  # the last seq of the answer's batches received so far (0: none)
    notice: int = 0  # the last seq a truncated notice of the answer said is gone (0: none)
    attempts: int = 1  # requests sent for this range, counting this one
    resumed: bool = False  # asks for the rest of an unanswered request: never "Truncated"


_SEQ = attrgetter("seq")


def _linked(pend: _Pending, prev_seq: int) -> bool:
    """Whether an answer message continues the messages of ``pend`` received so far.

    A truncated notice is a link too (it stands for the seqs it says are gone), so a lost
    notice shows as a hole. A server that leaves the notice out of the chain sends 0 after
    it, accepted while nothing followed the notice.
    """
    return prev_seq == pend.received or (prev_seq == 0 and pend.received == pend.notice)


@dataclass(slots=True)
class _Counters:
    delivered: int = 0
    duplicates: int = 0
    repairs: int = 0
    gaps: int = 0
    stale: int = 0


class LogSubscription:
    """Follow a nanny's log: history first, then live, each record once, in seq order.

    ``streams``: the streams to follow (None: all). ``since_seq``: start at this seq;
    ``last``: start with only the last N records (at most one of them; neither: everything
    the store holds, with a Truncated event if older records were already dropped).
    ``make_nonce``: returns a fresh random string for each request (e.g. ``uuid4().hex``).
    """

    def __init__(
        self,
        *,
        make_nonce: Callable[[], str],
        streams: Iterable[Stream] | None = None,
        since_seq: int | None = None,
        last: int | None = None,
        request_prefix: str = "r",
        attempts: int = REPLAY_ATTEMPTS,
        curve: bool = False,
    ) -> None:
        if since_seq is not None and last is not None:
            raise LocalProtocolError("give since_seq or last, not both")
        if since_seq is not None and (type(since_seq) is not int or since_seq < 1):
            raise LocalProtocolError(f"since_seq must be an integer >= 1, got {since_seq!r}")
        if last is not None and (type(last) is not int or last < 0):
            raise LocalProtocolError(f"last must be an integer >= 0, got {last!r}")
        wanted = None if streams is None else tuple(dict.fromkeys(streams))
        if wanted is not None and (not wanted or not all(isinstance(s, Stream) for s in wanted)):
            raise LocalProtocolError(f"streams must be None or some Streams, got {streams!r}")
        self._streams: tuple[Stream, ...] | None = (
            None if wanted is None or set(wanted) == set(Stream) else wanted
        )
        self._since = since_seq
        self._last = last
        if type(attempts) is not int or attempts < 1:
            raise LocalProtocolError(f"attempts must be an integer >= 1, got {attempts!r}")
        self._attempts = attempts
        self._make_nonce = make_nonce
        self._prefix = request_prefix
        self._counter = 0
        self._phase = Phase.NEW  # see subscription_state: the one place that moves it
        self._epoch: str | None = None
        self._retired: set[str] = set()
        self._cursor = 0  # every record of ours with seq <= cursor was delivered or reported
        self._segments: list[_Segment] = []  # sorted by first seq unless _unsorted
        self._unsorted = False
        self._held: list[tuple[str, _Segment]] = []  # live batches before establishment
        self._target = 0  # latest seq of ours the nanny says it published (from ticks)
        self._target_epoch: str | None = None
        self._outstanding: dict[str, _Pending] = {}
        self._retry: _Pending | None = None  # a request the nanny was too busy to answer
        self._busy = 0  # "busy" answers in a row
        self._curve = curve  # our SUB socket is a CurveZMQ client of the nanny's key
        self._on_curve = False  # subscribed to the unsigned curve. topics, not the signed
        self._topic_changes: list[tuple[tuple[bytes, ...], tuple[bytes, ...]]] = []
        self._queue: list[ReplayRequest] = []
        self._n = _Counters()

    # -- what the caller asks ----------------------------------------------------------------

    @property
    def topics(self) -> tuple[bytes, ...]:
        """SUB topics to subscribe to first: our streams' topics and the tick. A tick may
        then ask for others (see :meth:`take_topic_changes`)."""
        return (*self._stream_topics(False), TICK_TOPIC)

    def _stream_topics(self, curve: bool) -> tuple[bytes, ...]:
        streams = tuple(Stream) if self._streams is None else self._streams
        return tuple(topic_for(s, curve) for s in streams)

    @property
    def on_curve(self) -> bool:
        """Whether live batches are followed on the unsigned ``curve.`` topics."""
        return self._on_curve

    def take_topic_changes(self) -> list[tuple[tuple[bytes, ...], tuple[bytes, ...]]]:
        """``(subscribe, unsubscribe)`` topic pairs to apply to the SUB socket, in order, each
        subscribe before its unsubscribe (so no batch falls between; one that comes twice
        is dropped as a duplicate).

        On a CurveZMQ connection (``curve``), a tick that says the nanny offers unsigned
        batches (spec 4.3) moves the subscription to the ``curve.`` topics, and one from a
        nanny that does not (a new epoch: another nanny) moves it back.
        """
        changes, self._topic_changes = self._topic_changes, []
        return changes

    @property
    def streams(self) -> tuple[Stream, ...] | None:
        return self._streams

    @property
    def epoch(self) -> str | None:
        """The nanny run whose records we deliver (None until the first answer)."""
        return self._epoch

    @property
    def last_seq(self) -> int:
        """Every record of ours up to this seq has been delivered or reported lost."""
        return self._cursor

    @property
    def phase(self) -> Phase:
        """Where the subscription is in its life (``subscription_state.Phase``)."""
        return self._phase

    @property
    def caught_up(self) -> bool:
        """History was delivered and nothing is missing or waiting right now."""
        return (
            self._phase in ESTABLISHED
            and not self._outstanding
            and not self._segments
            and self._target <= self._cursor
        )

    def statistics(self) -> SubscriptionStats:
        n = self._n
        buffered = sum(len(s.records) for s in self._segments)
        buffered += sum(len(s.records) for _, s in self._held)
        return SubscriptionStats(n.delivered, n.duplicates, n.repairs, n.gaps, buffered, n.stale)

    def start(self) -> ReplayRequest:
        """The history request to send once the SUB socket is connected and subscribed."""
        if self._phase is not Phase.NEW:
            raise LocalProtocolError("the subscription was already started")
        self._move(Trigger.START)
        if self._last is not None:
            return self._request("initial", since=None, until=None, last=self._last, link=-1)
        since = 1 if self._since is None else self._since
        self._cursor = since - 1
        return self._request("initial", since=since, until=None, last=None, link=since - 1)

    @property
    def retry_pending(self) -> bool:
        """The nanny answered "busy": call :meth:`retry` after :attr:`retry_delay` (the
        caller has the clock). Nothing is lost meanwhile: live records wait in order."""
        return self._retry is not None

    @property
    def retry_delay(self) -> float:
        """Seconds to wait before :meth:`retry`: ``BUSY_RETRY_FIRST``, doubled for each
        further "busy" answer in a row, at most ``BUSY_RETRY_MAX``."""
        return min(BUSY_RETRY_MAX, BUSY_RETRY_FIRST * (1 << min(max(0, self._busy - 1), 16)))

    def retry(self) -> None:
        """Ask again for what the nanny was too busy to answer (see ``retry_pending``)."""
        pend, self._retry = self._retry, None
        if pend is None:
            return
        if pend.kind == "repair":
            self._maybe_repair()
        elif pend.link == -1:  # the first request asked for the last N records
            self._queue.append(
                self._request("initial", since=None, until=None, last=self._last, link=-1)
            )
        else:
            self._queue.append(
                self._request(
                    "initial", since=pend.since, until=pend.until, last=None, link=pend.link
                )
            )

    @property
    def awaiting_replay(self) -> bool:
        """A request was sent and its answer has not ended: the caller times its silence."""
        return bool(self._outstanding)

    def replay_unanswered(self) -> list[Event]:
        """The replay server said nothing for too long while a request was in flight (the
        caller has the clock). It is asked again for the part of the answer not received,
        up to ``REPLAY_ATTEMPTS`` requests in all; then it fails as a refused request does:
        ReplayFailed ``unanswered``, a Gap for a repair, live only for the history. A late
        answer to a request asked again is ignored (its request id is forgotten)."""
        events: list[Event] = []
        for rid, pend in list(self._outstanding.items()):
            del self._outstanding[rid]
            if pend.attempts >= self._attempts:
                message = f"no answer from the replay server after {pend.attempts} requests"
                self._refused(pend, "unanswered", message, events)
                continue
            since = pend.since if pend.link == -1 else max(pend.since, pend.link + 1)
            if pend.until is not None and since > pend.until:  # only the end was missing
                if pend.kind == "initial":
                    self._establish()
                continue
            if pend.link == -1:  # "the last N", nothing of it received yet
                req = self._request("initial", since=None, until=None, last=self._last, link=-1)
            else:
                req = self._request(
                    pend.kind, since=since, until=pend.until, last=None, link=pend.link
                )
            again = self._outstanding[req.request_id]
            again.attempts = pend.attempts + 1
            again.resumed = pend.resumed or since != pend.since
            self._queue.append(req)
        self._deliver(events)
        self._maybe_repair()
        return events

    def requests_to_send(self) -> list[ReplayRequest]:
        """Requests (gap repairs, history after an epoch change) to send now; then forgotten."""
        queue, self._queue = self._queue, []
        return queue

    # -- feeding -----------------------------------------------------------------------------

    def receive_live(self, item: RecordBatch | Tick) -> list[Event]:
        """Feed one decoded message from the SUB socket, in the order received."""
        events: list[Event] = []
        if item.epoch in self._retired:
            self._n.stale += 1
            return events
        if isinstance(item, Tick):
            on_curve = self._curve and item.curve_batches
            if on_curve != self._on_curve:
                self._on_curve = on_curve
                self._topic_changes.append(
                    (self._stream_topics(on_curve), self._stream_topics(not on_curve))
                )
            return self._receive_tick(item, events)
        if self._streams is not None and item.stream not in self._streams:
            self._n.stale += 1
            return events
        seg = _Segment(item.prev_seqs.latest(self._streams), item.records)
        if self._phase is Phase.ANCHORING:  # live-only fallback: start from what we see
            self._move(Trigger.ANCHORED)
            self._epoch = item.epoch
            self._cursor = seg.link
        if self._phase not in ESTABLISHED:
            self._held.append((item.epoch, seg))
            return events
        if item.epoch != self._epoch:
            self._change_epoch(item.epoch, events)
            self._held.append((item.epoch, seg))
            return events
        self._add(seg)
        self._deliver(events)
        self._maybe_repair()
        return events

    def receive_replay(self, item: ReplayResponse) -> list[Event]:
        """Feed one decoded message from the replay socket."""
        events: list[Event] = []
        rid = item.request_id
        if rid is None and len(self._outstanding) == 1:
            rid = next(iter(self._outstanding))
        pend = self._outstanding.get(rid) if rid is not None else None
        if pend is None or rid is None:
            self._n.stale += 1
            return events
        if not isinstance(item, ReplayError) or item.code != "busy":
            self._busy = 0  # the nanny serves again
        if isinstance(item, (ReplayBatch, ReplayEnd)) and not self._answer_epoch(
            item.epoch, pend, events
        ):
            return events
        if isinstance(item, ReplayBatch):
            link = pend.link
            if not _linked(pend, item.prev_seq) and link != -1:
                # A message of the answer was lost on the way: these records do not
                # continue what we have, and the repair asks for what is missing. (At the
                # start of a "last N" answer there is nothing to repair: fewer than N came.)
                link = max(link, item.prev_seq)
            self._add(_Segment(link, item.records))
            pend.link = max(link, item.records[-1].seq)
            pend.received = item.records[-1].seq
            pend.sent += len(item.records)
        elif isinstance(item, ReplayTruncated):
            gone = pend.since + item.lost - 1
            if pend.kind == "initial" and not pend.resumed:
                events.append(Truncated(item.oldest_seq, item.lost))
            elif gone > self._cursor:
                self._gap(self._cursor + 1, gone, events)
            self._cursor = max(self._cursor, gone)
            pend.link = max(pend.link, gone)
            pend.received = pend.notice = gone  # the next message links to the notice
        elif isinstance(item, ReplayEnd):
            del self._outstanding[rid]
            self._deliver(events)
            upto = item.last_seq if pend.until is None else min(pend.until, item.last_seq)
            # the answer's last batches were lost on the way: what they held is fetched again
            complete = item.complete and _linked(pend, item.prev_seq)
            if complete and pend.link <= self._cursor:
                self._cursor = max(self._cursor, upto)
                if pend.until is not None and pend.until > self._cursor:
                    # the server's store ends before what it published: never ask again
                    self._gap(self._cursor + 1, pend.until, events)
                    self._cursor = pend.until
            elif not complete and item.sent == 0 and upto > self._cursor:
                self._gap(self._cursor + 1, upto, events)  # no progress: never loop
                self._cursor = upto
            elif not complete:  # more to fetch: the repair asks for it
                if self._target_epoch != self._epoch:
                    self._target, self._target_epoch = upto, self._epoch
                else:
                    self._target = max(self._target, upto)
            if pend.kind == "initial":
                self._establish()
        elif item.code == "busy":  # all replay slots taken: the same request, a bit later
            del self._outstanding[rid]
            self._retry = pend
            self._busy += 1
        else:  # ReplayError
            del self._outstanding[rid]
            self._refused(pend, item.code, item.message, events)
        self._deliver(events)
        self._maybe_repair()
        return events

    # -- internals ---------------------------------------------------------------------------

    def _request(
        self,
        kind: Literal["initial", "repair"],
        *,
        since: int | None,
        until: int | None,
        last: int | None,
        link: int,
    ) -> ReplayRequest:
        self._counter += 1
        rid = f"{self._prefix}{self._counter}"
        req = ReplayRequest(
            request_id=rid,
            nonce=self._make_nonce(),
            since_seq=since,
            until_seq=until,
            last=last,
            streams=self._streams,
        )
        self._outstanding[rid] = _Pending(kind, 1 if since is None else since, until, link)
        return req

    def _refused(self, pend: _Pending, code: str, message: str, events: list[Event]) -> None:
        """A request that will not be answered: report it and never wait for its range."""
        events.append(ReplayFailed(code, message))
        if pend.kind == "repair":
            hi = pend.until if pend.until is not None else self._target
            if hi > self._cursor:
                self._gap(self._cursor + 1, hi, events)
                self._cursor = hi
        else:
            self._live_only()

    def _move(self, trigger: Trigger) -> None:
        self._phase = next_phase(self._phase, trigger)

    def _receive_tick(self, tick: Tick, events: list[Event]) -> list[Event]:
        if self._phase is Phase.ANCHORING:
            self._move(Trigger.ANCHORED)
            self._epoch = tick.epoch
            self._cursor = tick.last_seqs.latest(self._streams)
        established = self._phase in ESTABLISHED
        if established and tick.epoch != self._epoch:
            self._change_epoch(tick.epoch, events)
        events.append(Alive(tick))
        tail = tick.last_seqs.latest(self._streams)
        if tick.epoch != self._target_epoch:
            self._target_epoch, self._target = tick.epoch, tail
        else:
            self._target = max(self._target, tail)
        if established:
            self._maybe_repair()
        return events

    def _answer_epoch(self, epoch: str, pend: _Pending, events: list[Event]) -> bool:
        """Whether a replay answer's epoch lets us use it (adopting or changing epochs)."""
        if epoch == self._epoch:
            return True
        if pend.kind == "initial" and self._phase not in ESTABLISHED:
            if self._epoch is not None:  # we guessed the new epoch from live; the server knows
                events.append(EpochChanged(self._epoch, epoch))
                self._retired.add(self._epoch)
            self._epoch = epoch
            return True
        if epoch in self._retired:
            self._n.stale += 1
            return False
        self._change_epoch(epoch, events)  # the nanny restarted under a repair
        return False

    def _change_epoch(self, new: str, events: list[Event]) -> None:
        """Forget everything of the old run and ask for the new run's whole history."""
        old = self._epoch
        if old is not None:
            events.append(EpochChanged(old, new))
            self._retired.add(old)
        self._epoch = new
        self._move(Trigger.EPOCH_CHANGED)
        self._cursor = 0
        self._segments.clear()
        self._unsorted = False
        self._held.clear()
        self._outstanding.clear()
        self._queue.clear()
        self._target, self._target_epoch = 0, None
        self._queue.append(self._request("initial", since=1, until=None, last=None, link=0))

    def _establish(self) -> None:
        """The first answer ended: live batches held meanwhile may now be delivered."""
        self._move(Trigger.HISTORY_ENDED)
        for epoch, seg in self._held:
            if epoch == self._epoch:
                self._add(seg)
        self._n.stale += sum(1 for epoch, _ in self._held if epoch != self._epoch)
        self._held.clear()
        if self._target_epoch != self._epoch:
            self._target, self._target_epoch = 0, None

    def _live_only(self) -> None:
        """History is unavailable: follow live from the first batch or tick we have."""
        self._move(Trigger.HISTORY_REFUSED)
        held = self._held
        if not held:
            return  # anchoring: the next live message of ours sets the cursor
        epoch = held[-1][0]
        if self._epoch is None:
            self._epoch = epoch
        mine = [seg for e, seg in held if e == self._epoch]
        self._n.stale += len(held) - len(mine)
        held.clear()
        if mine:  # anchored by what we held
            self._move(Trigger.ANCHORED)
            self._cursor = min(seg.link for seg in mine)
            for seg in mine:
                self._add(seg)

    def _add(self, seg: _Segment) -> None:
        segs = self._segments
        if segs and segs[-1].records[0].seq > seg.records[0].seq:
            self._unsorted = True
        segs.append(seg)

    def _gap(self, first: int, last: int, events: list[Event]) -> None:
        self._n.gaps += 1
        events.append(Gap(first, last))

    def _deliver(self, events: list[Event]) -> None:
        """Deliver every segment that continues the cursor, in seq order."""
        segs = self._segments
        if not segs:
            return
        if self._unsorted:  # a stall appends in order, so this stays rare and cheap
            segs.sort(key=lambda s: s.records[0].seq)
            self._unsorted = False
        cursor = self._cursor
        i = 0
        for seg in segs:
            recs = seg.records
            if recs[-1].seq <= cursor:
                self._n.duplicates += len(recs)
                i += 1
                continue
            link = seg.link
            if recs[0].seq <= cursor:
                cut = bisect_right(recs, cursor, key=_SEQ)
                self._n.duplicates += cut
                recs = recs[cut:]
                link = cursor
            if link > cursor:
                break
            events.append(Records(recs))
            self._n.delivered += len(recs)
            cursor = recs[-1].seq
            i += 1
        del segs[:i]
        self._cursor = cursor

    def _maybe_repair(self) -> None:
        """Ask for what is missing after the cursor, one repair at a time."""
        if self._phase is not Phase.FOLLOWING or self._outstanding or self._retry is not None:
            return
        lo = self._cursor + 1
        if self._segments:
            hi = self._segments[0].link
        elif self._target >= lo:
            hi = self._target
        else:
            return
        self._n.repairs += 1
        self._queue.append(self._request("repair", since=lo, until=hi, last=None, link=lo - 1))
