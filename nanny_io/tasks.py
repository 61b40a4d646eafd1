"""Background tasks with an owner: every task is kept until it ends, and a failure is logged
(and reported to the owner) instead of vanishing with a garbage-collected task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("nanny_io")


class OwnedTasks:
    """The tasks one owner started; ``on_failure(task)`` runs when one raises."""

    def __init__(self, on_failure: Callable[[asyncio.Task[Any]], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_failure = on_failure

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("nanny-io: task %s failed", task.get_name(), exc_info=task.exception())
            if self._on_failure is not None:
                self._on_failure(task)

    def running(self) -> set[asyncio.Task[Any]]:
        """The tasks not yet ended (a copy)."""
        return set(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until all have ended."""
        tasks = self.running()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
