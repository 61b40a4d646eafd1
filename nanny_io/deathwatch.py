"""What the nanny watches while a kernel runs, so that a death report can say why and when:
the cell that runs (from iopub), the memory of the kernel's tree (sampled), and the
out-of-memory counters of its cgroups (nanny_io.cgroups).

The supervisor asks :class:`DeathWatch` for the facts once the kernel died; the wording is
``nanny_io_proto.deaths``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from nanny_io_proto.control import LastWords
from nanny_io_proto.deaths import RunningCell, cell_code_excerpt
from nanny_io_proto.streams import Stream

from .store import LogStore

#: How often the memory of the kernel's process tree is sampled, in seconds.
MEMORY_SAMPLE_INTERVAL = 0.5
#: How long before its ``busy`` arrived a cell's output may have been stored, in seconds.
CELL_START_SLACK = 1.0
#: Cells remembered by msg_id (only the running one matters; a few for late messages).
MAX_CELLS = 64
#: Last words when no cell was running: the newest lines of the incarnation.
IDLE_LAST_WORDS_LINES = 20
IDLE_LAST_WORDS_CHARS = 4096

_KERNEL_STREAMS = (Stream.STDOUT, Stream.STDERR, Stream.LOG)


@dataclass
class _Cell:
    started: float  # Unix time
    first_seq: int  # the first log seq written while it ran
    execution_count: int | None = None
    code: str = ""


class CellWatch:
    """When each execute request started, where its output begins in the log, and its
    number and code (from ``execute_input``)."""

    def __init__(self, store: LogStore, clock: Callable[[], float] = time.time):
        self._store = store
        self._clock = clock
        self._cells: OrderedDict[str, _Cell] = OrderedDict()
        self._quiet_since = 1  # the first seq written since the kernel was last idle

    def quiet(self) -> None:
        """The kernel finished a request (or became ready): what it writes from now on
        belongs to the next one."""
        self._quiet_since = self._store.last_seq + 1

    def started(self, msg_id: str) -> None:
        """The request ``msg_id`` started (its BEGIN delimiter or its ``busy``); the first
        sign counts."""
        if msg_id and msg_id not in self._cells:
            now = self._clock()
            self._cells[msg_id] = _Cell(now, self._first_seq(now))
            while len(self._cells) > MAX_CELLS:
                self._cells.popitem(last=False)

    def _first_seq(self, now: float) -> int:
        """Where the request's output begins: ipykernel sends ``busy`` from a thread, so
        the cell's first bytes may be stored before it arrives. Output since the kernel was
        last idle, and from the last CELL_START_SLACK seconds, counts as the cell's."""
        store = self._store
        first = store.last_seq + 1
        cutoff = int((now - CELL_START_SLACK) * 1e9)
        lowest = max(self._quiet_since, store.oldest_seq, first - 10_000)
        for entry in reversed(store.entries(lowest)):
            if entry[1] < cutoff:
                break
            first = entry[0]
        return first

    def execute_input(self, msg_id: str, content: Mapping[str, Any]) -> None:
        """The kernel published the request's number and code."""
        self.started(msg_id)
        cell = self._cells.get(msg_id)
        if cell is None:
            return
        count = content.get("execution_count")
        if isinstance(count, int) and not isinstance(count, bool):
            cell.execution_count = count
        code = content.get("code")
        if isinstance(code, str):
            cell.code = cell_code_excerpt(code)

    def running(self, msg_id: str | None) -> tuple[RunningCell, int] | None:
        """The report of the request ``msg_id`` if it started, and its first log seq."""
        cell = self._cells.get(msg_id or "")
        if cell is None or not msg_id:
            return None
        now = self._clock()
        report = RunningCell(
            msg_id, cell.execution_count, cell.code, cell.started, max(0.0, now - cell.started)
        )
        return report, cell.first_seq


def last_words(
    store: LogStore, incarnation: int, since_seq: int | None, ready_seq: int | None = None
) -> LastWords:
    """The kernel's last words: everything written since the running cell started (all
    streams, fd and iopub, in order, the newest kept within the bounds), or, when no cell
    was running, the newest lines written since the kernel became ready (``ready_seq``; its
    start-up banner is not news), or of the whole incarnation when it never became ready."""
    if since_seq is not None:
        lines = store.tail_text(
            streams=_KERNEL_STREAMS,
            max_lines=10_000,
            max_chars=1 << 20,
            incarnation=incarnation,
            from_seq=since_seq,
            priorities=True,
        )
    else:
        lines = store.tail_text(
            streams=_KERNEL_STREAMS,
            max_lines=IDLE_LAST_WORDS_LINES,
            max_chars=IDLE_LAST_WORDS_CHARS,
            incarnation=incarnation,
            from_seq=ready_seq or 1,
            priorities=True,
        )
    return LastWords.from_tail(lines)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PROC_CHILDREN = Path(f"/proc/self/task/{os.getpid()}/children").exists()


def _proc_children(pid: int) -> list[int]:
    """Children of ``pid`` from /proc (every thread's ``children`` file)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/{pid}/task/{tid}/children") as fh,
            ):
                out.extend(int(c) for c in fh.read().split())
    return out


def _proc_rss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE
    return 0


def tree_rss(root: int) -> int:
    """The resident memory of every descendant of ``root`` together, in bytes.

    On Linux the tree is walked through /proc's ``children`` files, a few small reads a
    process, instead of psutil's scan of every process on the machine: it runs every
    MEMORY_SAMPLE_INTERVAL on the nanny's event loop.
    """
    if not _PROC_CHILDREN:
        total = 0
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
        return total
    total = 0
    seen = {root}
    todo = _proc_children(root)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _proc_rss(pid)
        todo.extend(_proc_children(pid))
    return total


async def sample_tree_memory(
    root: int,
    exited: asyncio.Future[Any],
    record: Callable[[int], None],
    interval: float = MEMORY_SAMPLE_INTERVAL,
) -> None:
    """Call ``record(bytes)`` with the memory of ``root``'s descendants every ``interval``
    until ``exited``."""
    while not exited.done():
        record(tree_rss(root))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), interval)
