"""One WebSocket follow: history then live, through a bounded outbox.

What the browser has not taken yet waits in an ``Outbox`` bounded in records and bytes.

- The history the client asked for is sent whole: while it is being sent, a full outbox makes
  the follow wait (the nanny's replay waits for slow readers too, and live messages that the
  nanny drops meanwhile are repaired from its store afterwards).
- Live records are read as fast as they come, so the follow stays live. When the outbox is
  full, new records are dropped until it has drained to half, and the browser gets one ``gap``
  event for the dropped range, in its place in the sequence. The records stay in the nanny's
  store: ``GET .../log?since=`` fetches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nanny_io_proto.streams import Stream

from ..subscriber import (
    Alive,
    EpochChanged,
    Gap,
    NannySilent,
    Records,
    ReplayFailed,
    Truncated,
)
from ..tail import record_json
from .bridge import CaughtUp, NannyKernel, death_json, log, nanny_event

#: Nanny events that also come as event frames, whatever streams the follow asked for.
LIFECYCLE = frozenset({"kernel_started", "kernel_restarted", "kernel_died"})


@dataclass(frozen=True)
class FollowLimits:
    """How much one WebSocket may hold in the server, and how big a frame may be."""

    max_records: int = 10_000
    max_bytes: int = 8 << 20
    frame_records: int = 2_000
    frame_bytes: int = 256 << 10


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot of an outbox's counters."""

    queued_records: int
    queued_bytes: int
    peak_records: int
    peak_bytes: int
    dropped: int  # records dropped because the client was slow
    gaps: int  # gap events for them
    sent_frames: int


