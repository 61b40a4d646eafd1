"""Which cell an output belongs to (specs/output-sync.md), and holding a cell's ``idle``
until its output has gone out.

The nanny sees two clocks: the kernel's pipes (bytes, with delimiters when the kernel writes
them) and the kernel's iopub (``busy``/``idle`` of each request). Output read while a BEGIN
delimiter is open belongs to that request; otherwise to the request that went ``busy`` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from nanny_io_proto.delimiters import Begin, End
from nanny_io_proto.streams import Stream

from .capture import EchoWriter
from .forwarding import OutputForwarder

#: How long output read while no request runs waits for a `busy` that may be on its way.
LIMBO_DELAY = 0.1
#: Parent headers remembered by msg_id (for delimiters that name a request).
MAX_PARENTS = 256

Parent = dict[str, Any]


class Attribution:
    """Output to frontends, each piece parented to the request that wrote it."""

    def __init__(
        self,
        forwarder: OutputForwarder | None,
        echo: EchoWriter | None,
        *,
        end_wait: float,
        drain: Callable[[], None],
        release_held: Callable[[Stream], None],
        on_delimiter_timeout: Callable[[Stream, str], None],
    ) -> None:
        self.forwarder = forwarder
        self.echo = echo
        self.end_wait = end_wait
        self._drain = drain
        self._release_held = release_held
        self._on_delimiter_timeout = on_delimiter_timeout
        self.current_parent: Parent = {}  # the execute_request running now
        self.last_parent: Parent = {}  # the latest execute_request seen busy
        self.idle_parent: Parent = {}  # the request of the last status seen
        self._parents: dict[str, Parent] = {}  # msg_id -> parent header, bounded
        self.open_markers: dict[Stream, str] = {}  # stream -> msg_id between BEGIN and END
        self._marker_closed = asyncio.Event()
        self._limbo: list[tuple[Stream, bytes]] = []  # output waiting for its request's busy
        self._limbo_timer: asyncio.TimerHandle | None = None
        #: Told the msg_id of every execute request when it starts (BEGIN or busy), and
        #: when one has finished (its idle, once its output went out).
        self.on_cell_start: Callable[[str], None] | None = None
        self.on_cell_end: Callable[[], None] | None = None

    # ------------------------------------------------------------------ from the pipes

    def on_output(self, stream: Stream, data: bytes) -> None:
        """Captured stdout/stderr (delimiters removed): to frontends, or echoed locally."""
        if self.forwarder is None:
            if self.echo is not None:
                self.echo.write(data, stream)
            return
        if stream not in self.open_markers and not self.current_parent:
            # No request is known to run, but one may have started: ipykernel sends its
            # `busy` from a thread, so a cell's first output can reach the pipe before the
            # busy reaches us. Hold the output until a busy arrives or LIMBO_DELAY passes.
            self._limbo.append((stream, data))
            if self._limbo_timer is None:
                loop = asyncio.get_running_loop()
                self._limbo_timer = loop.call_later(LIMBO_DELAY, self.resolve_limbo, None)
            return
        self.resolve_limbo(None)
        self._forward(stream, data, self.parent_of_output(stream))

    def _forward(self, stream: Stream, data: bytes, parent: Parent) -> None:
        """Output of a request to frontends; output that belongs to no request (the kernel's
        start-up banner) only to the echo, where a kernel's output goes without a nanny."""
        assert self.forwarder is not None
        if parent:
            self.forwarder.add(stream, data, parent)
        elif self.echo is not None:
            self.echo.write(data, stream)

    def resolve_limbo(self, parent: Parent | None) -> None:
        """Attribute held output to ``parent`` (a request that just went busy) or, when none
        came, to the most recent request."""
        if self._limbo_timer is not None:
            self._limbo_timer.cancel()
            self._limbo_timer = None
        if not self._limbo or self.forwarder is None:
            return
        held, self._limbo = self._limbo, []
        for stream, data in held:
            self._forward(stream, data, parent or self.last_parent)

    def on_marker(self, stream: Stream, marker: Begin | End) -> None:
        if isinstance(marker, Begin):
            self.open_markers[stream] = marker.msg_id
            self.parent_for(marker.msg_id)
            if self.on_cell_start is not None:
                self.on_cell_start(marker.msg_id)
        elif self.open_markers.get(stream) == marker.msg_id:
            del self.open_markers[stream]
            self._marker_closed.set()

    def parent_of_output(self, stream: Stream) -> Parent:
        """Which request produced output read now on ``stream`` (specs/output-sync.md)."""
        msg_id = self.open_markers.get(stream)
        if msg_id is not None:
            return self.parent_for(msg_id)
        return self.current_parent or self.last_parent

    def running_parent(self) -> Parent:
        """The request that was running: opened by a BEGIN delimiter, or seen busy on iopub.

        The delimiter comes first: it is written by the kernel's main thread right before the
        code runs, while ipykernel publishes `busy` from a thread that a dying kernel may
        never let send it (a death notice would then land in no cell, or the previous one).
        """
        for msg_id in self.open_markers.values():
            return self.parent_for(msg_id)
        return self.current_parent

    def parent_for(self, msg_id: str) -> Parent:
        """The parent header of ``msg_id``: as seen on iopub, or a minimal stand-in."""
        parent = self._parents.get(msg_id)
        if parent is None:
            parent = self._remember({"msg_id": msg_id, "msg_type": "execute_request"})
        return parent

    def _remember(self, parent: Parent) -> Parent:
        msg_id = parent.get("msg_id", "")
        known = self._parents.get(msg_id)
        if known is not None and len(known) >= len(parent):
            return known
        self._parents[msg_id] = parent
        while len(self._parents) > MAX_PARENTS:
            del self._parents[next(iter(self._parents))]
        return parent

    # ------------------------------------------------------------------ from iopub

    def track_status(self, parent: Parent, state: object) -> None:
        """Follow busy/idle of execute requests (``parent`` of a ``status`` message)."""
        if parent.get("msg_type") == "execute_request":
            parent = self._remember(parent)
            if state == "busy":
                self.current_parent = self.last_parent = parent
                self.resolve_limbo(parent)
                if self.on_cell_start is not None:
                    self.on_cell_start(str(parent.get("msg_id", "")))
            elif state == "idle" and parent.get("msg_id") == self.current_parent.get("msg_id"):
                self.current_parent = {}
        self.idle_parent = parent

    async def drain_before_idle(self, parent: Parent) -> None:
        """Forward every byte the request wrote before its ``status: idle`` is forwarded.

        Bytes written before the kernel sent idle are already in the pipes. A kernel that
        writes delimiters gets until its END delimiters arrive (bounded by ``end_wait``).
        """
        self._drain_for_idle()
        msg_id = parent.get("msg_id")
        deadline = time.monotonic() + self.end_wait
        while msg_id in self.open_markers.values() and time.monotonic() < deadline:
            self._marker_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._marker_closed.wait(), max(0.0, deadline - time.monotonic())
                )
            self._drain()
        for stream, open_id in list(self.open_markers.items()):
            if open_id == msg_id:  # END never came: stop attributing to a finished request
                del self.open_markers[stream]
                self._on_delimiter_timeout(stream, open_id)
        self._finish_idle(parent)

    def drain_before_idle_now(self, parent: Parent) -> bool:
        """:meth:`drain_before_idle` without waiting, when no delimited output of the
        request is still open (the usual case); False (nothing finished) when it is."""
        self._drain_for_idle()
        if parent.get("msg_id") in self.open_markers.values():
            return False
        self._finish_idle(parent)
        return True

    def _drain_for_idle(self) -> None:
        self._drain()
        for stream in (Stream.STDOUT, Stream.STDERR):
            if stream not in self.open_markers:  # a trailing ESC is output, not a delimiter
                self._release_held(stream)

    def _finish_idle(self, parent: Parent) -> None:
        self.resolve_limbo(None)
        if self.forwarder is not None:
            self.forwarder.flush(parent)
        if self.on_cell_end is not None and parent.get("msg_type") == "execute_request":
            self.on_cell_end()

    def before_forwarding(self) -> bool:
        """Whether output must go out before the kernel message being forwarded now (a
        request's output written before, say, its execute_result)."""
        return self.forwarder is not None and bool(self.current_parent)

    # ------------------------------------------------------------------ lifecycle

    def flush_for_death(self) -> Parent:
        """Everything held goes to the request that was running; that request's parent."""
        parent = self.running_parent()
        self.resolve_limbo(parent or None)
        if self.forwarder is not None:
            self.forwarder.flush(parent or self.last_parent)
        return parent

    def forget_request(self) -> None:
        """No request runs any more (the kernel died)."""
        self.current_parent = {}
        self.open_markers.clear()

    def new_incarnation(self) -> None:
        """A new kernel process: its start-up output belongs to no cell."""
        self.current_parent = {}
        self.last_parent = {}
