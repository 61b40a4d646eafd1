"""From a kernelspec to the command, environment and files a kernel is started with."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import string
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NannyIOError

if TYPE_CHECKING:
    from .guardian import GuardianHandle

#: Pipe capacity asked for with F_SETPIPE_SZ (the kernel caps it at pipe-max-size).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class KernelSpecError(NannyIOError):
    """A kernelspec that cannot be found or used; the message says what to do."""


@dataclass(frozen=True)
class KernelSpecInfo:
    """The parts of a kernelspec the nanny uses."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    resource_dir: str
    interrupt_mode: str = "signal"
    capture_stdstreams: bool = False
    language: str = ""
    display_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_capture_flag(resource_dir: str, metadata: dict[str, Any]) -> bool:
    """``metadata.capture_stdstreams``, or the JEP's top-level key read from the raw file.

    The top-level key is read here rather than through KernelSpec, which warns about unknown
    top-level keys.
    """
    if "capture_stdstreams" in metadata:
        return bool(metadata["capture_stdstreams"])
    with contextlib.suppress(OSError, ValueError):
        raw = json.loads(Path(resource_dir, "kernel.json").read_text())
        if isinstance(raw, dict):
            return bool(raw.get("capture_stdstreams", False))
    return False


def _spec_on_disk(name: str) -> KernelSpecInfo | None:
    """The kernelspec ``name`` read straight from the Jupyter data dirs, or None.

    Starting a kernel is on the critical path of every notebook; importing jupyter_client
    just to read one JSON file costs about 100 ms, so this looks first.
    """
    from jupyter_core.paths import jupyter_path

    for directory in jupyter_path("kernels"):
        resource_dir = Path(directory, name.lower())
        try:
            text = (resource_dir / "kernel.json").read_text()
        except OSError:
            continue
        raw = parse_kernel_json(name, resource_dir / "kernel.json", text)
        metadata = raw.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        return KernelSpecInfo(
            name=name,
            argv=tuple(str(a) for a in raw["argv"]),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            resource_dir=str(resource_dir),
            interrupt_mode=raw.get("interrupt_mode") or "signal",
            capture_stdstreams=_read_capture_flag(str(resource_dir), metadata),
            language=raw.get("language") or "",
            display_name=raw.get("display_name") or "",
            metadata=metadata,
        )
    return None


def parse_kernel_json(name: str, path: Path, text: str) -> dict[str, Any]:
    """A kernelspec's kernel.json, checked for what a launch needs; a one-line
    :class:`KernelSpecError` that names the file and the fix otherwise."""
    fix = f"fix {str(path)!r} or reinstall the kernelspec"
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise KernelSpecError(
            f"kernelspec {name!r}: kernel.json is not JSON ({exc}); {fix}"
        ) from None
    if not isinstance(raw, dict):
        raise KernelSpecError(f"kernelspec {name!r}: kernel.json is not a JSON object; {fix}")
    check_argv(name, raw.get("argv"), fix)
    return raw


def check_argv(name: str, argv: object, fix: str) -> None:
    """Refuse an ``argv`` that cannot start a process: missing, empty, or not strings."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise KernelSpecError(f"kernelspec {name!r}: 'argv' must be a list of strings; {fix}")
    if not argv or not argv[0]:
        raise KernelSpecError(
            f"kernelspec {name!r}: 'argv' is empty, so there is no command to run; {fix}"
        )


def find_kernelspec(name: str) -> KernelSpecInfo:
    """Find a kernelspec: on disk first, then with jupyter_client's KernelSpecManager."""
    found = _spec_on_disk(name)
    if found is not None:
        return found
    spec = get_kernel_spec(name)
    metadata = dict(spec.metadata or {})
    return KernelSpecInfo(
        name=name,
        argv=tuple(spec.argv),
        env=dict(spec.env or {}),
        resource_dir=spec.resource_dir,
        interrupt_mode=spec.interrupt_mode or "signal",
        capture_stdstreams=_read_capture_flag(spec.resource_dir, metadata),
        language=spec.language or "",
        display_name=spec.display_name or "",
        metadata=metadata,
    )


