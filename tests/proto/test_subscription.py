"""The late-joiner state machine against a simulated nanny and a lossy PUB channel."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from memstore import MemoryStore

from nanny_io_proto.errors import LocalProtocolError
from nanny_io_proto.logrecords import (
    LogRecord,
    Stream,
    Tick,
    decode_log_message,
    topic_for,
)
from nanny_io_proto.logserver import LogPublisher, ReplayAnswer
from nanny_io_proto.replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    ReplayTruncated,
    decode_replay_request,
    decode_replay_response,
    encode_replay_request,
    encode_replay_response,
)
from nanny_io_proto.signing import DigestHistory, Signer
from nanny_io_proto.subscription import (
    BUSY_RETRY_FIRST,
    Alive,
    EpochChanged,
    Event,
    Gap,
    LogSubscription,
    Records,
    ReplayFailed,
    Truncated,
)
from nanny_io_proto.subscription_state import Phase

KEY = Signer(b"a-secret-key")


class Nanny:
    """A store, a publisher and a replay server, exchanging real (encoded) frames.

    ``topics``: what live subscribers asked the PUB socket for (everything by default);
    records of other streams are stored but not published, as in the nanny.
    """

    def __init__(
        self, epoch: str = "ep1", batch_records: int = 3, topics: tuple[bytes, ...] = (b"",)
    ) -> None:
        self.epoch = epoch
        self.store = MemoryStore()
        self.pub = LogPublisher(epoch, KEY, max_records=batch_records)
        for topic in topics:
            self.pub.subscription(b"\x01" + topic)
        self.history = DigestHistory()

    @property
    def records(self) -> list[LogRecord]:
        return self.store.records

    @property
    def oldest(self) -> int:
        return self.store.oldest

    def produce(self, stream: Stream, n: int = 1) -> list[list[bytes]]:
        first, last = self.store.add(stream, n)
        return self.pub.stored(stream, first, last, self.store)

    def tick(self) -> list[bytes]:
        return self.pub.tick(time_ns=0, incarnation=1, kernel_state="running")

    def evict(self, oldest: int) -> None:
        self.store.evict(oldest)

    def serve(self, frames: list[bytes], max_records: int = 4) -> list[list[bytes]]:
        req = decode_replay_request(frames, KEY, self.history)
        answer = ReplayAnswer(
            req,
            epoch=self.epoch,
            signer=KEY,
            oldest_seq=self.store.oldest_seq,
            last_seq=self.store.last_seq,
            max_records=max_records,
        )
        out: list[list[bytes]] = []
        while not answer.finished:
            out += answer.next_messages(self.store)
        return out


class Client:
    """Drives a LogSubscription the way a frontend would, recording every event."""

    def __init__(self, nanny: Nanny, **kwargs: object) -> None:
        nonces = itertools.count()
        self.nanny = nanny
        self.sub = LogSubscription(make_nonce=lambda: f"n{next(nonces)}", **kwargs)  # type: ignore[arg-type]
        self.live: list[list[bytes]] = []  # in flight on PUB -> SUB
        self.replay: list[list[bytes]] = []  # in flight on ROUTER -> DEALER
        self.events: list[Event] = []
        self.sent: list[ReplayRequest] = []

    def start(self) -> None:
        self._send(self.sub.start())

    def _send(self, req: ReplayRequest) -> None:
        self.sent.append(req)
        self.replay += self.nanny.serve(encode_replay_request(req, KEY))

    def _after(self, events: list[Event]) -> None:
        self.events += events
        for req in self.sub.requests_to_send():
            self._send(req)

    def feed_live(self, index: int = 0, curve: bool = False) -> None:
        item = decode_log_message(self.live.pop(index), KEY, curve=curve)
        self._after(self.sub.receive_live(item))

    def feed_replay(self) -> None:
        self._after(self.sub.receive_replay(decode_replay_response(self.replay.pop(0), KEY)))

    def drain(self) -> None:
        for _ in range(10_000):
            if self.live:
                self.feed_live()
            elif self.replay:
                self.feed_replay()
            else:
                return
        raise AssertionError("the subscription does not settle")

    def delivered(self) -> list[LogRecord]:
        return [r for e in self.events if isinstance(e, Records) for r in e.records]

    def seqs(self) -> list[int]:
        return [r.seq for r in self.delivered()]

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


# -- the property ------------------------------------------------------------------------------

STEPS = ["produce", "produce", "tick", "live", "live", "reorder", "replay", "replay", "evict"]
STEPS += ["drop", "stall"]  # a lossy path drops an answer message; the server goes quiet


def settle(client: Client) -> None:
    """Drain, asking again for an answer whose end was dropped (as the client's timer does)."""
    client.drain()
    while client.sub.awaiting_replay:
        client._after(client.sub.replay_unanswered())
        client.drain()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_available_record_once_in_order_gaps_reported(data: st.DataObject) -> None:
    streams = data.draw(st.one_of(st.none(), st.sets(st.sampled_from(list(Stream)), min_size=1)))
    since = data.draw(st.one_of(st.none(), st.integers(1, 20)))
    # The nanny publishes only what a subscriber asked for (its XPUB knows), or everything
    # when another subscriber follows all streams: prev_seqs link both ways.
    topics = (
        (b"",)
        if streams is None or data.draw(st.booleans())
        else (tuple(topic_for(s) for s in streams))
    )
    nanny = Nanny(batch_records=data.draw(st.integers(1, 4)), topics=topics)
    # Enough attempts that no request is given up: each stall is resumed.
    client = Client(nanny, streams=streams, since_seq=since, attempts=1000)
    steps = data.draw(st.lists(st.sampled_from(STEPS), min_size=10, max_size=80))
    start_at = data.draw(st.integers(0, len(steps)))
    for i, step in enumerate(steps):
        if i == start_at:
            client.start()
        if step == "produce":
            stream = data.draw(st.sampled_from(list(Stream)))
            for frames in nanny.produce(stream, data.draw(st.integers(1, 5))):
                client.live += [frames] * data.draw(st.sampled_from([0, 0, 1, 1, 1, 2]))
        elif step == "tick" and data.draw(st.booleans()):
            client.live.append(nanny.tick())
        elif step == "live" and client.live:
            client.feed_live()
        elif step == "reorder" and client.live:
            client.feed_live(data.draw(st.integers(0, len(client.live) - 1)))
        elif step == "replay" and client.replay:
            client.feed_replay()
        elif step == "evict":
            nanny.evict(data.draw(st.integers(1, len(nanny.records) + 1)))
        elif step == "drop" and client.replay:
            del client.replay[data.draw(st.integers(0, len(client.replay) - 1))]
        elif step == "stall" and client.sub.awaiting_replay:
            client.replay.clear()
            client._after(client.sub.replay_unanswered())
    if start_at == len(steps):
        client.start()
    settle(client)
    client.live.append(nanny.tick())  # the next tick always reveals a lost tail
    settle(client)

    wanted = set(Stream) if streams is None else streams
    first = since or 1
    ours = [r for r in nanny.records if r.stream in wanted and r.seq >= first]
    got = client.delivered()
    seqs = [r.seq for r in got]
    assert seqs == sorted(set(seqs)), "strictly increasing, each once"
    assert all(r == nanny.records[r.seq - 1] for r in got)
    lost: set[int] = set()
    for gap in client.of(Gap):
        lost |= set(range(gap.first_missing, gap.last_missing + 1))
    for trunc in client.of(Truncated):
        lost |= set(range(first, first + trunc.lost))
    assert not lost & set(seqs), "nothing is both delivered and reported lost"
    for r in ours:
        assert r.seq in lost or r.seq in seqs, f"record {r.seq} neither delivered nor reported"
        if r.seq >= nanny.oldest:  # never evicted: must have arrived
            assert r.seq in seqs
    assert client.sub.caught_up
    stats = client.sub.statistics()
    assert stats.buffered == 0
    event(f"repairs: {min(stats.repairs, 3)}, gaps: {bool(lost)}, dups: {stats.duplicates > 0}")
    assert client.sub.last_seq >= (ours[-1].seq if ours else 0)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_lossless_channel_needs_no_repairs_even_when_filtering(data: st.DataObject) -> None:
    streams = data.draw(st.one_of(st.none(), st.sets(st.sampled_from(list(Stream)), min_size=1)))
    nanny = Nanny(batch_records=data.draw(st.integers(1, 4)))
    client = Client(nanny, streams=streams)
    plan = data.draw(
        st.lists(
            st.tuples(st.sampled_from(list(Stream)), st.integers(1, 4), st.booleans()), max_size=20
        )
    )
    start_at = data.draw(st.integers(0, len(plan)))
    for i, (stream, n, tick) in enumerate(plan):
        if i == start_at:
            client.start()
        client.live += nanny.produce(stream, n) + ([nanny.tick()] if tick else [])
        client.drain()
    if start_at == len(plan):
        client.start()
    client.drain()
    wanted = set(Stream) if streams is None else streams
    assert client.seqs() == [r.seq for r in nanny.records if r.stream in wanted]
    stats = client.sub.statistics()
    assert (stats.repairs, stats.gaps) == (0, 0)


# -- the recipe, step by step -----------------------------------------------------------------


def test_live_buffered_during_replay_and_overlap_dropped() -> None:
    nanny = Nanny()
    client = Client(nanny)
    nanny.produce(Stream.STDOUT, 5)  # before we connected: only replay has them
    client.start()  # the answer covers 1..5
    client.live += nanny.produce(Stream.STDERR, 2)  # 6, 7 arrive live ...
    client.feed_live()
    assert client.events == []  # ... and wait for the history
    client.drain()
    assert client.seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert client.sub.statistics().repairs == 0
    assert client.sub.caught_up


def test_records_published_before_the_replay_are_dropped_as_duplicates() -> None:
    nanny = Nanny()
    client = Client(nanny)
    client.live += nanny.produce(Stream.STDOUT, 4)  # live copies of 1..4, in flight
    client.start()  # and the history 1..4
    client.drain()
    assert client.seqs() == [1, 2, 3, 4]
    assert client.sub.statistics().duplicates == 4


def test_lost_live_batch_is_repaired_with_since_and_until() -> None:
    nanny = Nanny(batch_records=2)
    client = Client(nanny)
    client.start()
    client.drain()
    batches = nanny.produce(Stream.STDOUT, 6)  # [1,2] [3,4] [5,6]
    client.live += [batches[0], batches[2]]  # the middle one is lost at the HWM
    client.feed_live()
    client.feed_live()
    assert client.seqs() == [1, 2]  # 5, 6 wait for the repair
    assert client.sent[-1] == ReplayRequest("r2", "n1", since_seq=3, until_seq=4)
    client.drain()
    assert client.seqs() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("lost", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_message_lost_inside_an_answer_is_fetched_again(lost: int) -> None:
    """Each answer batch names the last seq of the one before it (``prev_seq``), and the
    end names the last one: a batch lost on the way is noticed and repaired, never
    skipped silently."""
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 12)
    client = Client(nanny)
    client.start()
    assert len(client.replay) == 4  # [1..4] [5..8] [9..12] end
    del client.replay[lost]
    client.drain()
    assert client.seqs() == list(range(1, 13))
    assert client.sub.statistics().repairs == 1
    assert client.of(Gap) == []


def test_tick_reveals_a_lost_tail() -> None:
    nanny = Nanny()
    client = Client(nanny)
    client.start()
    client.drain()
    nanny.produce(Stream.LOG, 3)  # all lost
    client.live.append(nanny.tick())
    client.feed_live()
    assert isinstance(client.events[-1], Alive)
    assert client.sent[-1].since_seq == 1 and client.sent[-1].until_seq == 3
    client.drain()
    assert client.seqs() == [1, 2, 3]


def test_filtered_subscription_sees_no_false_gaps_and_finds_real_ones() -> None:
    nanny = Nanny(batch_records=10)
    client = Client(nanny, streams=[Stream.STDOUT])
    assert client.sub.topics == (b"stdout", b"tick")
    client.start()
    client.drain()
    out1 = nanny.produce(Stream.STDOUT, 2)  # 1, 2
    nanny.produce(Stream.STDERR, 3)  # 3..5: not subscribed, never arrive
    out2 = nanny.produce(Stream.STDOUT, 1)  # 6
    client.live += out1 + out2
    client.drain()
    assert client.seqs() == [1, 2, 6]
    assert client.sub.statistics().repairs == 0
    nanny.produce(Stream.STDOUT, 1)  # 7: lost
    nanny.produce(Stream.STDERR, 1)  # 8
    client.live += nanny.produce(Stream.STDOUT, 1)  # 9, prev stdout is 7
    client.feed_live()
    assert client.sent[-1] == ReplayRequest(
        "r2", "n1", since_seq=7, until_seq=7, streams=(Stream.STDOUT,)
    )
    client.drain()
    assert client.seqs() == [1, 2, 6, 7, 9]
    assert all(r.stream is Stream.STDOUT for r in client.delivered())


def test_initial_history_truncated_and_repair_gap() -> None:
    nanny = Nanny(batch_records=1)
    nanny.produce(Stream.STDOUT, 10)
    nanny.evict(8)
    client = Client(nanny)
    client.start()
    client.drain()
    assert client.of(Truncated) == [Truncated(oldest_seq=8, lost=7)]
    assert client.seqs() == [8, 9, 10]
    out = nanny.produce(Stream.STDOUT, 4)  # 11..14; 11 and 12 lost, then evicted
    nanny.evict(13)
    client.live += out[2:]
    client.drain()
    assert client.of(Gap) == [Gap(11, 12)]
    assert client.seqs() == [8, 9, 10, 13, 14]


def test_last_n_starts_from_the_last_records() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 3)
    nanny.produce(Stream.STDERR, 3)
    client = Client(nanny, last=2, streams=[Stream.STDOUT])
    client.start()
    client.drain()
    assert client.seqs() == [2, 3]
    client.live += nanny.produce(Stream.STDOUT, 1)
    client.drain()
    assert client.seqs() == [2, 3, 7]
    zero = Client(nanny, last=0)
    zero.start()
    zero.drain()
    assert zero.seqs() == [] and zero.sub.last_seq == 7


