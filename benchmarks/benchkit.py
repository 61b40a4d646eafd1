"""What the benchmarks share: knowing every process they started, to leave none behind.

The benchmark scripts run as ``python benchmarks/NAME.py``, so this directory is on their
import path.
"""

from __future__ import annotations

import contextlib
import signal
import sys

import psutil


class ProcessTracker:
    """Remembers every process started for the benchmark, to report any that survives."""

    def __init__(self) -> None:
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def add_tree(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    self._procs[(proc.pid, proc.create_time())] = proc

    def survivors(self, grace: float = 5.0) -> list[psutil.Process]:
        """Processes (tracked ones and our descendants) still running after ``grace`` s."""
        candidates = {p.pid: p for p in self._procs.values()}
        with contextlib.suppress(psutil.Error):
            candidates.update({p.pid: p for p in psutil.Process().children(recursive=True)})
        _, alive = psutil.wait_procs(list(candidates.values()), timeout=grace)
        return [p for p in alive if is_live(p)]


def is_live(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def kill_survivors(tracker: ProcessTracker) -> int:
    """The end of every benchmark run: kill and report whatever outlived it; how many.

    SIGINT and SIGTERM are ignored from here on: the check and the clean-up must finish.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    survivors = tracker.survivors()
    for proc in survivors:
        print(
            f"WARNING: process survived the benchmark, killing it: {describe(proc)}",
            file=sys.stderr,
        )
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(survivors)
