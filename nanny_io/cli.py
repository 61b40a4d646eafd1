"""``nanny-io``: the command line. It parses arguments into configuration and calls the code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import NannyIOError
from .limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_SPILL_BYTES,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TERM_GRACE,
)

if TYPE_CHECKING:
    import argparse

# Every other import is made by the verb that needs it: ``nanny-io start`` is on the
# critical path of every kernel start, and its kernel is spawned before the nanny imports
# anything heavy (see nanny_io/startup.py).


class CLIError(NannyIOError):
    """An error the user can fix; printed as one line, no traceback."""


def _setup_logging(verbose: bool) -> None:
    from .logsetup import setup_logging

    setup_logging(verbose)


# ---------------------------------------------------------------------- start


def _size(text: str) -> int:
    """``64M``, ``512k``, ``1G`` or plain bytes."""
    import argparse

    from .startup import parse_size

    try:
        return parse_size(text)
    except ValueError:
        text = text.strip().lower().removesuffix("ib").removesuffix("b")
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M)") from None


def cmd_start(args: argparse.Namespace) -> int:
    """``nanny-io start``: the options, then the start-up module does the work."""
    from .startup import run, start_options

    return run(start_options(args))


# ---------------------------------------------------------------------- list and control verbs


def _format_bytes(n: int | None) -> str:
    from nanny_io_proto.deaths import format_bytes  # only ``list`` needs it

    return "-" if n is None else format_bytes(n)


def cmd_list(args: argparse.Namespace) -> int:
    import json
    import time

    from .discovery import iter_states, state_summary

    now = time.time()
    rows = [state_summary(state, alive, now) for state, alive in iter_states(clean_stale=True)]
    if args.json:
        print(json.dumps(rows, indent=None if args.compact else 1))
        return 0
    if not rows:
        print("no kernels are running under nanny-io")
        return 0
    header = ("KERNEL ID", "NAME", "STATUS", "INC", "NANNY", "KERNEL", "UPTIME", "MEMORY")
    table = [header] + [
        (
            r["kernel_id"],
            r["kernel_name"],
            r["status"],
            str(r["incarnation"]),
            str(r["nanny_pid"]),
            str(r["kernel_pid"] or "-"),
            f"{r['uptime']:.0f}s" if r["uptime"] is not None else "-",
            _format_bytes(r["memory"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _control(
    args: argparse.Namespace,
    msg_type: str,
    content: dict[str, object],
    timeout: float = 10.0,
    wait_for: str | None = None,
) -> dict[str, object]:
    from .control_client import ControlTimeout, request
    from .discovery import KernelNotFound, resolve_kernel

    try:
        ref = resolve_kernel(args.kernel)
    except KernelNotFound as exc:
        raise CLIError(str(exc)) from None
    try:
        reply = request(ref.info, msg_type, content, timeout=timeout, wait_for=wait_for)
    except ControlTimeout as exc:
        raise CLIError(f"kernel {ref.info.kernel_id}: {exc}; is its nanny running?") from None
    if reply.content.get("status") != "ok":
        raise CLIError(f"kernel {ref.info.kernel_id}: {reply.content.get('evalue', 'failed')}")
    return reply.content


def cmd_tail(args: argparse.Namespace) -> int:
    from nanny_io_proto.errors import ProtocolError
    from nanny_io_proto.priorities import parse_priority
    from nanny_io_proto.streams import Stream

    from .discovery import KernelNotFound
    from .subscriber import ReplayUnanswered
    from .tail import TailOptions, run_tail

    streams = tuple(Stream(s) for s in args.stream) if args.stream else None
    priority = None
    if args.priority is not None:
        try:
            priority = parse_priority(args.priority)
        except ProtocolError as exc:
            raise CLIError(str(exc)) from None
    opts = TailOptions(
        kernel=args.kernel,
        lines=args.lines,
        follow=args.follow,
        streams=streams,
        since_seq=args.since,
        json=args.json,
        wait=args.wait,
        priority=priority,
        raw=args.all,
    )
    try:
        return run_tail(opts)
    except (KernelNotFound, ReplayUnanswered) as exc:
        raise CLIError(str(exc)) from None
    except BrokenPipeError:  # `nanny-io tail ... | head`
        sys.stdout = None
        return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .discovery import KernelNotFound
    from .status import kernel_status, print_status

    try:
        status = kernel_status(args.kernel)
    except KernelNotFound as exc:
        raise CLIError(str(exc)) from None
    try:
        if args.json:
            print(json.dumps(status, indent=1, ensure_ascii=False))
        else:
            print_status(status, sys.stdout)
    except BrokenPipeError:  # `nanny-io status ... | head`
        sys.stdout = None
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .gateway_cli import remote_options
    from .install import InstallOptions, install
    from .launcher import KernelSpecError

    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        remote = remote_options(args)
    except KernelSpecError as exc:
        raise CLIError(str(exc)) from None
    opts = InstallOptions(
        source=args.source,
        name=args.name,
        display_name=args.display_name,
        user=args.user,
        prefix=prefix,
        capture=args.capture,
        remote=remote,
    )
    try:
        name, path = install(opts)
    except KernelSpecError as exc:
        raise CLIError(str(exc)) from None
    print(f"installed kernelspec {name!r} in {path}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from .install import uninstall
    from .launcher import KernelSpecError

    try:
        path = uninstall(args.name)
    except KernelSpecError as exc:
        raise CLIError(str(exc)) from None
    print(f"removed kernelspec {args.name!r} from {path}")
    return 0


def cmd_interrupt(args: argparse.Namespace) -> int:
    _control(args, "interrupt_request", {})
    print("interrupted")
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    signum: object = int(args.signal) if args.signal.isdigit() else args.signal
    reply = _control(args, "signal_request", {"signum": signum})
    print(f"sent {reply.get('signal_name')} ({reply.get('signum')})")
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    _control(
        args,
        "shutdown_request",
        {"restart": args.restart},
        timeout=60.0,
        wait_for="kernel_restarted" if args.restart else None,
    )
    print("restarted" if args.restart else "shut down")
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from nanny_io_proto.streams import Stream

    from .gateway_cli import add_launch_parser, add_remote_install_options

    parser = argparse.ArgumentParser(
        prog="nanny-io",
        description="Run Jupyter kernels under a nanny that captures and serves their logs.",
    )
    parser.add_argument("--version", action="version", version=f"nanny-io {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "start",
        help="start a kernel under a nanny (runs in the foreground)",
        description="Start a kernel from its kernelspec under a nanny and serve "
        "it until it is shut down (Ctrl-C shuts it down cleanly).",
    )
    p.add_argument("kernel_name", metavar="KERNEL_NAME", help="kernelspec name, e.g. python3")
    p.add_argument(
        "--connection-file",
        metavar="PATH",
        help="where to write the frontend-facing connection file (an existing file "
        "is adopted: its ports and key are used)",
    )
    p.add_argument(
        "--ip", default="127.0.0.1", help="address frontends connect to (default: 127.0.0.1)"
    )
    p.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    p.add_argument("--kernel-id", metavar="ID", help="kernel id (default: a new uuid)")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULT_SHUTDOWN_GRACE,
        metavar="SECONDS",
        help="how long a kernel may take to exit after shutdown_request before its "
        f"process tree is terminated (default: {DEFAULT_SHUTDOWN_GRACE:g})",
    )
    p.add_argument(
        "--term-grace",
        type=float,
        default=DEFAULT_TERM_GRACE,
        metavar="SECONDS",
        help="how long the process tree may take to exit after SIGTERM before it is "
        f"killed (default: {DEFAULT_TERM_GRACE:g})",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT,
        metavar="SECONDS",
        help="how long the kernel may take to answer kernel_info after it was launched "
        f"(default: {DEFAULT_STARTUP_TIMEOUT:g})",
    )
    p.add_argument(
        "--ring-size",
        type=_size,
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help="memory for the log store, e.g. 64M (default: 64M)",
    )
    p.add_argument(
        "--spill-size",
        type=_size,
        default=DEFAULT_SPILL_BYTES,
        metavar="BYTES",
        help="disk for the log history kept after exit, e.g. 64M (default: 64M)",
    )
    p.add_argument(
        "--no-spill",
        action="store_true",
        help="keep the log in memory only (no history after the nanny exits)",
    )
    p.add_argument(
        "--rate-limit",
        type=_size,
        default=None,
        metavar="BYTES",
        help="most captured output per second sent to frontends; the excess is "
        "dropped with a notice (it is still stored)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="do not echo the kernel's output on this terminal",
    )
    p.add_argument(
        "--store-iopub",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the kernel's own output on iopub (print(), tracebacks) in the log "
        "(default: as the kernelspec's metadata.nanny_io_store_iopub says, else yes)",
    )
    # Set by the provisioner: the kernel manager decides about restarts (protocol §8.3).
    p.add_argument("--managed", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("list", help="list kernels running under nanny-io on this machine")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--compact", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "install",
        help="wrap a kernelspec so its kernels run under nanny-io",
        description="Install a kernelspec that runs SOURCE_KERNEL under a nanny "
        "(through the nanny-io kernel provisioner), for JupyterLab, "
        "jupyter_server, nbclient and jupyter console.",
    )
    p.add_argument("source", metavar="SOURCE_KERNEL", help="the kernelspec to wrap")
    p.add_argument(
        "--name", help="name of the new kernelspec (default: SOURCE-nanny, or SOURCE-REMOTE)"
    )
    p.add_argument(
        "--display-name",
        metavar="TEXT",
        help="display name (default: the source's, marked '(nanny-io)')",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help="install into this Python environment (sys.prefix)",
    )
    where.add_argument("--prefix", metavar="PATH", help="install under PATH/share/jupyter")
    p.add_argument(
        "--capture",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send the kernel's stdout/stderr to frontends, attributed to cells "
        "(default: what SOURCE_KERNEL's metadata.capture_stdstreams says, else "
        "--no-capture: stored and tailed, not sent)",
    )
    add_remote_install_options(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("uninstall", help="remove a kernelspec made by 'nanny-io install'")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_uninstall)

    kernel_help = "kernel id, unique id prefix, or connection file"
    p = sub.add_parser(
        "tail",
        help="show a kernel's log (like journalctl -f with -f)",
        description="Show the last lines of a kernel's log: stdout, stderr, its "
        "$JUPYTER_KERNEL_LOG and the nanny's own events. Reads the "
        "on-disk history when the nanny has exited.",
    )
    p.add_argument("kernel", metavar="KERNEL", help=kernel_help)
    p.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        metavar="N",
        help="how many records of history to show first (default: 10)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    p.add_argument(
        "--stream",
        action="append",
        choices=[s.value for s in Stream],
        help="only this stream (repeatable)",
    )
    p.add_argument(
        "--since",
        type=int,
        metavar="SEQ",
        help="start at this sequence number instead of the last N",
    )
    p.add_argument(
        "-p",
        "--priority",
        metavar="LEVEL",
        help="only records of this syslog priority or more severe: a number 0-7 or "
        "emerg, alert, crit, err, warning, notice, info, debug (like journalctl -p)",
    )
    p.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="print kernel text as written; by default control characters are shown escaped "
        "(\\e, \\r, \\x07) so that output cannot drive the terminal",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: seq, time, stream, source, text, incarnation, priority",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for a kernel that has not started yet, and follow it across nanny restarts",
    )
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser(
        "status",
        help="show one kernel in detail, with why it died",
        description="Show one kernel: its state, its processes and every death of it, "
        "each with the reason, the cell that was running, the peak memory and the last "
        "words. Reads the on-disk history when the nanny has exited.",
    )
    p.add_argument("kernel", metavar="KERNEL", help=kernel_help)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("interrupt", help="interrupt a kernel (works for remote kernels)")
    p.add_argument("kernel", metavar="KERNEL", help=kernel_help)
    p.set_defaults(func=cmd_interrupt)

    p = sub.add_parser("signal", help="send any signal to a kernel's process group")
    p.add_argument("kernel", metavar="KERNEL", help=kernel_help)
    p.add_argument("signal", metavar="SIGNAL", help="a name such as SIGUSR1 (or USR1) or a number")
    p.set_defaults(func=cmd_signal)

    p = sub.add_parser("shutdown", help="shut a kernel down (or restart it)")
    p.add_argument("kernel", metavar="KERNEL", help=kernel_help)
    p.add_argument("--restart", action="store_true", help="relaunch on the same ports and key")
    p.set_defaults(func=cmd_shutdown)

    add_launch_parser(sub, _size)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if "start" in args_list:  # the usual start command line needs no argparse
        from .startup import main_quickly

        code = main_quickly(args_list)
        if code is not None:
            return code
    args = build_parser().parse_args(argv)
    if args.func is cmd_start:  # set up by the first warning, else after the kernel's spawn
        from .logsetup import choose_verbosity

        choose_verbosity(args.verbose)
    else:
        _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except NannyIOError as exc:
        print(f"nanny-io: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