def test_since_seq_skips_older_records() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 5)
    client = Client(nanny, since_seq=4)
    client.start()
    client.drain()
    assert client.seqs() == [4, 5] and client.of(Truncated) == []


def test_epoch_change_resets_and_rerequests() -> None:
    old = Nanny("epochA")
    client = Client(old)
    old.produce(Stream.STDOUT, 3)
    client.start()
    client.drain()
    stale = old.produce(Stream.STDOUT, 1)  # still in flight when the nanny restarts
    new = Nanny("epochB")
    client.nanny = new
    new.produce(Stream.NANNY, 1)
    client.live += new.produce(Stream.STDOUT, 2)
    assert client.sub.phase is Phase.FOLLOWING
    client.feed_live()
    assert client.events[-1] == EpochChanged("epochA", "epochB")
    assert client.sub.phase is Phase.HISTORY
    assert client.sent[-1].since_seq == 1 and client.sub.epoch == "epochB"
    client.drain()
    assert client.seqs() == [1, 2, 3, 1, 2, 3]
    assert client.delivered()[-1].data == b"stdout 3\n"
    client.live += stale  # the old run's message arrives late: ignored
    client.feed_live()
    assert client.sub.statistics().stale == 1 and client.seqs()[-1] == 3


def test_replay_error_on_repair_reports_a_gap_and_moves_on() -> None:
    nanny = Nanny(batch_records=1)
    client = Client(nanny)
    client.start()
    client.drain()
    out = nanny.produce(Stream.STDOUT, 3)
    client.live += [out[0], out[2]]
    client.feed_live()
    client.feed_live()
    rid = client.sent[-1].request_id
    client.replay = [encode_replay_response(ReplayError(rid, "malformed", "bad"), KEY)]
    client.feed_replay()
    assert client.events[-3:-1] == [ReplayFailed("malformed", "bad"), Gap(2, 2)]
    assert client.seqs() == [1, 3]


