"""A client of the log channel: the late-joiner recipe of specs/log-channel.md, over sockets.

``LogClient`` (asyncio) subscribes first, then asks for history, drops duplicates by seq,
repairs gaps by replay and reports what cannot be repaired; the protocol logic is
nanny_io_proto's ``LogSubscription``, this module only moves bytes. ``BlockingLogClient``
wraps it for plain code::

    with BlockingLogClient(info, last=20) as client:
        for event in client.events(follow=True):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import NANNY_SILENT_AFTER, LogRecord, decode_log_message
from nanny_io_proto.replay import (
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    ReplayResponse,
    decode_replay_response,
    encode_replay_request,
)
from nanny_io_proto.streams import Stream
from nanny_io_proto.subscription import (
    REPLAY_ATTEMPTS,
    Alive,
    EpochChanged,
    Event,
    Gap,
    LogSubscription,
    Records,
    ReplayFailed,
    Truncated,
)

from .errors import NannyIOError
from .zap import log_keypair, secure_client

__all__ = [
    "Alive",
    "BlockingLogClient",
    "EpochChanged",
    "Gap",
    "LogClient",
    "NannySilent",
    "Records",
    "ReplayFailed",
    "ReplayUnanswered",
    "Truncated",
    "connect",
    "replay",
]


@dataclass(frozen=True, slots=True)
class NannySilent:
    """No message (not even a heartbeat tick) for ``seconds``: the nanny is gone or cut off."""

    seconds: float


ClientEvent = Event | NannySilent


def connect(
    context: zmq.asyncio.Context,
    info: NannyConnectionInfo,
    kind: int,
    channel: str,
    topics: tuple[bytes, ...] = (),
) -> zmq.asyncio.Socket:
    """A socket connected to ``channel`` with the credentials the nanny admits there (on
    the log channel, the CurveZMQ key pair derived from the connection key)."""
    sock = context.socket(kind)
    sock.linger = 0
    secure_client(sock, info, channel)
    for topic in topics:
        sock.subscribe(topic)
    sock.connect(info.url(channel))
    return sock


class ReplayUnanswered(NannyIOError):
    """The nanny's replay socket did not answer in time (the nanny is gone or stuck)."""


async def replay(
    info: NannyConnectionInfo,
    *,
    context: zmq.asyncio.Context,
    since_seq: int | None = None,
    until_seq: int | None = None,
    last: int | None = None,
    streams: Iterable[Stream] | None = None,
    limit: int | None = None,
    timeout: float = NANNY_SILENT_AFTER,
) -> AsyncGenerator[ReplayResponse, None]:
    """One replay request, without a live subscription: its answer messages, in order.

    Ends after the ``end`` or ``error`` message; ReplayUnanswered when no message comes for
    ``timeout`` seconds. Closing the iterator early closes the socket, and the nanny forgets
    the rest of the answer.
    """
    wanted = None if streams is None else tuple(dict.fromkeys(streams))
    request = ReplayRequest(
        request_id="r1",
        nonce=uuid.uuid4().hex,
        since_seq=since_seq,
        until_seq=until_seq,
        last=last,
        streams=wanted,
        limit=limit,
    )
    signer = info.make_signer()
    sock = connect(context, info, zmq.DEALER, "log_replay")
    try:
        await sock.send_multipart(encode_replay_request(request, signer))
        while True:
            if not await sock.poll(int(timeout * 1000)):
                raise ReplayUnanswered(
                    f"no answer from the log replay socket {info.url('log_replay')} "
                    f"within {timeout:g} s"
                )
            frames = await sock.recv_multipart()
            try:
                with _gc_paused():
                    answer = decode_replay_response(frames, signer)
            except RemoteProtocolError:
                continue  # forged or broken: not from our nanny
            if answer.request_id not in (None, request.request_id):
                continue
            yield answer
            if isinstance(answer, (ReplayEnd, ReplayError)):
                return
    finally:
        sock.close(linger=0)