class Outbox:
    """Frames waiting for a WebSocket: bounded, in order, drops reported as ``gap`` events."""

    def __init__(self, limits: FollowLimits) -> None:
        self.limits = limits
        self._items: deque[tuple[int, str]] = deque()  # (seq, record JSON); seq 0: an event
        self._records = 0
        self._bytes = 0
        self._drop: list[int] | None = None  # [first, last, count] of the run being dropped
        self._wakeup = asyncio.Event()  # set when there is something to send
        self._space = asyncio.Event()  # set when a frame was taken
        self._closed = False
        self.peak_records = self.peak_bytes = 0
        self.dropped = self.gaps = self.sent_frames = 0

    def full(self, size: int) -> bool:
        """Whether a record of ``size`` bytes would not fit now."""
        lim = self.limits
        return self._records + 1 > lim.max_records or self._bytes + size > lim.max_bytes

    async def wait_for_space(self, size: int) -> None:
        """Until a record of ``size`` bytes fits (or everything queued has been taken)."""
        while self.full(size) and self._items and not self._closed:
            self._space.clear()
            await self._space.wait()

    def put_record(self, seq: int, text: str) -> None:
        """Queue one record's JSON, or drop it when the outbox is full."""
        lim = self.limits
        if self._drop is not None:
            if self._records > lim.max_records // 2 or self._bytes > lim.max_bytes // 2:
                self._drop[1] = seq
                self._drop[2] += 1
                self.dropped += 1
                return
            self._end_drop()
        if self.full(len(text)):
            self._drop = [seq, seq, 1]
            self.dropped += 1
            return
        self._items.append((seq, text))
        self._records += 1
        self._bytes += len(text)
        self.peak_records = max(self.peak_records, self._records)
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        self._wakeup.set()

    def put_event(self, event: dict[str, Any]) -> None:
        """Queue an event frame (never dropped: events are few and small)."""
        if self._drop is not None:
            self._end_drop()
        text = json.dumps(event, ensure_ascii=False)
        self._items.append((0, text))
        self._bytes += len(text)
        self._wakeup.set()

    def _end_drop(self) -> None:
        assert self._drop is not None
        first, last, count = self._drop
        self._drop = None
        self.gaps += 1
        self.put_event(
            {
                "event": "gap",
                "from_seq": first,
                "to_seq": last,
                "dropped": count,
                "reason": "slow_client",
                "text": f"{count} records ({first}..{last}) were not sent because this "
                f"connection read too slowly; fetch them with GET .../log?since={first}",
            }
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more items: ``next_frame`` returns None once the queue is empty."""
        self._closed = True
        self._wakeup.set()

    async def next_frame(self) -> str | None:
        """The next frame: an event, or up to a frame's worth of consecutive records."""
        while not self._items:
            if self._drop is not None:
                self._end_drop()  # drained while dropping: say so now, not at the next record
                continue
            if self._closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        seq, text = self._items.popleft()
        self._bytes -= len(text)
        self._space.set()
        if seq == 0:
            self.sent_frames += 1
            return text
        parts = [text]
        size = len(text)
        lim = self.limits
        while (
            self._items
            and self._items[0][0]
            and len(parts) < lim.frame_records
            and size + len(self._items[0][1]) <= lim.frame_bytes
        ):
            text = self._items.popleft()[1]
            parts.append(text)
            size += len(text)
            self._bytes -= len(text)
        self._records -= len(parts)
        self.sent_frames += 1
        return '{"records":[' + ",".join(parts) + "]}"

    def statistics(self) -> OutboxStats:
        return OutboxStats(
            self._records,
            self._bytes,
            self.peak_records,
            self.peak_bytes,
            self.dropped,
            self.gaps,
            self.sent_frames,
        )


@dataclass(frozen=True)
class LogQuery:
    """What a follow or a history request asks for (the query parameters)."""

    streams: tuple[Stream, ...] | None = None  # None: all four
    since: int | None = None
    last: int | None = None


class Follow:
    """Feeds one WebSocket from one kernel's log channel until either goes away."""

    def __init__(
        self,
        kernel: NannyKernel,
        query: LogQuery,
        send: Callable[[str], Awaitable[None]],
        limits: FollowLimits,
        silent_after: float | None = None,
    ) -> None:
        self.kernel = kernel
        self.query = query
        self.send = send
        self.outbox = Outbox(limits)
        self.silent_after = silent_after
        self._reader: asyncio.Task[None] | None = None
        self._silent = False
        self._state: str | None = None
        self._live = False  # the history asked for has been delivered

    async def run(self) -> None:
        """Read and write until the client leaves, or the kernel is gone and all is sent."""
        self.kernel.followers.add(self)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._reader.add_done_callback(self._reader_done)
        try:
            while (frame := await self.outbox.next_frame()) is not None:
                await self.send(frame)
        finally:
            self.kernel.followers.discard(self)
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        """A reader that failed ends the follow (after what is queued), rather than leave the
        client waiting for records that will never come."""
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "nanny-io: a log follow of kernel %s failed",
            self.kernel.kernel_id,
            exc_info=task.exception(),
        )
        self._finish("error", f"the server could not follow the log: {task.exception()}")

    def kernel_gone(self) -> None:
        """The server shut the kernel down: say so, send what is queued, then end."""
        if self._reader is not None:
            self._reader.cancel()
        self._finish("kernel_shutdown", "the kernel was shut down")

    def _finish(self, event: str, text: str) -> None:
        if not self.outbox.closed:
            self.outbox.put_event({"event": event, "text": text})
            self.outbox.close()

    async def _read(self) -> None:
        query = self.query
        wanted = query.streams
        # The nanny stream always: its lifecycle events come whatever streams were asked for.
        streams = None if wanted is None else tuple(dict.fromkeys((*wanted, Stream.NANNY)))
        last = None if query.since is not None else (100 if query.last is None else query.last)
        channel = self.kernel.channel(
            streams=streams, since_seq=query.since, last=last, silent_after=self.silent_after
        )
        async with contextlib.aclosing(channel):
            async for event in channel:
                if isinstance(event, Records):
                    await self._deliver_records(event, wanted)
                else:
                    self._deliver(event)
        self._finish("kernel_shutdown", "the kernel was shut down")

    async def _deliver_records(self, event: Records, wanted: tuple[Stream, ...] | None) -> None:
        box = self.outbox
        self._silent = False
        for rec in event.records:
            if wanted is None or rec.stream in wanted:
                text = json.dumps(record_json(rec), ensure_ascii=False)
                if not self._live and box.full(len(text)):
                    await box.wait_for_space(len(text))  # history: wait rather than drop
                box.put_record(rec.seq, text)
            details = nanny_event(rec)
            if details is not None and details.get("event") in LIFECYCLE:
                box.put_event(_lifecycle_event(rec, details))

    def _deliver(self, event: Any) -> None:
        box = self.outbox
        if isinstance(event, Gap):
            box.put_event(
                {
                    "event": "gap",
                    "from_seq": event.first_missing,
                    "to_seq": event.last_missing,
                    "reason": "discarded",
                    "text": f"records {event.first_missing}..{event.last_missing} are no "
                    "longer in the nanny's store",
                }
            )
        elif isinstance(event, Truncated):
            box.put_event(
                {
                    "event": "truncated",
                    "oldest_seq": event.oldest_seq,
                    "lost": event.lost,
                    "text": f"{event.lost} earlier records were discarded by the nanny",
                }
            )
        elif isinstance(event, CaughtUp):
            self._live = True
            box.put_event({"event": "caught_up", "text": "history sent; what follows is live"})
        elif isinstance(event, EpochChanged):
            box.put_event(
                {
                    "event": "nanny_restarted",
                    "text": "a new nanny serves this kernel; its sequence numbers start again",
                }
            )
        elif isinstance(event, ReplayFailed):
            box.put_event({"event": "replay_failed", "code": event.code, "text": event.message})
        elif isinstance(event, NannySilent):
            if not self._silent:
                self._silent = True
                box.put_event({"event": "nanny_silent", "text": "the nanny is not answering"})
        elif isinstance(event, Alive):
            self._silent = False
            tick = event.tick
            if tick.kernel_state != self._state:
                self._state = tick.kernel_state
                box.put_event(
                    {
                        "event": "state",
                        "kernel_state": tick.kernel_state,
                        "incarnation": tick.incarnation,
                        "text": f"kernel {tick.kernel_state}",
                    }
                )


def _lifecycle_event(rec: Any, details: dict[str, Any]) -> dict[str, Any]:
    """An event frame for a nanny's kernel_started / kernel_restarted / kernel_died record."""
    name = details["event"]
    if name == "kernel_died":
        body = death_json(rec, details)
    else:
        body = {
            "incarnation": details.get("incarnation", rec.incarnation),
            "pid": details.get("pid"),
            "seq": rec.seq,
        }
    return {"event": name, **body, "text": details.get("text", "")}
