#!/usr/bin/env python3
"""Performance report: every nanny-io benchmark run side by side, as ratios and curves.

Runs ``bench_core.py`` and ``bench_capture.py`` (several times, at growing sizes) one after
the other as subprocesses of this script, each with ``--json-only``, parses their JSON lines
and prints one table of the nanny-vs-baseline comparisons with their targets, then one small
table per curve (how each cost scales with load), and last one JSON line
``{"benchmark": "report", ...}``.

Sub-runs (default sizes; ``--quick`` shrinks every one of them):

- ``core``: ``bench_core.py`` (execute("pass") and control round trips, start-to-ready);
- ``capture``: ``bench_capture.py`` at its default sizes (64 MiB of fd output, 2M-line log
  ingest, fan-out to 1/16/64 subscribers, replay of 10^6 records, 1 GiB RSS curve);
- ``capture-curve-N``: ``bench_capture.py`` at smaller sizes (fd output 8/16/32 MiB, ingest of
  250k/500k/1M lines, replay of 10^4/10^5/10^6 records), to fill in the curves; their other
  measurements are kept tiny and are not reported;
- ``capture-line-100`` and ``capture-line-16384``: fd output of 100-byte and 16 KiB lines
  (the other runs write 1 KiB lines), for the line-length curve;
- a reference hop, measured here: a zmq round trip directly vs through a libzmq proxy process
  (C, no Python), the floor of what any extra process in a message path costs.

With ``--repeat N`` (default 3; 1 with ``--quick``) the whole sequence runs N times, round
robin, and every figure is the median over the repeats.

This script makes itself a child subreaper (Linux), so that a process orphaned by a
sub-benchmark is re-parented to it: after every sub-run it checks that no process of the run
is left, kills and reports any. Sub-benchmarks get SIGTERM if this script dies. Ctrl-C or
SIGTERM stop the running sub-benchmark cleanly (it stops its kernels) before exiting 130.
A sub-benchmark that fails (non-zero exit, no JSON line) stops the report: its stderr tail is
printed and its exit status is returned.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import psutil

HERE = Path(__file__).resolve().parent
BENCH_CORE = HERE / "bench_core.py"
BENCH_CAPTURE = HERE / "bench_capture.py"
MiB = 1 << 20
MB = 1e6
LOG_LINE = 100  # bytes per log line in bench_capture

# Targets (the same as the sub-benchmarks'; repeated here so the report states them).
TARGET_EXECUTE_RATIO = 1.05
TARGET_CONTROL_ADDED_MS = 0.2
TARGET_START_RATIO = 1.10
TARGET_FD_OF_CEILING = 0.8  # nanny fd output / the frontend's ceiling, same run
TARGET_CPU_MS_PER_MB_STDOUT = 2.0
TARGET_CPU_MS_PER_MB_LOG = 3.0
TARGET_INGEST_LINES_S = 2_000_000
TARGET_UNWATCHED_MB_S = 500.0
TARGET_REPLAY_S = 1.0
RSS_SLACK = 64 * MiB

STOP_GRACE = 60.0  # seconds after SIGTERM before a sub-benchmark's tree is SIGKILLed
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class ReportError(Exception):
    """A sub-benchmark failed; ``status`` is the exit status to propagate."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- the plan


@dataclass
class SubRun:
    name: str
    script: Path
    args: list[str]
    timeout: float
    results: list[dict[str, Any]] = field(default_factory=list)  # one per repeat
    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # 1-minute load average at each start

    def argv(self) -> list[str]:
        return [sys.executable, str(self.script), *self.args, "--json-only"]

    @property
    def result(self) -> dict[str, Any]:
        """The repeats merged: every number is the median of its values over the repeats."""
        return merge(self.results)

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.results]


def merge(results: list[Any]) -> Any:
    """Element-wise median of JSON values of the same shape (counts of leaks are summed)."""
    first = results[0]
    if isinstance(first, dict):
        return {k: sum(r[k] for r in results) if k == "leaked_processes"
                else merge([r[k] for r in results]) for k in first}
    if isinstance(first, list) and all(len(r) == len(first) for r in results):
        return [merge([r[i] for r in results]) for i in range(len(first))]
    if isinstance(first, (int, float)) and not isinstance(first, bool) and any(
            r != first for r in results):
        return statistics.median(results)
    return first


