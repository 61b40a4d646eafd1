"""What the benchmarks share: starting nannies, and knowing every process they started,
to leave none behind.

Nannies are run with ``nanny_io.testing`` (the helper the test suite uses too), so that what
the benchmarks measure is what the tests check. The benchmark scripts run as ``python
benchmarks/NAME.py``, so this directory is on their import path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from nanny_io.testing import NannyProcess, NannyStartFailed

#: The checkout these benchmarks belong to.
THIS_CHECKOUT = Path(__file__).resolve().parent.parent
#: Seconds for a nanny to announce its kernel.
NANNY_START_TIMEOUT = 60.0
#: Seconds after SIGTERM before a nanny's tree is SIGKILLed.
NANNY_STOP_TIMEOUT = 20.0


def compile_checkout(root: Path | None = None) -> None:
    """Byte-compile nanny-io's packages in ``root`` (this checkout by default), as an install
    from a wheel has them: otherwise, with ``PYTHONDONTWRITEBYTECODE`` set or a read-only
    checkout, every nanny would compile its ~60 modules at each start (tens of ms) while the
    kernel it is compared with loads cached bytecode."""
    import compileall

    if root is None:
        root = Path(__file__).resolve().parent.parent
    for package in ("nanny_io", "nanny_io_proto"):
        if (root / package).is_dir():
            compileall.compile_dir(str(root / package), quiet=1)


class BenchmarkError(Exception):
    """The benchmark cannot go on (a kernel did not start or stopped answering, a cell failed,
    output was lost)."""


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


T = TypeVar("T")


def run_measurement(
    name: str,
    measure: Callable[[Path, ProcessTracker], T],
    setup: Callable[[Path], None] | None = None,
) -> tuple[T | None, int, int]:
    """What every benchmark's ``main`` does around its measurement: ``measure(workdir,
    tracker)`` in a fresh working directory (``setup`` prepares it), then, whatever
    happened, every process left behind killed and reported and the directory removed.

    Returns ``(result, status, leaked)``: ``result`` is None when the measurement stopped
    (Ctrl-C: status 130; a :class:`BenchmarkError`, said on stderr: status 1).
    """
    tracker = ProcessTracker()
    workdir = Path(tempfile.mkdtemp(prefix=f"{name.replace('_', '-')}-"))
    result: T | None = None
    status = 0
    try:
        if setup is not None:
            setup(workdir)
        result = measure(workdir, tracker)
    except KeyboardInterrupt:
        print("\ninterrupted; kernels stopped", file=sys.stderr)
        status = 130
    except BenchmarkError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        status = 1
    finally:
        leaked = kill_survivors(tracker)
        shutil.rmtree(workdir, ignore_errors=True)
    return result, status, leaked


def run_and_report(
    name: str,
    measure: Callable[[Path, ProcessTracker], dict[str, Any]],
    *,
    json_only: bool,
    table: Callable[[dict[str, Any]], None],
    setup: Callable[[Path], None] | None = None,
) -> int:
    """:func:`run_measurement`, then its table and JSON line (:func:`finish`), with the
    processes it had to kill in ``leaked_processes``; returns the exit status."""
    summary, status, leaked = run_measurement(name, measure, setup)
    if summary is None:
        return status
    summary["leaked_processes"] = leaked
    return finish(summary, json_only, lambda: table(summary))


def finish(summary: dict[str, Any], json_only: bool, table: Callable[[], None]) -> int:
    """Print the table (unless ``json_only``) and the JSON line; exit status 2 when a
    process had to be killed (``summary["leaked_processes"]``), else 0."""
    if not json_only:
        table()
    print(json.dumps(summary), flush=True)
    return 2 if summary.get("leaked_processes") else 0


def checkout_env(checkout: str | Path) -> dict[str, str]:
    """This process's environment with ``checkout`` first on PYTHONPATH: a Python started
    with it (and ``-P``) imports that checkout's nanny-io."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def start_nanny(
    args: Sequence[str],
    tracker: ProcessTracker,
    stack: contextlib.ExitStack,
    *,
    command: Sequence[str] | None = None,
    wait: bool = True,
    checkout: str | Path | None = None,
) -> NannyProcess:
    """``nanny-io start ARGS`` in a session of its own, tracked, and stopped by ``stack``
    (SIGTERM, then its tree is killed if it hangs). With ``wait``, it returns once the nanny
    announced its kernel; without, at once (the caller times the start-up). With
    ``checkout``, the nanny-io of that checkout runs (before and after comparisons)."""
    env = None
    if checkout is not None:
        env = checkout_env(checkout)
        # -P: "python -m" would put the current directory first on sys.path, ahead of
        # PYTHONPATH, and run that checkout's nanny on both sides when started from one.
        command = command or [sys.executable, "-P", "-m", "nanny_io"]
    nanny = NannyProcess(*args, command=command, env=env, new_session=True)
    stack.callback(stop_nanny, nanny, tracker)  # which tracks its tree before stopping it
    if wait:  # (not before: scanning /proc would compete with a start-up being timed)
        try:
            nanny.wait_announced(NANNY_START_TIMEOUT)
        except NannyStartFailed as exc:
            raise BenchmarkError(str(exc)) from None
        tracker.add_tree(nanny.pid)
    return nanny


def stop_nanny(nanny: NannyProcess, tracker: ProcessTracker) -> None:
    """Stop a nanny; say so when it had failed before (its stderr tells why)."""
    tracker.add_tree(nanny.pid)
    already = nanny.proc.poll()
    nanny.stop(NANNY_STOP_TIMEOUT)
    if already is not None and already not in (0, -signal.SIGTERM):
        print(
            f"warning: nanny {nanny.pid} had exited with {already}{nanny.log_tail()}",
            file=sys.stderr,
        )
