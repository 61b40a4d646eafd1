"""``nanny-io launch``: a nanny that speaks the kernel-launcher protocol of gateway_provisioners
and Jupyter Enterprise Gateway, so their remote provisioners (SSH hosts, Kubernetes, Docker)
run any kernelspec under a nanny, unchanged.

The launcher is the nanny of ``nanny-io start`` (guardian, capture, log store, log channel)
plus three things the protocol asks for:

- its ports, all inside ``--port-range``, and its connection info sent back encrypted to
  ``--response-address`` (nanny_io_proto.gateway builds the payload);
- the *communication port*, where the server sends ``{"signum": n}`` (0: are you alive; 2:
  interrupt, as the kernelspec's interrupt mode says; 15 and 9: the whole tree; others: the
  kernel's process group) and ``{"shutdown": 1}``;
- one incarnation per launcher: the server restarts a kernel by starting a new launcher, so a
  death is reported (``kernel_died`` on iopub and the log channel) and the launcher then exits
  with the kernel's status (its code, or 128 + signal). The communication port closes with
  it, which is how the provisioner's ``poll`` and a container runtime both see the death.

In a container the launcher may be PID 1: it collects orphans that exited, and turns the
SIGTERM of a pod deletion into a clean shutdown (the nanny's own handler).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.gateway import (
    BadLauncherArgument,
    encrypt_connection_info,
    launcher_connection_info,
    parse_port_range,
    parse_response_address,
    parse_transport_encryption,
    public_key_der,
)

from .errors import NannyIOError
from .launcher import KernelSpecError, KernelSpecInfo, find_kernelspec, free_tcp_ports
from .limits import DEFAULT_MAX_BYTES, DEFAULT_SPILL_BYTES

log = logging.getLogger("nanny_io")

#: Ports a launcher binds inside the port range: the five Jupyter ones, the log channel's
#: two, and the kernel's three private ones (control, iopub, hb); the communication port
#: comes on top.
PORTS_NEEDED = 10
#: Environment variables the container provisioners set, tried in order, per option.
ENV_FALLBACKS: Mapping[str, tuple[str, ...]] = {
    "kernel_id": ("KERNEL_ID",),
    "port_range": ("PORT_RANGE", "EG_PORT_RANGE"),
    "response_address": ("RESPONSE_ADDRESS", "EG_RESPONSE_ADDRESS"),
    "public_key": ("PUBLIC_KEY", "EG_PUBLIC_KEY"),
    "transport_encryption": ("TRANSPORT_ENCRYPTION",),
    "kernel": ("NANNY_IO_KERNEL",),
}
#: How long sending the connection info may take, and how often it is tried.
RESPONSE_TIMEOUT = 10.0
RESPONSE_ATTEMPTS = 3


class LaunchError(NannyIOError):
    """The launcher cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class LaunchOptions:
    """Everything ``nanny-io launch`` decided from its arguments and environment."""

    kernel: str
    kernel_id: str
    response_address: tuple[str, int]
    public_key: str
    port_range: tuple[int, int] = (0, 0)
    transport_encryption: str | None = None
    ip: str = "0.0.0.0"
    log_stdout: str = "none"
    quiet: bool = False
    shutdown_grace: float = 5.0
    ring_bytes: int | None = None
    spill_bytes: int | None = None
    spill: bool = True


def launch_options(args: argparse.Namespace, environ: Mapping[str, str]) -> LaunchOptions:
    """Arguments first, then the environment variables the container provisioners set."""

    def pick(name: str) -> str | None:
        value = getattr(args, name, None)
        if value:
            return str(value)
        return next((environ[v] for v in ENV_FALLBACKS[name] if environ.get(v)), None)

    kernel = pick("kernel")
    if not kernel:
        raise LaunchError("no kernel to run: give --kernel NAME (or set NANNY_IO_KERNEL)")
    public_key = pick("public_key")
    try:
        response_address = parse_response_address(pick("response_address"))
        public_key_der(public_key)
        port_range = parse_port_range(pick("port_range"))
        encryption = parse_transport_encryption(pick("transport_encryption"))
    except BadLauncherArgument as exc:
        raise LaunchError(str(exc)) from None
    assert public_key is not None
    from .discovery import kernel_id_problem

    kernel_id = pick("kernel_id") or str(uuid.uuid4())
    problem = kernel_id_problem(kernel_id)
    if problem is not None:  # it names files in the runtime dir
        raise LaunchError(f"kernel id {kernel_id[:40]!r} is not usable: {problem}")
    return LaunchOptions(
        kernel=kernel,
        kernel_id=kernel_id,
        response_address=response_address,
        public_key=public_key,
        port_range=port_range,
        transport_encryption=encryption,
        ip=args.ip,
        log_stdout=args.log_stdout,
        quiet=args.quiet,
        shutdown_grace=args.shutdown_grace,
        ring_bytes=args.ring_size,
        spill_bytes=args.spill_size,
        spill=not args.no_spill,
    )


