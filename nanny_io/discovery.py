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
import stat
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


class BadKernelId(NannyIOError):
    """A kernel id that cannot name files: it would escape the runtime dir or be too long."""


#: Kernel ids become parts of file names (``kernel-<id>.json``, ``spill-<id>``, ...): a
#: uuid is 32 or 36 characters; this leaves room without nearing NAME_MAX (255).
MAX_KERNEL_ID = 128
_KERNEL_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def kernel_id_problem(kernel_id: str) -> str | None:
    """What makes ``kernel_id`` unusable as part of a file name, or None if it is fine."""
    if not kernel_id:
        return "it is empty"
    if len(kernel_id) > MAX_KERNEL_ID:
        return f"it has {len(kernel_id)} characters, more than {MAX_KERNEL_ID}"
    bad = sorted(set(kernel_id) - _KERNEL_ID_CHARS)
    if bad:
        return f"it contains {''.join(bad)!r} (use letters, digits, '-', '_' and '.')"
    if kernel_id.startswith("."):
        return "it starts with '.'"
    return None


def check_kernel_id(kernel_id: str) -> str:
    """``kernel_id`` if it can name files, else :class:`BadKernelId` saying why."""
    problem = kernel_id_problem(kernel_id)
    if problem is not None:
        shown = kernel_id if len(kernel_id) <= 40 else kernel_id[:37] + "..."
        raise BadKernelId(f"kernel id {shown!r} is not usable: {problem}")
    return kernel_id


class UnsafeRuntimeDir(NannyIOError):
    """A runtime dir that another user owns or may write: they could swap connection files."""


_warned_insecure: set[Path] = set()


def check_private_dir(path: Path, *, sticky_ok: bool = False) -> Path:
    """Refuse a directory another user owns or can write to, with the fix.

    Connection files carry the signing key and say where frontends connect: whoever can
    write the directory can replace them. jupyter_core's ``JUPYTER_ALLOW_INSECURE_WRITES=1``
    turns the refusal into a warning, as it does for jupyter_core's own files. With
    ``sticky_ok`` (for a ``--connection-file`` the user chose), a sticky directory such as
    /tmp is fine: others may create files there, but not replace or remove ours.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise UnsafeRuntimeDir(f"cannot use runtime dir {str(path)!r}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if sticky_ok and mode & stat.S_ISVTX and st.st_uid in (0, os.geteuid()):
        return path
    # A group-writable dir of one's own is common under umask 002, where each user has a
    # group of their own: a warning. Another owner, or anyone may write: a refusal.
    refuse = True
    if st.st_uid != os.geteuid():
        problem = (
            f"{str(path)!r} belongs to {_user_name(st.st_uid)}, not to you; "
            "set JUPYTER_RUNTIME_DIR to a directory of yours"
        )
    elif mode & 0o022:
        refuse = bool(mode & 0o002)
        problem = (
            f"{str(path)!r} can be written by {'other users' if refuse else 'its group'} "
            f"(mode {mode:o}); make it private with 'chmod 700 {path}'"
        )
    else:
        return path
    _refuse_or_warn("runtime dir", path, problem, refuse)
    return path


def check_own_file(path: Path) -> Path:
    """Refuse an existing connection file that another user owns or may write: it could
    have been planted, with a key its author knows."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        problem = f"{str(path)!r} belongs to {_user_name(st.st_uid)}, not to you"
    elif mode & 0o022:
        problem = f"{str(path)!r} can be written by others (mode {mode:o})"
    else:
        return path
    _refuse_or_warn("connection file", path, problem + "; remove it or give another path", True)
    return path


def _refuse_or_warn(what: str, path: Path, problem: str, refuse: bool) -> None:
    from jupyter_core.paths import allow_insecure_writes

    if refuse and not allow_insecure_writes:
        raise UnsafeRuntimeDir(
            f"unsafe {what}: {problem} (or set JUPYTER_ALLOW_INSECURE_WRITES=1 to use it anyway)"
        )
    if path not in _warned_insecure:
        _warned_insecure.add(path)
        from .logsetup import nanny_log

        nanny_log().warning("unsafe %s: %s", what, problem)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def runtime_dir() -> Path:
    """The Jupyter runtime dir (``$JUPYTER_RUNTIME_DIR`` honoured), created 0700; refused
    when another user owns it or may write to it."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = Path(jupyter_runtime_dir())
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return check_private_dir(path)


def state_dir() -> Path:
    """The private directory that holds the nannies' state files."""
    path = runtime_dir() / "nanny-io"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return check_private_dir(path)


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
                import shutil

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
        data = json.dumps(asdict(self), indent=1).encode() + b"\n"
        try:
            write_private(self.path, data)
        except OSError:
            # A full disk: the atomic write needs a new file, but rewriting the old one in
            # place reuses its blocks, so `list` does not show an old pid and incarnation.
            # A reader that catches it half-written skips it (it is not JSON) for a moment.
            if not self._overwrite(data):
                raise

    def _overwrite(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False
        try:
            old_size = os.fstat(fd).st_size
            padded = data + b" " * max(0, old_size - len(data))  # never ask for a new block
            os.pwrite(fd, padded, 0)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

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
    problem = kernel_id_problem(ref)
    if problem is not None:
        shown = ref if len(ref) <= 40 else ref[:37] + "..."
        raise KernelNotFound(
            f"{shown!r} is neither a kernel id ({problem}) nor a connection file; "
            "see 'nanny-io list'"
        )
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
