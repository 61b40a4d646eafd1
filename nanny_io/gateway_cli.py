"""Command-line arguments of the gateway features: ``nanny-io launch`` (gateway.py) and
``nanny-io install --remote`` (remote_specs.py).

Kept apart so that declaring them costs ``nanny-io start`` nothing: the modules that do the
work are imported only when these commands run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .limits import DEFAULT_MAX_BYTES, DEFAULT_SPILL_BYTES

if TYPE_CHECKING:
    from .remote_specs import RemoteOptions


def cmd_launch(args: argparse.Namespace) -> int:
    """``nanny-io launch``: the CLI's entry point."""
    from .cli import CLIError
    from .gateway import LaunchError, launch_options, run_launch

    try:
        return run_launch(launch_options(args, os.environ))
    except LaunchError as exc:
        raise CLIError(str(exc)) from None


def add_launch_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], size: Callable[[str], int]
) -> None:
    """Declare ``nanny-io launch`` and its arguments (``size`` parses byte sizes like 64M)."""
    p = sub.add_parser(
        "launch",
        help="run a kernel for Enterprise Gateway or gateway_provisioners (a kernel launcher)",
        description="Start a kernel under a nanny for a remote provisioner of "
        "gateway_provisioners or Jupyter Enterprise Gateway: ports inside --port-range, the "
        "connection info sent encrypted to --response-address, signals and shutdown on the "
        "communication port; exits with the kernel's status when it dies. Options not given "
        "are read from the environment the container provisioners set (KERNEL_ID, "
        "PORT_RANGE, RESPONSE_ADDRESS, PUBLIC_KEY, TRANSPORT_ENCRYPTION; NANNY_IO_KERNEL for "
        "--kernel). Needs the gateway extra: pip install 'nanny-io[gateway]'.",
    )
    p.add_argument("--kernel", metavar="NAME", help="the kernelspec to run (any language)")
    # nargs="?": the launchers accept an option without its value (an unset variable in a
    # start-up script), which then means "not given".
    p.add_argument("--kernel-id", nargs="?", metavar="ID", help="the server's id for the kernel")
    p.add_argument(
        "--port-range",
        nargs="?",
        metavar="LOW..HIGH",
        help="bind every port inside this range (default: any free port)",
    )
    p.add_argument(
        "--response-address",
        nargs="?",
        metavar="HOST:PORT",
        help="where the server waits for the connection info",
    )
    p.add_argument(
        "--public-key",
        nargs="?",
        metavar="KEY",
        help="the server's RSA public key (base64) that encrypts the connection info",
    )
    p.add_argument(
        "--transport-encryption",
        nargs="?",
        metavar="POLICY",
        help="auto, required or disabled: CurveZMQ keys in the connection info",
    )
    p.add_argument(
        "--ip", default="0.0.0.0", help="address to bind (default: 0.0.0.0, as the launchers)"
    )
    p.add_argument(
        "--log-stdout",
        choices=("none", "json"),
        default="none",
        help="json: every log record as one JSON line on stdout, for a cluster's log "
        "collector (default: none)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long a kernel may take to exit after shutdown_request before its "
        "process tree is terminated (default: 5)",
    )
    p.add_argument(
        "--ring-size",
        type=size,
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help="memory for the log store, e.g. 64M (default: 64M)",
    )
    p.add_argument(
        "--spill-size",
        type=size,
        default=DEFAULT_SPILL_BYTES,
        metavar="BYTES",
        help="disk for the log history kept after exit, e.g. 64M (default: 64M)",
    )
    p.add_argument("--no-spill", action="store_true", help="keep the log in memory only")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="do not echo the kernel's output on stderr"
    )
    # Accepted as the stock launchers accept them, and ignored: they configure Spark or an
    # ipykernel class inside the launcher, which a kernelspec does here.
    for ignored in ("--spark-context-initialization-mode", "--cluster-type", "--kernel-class-name"):
        p.add_argument(ignored, nargs="?", help=argparse.SUPPRESS)
    # Enterprise Gateway's older spellings of the same options.
    for name in ("kernel-id", "port-range", "response-address", "public-key"):
        p.add_argument(
            f"--RemoteProcessProxy.{name}",
            nargs="?",
            dest=name.replace("-", "_"),
            help=argparse.SUPPRESS,
        )
    for name in ("spark-context-initialization-mode", "cluster-type"):
        p.add_argument(f"--RemoteProcessProxy.{name}", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("connection_file", nargs="?", help=argparse.SUPPRESS)  # ditto, ignored
    p.set_defaults(func=cmd_launch)


def add_remote_install_options(p: argparse.ArgumentParser) -> None:
    """``nanny-io install --remote ...``: kernelspecs for gateway_provisioners (remote_specs.py)."""
    g = p.add_argument_group(
        "remote kernels (Enterprise Gateway, gateway_provisioners)",
        "Write a kernelspec for a gateway_provisioners provisioner that runs SOURCE_KERNEL "
        "under 'nanny-io launch' on the kernel's host or in its container.",
    )
    g.add_argument(
        "--remote",
        choices=("distributed", "kubernetes", "docker", "docker-swarm"),
        help="which provisioner runs the kernels: distributed is SSH hosts",
    )
    g.add_argument("--remote-hosts", metavar="HOSTS", help="distributed: hosts, comma-separated")
    g.add_argument("--image-name", metavar="IMAGE", help="kubernetes, docker: the kernel image")
    g.add_argument("--port-range", metavar="LOW..HIGH", help="ports the kernels may bind")
    g.add_argument(
        "--launch-timeout", type=int, metavar="SECONDS", help="how long a start may take"
    )
    g.add_argument("--authorized-users", metavar="USERS", help="only these users, comma-separated")
    g.add_argument(
        "--unauthorized-users", metavar="USERS", help="never these users (default: root)"
    )
    g.add_argument(
        "--launch-command",
        metavar="CMD",
        help="how the host or image runs nanny-io (default: this Python's '-m nanny_io' on "
        "hosts, 'nanny-io' in images)",
    )


def remote_options(args: argparse.Namespace) -> RemoteOptions | None:
    """The --remote settings of ``nanny-io install``, or None without --remote."""
    from .launcher import KernelSpecError
    from .remote_specs import RemoteOptions

    def users(text: str | None) -> tuple[str, ...]:
        return tuple(u.strip() for u in (text or "").split(",") if u.strip())

    settings = ("remote_hosts", "image_name", "port_range", "launch_timeout", "launch_command")
    if args.remote is None:
        given = [f"--{n.replace('_', '-')}" for n in settings if getattr(args, n) is not None]
        if given or args.authorized_users or args.unauthorized_users:
            raise KernelSpecError(f"{', '.join(given) or 'user lists'} only apply with --remote")
        return None
    return RemoteOptions(
        remote=args.remote,
        hosts=users(args.remote_hosts),
        image_name=args.image_name,
        port_range=args.port_range,
        launch_timeout=args.launch_timeout,
        authorized_users=users(args.authorized_users),
        unauthorized_users=users(args.unauthorized_users),
        launch_command=args.launch_command,
    )
