"""The log client against a replay server that does not answer, or loses part of an answer.

A fake nanny in this process, over real CurveZMQ sockets admitted by the real ZAP handler: an
XPUB publishing signed ticks (and record batches on request) and a ROUTER whose answers are
the real ``ReplayAnswer`` messages, withheld or cut as each test says. The client is the
unmodified ``BlockingLogClient``, and ``nanny-io tail`` in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from memstore import MemoryStore

from nanny_io.subscriber import (
    Alive,
    BlockingLogClient,
    ClientEvent,
    Gap,
    Records,
    ReplayFailed,
)
from nanny_io.zap import ZapHandler, secure_server, zap_policy
from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.logserver import LogPublisher, ReplayAnswer
from nanny_io_proto.replay import (
    ReplayRequest,
    ReplayTruncated,
    decode_replay_request,
    decode_replay_response,
)
from nanny_io_proto.signing import DigestHistory
from nanny_io_proto.streams import Stream

#: What the fake's ROUTER sends for the n-th request (from 1), given the real answer.
Answer = Callable[[int, list[list[bytes]]], list[list[bytes]]]

TICK_EVERY = 0.05  # seconds: ticks keep coming, so the client never calls the nanny silent


def never(n: int, messages: list[list[bytes]]) -> list[list[bytes]]:
    return []


class FakeNanny:
    """A nanny's log channel in a thread: signed ticks on an XPUB, a ROUTER answering with
    ``answer``; every request is kept in ``requests``."""

    def __init__(self, store: MemoryStore, answer: Answer, batch_records: int = 4) -> None:
        self.store = store
        self.answer = answer
        self.batch_records = batch_records
        self.requests: list[ReplayRequest] = []
        self.ctx: zmq.Context[Any] = zmq.Context()
        info = NannyConnectionInfo(
            transport="tcp",
            ip="127.0.0.1",
            shell_port=1,
            iopub_port=2,
            stdin_port=3,
            control_port=4,
            hb_port=5,
            key=str(uuid.uuid4()),
            kernel_name="python3",
            kernel_id=str(uuid.uuid4()),
            log_port=6,
            log_replay_port=7,
        )
        self.zap = ZapHandler(self.ctx, zap_policy(info))
        self.pub = self.ctx.socket(zmq.XPUB)
        self.router = self.ctx.socket(zmq.ROUTER)
        ports = {}
        for sock, channel in ((self.pub, "log"), (self.router, "log_replay")):
            sock.linger = 0
            secure_server(sock, info, channel)
            ports[f"{channel}_port"] = sock.bind_to_random_port("tcp://127.0.0.1")
        self.info = dataclasses.replace(info, **ports)
        self.signer = info.make_signer()
        self.publisher = LogPublisher("fake-epoch", self.signer, max_records=batch_records)
        self._produce: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-nanny")
        self._thread.start()

    def produce(self, n: int) -> None:
        """Store ``n`` stdout records and publish them (from the nanny's thread)."""
        self._produce.put(n)

    def _serve(self) -> None:
        history = DigestHistory()
        poller = zmq.Poller()
        poller.register(self.pub, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        next_tick = time.monotonic()
        while not self._stop.is_set():
            wait = max(0.0, next_tick - time.monotonic())
            ready = dict(poller.poll(int(wait * 1000) + 1))
            if self.pub in ready:  # a subscription: the publisher packs only what is wanted
                self.publisher.subscription(self.pub.recv())
            if self.router in ready:
                identity, *frames = self.router.recv_multipart()
                request = decode_replay_request(frames, self.signer, history)
                self.requests.append(request)
                real = ReplayAnswer(
                    request,
                    epoch=self.publisher.epoch,
                    signer=self.signer,
                    oldest_seq=self.store.oldest_seq,
                    last_seq=self.store.last_seq,
                    max_records=self.batch_records,
                )
                messages: list[list[bytes]] = []
                while not real.finished:
                    messages += real.next_messages(self.store)
                for message in self.answer(len(self.requests), messages):
                    self.router.send_multipart([identity, *message])
            while not self._produce.empty():
                first, last = self.store.add(Stream.STDOUT, self._produce.get())
                for message in self.publisher.stored(Stream.STDOUT, first, last, self.store):
                    self.pub.send_multipart(message)
            if time.monotonic() >= next_tick:
                self.pub.send_multipart(
                    self.publisher.tick(
                        time_ns=time.time_ns(), incarnation=1, kernel_state="running"
                    )
                )
                next_tick += TICK_EVERY

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.pub.close()
        self.router.close()
        self.zap.stop()
        self.ctx.destroy(linger=0)


@pytest.fixture
def fake_nanny() -> Iterator[Callable[..., FakeNanny]]:
    made: list[FakeNanny] = []

    def make(records: int, answer: Answer, oldest: int = 1) -> FakeNanny:
        store = MemoryStore()
        store.add(Stream.STDOUT, records)
        store.evict(oldest)
        nanny = FakeNanny(store, answer)
        made.append(nanny)
        return nanny

    yield make
    for nanny in made:
        nanny.close()


def seqs(events: list[ClientEvent]) -> list[int]:
    return [r.seq for e in events if isinstance(e, Records) for r in e.records]


def notices(events: list[ClientEvent]) -> list[ClientEvent]:
    return [e for e in events if not isinstance(e, (Records, Alive))]


UNANSWERED = ReplayFailed("unanswered", "no answer from the replay server after 3 requests")


@pytest.mark.timeout(30)
def test_history_from_a_replay_server_that_never_answers_ends_with_a_report(
    fake_nanny: Callable[..., FakeNanny],
) -> None:
    """Ticks keep coming, so the nanny is never silent: the unanswered request is asked
    again, then reported, and the history ends instead of waiting forever."""
    nanny = fake_nanny(5, never)
    began = time.monotonic()
    with BlockingLogClient(nanny.info, replay_timeout=0.3) as client:
        events = list(client.events(follow=False))
    took = time.monotonic() - began
    print(f"history from a replay server that never answers ended after {took:.2f} s")
    assert notices(events) == [UNANSWERED]
    assert sum(isinstance(e, Alive) for e in events) >= 3  # the nanny was heard all along
    assert seqs(events) == []
    assert len(nanny.requests) == 3
    assert [r.since_seq for r in nanny.requests] == [1, 1, 1]
    assert 0.9 <= took < 10


@pytest.mark.timeout(30)
def test_follow_goes_on_live_after_an_unanswered_history(
    fake_nanny: Callable[..., FakeNanny],
) -> None:
    nanny = fake_nanny(5, never)
    with BlockingLogClient(nanny.info, last=10, replay_timeout=0.2) as client:
        events: list[ClientEvent] = []
        for event in client.events(follow=True):
            events.append(event)
            if event == UNANSWERED:
                nanny.produce(3)
            if seqs(events) == [6, 7, 8]:
                break
    assert notices(events) == [UNANSWERED]
    assert [r.last for r in nanny.requests] == [10, 10, 10]


@pytest.mark.timeout(30)
def test_an_answer_that_stops_midway_is_asked_for_the_rest(
    fake_nanny: Callable[..., FakeNanny],
) -> None:
    """The first answer stops after its first batch (its slot stalled): the client asks for
    what follows, once, and gets every record once."""

    def first_batch_only(n: int, messages: list[list[bytes]]) -> list[list[bytes]]:
        return messages[:1] if n == 1 else messages

    nanny = fake_nanny(12, first_batch_only)
    with BlockingLogClient(nanny.info, replay_timeout=0.3) as client:
        events = list(client.events(follow=False))
    assert seqs(events) == list(range(1, 13))
    assert notices(events) == []
    assert [(r.since_seq, r.until_seq) for r in nanny.requests] == [(1, None), (5, None)]


@pytest.mark.timeout(30)
def test_a_lost_truncated_notice_is_reported_as_a_gap(
    fake_nanny: Callable[..., FakeNanny],
) -> None:
    """The history answer loses its truncated notice on the way: the next message does not
    link, the client asks again for what precedes it and reports it lost, instead of showing
    a log that starts in the middle without a word."""

    def without_notice(n: int, messages: list[list[bytes]]) -> list[list[bytes]]:
        first = decode_replay_response(messages[0], nanny.signer)
        return messages[1:] if n == 1 and isinstance(first, ReplayTruncated) else messages

    nanny = fake_nanny(12, without_notice, oldest=8)
    with BlockingLogClient(nanny.info, replay_timeout=0.5) as client:
        events = list(client.events(follow=False))
    assert seqs(events) == [8, 9, 10, 11, 12]
    assert notices(events) == [Gap(1, 7)]
    assert [(r.since_seq, r.until_seq) for r in nanny.requests] == [(1, None), (1, 7)]


@pytest.mark.timeout(60)
def test_tail_without_follow_against_a_replay_server_that_never_answers(
    fake_nanny: Callable[..., FakeNanny], tmp_path: Path
) -> None:
    nanny = fake_nanny(5, never)
    path = tmp_path / f"kernel-{nanny.info.kernel_id}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(nanny.info.to_dict(), f)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", "tail", str(path)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    print(f"nanny-io tail gave up after {time.monotonic() - began:.1f} s: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nanny-io: error: kernel {nanny.info.kernel_id}: ")
    assert "no answer from the replay server after 3 requests" in lines[0]
    assert len(nanny.requests) == 3
