"""Where nannies leave their files, and how CLI verbs find a kernel again.

Each running nanny keeps a small *state file* ``nanny-io/nanny-<kernel_id>.json`` in the
Jupyter runtime dir (pids, incarnation, status, paths). ``nanny-io list`` reads them; a state
file whose nanny is gone is stale and is removed. Every file is written atomically (temporary
file + rename) with mode 0600, because readers may look at any moment and because
connection files carry the signing key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nanny_io_proto.connection_files import NannyConnectionInfo, decode_connection_file
from nanny_io_proto.errors import ConnectionFileError

from .errors import NannyIOError
from .lifecycle import KernelState, kernel_process_runs


class KernelNotFound(NannyIOError):
    """A KERNEL argument that names no known kernel (or names several)."""


def runtime_dir() -> Path:
    """The Jupyter runtime dir (``$JUPYTER_RUNTIME_DIR`` honoured), created 0700."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = Path(jupyter_runtime_dir())
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    """The private directory that holds the nannies' state files."""
    path = runtime_dir() / "nanny-io"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def state_path(kernel_id: str) -> Path:
    """Where the nanny of ``kernel_id`` keeps its state file."""
    return state_dir() / f"nanny-{kernel_id}.json"


def spill_path(kernel_id: str) -> Path:
    """Where a kernel's log history is kept on disk, readable after its nanny exits."""
    return state_dir() / f"spill-{kernel_id}"


def prune_spills(max_age: float = 7 * 24 * 3600) -> None:
    """Remove log histories of kernels that stopped more than ``max_age`` seconds ago."""
    running = {s.kernel_id for s, alive in iter_states(clean_stale=False) if alive}
    now = time.time()
    for path in state_dir().glob("spill-*"):
        kernel_id = path.name.removeprefix("spill-")
        with contextlib.suppress(OSError):
            newest = max((f.stat().st_mtime for f in path.iterdir()), default=path.stat().st_mtime)
            if kernel_id not in running and now - newest > max_age:
                shutil.rmtree(path, ignore_errors=True)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class NannyState:
    """What a nanny tells the world about itself (the state file)."""

    kernel_id: str
    kernel_name: str
    connection_file: str
    nanny_pid: int
    nanny_started: float  # psutil create_time of the nanny: guards against pid reuse
    kernel_pid: int | None = None
    incarnation: int = 0
    # starting | running | shutting-down | restarting | dead | stopped (shut down on a
    # manager's restart request, waiting for its launch_request)
    status: str = KernelState.STARTING.value
    started_at: float = 0.0  # when the current incarnation started (unix time)
    spill_dir: str | None = None
    rejected_messages: int = 0  # invalid, unsigned or forged control messages dropped
    exit_code: int | None = None  # how the last incarnation died, when status is "dead"
    exit_signal: int | None = None
    exit_reason: str | None = None
    # The last deaths, oldest first: each a kernel_died content (specs/protocol.md §9.2)
    # with the Unix ``time`` of the death.
    deaths: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return state_path(self.kernel_id)

    def save(self) -> None:
        write_private(self.path, json.dumps(asdict(self), indent=1).encode() + b"\n")

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    @classmethod
    def load(cls, path: Path) -> NannyState:
        raw = json.loads(path.read_bytes())
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def nanny_alive(self) -> bool:
        """Whether the nanny that wrote this file still runs (same pid, same start time)."""
        import psutil  # here: ``nanny-io start`` spawns the kernel before importing it

        try:
            proc = psutil.Process(self.nanny_pid)
            return abs(proc.create_time() - self.nanny_started) < 1.0 and proc.status() != "zombie"
        except psutil.Error:
            return False


def iter_states(clean_stale: bool = True) -> Iterator[tuple[NannyState, bool]]:
    """Every state file as ``(state, alive)``; stale ones are removed when ``clean_stale``."""
    for path in sorted(state_dir().glob("nanny-*.json")):
        try:
            state = NannyState.load(path)
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours
        alive = state.nanny_alive()
        if not alive and clean_stale:
            with contextlib.suppress(OSError):
                path.unlink()
        yield state, alive


@dataclass(frozen=True)
class KernelRef:
    """A resolved KERNEL argument."""

    connection_file: Path
    info: NannyConnectionInfo
    state: NannyState | None


def load_connection_info(path: Path | str) -> NannyConnectionInfo:
    """Read a frontend-facing connection file (retrying a file caught mid-write)."""
    path = Path(path)
    last: Exception | None = None
    for _ in range(5):
        try:
            info = decode_connection_file(path.read_bytes())
        except ConnectionFileError as exc:  # perhaps caught mid-write by a non-atomic writer
            last = exc
            time.sleep(0.05)
            continue
        except OSError as exc:
            raise KernelNotFound(
                f"cannot read connection file {str(path)!r}: {exc.strerror}"
            ) from exc
        if not isinstance(info, NannyConnectionInfo):
            raise KernelNotFound(
                f"{str(path)!r} is a plain Jupyter connection file, not a nanny-io one"
            )
        return info
    raise KernelNotFound(f"{str(path)!r} is not a valid connection file: {last}")


def resolve_kernel(ref: str) -> KernelRef:
    """Resolve a kernel id, a unique id prefix, or a connection-file path."""
    as_path = Path(ref).expanduser()
    if as_path.suffix == ".json" or os.sep in ref:
        if as_path.is_file():
            info = load_connection_info(as_path)
            state = next(
                (s for s, alive in iter_states() if alive and s.kernel_id == info.kernel_id), None
            )
            return KernelRef(as_path, info, state)
        if os.sep in ref:
            raise KernelNotFound(f"no connection file at {ref!r}")
    states = [s for s, alive in iter_states() if alive]
    matches = [s for s in states if s.kernel_id == ref] or [
        s for s in states if s.kernel_id.startswith(ref)
    ]
    if not matches:
        conn = runtime_dir() / f"kernel-{ref}.json"
        if conn.is_file():
            return KernelRef(conn, load_connection_info(conn), None)
        raise KernelNotFound(f"no running kernel matches {ref!r}; see 'nanny-io list'")
    if len(matches) > 1:
        ids = ", ".join(s.kernel_id for s in matches)
        raise KernelNotFound(f"{ref!r} matches several kernels ({ids}); give more of the id")
    state = matches[0]
    path = Path(state.connection_file)
    return KernelRef(path, load_connection_info(path), state)


def state_summary(state: NannyState, alive: bool, now: float) -> dict[str, Any]:
    """One row of ``nanny-io list``: the state plus live figures from psutil."""
    import psutil

    memory = None
    runs = alive and kernel_process_runs(state.status)  # else kernel_pid is the last one's
    if runs and state.kernel_pid:
        with contextlib.suppress(psutil.Error):
            kernel = psutil.Process(state.kernel_pid)
            memory = kernel.memory_info().rss
            for child in kernel.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    memory += child.memory_info().rss
    return {
        "kernel_id": state.kernel_id,
        "kernel_name": state.kernel_name,
        "nanny_pid": state.nanny_pid,
        "kernel_pid": state.kernel_pid,
        "incarnation": state.incarnation,
        "status": state.status if alive else "stale",
        "uptime": (round(now - state.started_at, 1) if runs and state.started_at else None),
        "memory": memory,
        "connection_file": state.connection_file,
        "rejected_messages": state.rejected_messages,
    }