def _losing_record_2(**kwargs: object) -> Client:
    """A client that got live records 1 and 3 (2 was dropped on the way): it has sent a
    repair request for 2 and holds 3 back."""
    nanny = Nanny(batch_records=1)
    client = Client(nanny, **kwargs)
    client.start()
    client.drain()
    out = nanny.produce(Stream.STDOUT, 3)
    client.live += [out[0], out[2]]
    client.feed_live()
    client.feed_live()
    return client


def test_a_busy_nanny_is_asked_again_and_nothing_is_lost() -> None:
    client = _losing_record_2()
    repair = client.sent[-1]
    client.replay = [
        encode_replay_response(ReplayError(repair.request_id, "busy", "try later"), KEY)
    ]
    client.feed_replay()
    assert not any(isinstance(e, (ReplayFailed, Gap)) for e in client.events)
    assert client.sub.retry_pending and client.sub.requests_to_send() == []
    assert client.seqs() == [1]  # 3 waits for 2
    client.sub.retry()
    again = client.sub.requests_to_send()
    assert [(r.since_seq, r.until_seq) for r in again] == [(repair.since_seq, repair.until_seq)]
    for req in again:
        client._send(req)
    client.drain()
    assert client.seqs() == [1, 2, 3] and not client.sub.retry_pending


