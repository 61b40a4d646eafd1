"""Captured output to frontends: iopub ``stream`` messages parented to the right execution.

Small writes are coalesced into large messages (frontends ingest big messages far faster),
text is decoded incrementally per stream (a character split across reads stays whole), and
an optional rate limit drops what exceeds it and says so in the output itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from nanny_io_proto.lines import StreamDecoder
from nanny_io_proto.streams import Stream

#: Pending output is sent once it reaches this many bytes...
COALESCE_BYTES = 64 * 1024
#: ...or after this long, whichever comes first.
COALESCE_DELAY = 0.005

Parent = dict[str, Any]


class OutputForwarder:
    """Collects captured output per (stream, parent) and publishes it as stream messages.

    ``send(stream_name, text, parent)`` publishes one message. Order is kept across streams
    and parents: a change of stream or parent starts a new message.
    """

    def __init__(
        self,
        send: Callable[[str, str, Parent], None],
        *,
        coalesce_bytes: int = COALESCE_BYTES,
        delay: float = COALESCE_DELAY,
        rate_limit: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._coalesce_bytes = coalesce_bytes
        self._delay = delay
        self._rate = rate_limit
        self._clock = clock
        self._tokens = rate_limit or 0.0
        self._refilled = clock()
        self._decoders = {Stream.STDOUT: StreamDecoder(), Stream.STDERR: StreamDecoder()}
        self._pending: list[tuple[Stream, Parent, list[str]]] = []
        self._pending_bytes = 0
        self._dropped: dict[Stream, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.sent_messages = 0
        self.dropped_bytes = 0

    def add(self, stream: Stream, data: bytes, parent: Parent) -> None:
        """Queue ``data`` read from ``stream``, attributed to ``parent``."""
        if self._rate is not None and not self._take(len(data)):
            self._dropped[stream] = self._dropped.get(stream, 0) + len(data)
            self.dropped_bytes += len(data)
            self._arm()
            return
        text = self._decoders[stream].decode(data)
        if not text:
            return
        if self._pending and self._pending[-1][0] is stream and self._pending[-1][1] is parent:
            self._pending[-1][2].append(text)
        else:
            self._pending.append((stream, parent, [text]))
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._coalesce_bytes:
            self.flush()
        else:
            self._arm()

    def _take(self, n: int) -> bool:
        assert self._rate is not None
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if n <= self._tokens:
            self._tokens -= n
            return True
        return False

    def _arm(self) -> None:
        if self._timer is None:
            with contextlib.suppress(RuntimeError):
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self, parent_for_notice: Parent | None = None) -> None:
        """Publish everything pending now (before an idle, a death, or on the timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for stream, parent, parts in pending:
            self._send(stream.value, "".join(parts), parent)
            self.sent_messages += 1
        if self._dropped:
            notice_parent = (
                parent_for_notice
                if parent_for_notice is not None
                else (pending[-1][1] if pending else {})
            )
            for stream, count in self._dropped.items():
                self._send(
                    stream.value,
                    f"\n[nanny-io: dropped {count} bytes of {stream.value}: "
                    f"output exceeded {self._rate:.0f} bytes/s]\n",
                    notice_parent,
                )
            self._dropped = {}
