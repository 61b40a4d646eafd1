"""The log channel, server side: live records on PUB, heartbeat ticks, and replay on ROUTER.

Capture never waits for a subscriber: the PUB socket drops at its high-water mark, and
subscribers repair gaps from replay (specs/log-channel.md). Replay answers are streamed from
the store in bounded chunks, packed straight from its entries, so a late joiner asking for a
million records costs neither a million objects nor the capture path's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import zmq
import zmq.asyncio

from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    TICK_INTERVAL,
    TICK_TOPIC,
    StreamSeqs,
    Tick,
    encode_packed_batch,
    encode_tick,
    topic_for,
)
from nanny_io_proto.replay import (
    ReplayEnd,
    ReplayError,
    decode_replay_request,
    encode_packed_replay_batch,
    encode_replay_response,
    error_response,
    plan_replay,
)
from nanny_io_proto.signing import DigestHistory, Signer
from nanny_io_proto.streams import Stream

from .store import Entry, LogStore, pack_entries

log = logging.getLogger("nanny_io")

#: Replays served at once; more get a "busy" error so one slow client cannot pile up work.
MAX_CONCURRENT_REPLAYS = 8
_STREAMS = tuple(Stream)


class LogChannel:
    """Publishes what the store receives and answers replay requests from it."""

    def __init__(
        self, pub: zmq.asyncio.Socket, replay: zmq.asyncio.Socket, store: LogStore, signer: Signer
    ) -> None:
        self.pub = pub
        self.replay = replay
        self.store = store
        self.signer = signer
        self.epoch = store.epoch
        self.history = DigestHistory()
        self._topics: set[bytes] = set()  # what live subscribers asked for (XPUB reports it)
        self._last: dict[Stream, int] = dict.fromkeys(_STREAMS, 0)  # stored, per stream
        self._published: dict[Stream, int] = dict.fromkeys(_STREAMS, 0)
        self._replays: set[asyncio.Task[Any]] = set()
        self.stats = {"published_batches": 0, "replays": 0, "replay_errors": 0}
        self.kernel_state = "starting"
        self.incarnation = 0
        replay.router_mandatory = 1  # wait for a slow reader instead of dropping an answer

    # ------------------------------------------------------------------ live

    def _wanted(self, stream: Stream) -> bool:
        topic = topic_for(stream)
        return any(topic.startswith(t) for t in self._topics)

    def stored(self, stream: Stream, first_seq: int, last_seq: int) -> None:
        """Publish records ``first_seq..last_seq`` (one stream) just appended to the store."""
        if last_seq < first_seq:
            return
        if self._wanted(stream):
            entries = self.store.entries(first_seq, last_seq)
            prev = StreamSeqs(**{s.value: n for s, n in self._published.items()})
            for start in range(0, len(entries), MAX_BATCH_RECORDS):
                chunk = entries[start : start + MAX_BATCH_RECORDS]
                frames = encode_packed_batch(
                    self.epoch,
                    stream,
                    len(chunk),
                    chunk[0][0],
                    chunk[-1][0],
                    prev,
                    pack_entries(chunk),
                    self.signer,
                )
                with contextlib.suppress(zmq.Again):
                    self.pub.send_multipart(frames, flags=zmq.NOBLOCK)
                self.stats["published_batches"] += 1
                prev = prev.advanced(stream, chunk[-1][0])
            self._published[stream] = last_seq
        self._last[stream] = last_seq

    def tick(self) -> None:
        """The heartbeat: the latest seq per stream, so idle and dead can be told apart."""
        seqs = StreamSeqs(**{s.value: n for s, n in self._last.items()})
        tick = Tick(
            epoch=self.epoch,
            last_seq=seqs.latest(),
            time_ns=time.time_ns(),
            incarnation=self.incarnation,
            kernel_state=self.kernel_state,
            last_seqs=seqs,
        )
        with contextlib.suppress(zmq.Again):
            self.pub.send_multipart(encode_tick(tick, self.signer), flags=zmq.NOBLOCK)

    async def serve_ticks(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_INTERVAL)

    async def serve_subscriptions(self) -> None:
        """Track which topics have subscribers; greet each new one with a tick.

        The XPUB is verbose: every subscribe is reported, but only the last unsubscribe of a
        topic, which is what a set of wanted topics needs.
        """
        while True:
            event = await self.pub.recv()
            if not event:
                continue
            topic = bytes(event[1:])
            if event[0] == 1:
                self._topics.add(topic)
                if TICK_TOPIC.startswith(topic):
                    self.tick()  # greet: the subscriber now knows live messages reach it
            elif event[0] == 0:
                self._topics.discard(topic)

    # ------------------------------------------------------------------ replay

    async def serve_replay(self) -> None:
        try:
            while True:
                frames = await self.replay.recv_multipart()
                if len(frames) < 2:
                    continue
                if len(self._replays) >= MAX_CONCURRENT_REPLAYS:
                    await self._send(
                        frames[0],
                        encode_replay_response(
                            ReplayError(None, "busy", "too many replays at once; retry shortly"),
                            self.signer,
                        ),
                        frames,
                    )
                    continue
                task = asyncio.get_running_loop().create_task(self._answer(frames))
                self._replays.add(task)
                task.add_done_callback(self._replays.discard)
        finally:
            for task in self._replays:
                task.cancel()
            await asyncio.gather(*self._replays, return_exceptions=True)

    async def _send(self, identity: bytes, message: list[bytes], request: list[bytes]) -> None:
        envelope = [identity, b""] if len(request) > 1 and request[1] == b"" else [identity]
        await self.replay.send_multipart(envelope + message)

    async def _answer(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        try:
            req = decode_replay_request(body, self.signer, self.history)
        except RemoteProtocolError as exc:
            self.stats["replay_errors"] += 1
            log.warning("refused a replay request: %s", exc)
            with contextlib.suppress(zmq.ZMQError):
                await self._send(
                    identity, encode_replay_response(error_response(exc, body), self.signer), frames
                )
            return
        self.stats["replays"] += 1
        store = self.store
        plan = plan_replay(req, store.oldest_seq, store.last_seq)
        try:
            if plan.truncated is not None:
                await self._send(
                    identity, encode_replay_response(plan.truncated, self.signer), frames
                )
            sent, complete = 0, True
            if not plan.empty:
                sent, complete = await self._stream(identity, frames, plan)
            await self._send(
                identity,
                encode_replay_response(
                    ReplayEnd(req.request_id, self.epoch, plan.end_seq, sent, complete), self.signer
                ),
                frames,
            )
        except zmq.ZMQError as exc:  # the client went away mid-answer
            log.debug("replay to a departed client abandoned: %s", exc)

    async def _stream(self, identity: bytes, frames: list[bytes], plan: Any) -> tuple[int, bool]:
        """Send the selected records in chunks; (records sent, complete)."""
        store = self.store
        streams = plan.streams
        limit = plan.limit
        if plan.last is not None:
            selected: list[Entry] | None = store.last_entries(
                plan.last, streams, from_seq=plan.first_seq, to_seq=plan.last_seq
            )
            if limit is not None and len(selected) > limit:
                return await self._send_entries(identity, frames, plan, selected[:limit]), False
            return await self._send_entries(identity, frames, plan, selected), True
        sent = 0
        cursor = plan.first_seq
        while cursor <= plan.last_seq:
            want = MAX_BATCH_RECORDS if limit is None else min(MAX_BATCH_RECORDS, limit - sent)
            if want <= 0:
                more = store.entries(cursor, plan.last_seq, streams, limit=1)
                return sent, not more
            chunk = store.entries(max(cursor, store.oldest_seq), plan.last_seq, streams, limit=want)
            if not chunk:
                break
            sent += await self._send_entries(identity, frames, plan, chunk)
            cursor = chunk[-1][0] + 1
            await asyncio.sleep(0)  # let capture run between chunks
        return sent, True

    async def _send_entries(
        self, identity: bytes, frames: list[bytes], plan: Any, entries: list[Entry]
    ) -> int:
        start = 0
        while start < len(entries):
            size = 0
            end = start
            while end < len(entries) and end - start < MAX_BATCH_RECORDS:
                size += len(entries[end][5]) + 26
                if size > MAX_BATCH_BYTES and end > start:
                    break
                end += 1
            chunk = entries[start:end]
            await self._send(
                identity,
                encode_packed_replay_batch(
                    plan.request_id,
                    self.epoch,
                    len(chunk),
                    chunk[0][0],
                    chunk[-1][0],
                    pack_entries(chunk),
                    self.signer,
                ),
                frames,
            )
            start = end
        return len(entries)
