"""The nanny's journal: the kernel's lifecycle and the state file, the nanny's events in the
log, and the background tasks the nanny owns.

Every other piece of the nanny (endpoints, attribution, supervisor, proxy) records through
the journal and starts its tasks through it; the journal depends on none of them. That keeps
the pieces' imports one way, and gives every task an owner that waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nanny_io_proto.logrecords import nanny_event_data
from nanny_io_proto.priorities import priority_flags
from nanny_io_proto.streams import Stream

from .discovery import NannyState
from .lifecycle import KernelState, Lifecycle
from .store import LogStore
from .tasks import OwnedTasks

log = logging.getLogger("nanny_io")

#: The state file is rewritten at most this often for counters (not for state changes).
STATE_SAVE_INTERVAL = 1.0


class Journal:
    """What the nanny knows about itself, and the tasks it runs."""

    def __init__(self, state: NannyState, store: LogStore) -> None:
        self.state = state
        self.store = store
        self.lifecycle = Lifecycle(KernelState(state.status))
        #: How many incarnations were launched: the current one's number once launched.
        self.incarnations = 0
        self.stop = asyncio.Event()
        self._on_change: list[Callable[[Journal], None]] = []
        self._tasks = OwnedTasks(on_failure=lambda _: self.stop.set())
        self._last_save = 0.0
        self._save_pending = False

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the nanny's; if it fails, the nanny stops (it would
        rather stop than run half-working)."""
        return self._tasks.spawn(coro, name)

    async def cancel_tasks(self) -> None:
        """Cancel every task and wait until all have ended."""
        await self._tasks.cancel_all()

    # ------------------------------------------------------------------ events

    def event(self, event: str, text: str, *, priority: int | None = None, **details: Any) -> None:
        """Record a nanny event on the log's ``nanny`` stream (the store tells its listeners,
        the log channel among them); without ``priority`` it has the stream's (notice)."""
        data = nanny_event_data(event, text, kernel_id=self.state.kernel_id, **details)
        flags = 0 if priority is None else priority_flags(priority)
        self.store.append_one(Stream.NANNY, self.incarnations, time.time_ns(), data, flags)

    # ------------------------------------------------------------------ lifecycle

    @property
    def kernel_state(self) -> KernelState:
        return self.lifecycle.state

    def on_change(self, callback: Callable[[Journal], None]) -> None:
        """Call ``callback(journal)`` after every state change."""
        self._on_change.append(callback)

    def enter(
        self,
        state: KernelState,
        *,
        incarnation: int | None = None,
        pid: int | None = None,
        started_at: float | None = None,
    ) -> None:
        """Move the kernel to ``state`` (and name its incarnation), then save the state file."""
        self.lifecycle.to(state)
        self.state.status = state.value
        if incarnation is not None:
            self.state.incarnation = incarnation
            self.state.kernel_pid = pid
            self.state.started_at = started_at or 0.0
        for callback in self._on_change:
            callback(self)
        self.save()

    def save(self) -> None:
        """Write the state file now (a full disk is logged, not fatal)."""
        self._last_save = time.monotonic()
        try:
            self.state.save()
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.state.path, exc)

    def save_soon(self) -> None:
        """Write the state file within STATE_SAVE_INTERVAL (for counters that change often)."""
        if self._save_pending:
            return
        self._save_pending = True
        delay = max(0.0, STATE_SAVE_INTERVAL - (time.monotonic() - self._last_save))
        asyncio.get_running_loop().call_later(delay, self._deferred_save)

    def _deferred_save(self) -> None:
        self._save_pending = False
        self.save()
