"""The guardian: a tiny forked process that is the parent of every kernel incarnation.

Why it exists: a process killed with SIGKILL runs no cleanup code, so the nanny cannot
promise "no orphans" by itself. The guardian is forked before the nanny starts any thread,
marks itself a *child subreaper* (Linux), and spawns each kernel in its own session. Every
process of the kernel's tree therefore stays a descendant of the guardian, even when an
intermediate parent exits. When the nanny's end of the socket pair closes — clean exit,
crash or SIGKILL — the guardian terminates the whole tree (SIGTERM, then SIGKILL for
anything that ignores it), removes the nanny's private files and exits.

Protocol (SOCK_SEQPACKET, one JSON object per packet, file descriptors as SCM_RIGHTS):
nanny → guardian: ``{"op": "spawn", "argv", "env", "cwd"}`` with fds [stdout, stderr],
``{"op": "exit"}``; guardian → nanny: ``{"event": "spawned", "pid"}``,
``{"event": "spawn_failed", "error"}``, ``{"event": "exited", "pid", "status", "maxrss"}``
(the raw wait status of a kernel process, and its peak resident memory in bytes from the
resource usage that came with it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

PR_SET_CHILD_SUBREAPER = 36
#: ru_maxrss is in KiB on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_MAX_PACKET = 1 << 20
#: How long the tree gets to exit after SIGTERM before everything left is SIGKILLed.
TERM_GRACE = 1.0
#: Signals whose disposition the guardian changes and a kernel must get back as default.
_RESET_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGPIPE,
    signal.SIGCHLD,
    signal.SIGXFSZ,
    signal.SIGQUIT,
)


PR_SET_NAME = 15
#: Exit status of a nanny whose guardian was killed (EX_SOFTWARE): it ended the kernel tree
#: itself, but the operator should know something outside killed a part of it.
GUARDIAN_LOST_STATUS = 70


def set_process_title(title: str, comm: str) -> None:
    """Rename this process in ``ps`` (its command line) and ``top`` (its 15-byte comm).

    Pure Python, Linux only: the command line is the original argv area, rewritten through
    /proc/self/mem (as setproctitle does in C); a title longer than that area is cut.
    Anything that fails leaves the old name: names are for humans only.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(comm.encode()[:15]), 0, 0, 0)
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        # fields after the ")" that closes comm; arg_start and arg_end are fields 48 and 49
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])
        if end <= start:
            return
        data = title.encode()[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data + b"\0" * (end - start - len(data)))


def _set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux: process groups are the fallback
        return False


def _which(command: str, path: str | None) -> str:
    """``command`` looked up on ``path``, as the shell would; itself when not found.
    (A command with a ``/`` is used as it is: shutil.which would return it unchanged.)"""
    import shutil

    return shutil.which(command, path=path) or command


def _send(sock: socket.socket, obj: Mapping[str, object], fds: Sequence[int] = ()) -> None:
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def _descendants(pid: int) -> list[psutil.Process]:
    # psutil is imported when first needed, not before the kernel's spawn (it is ~15 ms).
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(procs: Iterable[psutil.Process], signum: int) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signum)


