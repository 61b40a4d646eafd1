"""Starting a nanny: ports and files, the guardian, the kernel, then the nanny around it.

``StartOptions`` is what a user can choose (from ``nanny-io start`` or the provisioner's
config), with the one set of defaults. Everything before the kernel's spawn uses only light
modules: the kernel boots while the nanny imports zmq and asyncio and binds its sockets,
which keeps start-to-ready close to a kernel started directly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanny_io_proto.connection_files import (
    NannyConnectionInfo,
    decode_connection_file,
    encode_connection_file,
)
from nanny_io_proto.errors import ConnectionFileError

from .discovery import (
    BadKernelId,
    UnsafeRuntimeDir,
    check_kernel_id,
    check_own_file,
    check_private_dir,
    prune_spills,
    runtime_dir,
    spill_path,
    state_path,
    write_private,
)
from .errors import NannyIOError
from .launcher import KernelSpecError, find_kernelspec, free_ipc_ports, free_tcp_ports
from .limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_SPILL_BYTES,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TERM_GRACE,
)

if TYPE_CHECKING:
    from .guardian import GuardianHandle
    from .launcher import KernelSpecInfo, Prelaunch
    from .nanny import NannyConfig


class StartError(NannyIOError):
    """The nanny cannot start: a missing kernelspec, an unusable connection file, ..."""


@dataclass(frozen=True)
class StartOptions:
    """How to run one kernel under a nanny."""

    kernel_name: str
    connection_file: Path | None = None  # adopted when it exists; else written there
    kernel_id: str | None = None  # default: from the adopted file, or a new uuid
    ip: str = "127.0.0.1"
    transport: str = "tcp"
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    term_grace: float = DEFAULT_TERM_GRACE
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    quiet: bool = False  # no echo of the kernel's output on our stderr
    ring_bytes: int = DEFAULT_MAX_BYTES
    spill: bool = True  # keep an on-disk history
    spill_bytes: int = DEFAULT_SPILL_BYTES
    rate_limit: int | None = None  # bytes/s of captured output forwarded to frontends
    managed: bool = False  # under a kernel manager (specs/protocol.md §8.3)
    # Keep the kernel's iopub output in the log; None: as the kernelspec says (default yes).
    store_iopub: bool | None = None


def parse_size(text: str) -> int:
    """``64M``, ``512k``, ``1G`` or plain bytes; ValueError otherwise."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _choice(text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise ValueError(text)
    return text


#: ``start``'s options that take a value, with the function that converts it (as its
#: ``type=`` in ``nanny_io.cli.build_parser`` does).
_START_VALUES: dict[str, tuple[str, Any]] = {
    "--connection-file": ("connection_file", str),
    "--ip": ("ip", str),
    "--transport": ("transport", lambda text: _choice(text, ("tcp", "ipc"))),
    "--kernel-id": ("kernel_id", str),
    "--shutdown-grace": ("shutdown_grace", float),
    "--term-grace": ("term_grace", float),
    "--startup-timeout": ("startup_timeout", float),
    "--ring-size": ("ring_size", parse_size),
    "--spill-size": ("spill_size", parse_size),
    "--rate-limit": ("rate_limit", parse_size),
}
#: ``start``'s flags: the attribute and the value they set.
_START_FLAGS: dict[str, tuple[str, object]] = {
    "--no-spill": ("no_spill", True),
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "--store-iopub": ("store_iopub", True),
    "--no-store-iopub": ("store_iopub", False),
    "--managed": ("managed", True),
}