class LogClient:
    """Follow one nanny's log channel (asyncio)."""

    def __init__(
        self,
        info: NannyConnectionInfo,
        *,
        streams: Iterable[Stream] | None = None,
        since_seq: int | None = None,
        last: int | None = None,
        context: zmq.asyncio.Context | None = None,
        silent_after: float = NANNY_SILENT_AFTER,
        replay_timeout: float = NANNY_SILENT_AFTER,
        replay_attempts: int = REPLAY_ATTEMPTS,
    ) -> None:
        self.info = info
        self.signer = info.make_signer()
        # With a key, the log channel is CurveZMQ (every message authenticated by it), and
        # a nanny that offers unsigned batches is followed on those (spec 4.3).
        self.curve = log_keypair(info) is not None
        self.subscription = LogSubscription(
            make_nonce=lambda: uuid.uuid4().hex,
            streams=streams,
            since_seq=since_seq,
            last=last,
            attempts=replay_attempts,
            curve=self.curve,
        )
        self._own_context = context is None
        self.context = context or zmq.asyncio.Context()
        self.silent_after = silent_after
        # How long a request in flight may go without an answer message. Only time spent
        # waiting on the sockets counts, so a caller slow to take events is not mistaken
        # for a silent server.
        self.replay_timeout = replay_timeout
        self._quiet = 0.0  # seconds waited with a request in flight and no answer message
        self.sub: zmq.asyncio.Socket | None = None
        self.dealer: zmq.asyncio.Socket | None = None
        self.rejected = 0  # messages that failed verification (counted, never acted on)

    def _connect(
        self, kind: int, channel: str, topics: tuple[bytes, ...] = ()
    ) -> zmq.asyncio.Socket:
        return connect(self.context, self.info, kind, channel, topics)

    async def __aenter__(self) -> LogClient:
        self.sub = self._connect(zmq.SUB, "log", self.subscription.topics)
        self.dealer = self._connect(zmq.DEALER, "log_replay")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sock in (self.sub, self.dealer):
            if sock is not None:
                sock.close(linger=0)
        self.sub = self.dealer = None
        if self._own_context:
            self.context.destroy(linger=0)

    async def _send(self, requests: Iterable[Any]) -> None:
        assert self.dealer is not None
        for req in requests:
            await self.dealer.send_multipart(encode_replay_request(req, self.signer))
            self._quiet = 0.0  # a new request gets the whole timeout

    async def events(self, *, follow: bool = True) -> AsyncGenerator[ClientEvent, None]:
        """Events in seq order: Records, Gap, Truncated, EpochChanged, ReplayFailed, Alive,
        and NannySilent when nothing arrives for ``silent_after`` seconds.

        A request whose answer says nothing for ``replay_timeout`` seconds is asked again,
        then reported as ReplayFailed ``unanswered`` (ticks keep coming from a nanny whose
        replay server is stuck, so silence alone would never show it).

        Without ``follow`` it ends once the history answer is delivered and nothing is
        missing, or after reporting an unanswered request.
        """
        assert self.sub is not None and self.dealer is not None, "use 'async with'"
        sub, dealer, state = self.sub, self.dealer, self.subscription
        # A tick is published to every new subscriber: once one arrives, live messages flow,
        # so the history asked for now joins them without a hole.
        first = await self._wait_first_tick()
        if first is None:
            yield NannySilent(self.silent_after)
            return
        await self._send([state.start()])
        greeted = state.receive_live(first)
        self._retopic()
        for event in greeted:
            yield event
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(dealer, zmq.POLLIN)
        heard = time.monotonic()
        retry_at: float | None = None
        while True:
            if not follow and state.caught_up:
                return
            if state.retry_pending:  # the nanny was busy: ask again a moment later
                if retry_at is None:
                    retry_at = time.monotonic() + state.retry_delay
                elif time.monotonic() >= retry_at:
                    retry_at = None
                    state.retry()
                    await self._send(state.requests_to_send())
            wait = 250 if retry_at is None else max(1, int((retry_at - time.monotonic()) * 1000))
            polled = time.monotonic()
            ready = dict(await poller.poll(min(250, wait)))
            if dealer in ready or not state.awaiting_replay:
                self._quiet = 0.0
            else:
                self._quiet += time.monotonic() - polled
                if self._quiet > self.replay_timeout:
                    self._quiet = 0.0
                    unanswered = state.replay_unanswered()
                    await self._send(state.requests_to_send())
                    for event in unanswered:
                        yield event
                    if not follow and any(isinstance(e, ReplayFailed) for e in unanswered):
                        return
            if not ready:
                if time.monotonic() - heard > self.silent_after:
                    yield NannySilent(time.monotonic() - heard)
                    heard = time.monotonic()
                continue
            heard = time.monotonic()
            events: list[Event] = []
            if dealer in ready:
                # One answer message at a time, its events delivered before the next one is
                # decoded: a backlog of messages is not all held as records at once.
                for frames in _recv_all(dealer):
                    try:
                        with _gc_paused():  # thousands of records per answer message
                            answer = decode_replay_response(frames, self.signer)
                        replayed = state.receive_replay(answer)
                    except RemoteProtocolError:
                        self.rejected += 1
                        continue
                    await self._send(state.requests_to_send())
                    for event in replayed:
                        yield event
            if sub in ready:
                for frames in _recv_all(sub):
                    try:
                        item = decode_log_message(frames, self.signer, curve=self.curve)
                        events += state.receive_live(item)
                    except RemoteProtocolError:
                        self.rejected += 1
                self._retopic()
            await self._send(state.requests_to_send())
            for event in events:
                yield event

    async def _wait_first_tick(self) -> Any:
        assert self.sub is not None
        deadline = time.monotonic() + self.silent_after
        while (left := deadline - time.monotonic()) > 0:
            if not await self.sub.poll(int(left * 1000) + 1):
                break
            try:
                frames = await self.sub.recv_multipart()
                item = decode_log_message(frames, self.signer, curve=self.curve)
            except RemoteProtocolError:
                self.rejected += 1
                continue
            # A tick, or a record batch that came first: either way live messages reach us;
            # the history answer repairs whatever preceded it.
            return item
        return None

    def _retopic(self) -> None:
        """Apply the topic changes the subscription asks for (subscribe, then unsubscribe)."""
        assert self.sub is not None
        for subscribe, unsubscribe in self.subscription.take_topic_changes():
            for topic in subscribe:
                self.sub.subscribe(topic)
            for topic in unsubscribe:
                self.sub.unsubscribe(topic)

    async def records(self, *, follow: bool = False) -> AsyncIterator[LogRecord]:
        """Just the records (gaps are skipped silently; use events() to see them)."""
        async for event in self.events(follow=follow):
            if isinstance(event, Records):
                for record in event.records:
                    yield record
            elif isinstance(event, NannySilent) and not follow:
                return