# ---------------------------------------------------------------------- ports


def _bind_ip(ip: str) -> str:
    return "" if ip in ("0.0.0.0", "*") else ip


def _candidates(port_range: tuple[int, int]) -> list[int]:
    low, high = port_range
    ports = list(range(low, high + 1))
    random.shuffle(ports)  # as the launchers do: two launchers rarely race for one port
    return ports


def pick_ports(ip: str, port_range: tuple[int, int], count: int) -> list[int]:
    """``count`` distinct ports free on ``ip`` right now, inside ``port_range`` unless (0, 0)."""
    if port_range == (0, 0):
        return free_tcp_ports(ip, count)
    socks: list[socket.socket] = []
    try:
        for port in _candidates(port_range):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
            try:
                sock.bind((_bind_ip(ip), port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
            if len(socks) == count:
                return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()
    low, high = port_range
    raise LaunchError(
        f"only {len(socks)} free ports in the port range {low}..{high} on {ip!r}; "
        f"a launcher needs {count + 1}"
    )


def bind_comm_socket(ip: str, port_range: tuple[int, int], taken: set[int]) -> socket.socket:
    """The communication port's listening socket, inside the port range."""
    candidates = [0] if port_range == (0, 0) else _candidates(port_range)
    for port in candidates:
        if port in taken:
            continue
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_bind_ip(ip), port))
            sock.listen(16)
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        return sock
    low, high = port_range
    raise LaunchError(f"no free port left for the communication port in {low}..{high}")


# ---------------------------------------------------------------------- response


def send_response(address: tuple[str, int], payload: bytes) -> None:
    """Send the encrypted connection info to the server's response address, as the
    launchers do: connect, send, close (a few attempts, for a server that is busy)."""
    error: OSError | None = None
    for attempt in range(RESPONSE_ATTEMPTS):
        if attempt:
            time.sleep(1.0)
        try:
            with socket.create_connection(address, timeout=RESPONSE_TIMEOUT) as sock:
                sock.sendall(payload)
            return
        except OSError as exc:
            error = exc
            log.warning("cannot send the connection info to %s:%d: %s", *address, exc)
    raise LaunchError(f"the server at {address[0]}:{address[1]} is unreachable: {error}")


# ---------------------------------------------------------------------- the launcher


def _curve_keys(opts: LaunchOptions, spec: KernelSpecInfo) -> tuple[str, str] | None:
    """A CurveZMQ key pair when transport encryption was asked for and can be honoured: the
    nanny's sockets can, the kernel's shell and stdin only if its kernelspec says it can."""
    if opts.transport_encryption is None:
        return None
    supported = spec.metadata.get("supported_encryption") or []
    if isinstance(supported, str):
        supported = [supported]
    import zmq

    problem = None
    if "curve" not in {str(s).strip().lower() for s in supported}:
        problem = f"kernelspec {spec.name!r} does not declare 'curve' in supported_encryption"
    elif not zmq.has("curve"):
        problem = "libzmq was built without CurveZMQ"
    if problem is None:
        public, secret = zmq.curve_keypair()
        return public.decode("ascii"), secret.decode("ascii")
    if opts.transport_encryption == "required":
        raise LaunchError(f"transport encryption is required but cannot be applied: {problem}")
    log.warning("transport encryption cannot be applied (%s); continuing without it", problem)
    return None