def parse_start_args(argv: Sequence[str]) -> Any:
    """``nanny-io [-v] start ...`` parsed without argparse, or None to let argparse do it.

    Importing and building the full parser costs a few milliseconds before every kernel's
    spawn. This accepts only spellings whose meaning is plain (an option's full name, a value
    that does not start with ``-``, exactly one kernel name) and gives the same attributes
    as ``nanny_io.cli.build_parser``; anything else (help, errors, abbreviations) is
    argparse's.
    """
    from types import SimpleNamespace

    args = list(argv)
    verbose = False
    while args and args[0] in ("-v", "--verbose"):
        verbose = True
        args.pop(0)
    if not args or args.pop(0) != "start":
        return None
    ns: dict[str, object] = {
        "verbose": verbose,
        "command": "start",
        "connection_file": None,
        "ip": "127.0.0.1",
        "transport": "tcp",
        "kernel_id": None,
        "shutdown_grace": DEFAULT_SHUTDOWN_GRACE,
        "term_grace": DEFAULT_TERM_GRACE,
        "startup_timeout": DEFAULT_STARTUP_TIMEOUT,
        "ring_size": DEFAULT_MAX_BYTES,
        "spill_size": DEFAULT_SPILL_BYTES,
        "no_spill": False,
        "rate_limit": None,
        "quiet": False,
        "store_iopub": None,
        "managed": False,
    }
    kernel_name = None
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            if kernel_name is not None:
                return None
            kernel_name = arg
            continue
        name, eq, value = arg.partition("=")
        if name in _START_FLAGS and not eq:
            attr, flag = _START_FLAGS[name]
            ns[attr] = flag
            continue
        if name not in _START_VALUES:
            return None
        if not eq:
            if not args or args[0].startswith("-"):
                return None
            value = args.pop(0)
        attr, convert = _START_VALUES[name]
        try:
            ns[attr] = convert(value)
        except ValueError:
            return None
    if kernel_name is None:
        return None
    ns["kernel_name"] = kernel_name
    return SimpleNamespace(**ns)


def start_options(args: Any) -> StartOptions:
    """The options of ``nanny-io start`` as parsed (by argparse or :func:`parse_start_args`)."""
    return StartOptions(
        kernel_name=args.kernel_name,
        connection_file=Path(args.connection_file) if args.connection_file else None,
        kernel_id=args.kernel_id,
        ip=args.ip,
        transport=args.transport,
        shutdown_grace=args.shutdown_grace,
        term_grace=args.term_grace,
        startup_timeout=args.startup_timeout,
        quiet=args.quiet,
        ring_bytes=args.ring_size,
        spill=not args.no_spill,
        spill_bytes=args.spill_size,
        rate_limit=args.rate_limit,
        managed=args.managed,
        store_iopub=args.store_iopub,
    )


