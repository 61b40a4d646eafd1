#!/usr/bin/env python3
"""Replay to a late joiner, before and after, interleaved in one run.

``--baseline PATH`` names another checkout of nanny-io. One nanny is started from each
checkout (``python -P``, the checkout first on PYTHONPATH) and its log FIFO filled with
100-byte lines; then, round after round in alternating order, a fresh client process of the
same checkout fetches the newest N records with ``BlockingLogClient(since_seq=...)`` and
counts them (``--records`` takes several sizes). Per run: the client's wall time (what the
replay target is about), the client's CPU time and the nanny's CPU time meanwhile. Without
``--baseline`` only this checkout runs.

Prints a table and one JSON line ``{"benchmark": "replay", ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchkit
import zmq
from bench_capture import (
    ReplayProbe,
    SeqWatcher,
    ingest_published,
    make_jupyter_env,
    start_nanny,
)
from benchkit import BenchmarkError, ProcessTracker

from nanny_io.discovery import load_connection_info
from nanny_io.testing import NannyProcess


def start(
    checkout: str, workdir: Path, ring: str, tracker: ProcessTracker, stack: contextlib.ExitStack
) -> tuple[NannyProcess, Any]:
    """A nanny from ``checkout`` and a ready kernel client to it."""
    return start_nanny(["--ring-size", ring], workdir, tracker, stack, checkout=checkout)


def client_main(connection_file: str, since_seq: int, profile: str | None) -> int:
    """One late joiner (run in a process of its own): prints its wall and CPU time as JSON."""
    from nanny_io.subscriber import BlockingLogClient, Records

    info = load_connection_info(Path(connection_file))
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    got = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    with BlockingLogClient(info, since_seq=since_seq) as client:
        for event in client.events(follow=False):
            if isinstance(event, Records):
                got += len(event.records)
    if profiler is not None:
        profiler.disable()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    print(json.dumps({"records": got, "seconds": seconds, "cpu": cpu}), flush=True)
    return 0


def run_client(
    checkout: str, connection_file: Path, since_seq: int, profile: str | None = None
) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--client",
        str(connection_file),
        "--since-seq",
        str(since_seq),
    ]
    if profile:
        cmd += ["--profile", profile]
    env = benchkit.checkout_env(checkout)
    out = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    if out.returncode != 0:
        raise BenchmarkError(f"client of {checkout} failed: {out.stderr.decode()[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def measure(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker) -> dict[str, Any]:
    paths = {"this": str(benchkit.THIS_CHECKOUT)}
    if args.baseline:
        paths = {"baseline": args.baseline, **paths}
    rows: dict[tuple[str, int], list[dict[str, float]]] = {
        (name, n): [] for n in args.records for name in paths
    }
    with contextlib.ExitStack() as stack:
        ctx: zmq.Context[Any] = zmq.Context()
        stack.callback(ctx.destroy, 0)
        nannies = {}
        for name, path in paths.items():
            nanny, kc = start(path, workdir, args.ring, tracker, stack)
            info = load_connection_info(nanny.connection_file)
            watcher, probe = SeqWatcher(ctx, info), ReplayProbe(ctx, info)
            stack.callback(probe.close)
            ingest_published(kc, watcher, probe, max(args.records) + 1000)
            watcher.close()
            nannies[name] = (nanny, probe.request(last=0)[1])
        names = list(paths)
        for i in range(args.reps):
            for count in args.records:
                for name in names if i % 2 == 0 else names[::-1]:
                    nanny, last = nannies[name]
                    profile = None
                    if args.profile_dir and i == 0:
                        profile = str(Path(args.profile_dir) / f"client-{name}-{count}.prof")
                    cpu0 = nanny.cpu_seconds()
                    run = run_client(paths[name], nanny.connection_file, last - count + 1, profile)
                    run["nanny_cpu"] = nanny.cpu_seconds() - cpu0
                    if run["records"] != count:
                        raise BenchmarkError(f"{name}: {run['records']} of {count} records")
                    rows[(name, count)].append(run)
                    print(
                        f"... round {i + 1} {name}, {count:,} records: {run['seconds']:.3f} s, "
                        f"client CPU {run['cpu']:.3f} s, nanny CPU {run['nanny_cpu']:.3f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    s: dict[str, Any] = {
        "benchmark": "replay",
        "baseline": args.baseline,
        "records": args.records,
        "reps": args.reps,
        "load_avg": list(os.getloadavg()),
    }
    for (name, count), runs in rows.items():
        for key in ("seconds", "cpu", "nanny_cpu"):
            values = [r[key] for r in runs]
            s[f"{name}_{count}_{key}"] = statistics.median(values)
            s[f"{name}_{count}_{key}_range"] = [min(values), max(values)]
    return s


def print_table(s: dict[str, Any], names: list[str]) -> None:
    print(f"replay to a late joiner, median of {s['reps']} interleaved rounds")
    print(f"{'records':>10} {'':10} {'wall s':>8} {'client CPU s':>13} {'nanny CPU s':>12}")
    for count in s["records"]:
        for name in names:
            key = f"{name}_{count}"
            print(
                f"{count:>10,} {name:10} {s[f'{key}_seconds']:8.3f} {s[f'{key}_cpu']:13.3f} "
                f"{s[f'{key}_nanny_cpu']:12.3f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="another checkout of nanny-io")
    parser.add_argument(
        "--records", default="1000000", help="records replayed, sizes separated by commas (1M)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--ring", default="512M", help="ring size of the nannies (512M)")
    parser.add_argument("--profile-dir", help="cProfile each side's first client into this dir")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument("--client", metavar="CONNECTION_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--since-seq", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args.client, args.since_seq, args.profile)
    if args.baseline and not (Path(args.baseline) / "nanny_io" / "__init__.py").is_file():
        parser.error(f"{args.baseline!r} is not a nanny-io checkout")
    if args.quick:
        args.records, args.reps, args.ring = "1000,20000", 2, "64M"
    try:
        args.records = [int(n) for n in args.records.split(",") if n.strip()]
    except ValueError:
        parser.error("--records takes counts separated by commas, e.g. 10000,1000000")
    if not args.records or min(args.records) < 1 or args.reps < 1:
        parser.error("--records and --reps must be >= 1")
    sides = ["baseline", "this"] if args.baseline else ["this"]
    return benchkit.run_and_report(
        "bench_replay",
        lambda workdir, tracker: measure(args, workdir, tracker),
        json_only=args.json_only,
        table=lambda summary: print_table(summary, sides),
        setup=lambda workdir: make_jupyter_env(workdir, delimiters=False),
    )


if __name__ == "__main__":
    sys.exit(main())
