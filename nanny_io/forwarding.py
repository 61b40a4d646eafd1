"""Captured output to frontends: iopub ``stream`` messages parented to the right execution.

Small writes are coalesced into large messages (frontends ingest big messages far faster),
text is decoded incrementally per stream (a character split across reads stays whole), and
an optional rate limit drops what exceeds it and says so in the output itself. The text stays
UTF-8 bytes from the pipe to the message's JSON (``nanny_io_proto.streamtext``): valid output
is never decoded and encoded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from nanny_io_proto.streams import Stream
from nanny_io_proto.streamtext import Utf8Text

#: Pending output is sent once it reaches this many bytes...
COALESCE_BYTES = 64 * 1024
#: ...or after this long, whichever comes first.
COALESCE_DELAY = 0.005
#: The largest message text, in UTF-8 bytes (cut after a newline where there is one, else at
#: a character boundary): an unmodified frontend (jupyter_client) ingests messages of this
#: size faster than larger ones, and the nanny's 1 MiB reads would otherwise become 1 MiB
#: messages.
MAX_MESSAGE_BYTES = 256 * 1024

Parent = dict[str, Any]


class OutputForwarder:
    """Collects captured output per (stream, parent) and publishes it as stream messages.

    ``send(stream_name, text, parent)`` publishes one message; ``text`` is valid UTF-8
    bytes. Order is kept across streams and parents: a change of stream or parent starts a
    new message.
    """

    def __init__(
        self,
        send: Callable[[str, bytes, Parent], None],
        *,
        coalesce_bytes: int = COALESCE_BYTES,
        delay: float = COALESCE_DELAY,
        max_message: int = MAX_MESSAGE_BYTES,
        rate_limit: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._coalesce_bytes = coalesce_bytes
        self._delay = delay
        self._max_message = max_message
        self._rate = rate_limit
        self._clock = clock
        self._tokens = rate_limit or 0.0
        self._refilled = clock()
        self._decoders = {Stream.STDOUT: Utf8Text(), Stream.STDERR: Utf8Text()}
        self._pending: list[tuple[Stream, Parent, list[bytes]]] = []
        self._pending_bytes = 0
        self._dropped: dict[Stream, tuple[int, Parent]] = {}  # bytes, and whose
        self._last_parent: dict[Stream, Parent] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.sent_messages = 0
        self.dropped_bytes = 0

    def add(self, stream: Stream, data: bytes, parent: Parent) -> None:
        """Queue ``data`` read from ``stream``, attributed to ``parent``."""
        dropped = 0
        if self._rate is not None:
            allowed = self._take(len(data))
            if allowed < len(data):
                # Forward what the budget allows, cut where the text stays whole, and
                # drop the rest: a read larger than the bucket must not be lost entirely.
                keep = _cut(data, allowed)
                self._tokens += allowed - len(keep)
                dropped = len(data) - len(keep)
                data = keep
            elif stream in self._dropped:  # forwarding resumes: say what was lost first
                self._queue_notice(stream)
        if data:
            self._last_parent[stream] = parent
            self._queue(stream, parent, self._decoders[stream].feed(data), len(data))
        if dropped:
            self._drop(stream, dropped, parent)

    def _queue(self, stream: Stream, parent: Parent, text: bytes, size: int) -> None:
        if not text:
            return
        if self._pending and self._pending[-1][0] is stream and self._pending[-1][1] is parent:
            self._pending[-1][2].append(text)
        else:
            self._pending.append((stream, parent, [text]))
        self._pending_bytes += size
        if self._pending_bytes >= self._coalesce_bytes:
            self.flush()
        else:
            self._arm()

    def _drop(self, stream: Stream, count: int, parent: Parent) -> None:
        known = self._dropped.get(stream)
        if known is not None and known[1].get("msg_id") != parent.get("msg_id"):
            self._queue_notice(stream)  # each request hears about its own losses
        total, _ = self._dropped.get(stream, (0, parent))
        self._dropped[stream] = (total + count, parent)
        self.dropped_bytes += count
        # A partial character before the gap must not be glued to bytes after it.
        self._decoders[stream].reset()

    def _queue_notice(self, stream: Stream, fallback: Parent | None = None) -> None:
        count, parent = self._dropped.pop(stream)
        if not parent and fallback is not None:
            parent = fallback
        notice = (
            f"\n[nanny-io: dropped {count} bytes of {stream.value}: "
            f"output exceeded {self._rate:.0f} bytes/s]\n"
        ).encode()
        # specs/output-sync.md §7: the notice is a stream message on stderr
        self._queue(Stream.STDERR, parent, notice, len(notice))

    def _take(self, n: int) -> int:
        """How many of ``n`` bytes the budget allows now (taken from it)."""
        assert self._rate is not None
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        allowed = min(n, int(self._tokens))
        self._tokens -= allowed
        return allowed

    def _arm(self) -> None:
        if self._timer is None:
            with contextlib.suppress(RuntimeError):
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self, parent_for_notice: Parent | None = None) -> None:
        """Publish everything pending now (on the timer, or before an idle or a death).

        With ``parent_for_notice`` (a request's output is complete): partial characters
        are finalised (U+FFFD rather than leaking into the next request's text) and every
        drop notice still owed is sent, parented to the request whose output was dropped
        (``parent_for_notice`` when that is unknown).
        """
        if parent_for_notice is not None:
            for stream, decoder in self._decoders.items():
                tail = decoder.feed(b"", final=True)
                if tail:
                    parent = self._last_parent.get(stream, parent_for_notice)
                    self._pending.append((stream, parent, [tail]))
            for stream in list(self._dropped):
                self._queue_notice(stream, parent_for_notice)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for stream, parent, parts in pending:
            text = parts[0] if len(parts) == 1 else b"".join(parts)
            for piece in _pieces(text, self._max_message):
                self._send(stream.value, piece, parent)
                self.sent_messages += 1


def _pieces(text: bytes, limit: int) -> list[bytes]:
    """UTF-8 ``text`` in pieces of at most ``limit`` bytes, each ending a line where it can
    and never inside a character."""
    if len(text) <= limit:
        return [text]
    out = []
    start = 0
    while len(text) - start > limit:
        end = _cut_end(text, start, limit)
        if end == start:  # a limit shorter than one character: the whole character
            end = start + limit
            while end < len(text) and text[end] & 0xC0 == 0x80:
                end += 1
        out.append(text[start:end])
        start = end
    out.append(text[start:])
    return out


def _cut(data: bytes, limit: int) -> bytes:
    """The longest prefix of ``data`` within ``limit`` bytes that ends a line, or else a
    character: never half a UTF-8 sequence."""
    if limit >= len(data):
        return data
    return data[: _cut_end(data, 0, limit)]


def _cut_end(data: bytes, start: int, limit: int) -> int:
    """The end of the longest piece of ``data`` from ``start`` within ``limit`` bytes (fewer
    than are left) that ends a line, or else a character; ``start`` if no character fits."""
    end = data.rfind(b"\n", start, start + limit) + 1
    if end:
        return end
    end = start + limit
    while end > start and data[end] & 0xC0 == 0x80:  # data[end] continues a character
        end -= 1
    return end