@dataclass
class CurvePoint:
    fd_mib: int
    log_lines: int
    replay_records: int


# The curve runs keep their other measurements tiny: one fan-out subscriber, a small RSS run.
CURVE_FILLER = ["--fanout", "1", "--fd-reps", "3"]
FULL_CURVE = [CurvePoint(8, 250_000, 10_000), CurvePoint(16, 500_000, 100_000),
              CurvePoint(32, 1_000_000, 1_000_000)]
QUICK_CURVE = [CurvePoint(2, 50_000, 1_000), CurvePoint(4, 100_000, 10_000)]
#: Line lengths of the fd output curve (the default run has 1 KiB lines).
LINE_CURVE = [100, 16384]


def plan(quick: bool) -> list[SubRun]:
    if quick:
        runs = [SubRun("core", BENCH_CORE, ["--quick"], 300),
                SubRun("capture", BENCH_CAPTURE, ["--quick"], 300)]
        curve, filler = QUICK_CURVE, ["--fanout-lines", "2000", "--rss-mib", "16",
                                      "--log-ring", "128M", "--fanout", "1", "--fd-reps", "1"]
    else:
        runs = [SubRun("core", BENCH_CORE, [], 1800),
                SubRun("capture", BENCH_CAPTURE, [], 3600)]
        curve, filler = FULL_CURVE, ["--fanout-lines", "10000", "--rss-mib", "64",
                                     "--log-ring", "512M", *CURVE_FILLER]
    for i, point in enumerate(curve, 1):
        runs.append(SubRun(f"capture-curve-{i}", BENCH_CAPTURE,
                           ["--fd-mib", str(point.fd_mib), "--log-lines", str(point.log_lines),
                            "--replay-records", str(point.replay_records), *filler],
                           900 if not quick else 300))
    small = curve[0]
    for line in LINE_CURVE:
        runs.append(SubRun(f"capture-line-{line}", BENCH_CAPTURE,
                           ["--fd-mib", str(curve[-1].fd_mib), "--fd-line", str(line),
                            "--log-lines", str(small.log_lines),
                            "--replay-records", str(small.replay_records), *filler],
                           900 if not quick else 300))
    return runs


# ---------------------------------------------------------------------- running them


def _child_setup() -> None:
    """In the child: SIGTERM when this script dies; default signal dispositions."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def become_subreaper() -> bool:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    return False


def reap_leftovers(grace: float = 5.0) -> list[str]:
    """Kill (and reap) every descendant still alive after ``grace`` s; their descriptions."""
    me = psutil.Process()
    try:
        _, alive = psutil.wait_procs(me.children(recursive=True), timeout=grace)
    except psutil.Error:
        alive = []
    found = []
    for proc in alive:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:120]}")
            proc.kill()
        except psutil.Error:
            continue
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # orphans re-parented to us (subreaper): reap them
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no children left at all
        if pid == 0:
            time.sleep(0.05)
    return found


def _tail(stream: IO[bytes], lines: int = 25) -> str:
    stream.seek(0)
    text = stream.read().decode(errors="replace").rstrip().splitlines()[-lines:]
    return "\n  ".join(text) if text else "(nothing)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the benchmarks then stop their kernels), SIGKILL the tree after a grace."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        proc.kill()
        proc.wait()


def run_one(run: SubRun, progress: bool) -> None:
    """Run ``run`` to completion; its parsed JSON line goes to ``run.result``."""
    if progress:
        print(f"... {run.name}: {' '.join(run.argv()[1:])}", file=sys.stderr, flush=True)
    run.loads.append(os.getloadavg()[0])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(run.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=_child_setup)
        try:
            status = proc.wait(run.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise ReportError(f"{run.name} took more than {run.timeout:g} s and was stopped; "
                              f"its stderr ends:\n  {_tail(err)}", 1) from None
        except BaseException:  # Ctrl-C / SIGTERM: let it stop its kernels first
            _stop(proc)
            raise
        finally:
            leftovers = reap_leftovers()
        seconds = time.perf_counter() - t0
        if leftovers:
            raise ReportError(f"{run.name} left processes behind (killed):\n  "
                              + "\n  ".join(leftovers), 2)
        if status != 0:
            code = status if status > 0 else 128 - status
            raise ReportError(f"{run.name} failed with exit status {status}; "
                              f"its stderr ends:\n  {_tail(err)}", code)
        out.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise ReportError(f"{run.name} printed no JSON line; its stderr ends:\n  "
                              f"{_tail(err)}", 1) from None
        warnings = _tail(err, 10) if err.tell() else ""
    if progress:
        print(f"    done in {seconds:.0f} s", file=sys.stderr, flush=True)
        if warnings:
            print(f"    its stderr ends:\n  {warnings}", file=sys.stderr, flush=True)
    run.results.append(result)
    run.seconds.append(seconds)


# ---------------------------------------------------------------------- the floor of a hop

HOP_ECHO = """
import sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind("tcp://127.0.0.1:*")
print(sock.last_endpoint.decode(), flush=True)
while True:
    sock.send_multipart(sock.recv_multipart())
