#!/usr/bin/env python3
"""Before and after, side by side: this checkout's nanny next to another checkout's, one run.

On a machine shared with other work, figures from two separate runs are not comparable; the
same run, interleaved, is. ``--baseline PATH`` names another checkout of nanny-io (its
directory goes first on the baseline nanny's PYTHONPATH; everything else, the kernel and the
client included, is the same). Runs rotate baseline, this, ceiling, ... and their order
alternates from one round to the next.

- **fd output**: a cell writes N MiB of 1 KiB lines to fd 1 (as ``bench_capture.py``); an
  unmodified BlockingKernelClient counts the ``stream`` text. MB/s and nanny CPU ms per MB.
  The frontend's ceiling (bare publisher of ready-made signed messages, 256 KiB each) is
  measured in the same rotation.
- **log FIFO**: 100-byte lines into ``$JUPYTER_KERNEL_LOG``, timed until a live log-channel
  subscriber sees the last one; lines/s and nanny CPU ms per MB.
- **nobody watching**: the fd output with no iopub subscriber, as the kernel times it.
- **latency of a small write**: a cell writes one line with ``os.write`` and sleeps; the time
  from the write (the kernel's clock) until the frontend has the text (the same clock).

Prints a table and one JSON line ``{"benchmark": "compare", ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import benchkit
import zmq
from bench_capture import (
    LOG_LINE,
    BarePublisher,
    ReplayProbe,
    SeqWatcher,
    fd_cell,
    ingest_published,
    make_jupyter_env,
    run_counting,
    start_nanny,
    timed_fd_cell,
)
from benchkit import BenchmarkError, ProcessTracker

from nanny_io.discovery import load_connection_info
from nanny_io.testing import NannyProcess

MiB = 1 << 20
MB = 1e6
CEILING_MESSAGE = 256 << 10
def start(path: str | None, workdir: Path, tracker: ProcessTracker,
          stack: contextlib.ExitStack) -> tuple[NannyProcess, Any]:
    """A nanny (from checkout ``path``, or this one) and a ready client to it."""
    checkout = path if path is not None else benchkit.THIS_CHECKOUT
    return start_nanny([], workdir, tracker, stack, checkout=checkout)


LATENCY_CELL = (
    "import os as _o, time as _t\n"
    "_o.write(1, b'%r\\n' % _t.time())\n"
    "_t.sleep(0.2)\n"
)


def write_latency(kc: Any) -> float:
    """Seconds from one small ``os.write`` in the kernel until the frontend has its text
    (the cell sleeps after it, so nothing but the nanny's own timer can flush it)."""
    from bench_capture import drain_iopub

    drain_iopub(kc)
    msg_id = kc.execute(LATENCY_CELL, store_history=False)
    latency = None
    while True:  # until the cell's idle: the next cell must not start while this one sleeps
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream" and latency is None:
            latency = time.time() - float(msg["content"]["text"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            if latency is None:
                raise BenchmarkError("the small write did not reach the frontend before idle")
            return latency


def unwatched_rate(nanny: NannyProcess, total: int) -> tuple[float, float]:
    """(the kernel's own MB/s, nanny CPU s) for ``total`` bytes with no iopub subscriber."""
    from jupyter_client.blocking.client import BlockingKernelClient

    shell = BlockingKernelClient()
    shell.load_connection_file(str(nanny.connection_file))
    shell.start_channels(iopub=False, stdin=False, hb=False, control=False)
    try:
        cpu0 = nanny.cpu_seconds()
        msg_id = shell.execute(timed_fd_cell(total, 64 << 10), user_expressions={"r": "_rate"})
        while (reply := shell.get_shell_msg(timeout=600))["parent_header"]["msg_id"] != msg_id:
            pass
        if reply["content"]["status"] != "ok":
            raise BenchmarkError(f"unwatched cell failed: {reply['content']}")
        rate = float(reply["content"]["user_expressions"]["r"]["data"]["text/plain"])
        return rate, nanny.cpu_seconds() - cpu0
    finally:
        shell.stop_channels()


def measure(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker) -> dict[str, Any]:
    total = args.fd_mib * MiB
    paths = {"baseline": args.baseline, "this": None}
    fd: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": [], "ceiling": []}
    log: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": []}
    unwatched: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": []}
    latency: dict[str, list[float]] = {"baseline": [], "this": []}
    with contextlib.ExitStack() as stack:
        nannies = {name: start(path, workdir, tracker, stack) for name, path in paths.items()}
        publisher = BarePublisher(tracker, stack)
        ctx: zmq.Context[Any] = zmq.Context()
        stack.callback(ctx.destroy, 0)
        probes = {}
        for name, (nanny, kc) in nannies.items():
            info = load_connection_info(nanny.connection_file)
            probes[name] = (SeqWatcher(ctx, info), ReplayProbe(ctx, info))
            run_counting(kc, fd_cell(MiB, 64 << 10), MiB)  # warm-up
        publisher.run(MiB, CEILING_MESSAGE)
        order = ["baseline", "this", "ceiling"]
        for i in range(args.reps):
            for name in order if i % 2 == 0 else order[::-1]:
                if name == "ceiling":
                    run = publisher.run(total, CEILING_MESSAGE)
                    fd[name].append((run.received / run.seconds / MB, 0.0))
                    continue
                nanny, kc = nannies[name]
                cpu0 = nanny.cpu_seconds()
                run = run_counting(kc, fd_cell(total, 64 << 10), total)
                if run.received != total:
                    raise BenchmarkError(f"{name}: {run.received} of {total} bytes arrived")
                cpu = nanny.cpu_seconds() - cpu0
                fd[name].append((run.received / run.seconds / MB, cpu * 1e3 / (total / MB)))
                watcher, probe = probes[name]
                cpu0 = nanny.cpu_seconds()
                ingest = ingest_published(kc, watcher, probe, args.log_lines)
                cpu = nanny.cpu_seconds() - cpu0
                log[name].append((ingest.lines_s, cpu * 1e3 / (args.log_lines * LOG_LINE / MB)))
                latency[name] += [write_latency(kc) for _ in range(args.latency_cells)]
                print(f"... round {i + 1} {name}: fd {fd[name][-1][0]:.0f} MB/s, "
                      f"{fd[name][-1][1]:.2f} ms/MB; log {log[name][-1][0]:,.0f} lines/s, "
                      f"{log[name][-1][1]:.2f} ms/MB", file=sys.stderr, flush=True)
        for _, kc in nannies.values():  # the frontends leave: nobody subscribes to iopub
            kc.stop_channels()
        for i in range(args.reps):
            for name in list(paths) if i % 2 == 0 else list(paths)[::-1]:
                nanny = nannies[name][0]
                rate, cpu = unwatched_rate(nanny, total)
                unwatched[name].append((rate, cpu * 1e3 / (total / MB)))
                print(f"... round {i + 1} {name}: nobody watching, the kernel writes at "
                      f"{rate:.0f} MB/s", file=sys.stderr, flush=True)

    def med(rows: list[tuple[float, float]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    s: dict[str, Any] = {"benchmark": "compare", "baseline": args.baseline,
                         "fd_mib": args.fd_mib, "log_lines": args.log_lines, "reps": args.reps,
                         "load_avg": list(os.getloadavg()),
                         "fd_ceiling_mb_s": med(fd["ceiling"], 0)}
    for name in paths:
        s[f"{name}_fd_mb_s"] = med(fd[name], 0)
        s[f"{name}_fd_of_ceiling"] = statistics.median(
            a[0] / c[0] for a, c in zip(fd[name], fd["ceiling"], strict=True))
        s[f"{name}_fd_cpu_ms_per_mb"] = med(fd[name], 1)
        s[f"{name}_log_lines_s"] = med(log[name], 0)
        s[f"{name}_log_cpu_ms_per_mb"] = med(log[name], 1)
        s[f"{name}_unwatched_mb_s"] = med(unwatched[name], 0)
        s[f"{name}_unwatched_cpu_ms_per_mb"] = med(unwatched[name], 1)
        s[f"{name}_write_latency_median_ms"] = statistics.median(latency[name]) * 1e3
        s[f"{name}_write_latency_max_ms"] = max(latency[name]) * 1e3
        s[f"{name}_ranges"] = {
            "fd_mb_s": [min(r[0] for r in fd[name]), max(r[0] for r in fd[name])],
            "fd_cpu_ms_per_mb": [min(r[1] for r in fd[name]), max(r[1] for r in fd[name])],
            "log_cpu_ms_per_mb": [min(r[1] for r in log[name]), max(r[1] for r in log[name])],
        }
    return s


def _ratio(this: float, baseline: float) -> str:
    """``this / baseline`` as ``x1.23``; a dash when the baseline read 0 (a CPU time under
    psutil's 10 ms resolution, in a tiny run)."""
    return f"x{this / baseline:.2f}" if baseline else "-"


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("measurement", "baseline", "this", "this / baseline"),
        (f"fd output to a frontend, MB/s ({s['fd_mib']} MiB)", f"{s['baseline_fd_mb_s']:.1f}",
         f"{s['this_fd_mb_s']:.1f}", _ratio(s['this_fd_mb_s'], s['baseline_fd_mb_s'])),
        ("  of the frontend's ceiling "
         f"({s['fd_ceiling_mb_s']:.0f} MB/s, 256 KiB messages)",
         f"{100 * s['baseline_fd_of_ceiling']:.0f} %", f"{100 * s['this_fd_of_ceiling']:.0f} %",
         ""),
        ("  nanny CPU ms per MB", f"{s['baseline_fd_cpu_ms_per_mb']:.2f}",
         f"{s['this_fd_cpu_ms_per_mb']:.2f}",
         _ratio(s['this_fd_cpu_ms_per_mb'], s['baseline_fd_cpu_ms_per_mb'])),
        (f"log FIFO ingest, lines/s ({s['log_lines']:,} lines, live subscriber)",
         f"{s['baseline_log_lines_s']:,.0f}", f"{s['this_log_lines_s']:,.0f}",
         _ratio(s['this_log_lines_s'], s['baseline_log_lines_s'])),
        ("  nanny CPU ms per MB", f"{s['baseline_log_cpu_ms_per_mb']:.2f}",
         f"{s['this_log_cpu_ms_per_mb']:.2f}",
         _ratio(s['this_log_cpu_ms_per_mb'], s['baseline_log_cpu_ms_per_mb'])),
        ("stdout with nobody watching, kernel's MB/s", f"{s['baseline_unwatched_mb_s']:.0f}",
         f"{s['this_unwatched_mb_s']:.0f}",
         _ratio(s['this_unwatched_mb_s'], s['baseline_unwatched_mb_s'])),
        ("  nanny CPU ms per MB", f"{s['baseline_unwatched_cpu_ms_per_mb']:.2f}",
         f"{s['this_unwatched_cpu_ms_per_mb']:.2f}", ""),
        ("one small os.write to the frontend, ms: median",
         f"{s['baseline_write_latency_median_ms']:.1f}",
         f"{s['this_write_latency_median_ms']:.1f}", ""),
        ("  max", f"{s['baseline_write_latency_max_ms']:.1f}",
         f"{s['this_write_latency_max_ms']:.1f}", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"\nbaseline: {s['baseline']}; medians of {s['reps']} interleaved rounds; "
          f"load average {s['load_avg'][0]:.2f} at the end")
    for i, row in enumerate(rows):
        print("  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in
                                                    zip(row[1:], widths[1:], strict=True))]))
        if i == 0:
            print("-" * (sum(widths) + 6))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="another checkout of nanny-io")
    parser.add_argument("--fd-mib", type=int, default=32, help="MiB of fd output per run (32)")
    parser.add_argument("--log-lines", type=int, default=500_000, help="lines per burst (500k)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--latency-cells", type=int, default=4,
                        help="single-write latency cells per round and nanny (4)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    if not (Path(args.baseline) / "nanny_io" / "__init__.py").is_file():
        parser.error(f"{args.baseline!r} is not a nanny-io checkout")
    benchkit.compile_checkout()
    benchkit.compile_checkout(Path(args.baseline))
    return benchkit.run_and_report(
        "bench_compare",
        lambda workdir, tracker: measure(args, workdir, tracker),
        json_only=args.json_only,
        table=print_table,
        setup=lambda workdir: make_jupyter_env(workdir, delimiters=False),
    )


if __name__ == "__main__":
    sys.exit(main())