def get_kernel_spec(name: str) -> Any:
    """jupyter_client's KernelSpec ``name``, with its errors as one-line KernelSpecErrors."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from .logsetup import nanny_log

    nanny_log()  # what jupyter_client logs comes out in nanny-io's format
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        available = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
        raise KernelSpecError(f"no kernel named {name!r}; available kernels: {available}") from None
    except (ValueError, OSError) as exc:  # kernel.json unreadable or not JSON
        raise KernelSpecError(
            f"kernelspec {name!r}: cannot read kernel.json ({exc}); fix or reinstall it"
        ) from None
    fix = f"fix {str(Path(spec.resource_dir, 'kernel.json'))!r} or reinstall the kernelspec"
    check_argv(name, list(spec.argv or []), fix)
    return spec


def format_argv(spec: KernelSpecInfo, connection_file: str) -> list[str]:
    """The kernel command with ``{connection_file}`` and friends filled in (as jupyter_client)."""
    argv = list(spec.argv)
    if argv and argv[0] in {
        "python",
        f"python{sys.version_info[0]}",
        "python{}.{}".format(*sys.version_info[:2]),
    }:
        argv[0] = sys.executable
    ns = {
        "connection_file": connection_file,
        "prefix": sys.prefix,
        "resource_dir": spec.resource_dir,
    }
    pat = string.Formatter()
    out = []
    for arg in argv:
        try:
            out.append(pat.vformat(arg, (), ns))
        except (KeyError, IndexError, ValueError):
            out.append(arg)
    return out


def kernel_env(spec: KernelSpecInfo, extra: dict[str, str]) -> dict[str, str]:
    """The nanny's environment, the kernelspec's env (``${VAR}`` expanded) and ``extra``."""
    env = dict(os.environ)
    env.pop("JPY_PARENT_PID", None)  # the nanny is the kernel's manager now
    env.pop("JUPYTER_KERNEL_LOG", None)
    for key, value in spec.env.items():
        env[key] = string.Template(value).safe_substitute(env)
    # Buffered output is lost when a process is killed; ask Python kernels not to buffer.
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def free_tcp_ports(ip: str, count: int) -> list[int]:
    """``count`` distinct ports that are free on ``ip`` right now (jupyter_client's method).

    All sockets are held open until every port is picked so the same port is not returned twice.
    """
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip if ip not in ("*", "0.0.0.0") else "", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_ipc_ports(ip: str, count: int, taken: set[int]) -> list[int]:
    """``count`` ipc "ports" (path suffixes) not yet used as ``{ip}-{port}`` files."""
    ports: list[int] = []
    port = 1
    while len(ports) < count:
        if port not in taken and not os.path.exists(f"{ip}-{port}"):
            ports.append(port)
        port += 1
    return ports


def make_private_dir(parent: Path, kernel_id: str) -> Path:
    """A fresh 0700 directory for the kernel-facing connection file and the log FIFO."""
    path = Path(tempfile.mkdtemp(prefix=f"nanny-io-{kernel_id[:8]}-", dir=parent))
    os.chmod(path, 0o700)
    return path


def make_pipe(size: int = PIPE_SIZE) -> tuple[int, int]:
    """A pipe whose read end is non-blocking, enlarged as far as the system allows.

    Both ends are close-on-exec; the write end is handed to the kernel by the guardian.
    """
    read_fd, write_fd = os.pipe()
    for want in (size, 256 * 1024, 64 * 1024):
        try:
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, want)
            break
        except OSError:  # EPERM above pipe-max-size for unprivileged users
            continue
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


def make_log_fifo(directory: Path, size: int = PIPE_SIZE) -> tuple[Path, int, int]:
    """Create the kernel log FIFO (0600) and open it before the kernel starts.

    Returns ``(path, read_fd, keep_fd)``. The read end is opened first and non-blocking, so
    a kernel that opens the log at import time never waits for a reader. ``keep_fd`` is a
    write end the nanny holds: with it, the FIFO never reports EOF when the kernel's last
    writer closes (which would otherwise make poll() report HUP forever: a busy loop), and
    later writers (a reopened log, subprocesses) reach the same reader.
    """
    path = directory / "kernel.log"
    os.mkfifo(path, 0o600)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(read_fd, _F_SETPIPE_SZ, size)
    return path, read_fd, keep_fd


def launch_env(spec: KernelSpecInfo, log_path: Path | None, delimiters: bool) -> dict[str, str]:
    """The environment of every incarnation: the kernel log path, and delimiters if wanted."""
    extra = {"JUPYTER_KERNEL_LOG": str(log_path)} if log_path is not None else {}
    if delimiters:
        from nanny_io_proto.delimiters import ENV_VAR

        extra[ENV_VAR] = "1"
    return kernel_env(spec, extra)


@dataclass
class Prelaunch:
    """The first incarnation, started before the nanny's heavier parts are even imported."""

    fifo_path: Path
    fifo_read_fd: int
    fifo_keep_fd: int
    stdout_fd: int
    stderr_fd: int
    argv: list[str]
    reply: dict[str, Any]  # the guardian's answer: spawned (pid) or spawn_failed (error)


def prelaunch(
    guardian: GuardianHandle,
    spec: KernelSpecInfo,
    kernel_file: Path,
    private_dir: Path,
    cwd: str | None,
    delimiters: bool,
) -> Prelaunch:
    """Create the log FIFO and the pipes, then have the guardian start the kernel."""
    fifo_path, fifo_read, fifo_keep = make_log_fifo(private_dir)
    argv = format_argv(spec, str(kernel_file))
    env = launch_env(spec, fifo_path, delimiters)
    out_r, out_w = make_pipe()
    err_r, err_w = make_pipe()
    try:
        guardian.send_spawn(argv, env, cwd, out_w, err_w)
    finally:
        os.close(out_w)
        os.close(err_w)
    reply = guardian.receive() or {"event": "spawn_failed", "error": "the guardian is gone"}
    return Prelaunch(fifo_path, fifo_read, fifo_keep, out_r, err_r, argv, reply)