#: Set once this program is seen to keep objects frozen (``gc.freeze``, as pre-forking
#: servers do): ``_gc_paused`` must not unfreeze them, and need not count them again (a
#: count walks every frozen object).
_program_freezes = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No collection while one message's records are built, and none walks them after.

    A replay answer holds up to 16 384 records, each an object the collector tracks.
    Building them with collections on would trigger many that walk every record built so
    far; and once collections are back on, the first young collection would still walk the
    whole message. So they are moved, untouched, to the oldest generation (``gc.freeze``
    then ``gc.unfreeze``), which is where they would end after surviving two young
    collections anyway: they are freed as usual when the caller drops them, and only a full
    collection looks at them while they live. The move takes the program's other young
    objects along: a reference cycle among them is then collected by the next full
    collection instead of a young one. Not done in a program that freezes objects of its
    own (``gc.unfreeze`` would release them too).
    """
    global _program_freezes
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not _program_freezes:
            if gc.get_freeze_count():  # nothing is frozen after our own unfreeze: cheap
                _program_freezes = True
            else:
                gc.freeze()
                gc.unfreeze()
        if was_enabled:
            gc.enable()


def _recv_all(sock: zmq.asyncio.Socket) -> Iterator[list[bytes]]:
    """Every message waiting on ``sock`` right now, without awaiting."""
    inner: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
    while True:
        try:
            yield inner.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


class BlockingLogClient:
    """``LogClient`` for code without an event loop (it runs a private one)."""

    def __init__(self, info: NannyConnectionInfo, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._kwargs = kwargs
        self._info = info
        self._client: LogClient | None = None

    def __enter__(self) -> BlockingLogClient:
        async def make() -> LogClient:
            return await LogClient(self._info, **self._kwargs).__aenter__()

        self._client = self._loop.run_until_complete(make())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        self._loop.close()

    def events(self, *, follow: bool = True) -> Iterator[ClientEvent]:
        assert self._client is not None, "use 'with'"
        agen = self._client.events(follow=follow)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.run_until_complete(agen.aclose())

    def history(self) -> list[LogRecord]:
        """The records the request selects, as they are now."""
        out: list[LogRecord] = []
        for event in self.events(follow=False):
            if isinstance(event, Records):
                out.extend(event.records)
            elif isinstance(event, NannySilent):
                break
        return out


__all__ += ["ClientEvent"]