def main_quickly(argv: Sequence[str]) -> int | None:
    """``nanny-io start ...`` without argparse (see :func:`parse_start_args`): the exit
    status, or None when the command line is for ``nanny_io.cli.main`` to parse."""
    args = parse_start_args(argv)
    if args is None:
        return None
    from .logsetup import choose_verbosity

    choose_verbosity(args.verbose)  # set up by a warning, else after the kernel's spawn
    try:
        return run(start_options(args))
    except NannyIOError as exc:  # as nanny_io.cli.main reports it
        print(f"nanny-io: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run(options: StartOptions) -> int:
    """Start the kernel, run the nanny until it is shut down; the exit status."""
    try:
        if options.kernel_id is not None:
            check_kernel_id(options.kernel_id)
        spec = find_kernelspec(options.kernel_name)
    except (KernelSpecError, BadKernelId) as exc:
        raise StartError(str(exc)) from None
    frontend, conn_path, owned = _adopt_or_allocate(options)
    private_dir, kernel_ports, guardian, first = spawn_first_incarnation(
        spec, frontend, conn_path, owned
    )

    from .logsetup import nanny_log

    nanny_log()  # set up now, while the kernel boots

    import asyncio

    from .allocator import keep_large_buffers
    from .nanny import Nanny

    keep_large_buffers()  # after the spawn: the kernel keeps glibc's defaults

    config = nanny_config(options, spec, frontend, conn_path, owned, private_dir, kernel_ports)
    prune_spills()  # after the spawn: nothing here may delay the kernel
    if not options.managed:  # under a KernelManager this would only clutter the server's log
        print(f"kernel_id: {frontend.kernel_id}", flush=True)
        print(f"connection_file: {conn_path}", flush=True)
    try:
        return asyncio.run(Nanny(config, guardian, first).run())
    finally:
        guardian.close()


def nanny_config(
    options: StartOptions,
    spec: KernelSpecInfo,
    frontend: NannyConnectionInfo,
    conn_path: Path,
    owned: bool,
    private_dir: Path,
    kernel_ports: tuple[int, int, int],
    **more: Any,
) -> NannyConfig:
    """The nanny's configuration from the user's options and what start-up decided;
    ``more``: settings of other ways to start (a launcher's ``exit_with_kernel``)."""
    from .nanny import NannyConfig

    return NannyConfig(
        spec=spec,
        frontend=frontend,
        connection_file=conn_path,
        private_dir=private_dir,
        kernel_ports=kernel_ports,
        owns_connection_file=owned,
        shutdown_grace=options.shutdown_grace,
        term_grace=options.term_grace,
        startup_timeout=options.startup_timeout,
        echo_output=not options.quiet,
        ring_bytes=options.ring_bytes,
        spill_dir=spill_path(frontend.kernel_id) if options.spill else None,
        spill_bytes=options.spill_bytes,
        rate_limit=options.rate_limit,
        managed=options.managed,
        store_iopub=(
            options.store_iopub
            if options.store_iopub is not None
            else spec.metadata.get("nanny_io_store_iopub") is not False
        ),
        **more,
    )


def spawn_first_incarnation(
    spec: KernelSpecInfo,
    frontend: NannyConnectionInfo,
    conn_path: Path,
    owned: bool,
    kernel_ports: Sequence[int] | None = None,
) -> tuple[Path, tuple[int, int, int], GuardianHandle, Prelaunch]:
    """Write both connection files, fork the guardian and have it spawn the kernel.

    Uses only light modules: the kernel boots while the nanny imports zmq and asyncio.
    ``kernel_ports`` are the private control, iopub and hb ports (free ones by default).
    Returns the private directory, those ports, the guardian and the first incarnation.
    """
    from nanny_io_proto.connection_files import kernel_facing

    from .guardian import GuardianHandle
    from .launcher import make_private_dir, prelaunch

    used = {
        frontend.shell_port,
        frontend.iopub_port,
        frontend.stdin_port,
        frontend.control_port,
        frontend.hb_port,
        frontend.log_port,
        frontend.log_replay_port,
    }
    if kernel_ports is None:
        kernel_ports = free_ports(frontend.transport, frontend.ip, 3, used)
    control, iopub, hb = kernel_ports
    private_dir: Path | None = None
    wrote_connection_file = False
    try:
        private_dir = make_private_dir(runtime_dir(), frontend.kernel_id)
        conn_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Whoever may write there can swap the file. (The runtime dir itself was checked
        # strictly above; a sticky directory that the user chose, such as /tmp, is fine.)
        check_private_dir(conn_path.parent, sticky_ok=True)
        write_private(conn_path, encode_connection_file(frontend))
        wrote_connection_file = owned
        kernel_file = private_dir / "kernel.json"
        write_private(
            kernel_file,
            encode_connection_file(
                kernel_facing(
                    frontend, ip=frontend.ip, control_port=control, iopub_port=iopub, hb_port=hb
                )
            ),
        )
    except OSError as exc:  # a full disk, a quota: say so and leave nothing behind
        if private_dir is not None:
            import shutil

            shutil.rmtree(private_dir, ignore_errors=True)
        if wrote_connection_file:
            with contextlib.suppress(OSError):
                conn_path.unlink()
        where = conn_path.parent if private_dir is None else private_dir.parent
        raise StartError(
            f"cannot write the nanny's files in {str(where)!r}: {exc.strerror or exc}; "
            "free some space there or set JUPYTER_RUNTIME_DIR to another directory"
        ) from None
    cleanup = [str(private_dir), str(state_path(frontend.kernel_id))]
    cleanup += [str(conn_path)] if owned else []
    if frontend.transport == "ipc":  # ZeroMQ does not always remove the socket files
        ports = [*sorted(used), control, iopub, hb]
        cleanup += [f"{frontend.ip}-{port}" for port in ports]
    # ps shows the guardian's title in the nanny's (cut to its) command line length
    guardian = GuardianHandle.start(cleanup, title=f"nanny-io-guardian {frontend.kernel_id}")
    first = prelaunch(guardian, spec, kernel_file, private_dir, None, spec.capture_stdstreams)
    return private_dir, (control, iopub, hb), guardian, first


def _adopt_or_allocate(options: StartOptions) -> tuple[NannyConnectionInfo, Path, bool]:
    """The frontend-facing connection info: adopted from an existing file, or fresh; with
    the file's path and whether the nanny owns (and removes) it."""
    path = options.connection_file.expanduser() if options.connection_file else None
    if path is not None and path.is_file():
        try:
            check_own_file(path)
        except UnsafeRuntimeDir as exc:
            raise StartError(str(exc)) from None
        try:
            info = decode_connection_file(path.read_bytes())
        except ConnectionFileError as exc:
            raise StartError(f"cannot use connection file {str(path)!r}: {exc}") from None
        kernel_id = (
            options.kernel_id or getattr(info, "kernel_id", "") or uuid4_text().replace("-", "")
        )
        try:
            check_kernel_id(kernel_id)
        except BadKernelId as exc:
            raise StartError(f"{exc}; give another with --kernel-id") from None
        if isinstance(info, NannyConnectionInfo):  # a file a nanny wrote before: same ports
            base = info.standard().to_dict()
            log_ports = [info.log_port, info.log_replay_port]
        else:
            base = info.to_dict()
            log_ports = []
        if len(log_ports) != 2 or not all(log_ports):
            taken = {
                info.shell_port,
                info.iopub_port,
                info.stdin_port,
                info.control_port,
                info.hb_port,
            }
            log_ports = free_ports(info.transport, info.ip, 2, taken)
        base["kernel_name"] = base.get("kernel_name") or options.kernel_name
        adopted = NannyConnectionInfo.from_dict(
            {
                **base,
                "kernel_id": kernel_id,
                "log_port": log_ports[0],
                "log_replay_port": log_ports[1],
            }
        )
        return adopted, path, False
    kernel_id = options.kernel_id or uuid4_text().replace("-", "")
    ip = options.ip
    if options.transport == "ipc" and ip in ("127.0.0.1", ""):
        ip = str(runtime_dir() / f"kernel-{kernel_id}-ipc")
    ports = free_ports(options.transport, ip, 7, set())
    info = NannyConnectionInfo(
        transport=options.transport,
        ip=ip,
        shell_port=ports[0],
        iopub_port=ports[1],
        stdin_port=ports[2],
        control_port=ports[3],
        hb_port=ports[4],
        key=uuid4_text(),
        signature_scheme="hmac-sha256",
        kernel_name=options.kernel_name,
        kernel_id=kernel_id,
        log_port=ports[5],
        log_replay_port=ports[6],
    )
    return info, path or runtime_dir() / f"kernel-{kernel_id}.json", True


def free_ports(transport: str, ip: str, count: int, taken: set[int]) -> list[int]:
    """``count`` ports free on ``ip`` (ipc: socket-file suffixes), none of ``taken``."""
    if transport == "ipc":
        return free_ipc_ports(ip, count, taken)
    ports = [p for p in free_tcp_ports(ip, count + len(taken)) if p not in taken]
    return ports[:count]


def uuid4_text() -> str:
    """``str(uuid.uuid4())``, without the uuid module (it imports ``platform``: a few
    milliseconds before every kernel's spawn); ``.replace("-", "")`` is its ``.hex``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
