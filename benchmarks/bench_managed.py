#!/usr/bin/env python3
"""Capture under a kernel manager: what JupyterLab, jupyter_server and nbclient users get.

``bench_capture.py`` starts its nannies with ``nanny-io start``. Under Jupyter the nanny is
started by the ``nanny-io`` kernel provisioner instead (``nanny-io start --managed``, from a
kernelspec written by ``nanny-io install --capture``), and a managed nanny echoes every
captured line into the server's log with a tag (``[nanny-io 1234abcd stdout] ``). This
benchmark measures that path next to ``nanny-io start`` on the same capture kernelspec, in
one run, interleaved (managed, start, start, managed, ...):

- **stdout to a frontend**: a cell writes 1 KiB lines to fd 1 with ``os.write``; an unmodified
  ``BlockingKernelClient`` counts the ``stream`` text until the request's ``idle``. MB/s and
  the nanny's CPU per MB (psutil, the nanny process alone).
- **log FIFO**: a cell writes 100-byte lines to ``$JUPYTER_KERNEL_LOG``, timed until a live
  log subscriber sees the last line (the Kernel Log panel open). Lines/s and CPU per MB.

The managed nanny's stderr is a file, as a server's log would be: the echo costs what it
costs there (a terminal would cost more). Prints a table, then one JSON line
``{"benchmark": "managed", ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import bench_capture as capture
import benchkit
import psutil
import zmq
from benchkit import BenchmarkError, ProcessTracker

from nanny_io.discovery import load_connection_info

MB = 1e6
MANAGED_SPEC = f"{capture.CAPTURE_SPEC}-nanny"  # what nanny-io install --capture writes


def install_managed(workdir: Path) -> None:
    """``nanny-io install --capture`` of the capture kernelspec, under the private JUPYTER_PATH."""
    prefix = workdir / "prefix"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nanny_io",
            "install",
            capture.CAPTURE_SPEC,
            "--capture",
            "--prefix",
            str(prefix),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    os.environ["JUPYTER_PATH"] += os.pathsep + str(prefix / "share" / "jupyter")


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """This process's fd 2 is ``path`` meanwhile: what it starts inherits it (the server's log)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Side:
    """One nanny and a ready client: ``managed`` (a KernelManager with the provisioner) or
    ``start`` (``nanny-io start`` on the capture kernelspec)."""

    def __init__(
        self, name: str, workdir: Path, tracker: ProcessTracker, stack: contextlib.ExitStack
    ) -> None:
        self.name = name
        if name == "managed":
            from jupyter_client import KernelManager

            km = KernelManager(kernel_name=MANAGED_SPEC)
            with stderr_to(workdir / "server.log"):
                km.start_kernel()
            stack.callback(km.shutdown_kernel, now=True)
            self.kc = km.client()
            self.kc.start_channels()
            stack.callback(self.kc.stop_channels)
            self.kc.wait_for_ready(timeout=capture.READY_TIMEOUT)
            if type(km.provisioner).__name__ != "NannyProvisioner":
                raise BenchmarkError(f"{MANAGED_SPEC} did not start through the provisioner")
            self.pid = km.provisioner.process.pid
            connection_file = Path(km.connection_file)
            tracker.add_tree(self.pid)
        else:
            nanny, self.kc = capture.start_nanny([], workdir, tracker, stack)
            self.pid = nanny.pid
            connection_file = nanny.connection_file
        self.proc = psutil.Process(self.pid)
        info = load_connection_info(connection_file)
        ctx: zmq.Context[Any] = zmq.Context()
        stack.callback(ctx.term)
        self.probe = capture.ReplayProbe(ctx, info)
        stack.callback(self.probe.close)
        self.watcher = capture.SeqWatcher(ctx, info)
        stack.callback(self.watcher.close)
        capture.run_counting(self.kc, capture.fd_cell(1 << 20, 64 << 10), 1 << 20)  # warm-up
        capture.run_counting(self.kc, capture.log_cell(10_000), 0)

    def cpu(self) -> float:
        times = self.proc.cpu_times()
        return times.user + times.system

    def stdout(self, total: int) -> tuple[float, float]:
        """(MB/s, nanny CPU ms per MB) of ``total`` bytes of 1 KiB lines to the frontend."""
        cpu0 = self.cpu()
        run = capture.run_counting(self.kc, capture.fd_cell(total, 64 << 10), total)
        cpu = self.cpu() - cpu0
        if run.received < total:
            raise BenchmarkError(f"{self.name}: {total - run.received} bytes of stdout lost")
        return total / MB / run.seconds, cpu * 1000 / (total / MB)

    def log(self, lines: int) -> tuple[float, float]:
        """(lines/s, nanny CPU ms per MB) of ``lines`` 100-byte log FIFO lines."""
        cpu0 = self.cpu()
        run = capture.ingest_published(self.kc, self.watcher, self.probe, lines)
        cpu = self.cpu() - cpu0
        return run.lines_s, cpu * 1000 / (lines * capture.LOG_LINE / MB)


