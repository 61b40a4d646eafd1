#!/usr/bin/env python3
"""Core benchmark: one ipykernel reached directly vs through ``nanny-io start``, side by side.

Three measurements, each interleaved between the two paths (direct, nanny, nanny, direct, ...)
so that machine noise hits both alike:

1. ``execute("pass")`` round trip as a frontend sees it: from sending execute_request on shell
   until both the execute_reply (shell) and the ``status: idle`` for that request (iopub) have
   arrived. Shell goes straight to the kernel on both paths; iopub passes through the nanny.
2. Control round trips: ``kernel_info_request`` (the nanny forwards it to the kernel) and
   ``interrupt_request`` (the nanny answers it itself, sending SIGINT to the kernel's group;
   directly, ipykernel answers it), from send until the reply.
3. Start-to-ready: from ``KernelManager.start_kernel()`` / the ``Popen`` of ``nanny-io start``
   until ``BlockingKernelClient.wait_for_ready()`` returns. For the nanny, the time until its
   connection file appears is reported too (interpreter start, imports and setup). A third
   path, interleaved with those two, is a ``KernelManager`` of the same kernelspec wrapped for
   the nanny-io provisioner (``nanny-io install``), as JupyterLab starts it.

The round trips drive zmq sockets in this thread (no client threads): requests are built and
signed with jupyter_client's ``Session`` before the clock starts; replies are matched by
reading only their header and parent header (signatures are not checked), so that the client
adds as little as possible to what is measured, identically on both paths.

Prints a table and, last, one JSON line ``{"benchmark": "core", ...}``. Every kernel and nanny
is shut down at the end, also on Ctrl-C or an error; survivors are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import benchkit
import zmq
from benchkit import BenchmarkError, ProcessTracker
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

from nanny_io.testing import NannyProcess

DELIM = b"<IDS|MSG>"
PATHS = ("direct", "nanny")
START_PATHS = ("direct", "nanny", "provisioner")
TARGET_EXECUTE_RATIO = 1.05
TARGET_CONTROL_ADDED_MS = 0.2
TARGET_START_RATIO = 1.10
REPLY_TIMEOUT = 10.0  # seconds, for any single round trip
READY_TIMEOUT = 60.0  # seconds, for a kernel to start


# ---------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Samples:
    """Durations in seconds for one measurement on one path."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p90(self) -> float:
        return percentile(self.values, 90)


def interleaved(count: int) -> Iterator[tuple[str, str]]:
    """Path orders for ``count`` rounds: (direct, nanny), (nanny, direct), ..."""
    for i in range(count):
        yield PATHS if i % 2 == 0 else PATHS[::-1]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection pauses inside timed loops (collected between them instead)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# ---------------------------------------------------------------------- process bookkeeping


# ---------------------------------------------------------------------- kernels on both paths


def nanny_command() -> list[str]:
    script = Path(sys.executable).with_name("nanny-io")
    if script.exists():
        return [str(script)]
    found = shutil.which("nanny-io")
    return [found] if found else [sys.executable, "-m", "nanny_io"]


def start_direct(kernel_name: str, logs: Path, tracker: ProcessTracker,
                 stack: contextlib.ExitStack) -> tuple[KernelManager, float]:
    """``KernelManager.start_kernel()``; returns the manager and the clock at the call."""
    km = KernelManager(kernel_name=kernel_name)
    log = open(logs / f"direct-{uuid.uuid4().hex[:8]}.log", "wb")  # noqa: SIM115
    stack.callback(log.close)
    stack.callback(stop_direct, km)
    t0 = time.perf_counter()
    km.start_kernel(stdout=log, stderr=log)
    pid = getattr(km.provisioner, "pid", None)  # LocalProvisioner's kernel process
    if isinstance(pid, int):
        tracker.add_tree(pid)
    return km, t0


def stop_direct(km: KernelManager) -> None:
    if km.has_kernel:
        km.shutdown_kernel(now=False)