def run_launch(opts: LaunchOptions) -> int:
    """Start the kernel under a nanny, answer the server, serve until the kernel ends.

    Returns the process exit status: the kernel's (code, or 128 + signal) when it died, 0
    after a requested shutdown, 1 when it could not start.
    """
    from .discovery import prune_spills, runtime_dir
    from .startup import spawn_first_incarnation

    try:
        import Cryptodome  # noqa: F401  (gateway_provisioners' own crypto library)
    except ImportError:
        raise LaunchError(
            "the launcher needs pycryptodomex: pip install 'nanny-io[gateway]'"
        ) from None
    try:
        spec = find_kernelspec(opts.kernel)
    except KernelSpecError as exc:
        raise LaunchError(str(exc)) from None
    curve = _curve_keys(opts, spec)
    ports = pick_ports(opts.ip, opts.port_range, PORTS_NEEDED)
    frontend = NannyConnectionInfo(
        transport="tcp",
        ip=opts.ip,
        shell_port=ports[0],
        iopub_port=ports[1],
        stdin_port=ports[2],
        control_port=ports[3],
        hb_port=ports[4],
        key=str(uuid.uuid4()),
        kernel_name=spec.name,
        curve_publickey=curve[0] if curve else None,
        curve_secretkey=curve[1] if curve else None,
        kernel_id=opts.kernel_id,
        log_port=ports[5],
        log_replay_port=ports[6],
    )
    conn_path = runtime_dir() / f"kernel-{opts.kernel_id}.json"
    # The guardian is forked here: the communication socket is made after it, so that no
    # process but this one holds it open (a listening socket accepts while anyone holds it).
    private_dir, kernel_ports, guardian, first = spawn_first_incarnation(
        spec, frontend, conn_path, owned=True, kernel_ports=ports[7:10]
    )
    try:
        if first.reply.get("event") != "spawned":
            raise LaunchError(f"cannot start kernel {spec.name!r}: {first.reply.get('error')}")
        kernel_pid = int(first.reply["pid"])
        comm = bind_comm_socket(opts.ip, opts.port_range, set(ports))
        info = launcher_connection_info(
            frontend,
            pid=kernel_pid,
            pgid=kernel_pid,  # the kernel leads its own session and process group
            comm_port=comm.getsockname()[1],
            extra={"nanny_pid": os.getpid()},
        )
        payload = encrypt_connection_info(
            info, opts.public_key, aes_key=os.urandom(16), randfunc=os.urandom
        )
        try:
            send_response(opts.response_address, payload)
        except LaunchError:
            comm.close()
            raise
    except (LaunchError, RemoteProtocolError) as exc:
        guardian.close()  # ends the kernel and removes the files
        raise LaunchError(str(exc)) from None
    log.info(
        "kernel %s (%s, pid %d) launched; connection info sent to %s:%d; communication port %d",
        opts.kernel_id,
        spec.name,
        kernel_pid,
        *opts.response_address,
        comm.getsockname()[1],
    )

    import asyncio

    from .allocator import keep_large_buffers
    from .commport import serve_launcher
    from .nanny import Nanny
    from .startup import StartOptions, nanny_config

    options = StartOptions(
        kernel_name=spec.name,
        shutdown_grace=opts.shutdown_grace,
        quiet=opts.quiet or opts.log_stdout != "none",  # stdout carries the JSON records
        ring_bytes=opts.ring_bytes or DEFAULT_MAX_BYTES,
        spill=opts.spill,
        spill_bytes=opts.spill_bytes or DEFAULT_SPILL_BYTES,
        managed=True,  # the server decides about restarts: a death is not `status: dead`
    )
    config = nanny_config(
        options, spec, frontend, conn_path, True, private_dir, kernel_ports, exit_with_kernel=True
    )
    prune_spills()
    keep_large_buffers()  # after the spawn: the kernel keeps glibc's defaults
    try:
        nanny = Nanny(config, guardian, first)
        return asyncio.run(serve_launcher(nanny, comm, opts.kernel_id, opts.log_stdout))
    finally:
        guardian.close()


__all__ = [
    "ENV_FALLBACKS",
    "LaunchError",
    "LaunchOptions",
    "launch_options",
    "run_launch",
]