def test_a_busy_nanny_at_start_is_asked_again_for_the_same_history() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 5)
    client = Client(nanny, last=3)
    first = client.sub.start()
    client.replay = [encode_replay_response(ReplayError(first.request_id, "busy", "full"), KEY)]
    client.feed_replay()
    assert client.events == [] and client.sub.retry_pending
    client.sub.retry()
    (again,) = client.sub.requests_to_send()
    assert (again.last, again.since_seq) == (3, None) and again.request_id != first.request_id


def test_on_a_curve_channel_a_tick_moves_the_subscription_to_the_unsigned_topics() -> None:
    nanny = Nanny(topics=())
    nanny.pub = LogPublisher(nanny.epoch, KEY, curve=True)
    client = Client(nanny, streams=[Stream.LOG], curve=True)
    assert client.sub.topics == (b"log", b"tick")  # first the signed topics, as always
    for topic in client.sub.topics:
        nanny.pub.subscription(b"\x01" + topic)
    client.start()
    client.drain()
    client.live.append(nanny.tick())
    client.feed_live()
    ((subscribe, unsubscribe),) = client.sub.take_topic_changes()
    assert (subscribe, unsubscribe) == ((b"curve.log",), (b"log",))
    for topic in subscribe:  # as the SUB socket sends them: subscribe first
        nanny.pub.subscription(b"\x01" + topic)
    for topic in unsubscribe:
        nanny.pub.subscription(b"\x00" + topic)
    client.live += nanny.produce(Stream.LOG, 3)
    assert [frames[:2] for frames in client.live] == [[b"curve.log", b""]]  # nothing signed
    client.feed_live(curve=True)
    assert client.seqs() == [1, 2, 3]
    client.live.append(nanny.tick())
    client.feed_live()
    assert client.sub.take_topic_changes() == []  # already there
    older = Nanny(epoch="ep2")  # another nanny, which offers no unsigned batches
    client.live.append(older.tick())
    client.feed_live()
    assert client.sub.take_topic_changes() == [((b"log",), (b"curve.log",))]


