"""The log channel, server side: live records on PUB, heartbeat ticks, and replay on ROUTER.

Capture never waits for a subscriber: the PUB socket drops at its high-water mark, and
subscribers repair gaps from replay (specs/log-channel.md). What to send is decided by the
pure ``nanny_io_proto.logserver`` (``LogPublisher``, ``ReplayAnswer``); this module only
does the socket I/O around it: non-blocking publishing, serving requests concurrently, and
waiting for a slow replay reader without holding up anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import zmq
import zmq.asyncio

from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import TICK_INTERVAL
from nanny_io_proto.logserver import LogPublisher, ReplayAnswer
from nanny_io_proto.replay import (
    ReplayError,
    ReplayRequest,
    decode_replay_request,
    encode_replay_response,
    error_response,
)
from nanny_io_proto.signing import DigestHistory, Signer
from nanny_io_proto.streams import Stream

from .store import LogStore

log = logging.getLogger("nanny_io")

#: Replays served at once; more get a "busy" error so one slow client cannot pile up work.
MAX_CONCURRENT_REPLAYS = 8
#: An answer whose client has not taken a message for this long gives its slot back: the
#: answer ends there (``complete: false``), and that last message waits, without a slot,
#: until the client reads again (spec 8.3). So clients that never read cannot hold the
#: slots others need.
REPLAY_STALL_TIMEOUT = 10.0
#: Answers parked that way at most; beyond it the oldest is dropped without its end.
MAX_PARKED_REPLAYS = 64
#: SNDHWM for the replay ROUTER: answer messages queued per client (each at most 1 MiB of
#: data plus 26 bytes a record, under 1.5 MB). Beyond it an answer waits for its client to
#: read (spec 8.3), so a client that stops reading holds at most this many messages of the
#: nanny's memory instead of ZeroMQ's default of 1000 (~1 GiB). It must be set on the socket
#: *before* bind: a listener copies the socket's options when it is bound, so a later setting
#: never reaches accepted clients.
REPLAY_SNDHWM = 16
_RETRY_MIN, _RETRY_MAX = 0.001, 0.02  # pause between sends to a client whose queue is full
#: Least time between two ticks sent to greet new subscribers. A subscriber's tick goes to
#: every subscriber (PUB cannot address one), so greetings are coalesced: whatever peers
#: subscribe, the nanny sends at most 1 / GREETING_SPACING extra ticks a second (spec 5).
GREETING_SPACING = 0.05


def _batch_last_seq(message: list[bytes], default: int) -> int:
    """The last seq of a ``records`` answer message (``[signature, header, body]``)."""
    if b'"type":"records"' not in message[1]:
        return default
    return int(json.loads(message[1])["last_seq"])


class LogChannel:
    """Publishes what the store receives and answers replay requests from it.

    It registers itself with the store, so every append reaches it (and through it, the
    live subscribers) without the nanny relaying anything: capture -> store -> channel.
    """

    def __init__(
        self, pub: zmq.asyncio.Socket, replay: zmq.asyncio.Socket, store: LogStore, signer: Signer
    ) -> None:
        self.pub = pub
        self.replay = replay
        self.store = store
        self.signer = signer
        self.epoch = store.epoch
        self.history = DigestHistory()
        # A CurveZMQ PUB authenticates every message it sends: batches are also offered
        # unsigned to the subscribers that ask for them (specs/log-channel.md 4.3).
        curve = pub.getsockopt(zmq.MECHANISM) == zmq.CURVE
        self.publisher = LogPublisher(store.epoch, signer, curve=curve)
        self._replays: set[asyncio.Task[Any]] = set()  # answers holding a slot
        self._parked: dict[asyncio.Task[Any], None] = {}  # stalled answers, oldest first
        self.stats = {
            "published_batches": 0,
            "replays": 0,
            "replay_errors": 0,
            "replay_waits": 0,
            "greetings": 0,
            "replay_stalls": 0,
        }
        self.kernel_state = "starting"
        self.incarnation = 0
        self._greeted_at = -GREETING_SPACING  # monotonic time of the last greeting tick
        self._greeting: asyncio.TimerHandle | None = None  # a coalesced greeting, due later
        replay.router_mandatory = 1  # wait for a slow reader instead of dropping an answer
        store.add_listener(self.stored)

    # ------------------------------------------------------------------ live

    def stored(self, stream: Stream, first_seq: int, last_seq: int) -> None:
        """Publish records ``first_seq..last_seq`` (one stream) just appended to the store."""
        for frames in self.publisher.stored(stream, first_seq, last_seq, self.store):
            with contextlib.suppress(zmq.Again):
                self.pub.send_multipart(frames, flags=zmq.NOBLOCK)
            self.stats["published_batches"] += 1

    def tick(self) -> None:
        """The heartbeat: the latest seq per stream, so idle and dead can be told apart."""
        frames = self.publisher.tick(
            time_ns=time.time_ns(), incarnation=self.incarnation, kernel_state=self.kernel_state
        )
        with contextlib.suppress(zmq.Again):
            self.pub.send_multipart(frames, flags=zmq.NOBLOCK)

    async def serve_ticks(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_INTERVAL)

    async def serve_subscriptions(self) -> None:
        """Track which topics have subscribers; greet new ones with a tick.

        The XPUB is verbose: every subscribe is reported, but only the last unsubscribe of a
        topic, which is what a set of wanted topics needs. Only key holders get this far
        (the ZAP handler refuses anyone else during the handshake), and greetings are
        coalesced (GREETING_SPACING), so no subscriber can make the nanny send a tick to
        everyone for each subscription it sends.
        """
        try:
            while True:
                if self.publisher.subscription(await self.pub.recv()):
                    self._greet()
        finally:
            if self._greeting is not None:
                self._greeting.cancel()

    def _greet(self) -> None:
        """A tick now, or at the end of the current greeting spacing if one was just sent."""
        if self._greeting is not None:
            return  # a greeting is already due; it greets this subscriber too
        wait = self._greeted_at + GREETING_SPACING - time.monotonic()
        if wait <= 0:
            self._send_greeting()
        else:
            self._greeting = asyncio.get_running_loop().call_later(wait, self._send_greeting)

    def _send_greeting(self) -> None:
        self._greeting = None
        self._greeted_at = time.monotonic()
        self.stats["greetings"] += 1
        self.tick()

    # ------------------------------------------------------------------ replay

    async def serve_replay(self) -> None:
        """Verify each request here, answer valid ones in their own task.

        Requests are checked before they can take one of the MAX_CONCURRENT_REPLAYS slots,
        and refusals are sent at once or dropped: a flood of garbage (or of requests whose
        answers are never read) can neither hold the slots that genuine clients need nor
        block this loop.
        """
        try:
            while True:
                frames = await self.replay.recv_multipart()
                if len(frames) < 2:
                    continue
                identity, body = frames[0], frames[1:]
                try:
                    req = decode_replay_request(body, self.signer, self.history)
                except RemoteProtocolError as exc:
                    self.stats["replay_errors"] += 1
                    log.debug("refused a replay request: %s", exc)
                    await self._send_or_drop(identity, error_response(exc, body), frames)
                    continue
                if len(self._replays) >= MAX_CONCURRENT_REPLAYS:
                    busy = ReplayError(
                        req.request_id, "busy", "too many replays at once; retry shortly"
                    )
                    await self._send_or_drop(identity, busy, frames)
                    continue
                task = asyncio.get_running_loop().create_task(self._answer(identity, frames, req))
                self._replays.add(task)
                task.add_done_callback(self._replays.discard)
        finally:
            tasks = [*self._replays, *self._parked]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _envelope(identity: bytes, request: list[bytes]) -> list[bytes]:
        """The ROUTER envelope of the answers: the REQ-style empty frame only when the
        request had one (``[identity, b"", signature, json]``); ``[identity, b"", json]``
        is an unsigned request, not an envelope."""
        return [identity, b""] if len(request) == 4 and request[1] == b"" else [identity]

    async def _send_or_drop(
        self, identity: bytes, reply: ReplayError, request: list[bytes]
    ) -> None:
        """A refusal: sent if the client's queue has room, else dropped (never waits)."""
        frames = self._envelope(identity, request) + encode_replay_response(reply, self.signer)
        with contextlib.suppress(zmq.ZMQError):  # full queue (EAGAIN) or client gone
            await self.replay.send_multipart(frames, flags=zmq.NOBLOCK)

    async def _send(
        self,
        identity: bytes,
        message: list[bytes],
        request: list[bytes],
        stall: float | None = None,
    ) -> bool:
        """Send one answer message, waiting while this client's queue is full; False when
        the client took nothing for ``stall`` seconds (None: wait as long as it takes).

        Always a non-blocking send, retried after a pause. A blocking send would park in
        pyzmq's send queue, shared by the whole socket, where it holds up every other
        client's answer; and since a ROUTER_MANDATORY socket reports POLLOUT when *any*
        client's queue has room, pyzmq retries it as soon as another client reads and
        fails it with EAGAIN: the slow client's answer was abandoned without its ``end``.
        ZMQError (the client is gone: EHOSTUNREACH) ends this answer only.
        """
        frames = self._envelope(identity, request) + message
        delay = _RETRY_MIN
        deadline = None if stall is None else time.monotonic() + stall
        while True:
            try:
                await self.replay.send_multipart(frames, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if delay == _RETRY_MIN:
                    self.stats["replay_waits"] += 1  # an answer waits for a slow reader
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(2 * delay, _RETRY_MAX)

    async def _answer(self, identity: bytes, frames: list[bytes], req: ReplayRequest) -> None:
        self.stats["replays"] += 1
        store = self.store
        answer = ReplayAnswer(
            req,
            epoch=self.epoch,
            signer=self.signer,
            oldest_seq=store.oldest_seq,
            last_seq=store.last_seq,
        )
        sent_seq = 0  # the last seq of the last batch the client's queue took
        try:
            while True:
                for message in answer.next_messages(store):
                    if not await self._send(identity, message, frames, REPLAY_STALL_TIMEOUT):
                        await self._park(identity, frames, answer.abandon(sent_seq))
                        return
                    sent_seq = _batch_last_seq(message, sent_seq)
                if answer.finished:
                    return
                await asyncio.sleep(0)  # let capture run between chunks
        except zmq.ZMQError as exc:  # the client went away mid-answer
            log.debug("replay to a departed client abandoned: %s", exc)

    async def _park(self, identity: bytes, frames: list[bytes], end: list[bytes]) -> None:
        """Give this answer's slot back and wait, slotless, to send its ``end``."""
        self.stats["replay_stalls"] += 1
        task = asyncio.current_task()
        assert task is not None
        self._replays.discard(task)
        self._parked[task] = None
        while len(self._parked) > MAX_PARKED_REPLAYS:
            oldest = next(iter(self._parked))
            del self._parked[oldest]
            oldest.cancel()  # its client gets no end; it repairs on its own timeout, if any
        log.debug("a replay client took nothing for %g s: its answer ends", REPLAY_STALL_TIMEOUT)
        try:
            await self._send(identity, end, frames)
        finally:
            self._parked.pop(task, None)