def measure(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker) -> dict[str, Any]:
    capture.make_jupyter_env(workdir, delimiters=False)
    install_managed(workdir)
    with contextlib.ExitStack() as stack:
        sides = {name: Side(name, workdir, tracker, stack) for name in ("managed", "start")}
        results: dict[str, dict[str, list[float]]] = {
            name: {"fd_mb_s": [], "fd_cpu": [], "log_lines_s": [], "log_cpu": []} for name in sides
        }
        for rep in range(args.reps):
            order = ["managed", "start"] if rep % 2 == 0 else ["start", "managed"]
            for name in order:
                side = sides[name]
                rate, cpu = side.stdout(args.fd_mib << 20)
                lines_s, log_cpu = side.log(args.log_lines)
                out = results[name]
                out["fd_mb_s"].append(rate)
                out["fd_cpu"].append(cpu)
                out["log_lines_s"].append(lines_s)
                out["log_cpu"].append(log_cpu)
                capture.say(
                    args,
                    f"round {rep + 1} {name}: stdout {rate:.0f} MB/s, "
                    f"{cpu:.2f} ms/MB; log {lines_s:,.0f} lines/s, "
                    f"{log_cpu:.2f} ms/MB",
                )
        echoed = (workdir / "server.log").stat().st_size
    summary: dict[str, Any] = {
        "benchmark": "managed",
        "fd_mib": args.fd_mib,
        "log_lines": args.log_lines,
        "reps": args.reps,
        "server_log_bytes": echoed,
        "load_avg": os.getloadavg(),
    }
    for name, out in results.items():
        for key, values in out.items():
            summary[f"{name}_{key}"] = statistics.median(values)
    return summary


def print_table(s: dict[str, Any]) -> None:
    print(
        f"\nmedians of {s['reps']} interleaved rounds; load average "
        f"{s['load_avg'][0]:.2f} at the end; the managed nanny's echo wrote "
        f"{s['server_log_bytes'] / MB:,.0f} MB to the server's log"
    )
    print(f"{'measurement':<52}{'managed':>12}{'start':>12}{'managed / start':>17}")
    print("-" * 93)
    rows = [
        (f"stdout to a frontend, MB/s ({s['fd_mib']} MiB of 1 KiB lines)", "fd_mb_s", "{:.0f}"),
        ("  nanny CPU ms per MB", "fd_cpu", "{:.2f}"),
        (
            f"log FIFO, lines/s ({s['log_lines']:,} lines, live subscriber)",
            "log_lines_s",
            "{:,.0f}",
        ),
        ("  nanny CPU ms per MB", "log_cpu", "{:.2f}"),
    ]
    for label, key, fmt in rows:
        managed, start = s[f"managed_{key}"], s[f"start_{key}"]
        print(
            f"{label:<52}{fmt.format(managed):>12}{fmt.format(start):>12}"
            f"{'x%.2f' % (managed / start):>17}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--fd-mib", type=int, default=64, help="MiB of stdout per round (64)")
    add("--log-lines", type=int, default=1_000_000, help="log FIFO lines per round (1,000,000)")
    add("--reps", type=int, default=4, help="interleaved rounds (4)")
    add("--quick", action="store_true", help="CI-sized: 1 round of 2 MiB and 20,000 lines")
    add("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.quick:
        args.fd_mib, args.log_lines, args.reps = 2, 20_000, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    benchkit.compile_checkout()
    return benchkit.run_and_report(
        "bench_managed",
        lambda workdir, tracker: measure(args, workdir, tracker),
        json_only=args.json_only,
        table=print_table,
    )


if __name__ == "__main__":
    sys.exit(main())