class _Guardian:
    """The loop that runs in the forked guardian process."""

    def __init__(self, sock: socket.socket, cleanup_paths: Sequence[str]) -> None:
        self.sock = sock
        self.cleanup_paths = list(cleanup_paths)
        self.kernels: set[int] = set()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()

    def run(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        _set_subreaper()
        self.selector.register(self.sock, selectors.EVENT_READ, "sock")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        running = True
        while running:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        os.read(self.wake_r, 4096)
                else:
                    running = self._handle_packet()
            self._reap()
        self._kill_tree()
        self._cleanup_files()

    def _handle_packet(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_PACKET, 4)
        except OSError:
            return False
        if not data:  # the nanny is gone
            return False
        try:
            request = json.loads(data)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            op = None
        try:
            if op == "spawn":
                self._spawn(request, fds)
            elif op == "exit":
                return False
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _spawn(self, request: Mapping[str, object], fds: Sequence[int]) -> None:
        try:
            argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
            env = {str(k): str(v) for k, v in request["env"].items()}  # type: ignore[attr-defined]
            cwd = request.get("cwd")
            path = argv[0] if os.sep in argv[0] else _which(argv[0], env.get("PATH"))
            # posix_spawn's file actions are tuples of different shapes per action
            actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
            for target, fd in zip((1, 2), fds, strict=False):
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
            old_cwd = os.getcwd()
            if cwd:
                os.chdir(str(cwd))
            try:
                pid = os.posix_spawn(
                    path,
                    argv,
                    env,
                    file_actions=actions,
                    setsid=True,
                    setsigdef=_RESET_SIGNALS,
                    setsigmask=(),
                )
            finally:
                os.chdir(old_cwd)
        except (OSError, KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            _send(self.sock, {"event": "spawn_failed", "error": str(exc)})
            return
        self.kernels.add(pid)
        _send(self.sock, {"event": "spawned", "pid": pid})

    def _reap(self) -> None:
        while True:
            try:
                # wait4: the status comes with the process's resource usage, its peak
                # memory among it, which nobody can read once the process is reaped.
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.kernels:
                self.kernels.discard(pid)
                maxrss = usage.ru_maxrss * _MAXRSS_UNIT
                with contextlib.suppress(OSError):
                    _send(
                        self.sock,
                        {"event": "exited", "pid": pid, "status": status, "maxrss": maxrss},
                    )

    def _kill_tree(self) -> None:
        me = os.getpid()
        _signal_all(_descendants(me), signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while time.monotonic() < deadline and _descendants(me):
            self._reap()
            time.sleep(0.02)
        # SIGKILL until nothing is left: a dying process may still fork, so look again.
        for _ in range(500):
            procs = _descendants(me)
            if not procs:
                break
            _signal_all(procs, signal.SIGKILL)
            self._reap()
            time.sleep(0.01)
        self._reap()

    def _cleanup_files(self) -> None:
        _remove_paths(self.cleanup_paths)


def _remove_paths(paths: Iterable[str]) -> None:
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


@dataclass
class GuardianHandle:
    """The nanny's side of the guardian: its pid and the socket to talk to it."""

    pid: int
    sock: socket.socket
    cleanup_paths: Sequence[str] = ()
    #: The guardian died (killed from outside): the kernel trees are the nanny's children now.
    lost: bool = False

    @classmethod
    def start(cls, cleanup_paths: Sequence[str] = (), title: str = "") -> GuardianHandle:
        """Fork the guardian. Call before any thread exists (zmq context, event loop).

        The nanny becomes a child subreaper too: should the guardian be killed, its orphans
        (the kernel trees) come to the nanny rather than to init, and the nanny ends them.
        ``title`` names the guardian in ``ps``.
        """
        _set_subreaper()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked child
            code = 0
            try:
                parent.close()
                set_process_title(
                    title or f"nanny-io-guardian (nanny {os.getppid()})", "nanny-guardian"
                )
                _Guardian(child, cleanup_paths).run()
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        return cls(pid, parent, list(cleanup_paths))

    def adopt_orphans(self) -> None:
        """The guardian is gone: wait until it is a zombie (its orphans have been re-parented
        to the nanny by then), reap it, and look after the kernel trees from now on."""
        self.lost = True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def reap_adopted(self) -> dict[int, int]:
        """After :meth:`adopt_orphans`: reap the nanny's exited children; {pid: wait status}."""
        reaped: dict[int, int] = {}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            reaped[pid] = status

    def send_spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        stdout_fd: int,
        stderr_fd: int,
    ) -> None:
        """Ask for a kernel process; the answer arrives as a ``spawned`` or ``spawn_failed``."""
        _send(
            self.sock,
            {"op": "spawn", "argv": list(argv), "env": dict(env), "cwd": cwd},
            [stdout_fd, stderr_fd],
        )

    def receive(self) -> dict[str, object] | None:
        """One event from the guardian (blocking unless the socket is non-blocking).

        ``None`` means the guardian is gone.
        """
        try:
            data = self.sock.recv(_MAX_PACKET)
        except BlockingIOError:
            raise
        except OSError:
            return None
        if not data:
            return None
        event: dict[str, object] = json.loads(data)
        return event

    def descendants(self) -> list[psutil.Process]:
        """Every live process of the kernel trees, orphans included."""
        if not self.lost:
            return _descendants(self.pid)
        import psutil  # not before the kernel's spawn, as in _descendants

        live = []
        for proc in _descendants(os.getpid()):
            with contextlib.suppress(psutil.Error):
                if proc.pid != self.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
        return live

    def close(self, timeout: float = 10.0) -> None:
        """Ask the guardian to kill what is left, clean up and exit; wait for it.

        A lost guardian cannot: the nanny removes the files the guardian would have.
        """
        if self.lost:
            self.sock.close()
            _remove_paths(self.cleanup_paths)
            return
        with contextlib.suppress(OSError):
            _send(self.sock, {"op": "exit"})
        self.sock.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.01)


def wait_status_to_returncode(status: int) -> int:
    """A raw wait status as a Popen-style returncode (negative: killed by that signal)."""
    return os.waitstatus_to_exitcode(status)


__all__ = [
    "GUARDIAN_LOST_STATUS",
    "TERM_GRACE",
    "GuardianHandle",
    "set_process_title",
    "wait_status_to_returncode",
]