"""
HOP_PROXY = """
import sys, zmq
ctx = zmq.Context()
front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
front.bind("tcp://127.0.0.1:*")
back.connect(sys.argv[1])
print(front.last_endpoint.decode(), flush=True)
zmq.proxy(front, back)
"""


def measure_hop(n: int, warmup: int = 200) -> dict[str, float]:
    """Round trip to a zmq echo process, directly and through a libzmq proxy process (C).

    The same 6-frame, ~1.2 KB message as a small Jupyter request, interleaved; medians in ms.
    What one extra process hop costs on this machine with no Python in the hop at all.
    """
    import zmq

    procs: list[subprocess.Popen[str]] = []
    ctx = zmq.Context()
    try:
        def spawn(code: str, *argv: str) -> str:
            proc = subprocess.Popen([sys.executable, "-c", code, *argv], text=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    preexec_fn=_child_setup)
            procs.append(proc)
            assert proc.stdout is not None
            return proc.stdout.readline().strip()

        echo = spawn(HOP_ECHO)
        proxy = spawn(HOP_PROXY, echo)
        socks = {}
        for path, url in (("direct", echo), ("proxy", proxy)):
            socks[path] = ctx.socket(zmq.DEALER)
            socks[path].linger = 0
            socks[path].connect(url)
        frames = [b"x" * 200] * 6
        times: dict[str, list[float]] = {"direct": [], "proxy": []}
        for i in range(warmup + n):
            for path in ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct"):
                sock = socks[path]
                t0 = time.perf_counter()
                sock.send_multipart(frames)
                if not sock.poll(10_000):
                    raise ReportError(f"hop measurement: no echo {path}", 1)
                sock.recv_multipart()
                if i >= warmup:
                    times[path].append(time.perf_counter() - t0)
        for sock in socks.values():
            sock.close(linger=0)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        ctx.term()
    direct = statistics.median(times["direct"]) * 1e3
    proxy_ms = statistics.median(times["proxy"]) * 1e3
    return {"hop_direct_ms": direct, "hop_proxy_ms": proxy_ms, "hop_added_ms": proxy_ms - direct}


# ---------------------------------------------------------------------- summary


def _versions() -> dict[str, str]:
    found = {}
    for name in ("nanny-io", "ipykernel", "jupyter_client", "pyzmq", "orjson", "isal", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def summarize(runs: list[SubRun], hops: list[dict[str, float]], quick: bool,
              load_start: Sequence[float], started: datetime.datetime,
              wall: float) -> dict[str, Any]:
    named = {r.name: r for r in runs}
    core, cap = named["core"].result, named["capture"].result
    curves = [r.result for r in runs if r.name.startswith("capture-curve-")]
    everything = [*curves, cap]  # smallest sizes first, the default-sized run last

    def fd_point(c: dict[str, Any]) -> dict[str, Any]:
        return {"bytes": c["fd_bytes"], "line_bytes": c["fd_line_bytes"],
                "direct_mb_s": c["fd_direct_mb_s"], "nanny_mb_s": c["fd_nanny_mb_s"],
                "ratio": c["fd_ratio"], "ceiling_mb_s": c["fd_ceiling_mb_s"],
                "of_ceiling": c["fd_of_ceiling"],
                "nanny_cpu_ms_per_mb": c["cpu_s_per_mb_stdout"] * 1e3}

    fd_curve = sorted(map(fd_point, everything), key=lambda p: p["bytes"])
    lined = [r.result for r in runs if r.name.startswith("capture-line-")]
    line_curve = sorted(map(fd_point, [*lined, curves[-1] if curves else cap]),
                        key=lambda p: p["line_bytes"])
    ingest_curve = sorted(({"lines": c["log_lines"], "lines_s": c["ingest_lines_s"],
                            "unobserved_lines_s": c["ingest_unobserved_lines_s"],
                            "mb_s": c["ingest_mb_s"],
                            "nanny_cpu_ms_per_mb": c["cpu_s_per_mb_log"] * 1e3}
                           for c in everything), key=lambda p: p["lines"])
    replay_curve = sorted(({"records": c["replay_records"], "raw_s": c["replay_raw_s"],
                            "client_s": c["replay_client_s"],
                            "client_records_s": c["replay_records"] / c["replay_client_s"],
                            "run": "default" if c is cap else "curve"}
                           for c in everything), key=lambda p: (p["records"], p["run"]))
    fanout_curve = [{"subscribers": n, "lines": cap["fanout_lines"],
                     "seconds": cap[f"fanout_{n}_seconds"],
                     "records_s": cap[f"fanout_{n}_records_s"],
                     "lost": cap[f"fanout_{n}_lost"]} for n in cap["fanout_subscribers"]]
    rss_curve = [{"written_bytes": w, "rss_bytes": r} for w, r in cap["rss_curve"]]
    rss_values = [r for _, r in cap["rss_curve"]]
    cpu_curve = [{"path": "stdout", "bytes": p["bytes"], "cpu_ms_per_mb": p["nanny_cpu_ms_per_mb"]}
                 for p in fd_curve]
    cpu_curve.append({"path": "stdout", "bytes": cap["rss_curve"][-1][0],
                      "cpu_ms_per_mb": cap["cpu_s_per_mb_stdout_rss_run"] * 1e3})
    cpu_curve += [{"path": "log", "bytes": p["lines"] * LOG_LINE,
                   "cpu_ms_per_mb": p["nanny_cpu_ms_per_mb"]} for p in ingest_curve]

    s: dict[str, Any] = {
        "benchmark": "report",
        "quick": quick,
        "date": started.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": _versions(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "kernel_release": platform.release(),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(wall, 1),
        "repeat": len(named["core"].results),
        "runs": [{"name": r.name, "args": r.args, "seconds": [round(x, 1) for x in r.seconds],
                  "load_1min_before": [round(x, 2) for x in r.loads]} for r in runs],
        "core_n": core["n"],
        "core_reps": core["reps"],
        "execute_direct_median_ms": core["execute_direct_median_ms"],
        "execute_nanny_median_ms": core["execute_nanny_median_ms"],
        "execute_ratio": core["execute_ratio"],
        "execute_added_ms": core["execute_nanny_median_ms"] - core["execute_direct_median_ms"],
        "control_direct_median_ms": core["control_direct_median_ms"],
        "control_nanny_median_ms": core["control_nanny_median_ms"],
        "control_added_ms": core["control_added_ms"],
        "interrupt_direct_median_ms": core["interrupt_direct_median_ms"],
        "interrupt_nanny_median_ms": core["interrupt_nanny_median_ms"],
        "start_direct_median_s": core["start_direct_median_s"],
        "start_nanny_median_s": core["start_nanny_median_s"],
        "start_ratio": core["start_ratio"],
        "start_added_s": core["start_nanny_median_s"] - core["start_direct_median_s"],
        "nanny_setup_median_s": core["nanny_setup_median_s"],
        "start_provisioner_median_s": core["start_provisioner_median_s"],
        "start_provisioner_ratio": core["start_provisioner_ratio"],
        **merge(hops),
        "fd_bytes": cap["fd_bytes"],
        "fd_direct_mb_s": cap["fd_direct_mb_s"],
        "fd_nanny_mb_s": cap["fd_nanny_mb_s"],
        "fd_ratio": cap["fd_ratio"],
        "fd_ceiling_1mib_mb_s": cap[f"fd_ceiling_{MiB}_mb_s"],
        "fd_ceiling_256kib_mb_s": cap[f"fd_ceiling_{256 << 10}_mb_s"],
        "fd_ceiling_mb_s": cap["fd_ceiling_mb_s"],
        "fd_of_ceiling": cap["fd_of_ceiling"],
        "unwatched_mb_s": cap["unwatched_mb_s"],
        "unwatched_raw_pipe_mb_s": cap["unwatched_raw_pipe_mb_s"],
        "unwatched_cpu_ms_per_mb": cap["unwatched_cpu_s_per_mb"] * 1e3,
        "ingest_lines_s": cap["ingest_lines_s"],
        "replay_records": cap["replay_records"],
        "replay_client_s": cap["replay_client_s"],
        "rss_ring_bytes": cap["rss_ring_bytes"],
        "rss_base_bytes": cap["rss_base_bytes"],
        "rss_peak_bytes": cap["rss_peak_bytes"],
        "rss_growth_bytes": rss_values[-1] - rss_values[0],
        "cpu_ms_per_mb_stdout": cap["cpu_s_per_mb_stdout"] * 1e3,
        "cpu_ms_per_mb_log": cap["cpu_s_per_mb_log"] * 1e3,
        "fd_curve": fd_curve,
        "line_curve": line_curve,
        "ingest_curve": ingest_curve,
        "fanout_curve": fanout_curve,
        "replay_curve": replay_curve,
        "rss_curve": rss_curve,
        "cpu_per_mb_curve": cpu_curve,
        "lost_records": sum(p["lost"] for p in fanout_curve) + cap["fd_nanny_lost_bytes"]
        + cap["rss_lost_bytes"],
        "leaked_processes": sum(r.result.get("leaked_processes", 0) for r in runs),
        "ranges": {key: [min(values), max(values)] for key, values in (
            ("execute_ratio", named["core"].values("execute_ratio")),
            ("control_added_ms", named["core"].values("control_added_ms")),
            ("start_ratio", named["core"].values("start_ratio")),
            ("start_provisioner_ratio", named["core"].values("start_provisioner_ratio")),
            ("fd_of_ceiling", named["capture"].values("fd_of_ceiling")),
            ("cpu_ms_per_mb_stdout",
             [1e3 * x for x in named["capture"].values("cpu_s_per_mb_stdout")]),
            ("cpu_ms_per_mb_log", [1e3 * x for x in named["capture"].values("cpu_s_per_mb_log")]),
        )},
    }
    s["targets_met"] = {
        "execute_ratio": s["execute_ratio"] <= TARGET_EXECUTE_RATIO,
        "control_added_ms": s["control_added_ms"] <= TARGET_CONTROL_ADDED_MS,
        "start_ratio": s["start_ratio"] <= TARGET_START_RATIO,
        "start_provisioner_ratio": s["start_provisioner_ratio"] <= TARGET_START_RATIO,
        "fd_of_ceiling": s["fd_of_ceiling"] >= TARGET_FD_OF_CEILING,
        "cpu_stdout": s["cpu_ms_per_mb_stdout"] <= TARGET_CPU_MS_PER_MB_STDOUT,
        "cpu_log": s["cpu_ms_per_mb_log"] <= TARGET_CPU_MS_PER_MB_LOG,
        "ingest_lines_s": s["ingest_lines_s"] >= TARGET_INGEST_LINES_S,
        "unwatched_mb_s": s["unwatched_mb_s"] >= TARGET_UNWATCHED_MB_S,
        "replay_s": s["replay_client_s"] <= TARGET_REPLAY_S,
        "rss": s["rss_peak_bytes"] <= s["rss_ring_bytes"] + RSS_SLACK,
    }
    return s


# ---------------------------------------------------------------------- printing


def _table(title: str, rows: list[tuple[str, ...]], right: Sequence[int] = ()) -> None:
    """A header row, a rule, then rows; columns listed in ``right`` are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for i, row in enumerate(rows):
        cells = [c.rjust(w) if j in right else c.ljust(w)
                 for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def _count(n: float) -> str:
    """10000 -> 10k, 1000000 -> 1M."""
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return f"{n:,.0f}"


def print_report(s: dict[str, Any]) -> None:
    def ok(key: str) -> str:
        return "ok" if s["targets_met"][key] else "MISSED"

    mib = 1 / MiB
    v = s["versions"]
    print(f"\nnanny-io performance report ({'quick' if s['quick'] else 'full'}), {s['date']}, "
          f"{s['cpus']} CPUs, {s['memory_gib']} GiB, Python {s['python']}, "
          f"ipykernel {v.get('ipykernel', '?')}, load average {s['load_avg_start'][0]:.2f} at "
          f"start, {s['load_avg_end'][0]:.2f} at end, {s['wall_s']:.0f} s")
    def spread(key: str, fmt: str) -> str:
        low, high = s["ranges"][key]
        return f"{low:{fmt}} .. {high:{fmt}}" if s["repeat"] > 1 else ""

    _table(f"Nanny vs baseline (medians; round trips and starts interleaved direct/nanny; "
           f"median of {s['repeat']} repeat(s), the range is over the repeats)", [
        ("measurement", "direct", "nanny", "nanny vs direct", "range", "target"),
        (f'execute("pass") round trip, ms (n={s["core_n"]})',
         f"{s['execute_direct_median_ms']:.3f}", f"{s['execute_nanny_median_ms']:.3f}",
         f"x{s['execute_ratio']:.3f} ({s['execute_added_ms']:+.3f} ms)",
         spread("execute_ratio", ".3f"), f"<= x{TARGET_EXECUTE_RATIO:.2f} {ok('execute_ratio')}"),
        ("control kernel_info round trip, ms", f"{s['control_direct_median_ms']:.3f}",
         f"{s['control_nanny_median_ms']:.3f}", f"{s['control_added_ms']:+.3f} ms",
         spread("control_added_ms", "+.3f"),
         f"<= +{TARGET_CONTROL_ADDED_MS:.1f} ms {ok('control_added_ms')}"),
        ("one libzmq proxy hop (C, no Python), round trip ms (info)",
         f"{s['hop_direct_ms']:.3f}", f"{s['hop_proxy_ms']:.3f}", f"{s['hop_added_ms']:+.3f} ms",
         "", ""),
        ("control interrupt round trip, ms (info)", f"{s['interrupt_direct_median_ms']:.3f}",
         f"{s['interrupt_nanny_median_ms']:.3f}",
         f"{s['interrupt_nanny_median_ms'] - s['interrupt_direct_median_ms']:+.3f} ms", "", ""),
        (f"start-to-ready, s (reps={s['core_reps']})", f"{s['start_direct_median_s']:.3f}",
         f"{s['start_nanny_median_s']:.3f}",
         f"x{s['start_ratio']:.3f} ({s['start_added_s'] * 1e3:+.0f} ms)",
         spread("start_ratio", ".3f"), f"<= x{TARGET_START_RATIO:.2f} {ok('start_ratio')}"),
        ("  through the provisioner (KernelManager, wrapped vs plain kernelspec), s", "",
         f"{s['start_provisioner_median_s']:.3f}", f"x{s['start_provisioner_ratio']:.3f}",
         spread("start_provisioner_ratio", ".3f"),
         f"<= x{TARGET_START_RATIO:.2f} {ok('start_provisioner_ratio')}"),
        (f"captured fd output to a frontend, MB/s ({s['fd_bytes'] // MiB} MiB)",
         f"{s['fd_direct_mb_s']:.1f}", f"{s['fd_nanny_mb_s']:.1f}", f"x{s['fd_ratio']:.2f}",
         "", "(info)"),
        ("  the frontend's ceiling, MB/s (bare publisher, 1 MiB / 256 KiB messages)",
         f"{s['fd_ceiling_1mib_mb_s']:.1f}", f"{s['fd_ceiling_256kib_mb_s']:.1f}", "", "", ""),
        ("  nanny fd output / that ceiling (the better of the two)", "",
         f"{100 * s['fd_of_ceiling']:.0f} %", "", spread("fd_of_ceiling", ".2f"),
         f">= {100 * TARGET_FD_OF_CEILING:.0f} % {ok('fd_of_ceiling')}"),
        ("nanny CPU per MB of stdout to a frontend, ms", "", f"{s['cpu_ms_per_mb_stdout']:.2f}",
         "", spread("cpu_ms_per_mb_stdout", ".2f"),
         f"<= {TARGET_CPU_MS_PER_MB_STDOUT:g} ms {ok('cpu_stdout')}"),
        ("nanny CPU per MB of log FIFO (live subscriber), ms", "",
         f"{s['cpu_ms_per_mb_log']:.2f}", "", spread("cpu_ms_per_mb_log", ".2f"),
         f"<= {TARGET_CPU_MS_PER_MB_LOG:g} ms {ok('cpu_log')}"),
        ("stdout with nobody watching: kernel's write rate, MB/s (direct = bare pipe)",
         f"{s['unwatched_raw_pipe_mb_s']:.0f}", f"{s['unwatched_mb_s']:.0f}", "", "",
         f">= {TARGET_UNWATCHED_MB_S:g} {ok('unwatched_mb_s')}"),
        ("log FIFO ingest, lines/s (largest burst)", "", f"{s['ingest_lines_s']:,.0f}", "", "",
         f">= {TARGET_INGEST_LINES_S:,} {ok('ingest_lines_s')}"),
        (f"replay of {_count(s['replay_records'])} records (BlockingLogClient), s", "",
         f"{s['replay_client_s']:.2f}", "", "", f"<= {TARGET_REPLAY_S:g} s {ok('replay_s')}"),
        (f"nanny RSS peak, MiB (ring {s['rss_ring_bytes'] // MiB} MiB)", "",
         f"{s['rss_peak_bytes'] * mib:.0f}", "", "",
         f"<= {(s['rss_ring_bytes'] + RSS_SLACK) // MiB} MiB {ok('rss')}"),
    ], right=(1, 2, 3, 4))
    print(f"direct = ipykernel {v.get('ipykernel', '?')} under a plain jupyter_client "
          "KernelManager; for fd output, ipykernel's own capture_fd_output.")
    print("ceiling = ready-made signed stream messages from a bare publisher process to the "
          "same client loop (an unmodified BlockingKernelClient).")
    packer = "orjson" if "orjson" in v else "the json module (orjson is not installed)"
    print(f"jupyter_client packs and parses messages with {packer}, in the client and the "
          "kernels alike: the ceiling depends on it.")

    _table("Captured fd output vs volume (1 KiB lines, 64 KiB writes)",
           [("output", "ipykernel MB/s", "nanny MB/s", "ceiling MB/s", "nanny/ceiling",
             "nanny CPU ms/MB")]
           + [(f"{p['bytes'] // MiB} MiB", f"{p['direct_mb_s']:.1f}", f"{p['nanny_mb_s']:.1f}",
               f"{p['ceiling_mb_s']:.1f}", f"{100 * p['of_ceiling']:.0f} %",
               f"{p['nanny_cpu_ms_per_mb']:.2f}") for p in s["fd_curve"]],
           right=(1, 2, 3, 4, 5))
    _table("Captured fd output vs line length (64 KiB writes)",
           [("line", "output", "ipykernel MB/s", "nanny MB/s", "ceiling MB/s", "nanny/ceiling",
             "nanny CPU ms/MB")]
           + [(f"{p['line_bytes']} B", f"{p['bytes'] // MiB} MiB", f"{p['direct_mb_s']:.1f}",
               f"{p['nanny_mb_s']:.1f}", f"{p['ceiling_mb_s']:.1f}",
               f"{100 * p['of_ceiling']:.0f} %", f"{p['nanny_cpu_ms_per_mb']:.2f}")
              for p in s["line_curve"]], right=(1, 2, 3, 4, 5, 6))
    _table("Log FIFO ingest vs burst size (100-byte lines)",
           [("lines", "lines/s (live subscriber)", "MB/s", "lines/s (no subscriber)")]
           + [(_count(p["lines"]), f"{p['lines_s']:,.0f}", f"{p['mb_s']:.1f}",
               f"{p['unobserved_lines_s']:,.0f}") for p in s["ingest_curve"]], right=(1, 2, 3))
    lines = s["fanout_curve"][0]["lines"] if s["fanout_curve"] else 0
    _table(f"Fan-out of a {_count(lines)}-line burst to N subscriber processes",
           [("subscribers", "seconds", "records/s (all)", "records/s (each)", "lost")]
           + [(str(p["subscribers"]), f"{p['seconds']:.2f}", f"{p['records_s']:,.0f}",
               f"{p['records_s'] / p['subscribers']:,.0f}", str(p["lost"]))
              for p in s["fanout_curve"]], right=(0, 1, 2, 3, 4))
    _table("Replay to a late joiner vs records",
           [("records", "raw DEALER s", "BlockingLogClient s", "records/s", "run")]
           + [(_count(p["records"]), f"{p['raw_s']:.3f}", f"{p['client_s']:.3f}",
               f"{p['client_records_s']:,.0f}", p["run"]) for p in s["replay_curve"]],
           right=(0, 1, 2, 3))
    _table(f"Nanny RSS vs stdout volume (--ring-size {s['rss_ring_bytes'] // MiB}M --no-spill)",
           [("stdout written", "nanny RSS MiB")]
           + [("at start (after 1 MiB)", f"{s['rss_base_bytes'] * mib:.0f}")]
           + [(f"{p['written_bytes'] // MiB} MiB", f"{p['rss_bytes'] * mib:.0f}")
              for p in s["rss_curve"]]
           + [("peak (sampled every 20 ms)", f"{s['rss_peak_bytes'] * mib:.0f}")], right=(1,))
    _table("Nanny CPU per MB captured",
           [("path", "volume", "CPU ms/MB")]
           + [("stdout to a frontend" if p["path"] == "stdout" else "log FIFO (live subscriber)",
               f"{p['bytes'] // MiB} MiB" if p["path"] == "stdout"
               else f"{p['bytes'] / MB:.0f} MB", f"{p['cpu_ms_per_mb']:.2f}")
              for p in s["cpu_per_mb_curve"]], right=(1, 2))
    missed = [k for k, met in s["targets_met"].items() if not met]
    print(f"\ntargets missed: {', '.join(missed) if missed else 'none'}")


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized runs of every sub-benchmark (well under 2 minutes)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument("--repeat", type=int, default=None,
                        help="run every sub-benchmark this many times, round robin, and report "
                             "medians (default 3; 1 with --quick)")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def _interrupted(signum: int, frame: object) -> NoReturn:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    if not become_subreaper() and not args.json_only:
        print("warning: could not become a child subreaper; orphans would not be seen",
              file=sys.stderr)
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    runs = plan(args.quick)
    hops: list[dict[str, float]] = []
    try:
        for i in range(args.repeat):
            for run in runs:
                if not args.json_only and args.repeat > 1:
                    print(f"[{i + 1}/{args.repeat}] ", file=sys.stderr, end="")
                run_one(run, progress=not args.json_only)
            hops.append(measure_hop(300 if args.quick else 2000))
    except KeyboardInterrupt:
        print("\nreport: interrupted; the running benchmark was stopped", file=sys.stderr)
        return 130
    except ReportError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return exc.status
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        for leftover in reap_leftovers(grace=1.0):
            print(f"WARNING: killed a leftover process: {leftover}", file=sys.stderr)
    summary = summarize(runs, hops, args.quick, load_start, started,
                        time.perf_counter() - t0)
    if not args.json_only:
        print_report(summary)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