def test_without_curve_the_subscription_stays_on_the_signed_topics() -> None:
    nanny = Nanny()
    nanny.pub = LogPublisher(nanny.epoch, KEY, curve=True)
    client = Client(nanny)  # a connection without CurveZMQ: unsigned batches are refused
    client.live.append(nanny.tick())
    client.feed_live()
    assert client.sub.take_topic_changes() == []


def test_busy_answers_in_a_row_double_the_pause_until_the_nanny_serves_again() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 5)
    client = Client(nanny, last=3)
    request = client.sub.start()
    delays = []
    for _ in range(8):
        busy = ReplayError(request.request_id, "busy", "full")
        client.replay = [encode_replay_response(busy, KEY)]
        client.feed_replay()
        assert client.sub.retry_pending
        delays.append(client.sub.retry_delay)
        client.sub.retry()
        (request,) = client.sub.requests_to_send()
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    client._send(request)  # answered this time
    client.drain()
    assert client.seqs() == [3, 4, 5] and not client.sub.retry_pending
    assert client.sub.retry_delay == BUSY_RETRY_FIRST  # the next busy starts short again


def test_replay_error_on_start_falls_back_to_live_only() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 5)
    client = Client(nanny)
    req = client.sub.start()
    assert client.sub.phase is Phase.HISTORY
    client.live += nanny.produce(Stream.STDOUT, 2)  # 6, 7
    client.replay = [encode_replay_response(ReplayError(None, "malformed", "bad"), KEY)]
    client.feed_replay()
    assert client.events == [ReplayFailed("malformed", "bad")]
    assert client.sub.phase is Phase.ANCHORING  # nothing live held yet: wait for some
    assert req.request_id == "r1"
    client.drain()
    assert client.seqs() == [6, 7]


def test_stale_and_unknown_answers_are_ignored() -> None:
    nanny = Nanny()
    client = Client(nanny)
    client.start()
    client.drain()
    end = encode_replay_response(ReplayEnd("r99", "ep1", 5, 0, True), KEY)
    assert client.sub.receive_replay(decode_replay_response(end, KEY)) == []
    assert client.sub.statistics().stale == 1


def test_ticks_are_reported_and_kernel_state_visible() -> None:
    nanny = Nanny()
    client = Client(nanny)
    client.live.append(nanny.pub.tick(time_ns=5, incarnation=2, kernel_state="dead"))
    client.start()
    client.drain()
    (alive,) = client.of(Alive)
    assert isinstance(alive.tick, Tick) and alive.tick.kernel_state == "dead"