def start_nanny(kernel_name: str, workdir: Path, tracker: ProcessTracker,
                stack: contextlib.ExitStack, *, wait: bool = True) -> NannyProcess:
    """``nanny-io start KERNEL --connection-file F`` (stopped by ``stack``); without
    ``wait``, it returns at once, for the caller to time the start-up."""
    connection_file = workdir / f"nanny-{uuid.uuid4().hex[:8]}.json"
    return benchkit.start_nanny([kernel_name, "--connection-file", str(connection_file)],
                                tracker, stack, command=nanny_command(), wait=wait)


def wait_connection_file(nanny: NannyProcess, path: Path,
                         timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """Poll (1 ms) until the connection file exists and parses; returns its content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_bytes())
            if isinstance(info, dict) and "shell_port" in info:
                return info
        if nanny.proc.poll() is not None:
            raise BenchmarkError(f"nanny exited with {nanny.proc.returncode}{nanny.log_tail()}")
        time.sleep(0.001)
    raise BenchmarkError(f"no connection file from the nanny in {timeout:g} s"
                         f"{nanny.log_tail()}")


def launch_for_latency(path: str, kernel_name: str, workdir: Path, tracker: ProcessTracker,
                       stack: contextlib.ExitStack) -> dict[str, Any]:
    """A kernel for the round-trip measurements (stopped by ``stack``): its connection info."""
    if path == "direct":
        km, _ = start_direct(kernel_name, workdir, tracker, stack)
        return dict(km.get_connection_info())
    return start_nanny(kernel_name, workdir, tracker, stack).connection_info()


# ---------------------------------------------------------------------- round trips


class Prober:
    """One frontend's shell, control and iopub sockets to a kernel, driven in this thread."""

    def __init__(self, ctx: zmq.Context[Any], info: dict[str, Any]) -> None:
        key = info["key"]
        self.session = Session(key=key.encode() if isinstance(key, str) else key,
                               signature_scheme=info.get("signature_scheme", "hmac-sha256"),
                               username="bench-core")
        self.shell = self._connect(ctx, zmq.DEALER, info, "shell")
        self.control = self._connect(ctx, zmq.DEALER, info, "control")
        self.iopub = self._connect(ctx, zmq.SUB, info, "iopub")
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.poller = zmq.Poller()
        for sock in (self.shell, self.control, self.iopub):
            self.poller.register(sock, zmq.POLLIN)

    @staticmethod
    def _connect(ctx: zmq.Context[Any], kind: int, info: dict[str, Any],
                 channel: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(kind)
        sock.linger = 0
        transport = info.get("transport", "tcp")
        sep = ":" if transport == "tcp" else "-"
        sock.connect(f"{transport}://{info['ip']}{sep}{info[f'{channel}_port']}")
        return sock

    def close(self) -> None:
        for sock in (self.shell, self.control, self.iopub):
            sock.close(linger=0)

    @staticmethod
    def _peek(frames: list[bytes]) -> tuple[str, str, bytes]:
        """msg_type, parent msg_id and the raw content frame of a received message."""
        i = frames.index(DELIM)
        header = json.loads(frames[i + 2])
        parent = json.loads(frames[i + 3])
        return header.get("msg_type", ""), parent.get("msg_id", ""), frames[i + 5]

    def _round_trip(self, sock: zmq.Socket[Any], msg_type: str, content: dict[str, Any], *,
                    idle: str = "timed", timeout: float = REPLY_TIMEOUT) -> float:
        """Seconds from sending a request until its reply arrives.

        ``idle``: "timed" also waits for the request's ``status: idle`` on iopub before the
        clock stops (what a frontend waits for); "after" waits for it after the clock stopped
        (so it does not spill into the next round trip); "none" does not wait for it.
        """
        msg = self.session.msg(msg_type, content)
        msg_id = msg["header"]["msg_id"]
        frames = self.session.serialize(msg)
        reply_type = msg_type.replace("_request", "_reply")
        replied_at: float | None = None
        got_idle = idle == "none"
        t0 = time.perf_counter()
        sock.send_multipart(frames)
        deadline = t0 + timeout
        while replied_at is None or not got_idle:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BenchmarkError(f"no {reply_type} within {timeout:g} s"
                                     if replied_at is None else f"no idle within {timeout:g} s")
            for ready in dict(self.poller.poll(max(1, int(remaining * 1000)))):
                kind, parent_id, raw = self._peek(ready.recv_multipart())
                if parent_id != msg_id:
                    continue
                if ready is sock and kind == reply_type:
                    replied_at = time.perf_counter()
                elif (ready is self.iopub and kind == "status"
                      and json.loads(raw).get("execution_state") == "idle"):
                    got_idle = True
        end = time.perf_counter() if idle == "timed" else replied_at
        return end - t0

    def execute(self, code: str = "pass") -> float:
        content = {"code": code, "silent": False, "store_history": False,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        return self._round_trip(self.shell, "execute_request", content, idle="timed")

    def control_request(self, msg_type: str, kernel_sees_it: bool) -> float:
        """Time until the reply; the kernel's idle is awaited after, if it handles the request."""
        return self._round_trip(self.control, msg_type, {},
                                idle="after" if kernel_sees_it else "none")

    def wait_connected(self, timeout: float = READY_TIMEOUT) -> None:
        """Until a kernel_info on shell gets its reply and its idle on iopub (subscribed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(BenchmarkError):
                self._round_trip(self.shell, "kernel_info_request", {}, timeout=0.5)
                return
        raise BenchmarkError(f"kernel not answering on shell and iopub within {timeout:g} s")


def measure_round_trips(probers: dict[str, Prober], n: int, warmup: int,
                        progress: Callable[[str], None]) -> dict[str, dict[str, Samples]]:
    """Interleaved round trips on both paths: execute, kernel_info and interrupt on control."""
    tests: dict[str, Callable[[Prober], float]] = {
        "execute": lambda p: p.execute("pass"),
        "kernel_info": lambda p: p.control_request("kernel_info_request", kernel_sees_it=True),
        "interrupt": lambda p: p.control_request(
            "interrupt_request", kernel_sees_it=p is probers["direct"]),
    }
    results: dict[str, dict[str, Samples]] = {}
    for name, run in tests.items():
        progress(f"{name}: {warmup} warm-up + {n} interleaved round trips per path")
        for _ in range(warmup):
            for path in PATHS:
                run(probers[path])
        samples = {path: Samples() for path in PATHS}
        with gc_paused():
            for order in interleaved(n):
                for path in order:
                    samples[path].values.append(run(probers[path]))
        results[name] = samples
    return results


# ---------------------------------------------------------------------- start to ready


@dataclass
class StartSample:
    seconds: float
    setup_seconds: float | None = None  # nanny: until its connection file parsed


def _ready_client(client: BlockingKernelClient) -> None:
    client.start_channels()
    try:
        client.wait_for_ready(timeout=READY_TIMEOUT)
    finally:
        client.stop_channels()


def start_to_ready(path: str, kernel_name: str, workdir: Path,
                   tracker: ProcessTracker) -> StartSample:
    """One start, timed until ``wait_for_ready()`` returns; the kernel is stopped after."""
    with contextlib.ExitStack() as stack:
        if path in ("direct", "provisioner"):  # the provisioner's spec names a nanny-io one
            km, t0 = start_direct(kernel_name, workdir, tracker, stack)
            _ready_client(km.client())
            return StartSample(time.perf_counter() - t0)
        nanny = start_nanny(kernel_name, workdir, tracker, stack, wait=False)
        path = Path(nanny.args[nanny.args.index("--connection-file") + 1])
        wait_connection_file(nanny, path)
        setup = time.perf_counter() - nanny.started_at
        client = BlockingKernelClient()
        client.load_connection_file(str(path))
        _ready_client(client)
        return StartSample(time.perf_counter() - nanny.started_at, setup)


def install_provisioner_spec(kernel_name: str, workdir: Path) -> str:
    """``kernel_name`` wrapped for the nanny-io provisioner in a private Jupyter data dir
    (put first on ``JUPYTER_PATH``); its name."""
    from nanny_io.install import InstallOptions, install

    prefix = workdir / "prefix"
    data = str(prefix / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([data, os.environ.get("JUPYTER_PATH", "")])
    name, _ = install(InstallOptions(source=kernel_name, name=f"{kernel_name}-bench-nanny",
                                     prefix=str(prefix)))  # fmt: skip
    return name


def measure_starts(kernel_name: str, reps: int, workdir: Path, tracker: ProcessTracker,
                   progress: Callable[[str], None]) -> dict[str, list[StartSample]]:
    progress(f"start-to-ready: 1 warm-up + {reps} interleaved starts per path")
    names = {path: kernel_name for path in START_PATHS}
    names["provisioner"] = install_provisioner_spec(kernel_name, workdir)
    for path in START_PATHS:  # warm the page cache and jupyter_client's lazy imports
        start_to_ready(path, names[path], workdir, tracker)
    starts: dict[str, list[StartSample]] = {path: [] for path in START_PATHS}
    for i in range(reps):
        for path in START_PATHS if i % 2 == 0 else START_PATHS[::-1]:
            starts[path].append(start_to_ready(path, names[path], workdir, tracker))
    return starts


# ---------------------------------------------------------------------- report


def summarize(rt: dict[str, dict[str, Samples]], starts: dict[str, list[StartSample]],
              args: argparse.Namespace, leaked: int) -> dict[str, Any]:
    ex, ki, intr = rt["execute"], rt["kernel_info"], rt["interrupt"]
    start_direct_s = statistics.median(s.seconds for s in starts["direct"])
    start_nanny_s = statistics.median(s.seconds for s in starts["nanny"])
    start_provisioner_s = statistics.median(s.seconds for s in starts["provisioner"])
    setup = [s.setup_seconds for s in starts["nanny"] if s.setup_seconds is not None]
    ms = 1e3
    summary: dict[str, Any] = {
        "benchmark": "core",
        "kernel": args.kernel,
        "n": args.n,
        "reps": args.reps,
        "execute_direct_median_ms": ex["direct"].median * ms,
        "execute_direct_p90_ms": ex["direct"].p90 * ms,
        "execute_nanny_median_ms": ex["nanny"].median * ms,
        "execute_nanny_p90_ms": ex["nanny"].p90 * ms,
        "execute_ratio": ex["nanny"].median / ex["direct"].median,
        "control_direct_median_ms": ki["direct"].median * ms,
        "control_direct_p90_ms": ki["direct"].p90 * ms,
        "control_nanny_median_ms": ki["nanny"].median * ms,
        "control_nanny_p90_ms": ki["nanny"].p90 * ms,
        "control_added_ms": (ki["nanny"].median - ki["direct"].median) * ms,
        "interrupt_direct_median_ms": intr["direct"].median * ms,
        "interrupt_nanny_median_ms": intr["nanny"].median * ms,
        "start_direct_median_s": start_direct_s,
        "start_nanny_median_s": start_nanny_s,
        "start_ratio": start_nanny_s / start_direct_s,
        "start_provisioner_median_s": start_provisioner_s,
        "start_provisioner_ratio": start_provisioner_s / start_direct_s,
        "nanny_setup_median_s": statistics.median(setup),
        "leaked_processes": leaked,
    }
    summary["targets_met"] = {
        "execute_ratio": summary["execute_ratio"] <= TARGET_EXECUTE_RATIO,
        "control_added_ms": summary["control_added_ms"] <= TARGET_CONTROL_ADDED_MS,
        "start_ratio": summary["start_ratio"] <= TARGET_START_RATIO,
        "start_provisioner_ratio": summary["start_provisioner_ratio"] <= TARGET_START_RATIO,
    }
    return summary


def print_table(s: dict[str, Any]) -> None:
    def verdict(key: str) -> str:
        return "ok" if s["targets_met"][key] else "MISSED"

    rows = [
        ("", "direct", "nanny", "nanny vs direct", "target"),
        ('execute("pass") median ms', f"{s['execute_direct_median_ms']:.3f}",
         f"{s['execute_nanny_median_ms']:.3f}", f"x{s['execute_ratio']:.3f}",
         f"<= x{TARGET_EXECUTE_RATIO:.2f} {verdict('execute_ratio')}"),
        ('execute("pass") p90 ms', f"{s['execute_direct_p90_ms']:.3f}",
         f"{s['execute_nanny_p90_ms']:.3f}",
         f"x{s['execute_nanny_p90_ms'] / s['execute_direct_p90_ms']:.3f}", ""),
        ("control kernel_info median ms", f"{s['control_direct_median_ms']:.3f}",
         f"{s['control_nanny_median_ms']:.3f}", f"{s['control_added_ms']:+.3f} ms",
         f"<= +{TARGET_CONTROL_ADDED_MS:.2f} ms {verdict('control_added_ms')}"),
        ("control kernel_info p90 ms", f"{s['control_direct_p90_ms']:.3f}",
         f"{s['control_nanny_p90_ms']:.3f}",
         f"{s['control_nanny_p90_ms'] - s['control_direct_p90_ms']:+.3f} ms", ""),
        ("control interrupt median ms", f"{s['interrupt_direct_median_ms']:.3f}",
         f"{s['interrupt_nanny_median_ms']:.3f}",
         f"{s['interrupt_nanny_median_ms'] - s['interrupt_direct_median_ms']:+.3f} ms",
         "(info)"),
        ("start-to-ready median s", f"{s['start_direct_median_s']:.3f}",
         f"{s['start_nanny_median_s']:.3f}", f"x{s['start_ratio']:.3f}",
         f"<= x{TARGET_START_RATIO:.2f} {verdict('start_ratio')}"),
        ("  nanny: connection file at s", "", f"{s['nanny_setup_median_s']:.3f}", "", "(info)"),
        ("start-to-ready, provisioner s", f"{s['start_direct_median_s']:.3f}",
         f"{s['start_provisioner_median_s']:.3f}", f"x{s['start_provisioner_ratio']:.3f}",
         f"<= x{TARGET_START_RATIO:.2f} {verdict('start_provisioner_ratio')}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\nnanny-io core benchmark: kernel {s['kernel']!r}, n={s['n']} round trips per path "
          f"(interleaved), {s['reps']} starts per path")
    print("(interrupt: answered by ipykernel directly, by the nanny itself through the nanny)")
    for i, row in enumerate(rows):
        numbers = [c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)]
        cells = [row[0].ljust(widths[0]), *numbers]
        print("  ".join([*cells, row[4]]).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * len(widths)))
    if s["leaked_processes"]:
        print(f"WARNING: {s['leaked_processes']} process(es) survived the benchmark")


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="round trips per path (default 300)")
    parser.add_argument("--warmup", type=int, default=50,
                        help="untimed round trips per path first (default 50)")
    parser.add_argument("--reps", type=int, default=5, help="starts per path (default 5)")
    parser.add_argument("--kernel", default="python3", help="kernelspec (default python3)")
    parser.add_argument("--quick", action="store_true",
                        help="small numbers for a CI smoke run (n=20, warmup=5, reps=1)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.reps = 20, 5, 1
    if args.n < 1 or args.reps < 1 or args.warmup < 0:
        parser.error("--n and --reps must be >= 1, --warmup >= 0")
    return args


def _interrupted(signum: int, frame: object) -> NoReturn:
    """Ctrl-C or SIGTERM: unwind (stopping every kernel), ignoring further signals meanwhile."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker
        ) -> tuple[dict[str, dict[str, Samples]], dict[str, list[StartSample]]]:
    def progress(text: str) -> None:
        if not args.json_only:
            print(f"... {text}", file=sys.stderr, flush=True)

    progress("starting one kernel per path for the round trips")
    with contextlib.ExitStack() as kernels:
        running = {path: launch_for_latency(path, args.kernel, workdir, tracker, kernels)
                   for path in PATHS}
        ctx = zmq.Context()
        kernels.callback(ctx.term)
        probers: dict[str, Prober] = {}
        for path, info in running.items():
            probers[path] = Prober(ctx, info)
            kernels.callback(probers[path].close)
            probers[path].wait_connected()
        rt = measure_round_trips(probers, args.n, args.warmup, progress)
        progress("stopping the round-trip kernels")
    starts = measure_starts(args.kernel, args.reps, workdir, tracker, progress)
    return rt, starts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    benchkit.compile_checkout()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    def setup(workdir: Path) -> None:
        os.environ["JUPYTER_RUNTIME_DIR"] = str(workdir / "runtime")

    result, status, leaked = benchkit.run_measurement(
        "bench_core", lambda workdir, tracker: run(args, workdir, tracker), setup
    )
    if result is None:
        return status
    summary = summarize(*result, args, leaked=leaked)
    return benchkit.finish(summary, args.json_only, lambda: print_table(summary))


if __name__ == "__main__":
    sys.exit(main())