def test_constructor_and_start_validation() -> None:
    with pytest.raises(LocalProtocolError):
        LogSubscription(make_nonce=str, since_seq=1, last=1)
    with pytest.raises(LocalProtocolError):
        LogSubscription(make_nonce=str, since_seq=0)
    with pytest.raises(LocalProtocolError):
        LogSubscription(make_nonce=str, streams=[])
    with pytest.raises(LocalProtocolError):
        LogSubscription(make_nonce=str, attempts=0)
    sub = LogSubscription(make_nonce=lambda: "n", streams=list(Stream))
    assert sub.streams is None  # all of them
    assert sub.topics == (b"stdout", b"stderr", b"log", b"nanny", b"tick")
    sub.start()
    with pytest.raises(LocalProtocolError):
        sub.start()


# -- answers that do not come, or come with a hole ------------------------------------------------


def test_a_lost_truncated_notice_shows_as_a_hole_and_is_reported() -> None:
    """The notice is a link of the answer's chain: a client that lost it sees the first
    batch not link, asks again for what precedes it, and reports what is gone as a gap
    instead of starting the log in the middle silently."""
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 12)
    nanny.evict(8)
    client = Client(nanny)
    client.start()
    assert isinstance(decode_replay_response(client.replay[0], KEY), ReplayTruncated)
    del client.replay[0]
    client.drain()
    assert client.seqs() == list(range(8, 13))
    assert client.of(Gap) == [Gap(1, 7)] and client.of(Truncated) == []
    assert client.sub.caught_up


def test_a_server_that_leaves_the_notice_out_of_the_chain_is_understood() -> None:
    """Servers that do not link the notice send ``prev_seq`` 0 after it: no false hole."""
    recs = tuple(LogRecord(s, s, 1, Stream.STDOUT, b"x\n") for s in (8, 9))
    client = Client(Nanny())
    rid = client.sub.start().request_id
    answer = [
        ReplayTruncated(rid, 8, 7),
        ReplayBatch(rid, "ep1", recs, prev_seq=0),
        ReplayEnd(rid, "ep1", 9, 2, True, prev_seq=9),
    ]
    for item in answer:
        client._after(client.sub.receive_replay(item))
    assert client.of(Truncated) == [Truncated(8, 7)] and client.seqs() == [8, 9]
    assert client.sub.statistics().repairs == 0 and client.sub.caught_up


def test_an_unanswered_history_is_asked_again_then_reported() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 5)
    client = Client(nanny)
    client.start()
    late = client.replay
    client.replay = []  # the replay server takes requests and never answers
    assert client.sub.awaiting_replay
    for attempt in (2, 3):
        client._after(client.sub.replay_unanswered())
        assert (client.sent[-1].request_id, client.sent[-1].since_seq) == (f"r{attempt}", 1)
        client.replay = []
    client._after(client.sub.replay_unanswered())
    message = "no answer from the replay server after 3 requests"
    assert client.events == [ReplayFailed("unanswered", message)]
    assert len(client.sent) == 3 and not client.sub.awaiting_replay
    assert client.sub.phase is Phase.ANCHORING  # as after a refusal: live only
    client.replay = late  # the first answer, too late: its request was given up
    client.live += nanny.produce(Stream.STDOUT, 2)
    client.drain()
    assert client.seqs() == [6, 7]


def test_an_answer_that_stops_midway_is_asked_for_the_rest() -> None:
    nanny = Nanny()
    nanny.produce(Stream.STDOUT, 12)
    nanny.evict(3)
    client = Client(nanny)
    client.start()
    assert len(client.replay) == 5  # truncated, [3..6] [7..10] [11, 12], end
    late = client.replay[2:]
    client.replay = client.replay[:2]
    client.drain()
    assert client.seqs() == [3, 4, 5, 6] and client.sub.awaiting_replay
    client._after(client.sub.replay_unanswered())
    assert (client.sent[-1].since_seq, client.sent[-1].until_seq) == (7, None)
    client.replay += late  # the rest of the first answer after all: stale, dropped
    client.drain()
    assert client.seqs() == list(range(3, 13))
    assert client.of(Truncated) == [Truncated(3, 2)] and client.of(Gap) == []
    assert client.sub.caught_up


def test_an_unanswered_repair_ends_in_a_gap() -> None:
    client = _losing_record_2(attempts=2)
    client.replay = []  # and never answered
    client._after(client.sub.replay_unanswered())
    assert (client.sent[-1].since_seq, client.sent[-1].until_seq) == (2, 2)
    client.replay = []
    client._after(client.sub.replay_unanswered())
    message = "no answer from the replay server after 2 requests"
    assert client.events[-3:-1] == [ReplayFailed("unanswered", message), Gap(2, 2)]
    assert client.seqs() == [1, 3] and client.sub.caught_up
