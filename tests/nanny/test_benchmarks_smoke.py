"""Smoke tests of the benchmarks: each runs end to end (``--quick``) and reports sane numbers.

Only the shape of each report is checked, never the timing targets (CI machines are noisy);
the figures themselves are in docs/performance.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

CORE_KEYS = (
    "execute_direct_median_ms",
    "execute_direct_p90_ms",
    "execute_nanny_median_ms",
    "execute_nanny_p90_ms",
    "execute_ratio",
    "control_direct_median_ms",
    "control_direct_p90_ms",
    "control_nanny_median_ms",
    "control_nanny_p90_ms",
    "interrupt_direct_median_ms",
    "interrupt_nanny_median_ms",
    "start_direct_median_s",
    "start_nanny_median_s",
    "start_ratio",
    "nanny_setup_median_s",
    "start_provisioner_median_s",
    "start_provisioner_ratio",
)


CAPTURE_KEYS = (
    "fd_bytes",
    "fd_direct_mb_s",
    "fd_nanny_mb_s",
    "fd_ratio",
    "fd_ceiling_mb_s",
    "fd_of_ceiling",
    "unwatched_mb_s",
    "unwatched_raw_pipe_mb_s",
    "fd_nanny_messages_per_run",
    "fd_direct_messages_per_run",
    "ingest_lines_s",
    "ingest_mb_s",
    "ingest_unobserved_lines_s",
    "ingest_unobserved_mb_s",
    "replay_records",
    "replay_raw_s",
    "replay_client_s",
    "rss_ring_bytes",
    "rss_base_bytes",
    "rss_final_bytes",
    "rss_peak_bytes",
    "rss_output_mb_s",
    "cpu_s_per_mb_stdout",
    "cpu_s_per_mb_stdout_rss_run",
    "cpu_s_per_mb_log",
    "fd_direct_frontend_cpu_s_per_mb",
    "fd_nanny_frontend_cpu_s_per_mb",
)


REPORT_KEYS = (
    "execute_direct_median_ms",
    "execute_nanny_median_ms",
    "execute_ratio",
    "control_direct_median_ms",
    "control_nanny_median_ms",
    "start_direct_median_s",
    "start_nanny_median_s",
    "start_ratio",
    "start_provisioner_median_s",
    "start_provisioner_ratio",
    "fd_bytes",
    "fd_direct_mb_s",
    "fd_nanny_mb_s",
    "fd_ratio",
    "fd_ceiling_1mib_mb_s",
    "fd_ceiling_256kib_mb_s",
    "fd_of_ceiling",
    "unwatched_mb_s",
    "ingest_lines_s",
    "replay_records",
    "replay_client_s",
    "rss_ring_bytes",
    "rss_base_bytes",
    "rss_peak_bytes",
    "cpu_ms_per_mb_stdout",
    "cpu_ms_per_mb_log",
    "cpus",
    "hop_direct_ms",
    "hop_proxy_ms",
)

CURVES = {
    "fd_curve": ("bytes", {"direct_mb_s", "nanny_mb_s", "ceiling_mb_s", "of_ceiling"}),
    "line_curve": ("line_bytes", {"nanny_mb_s", "ceiling_mb_s", "of_ceiling"}),
    "ingest_curve": ("lines", {"lines_s", "unobserved_lines_s", "mb_s", "nanny_cpu_ms_per_mb"}),
    "fanout_curve": ("subscribers", {"seconds", "records_s", "lines"}),
    "replay_curve": ("records", {"raw_s", "client_s", "client_records_s"}),
    "rss_curve": ("written_bytes", {"rss_bytes"}),
    "cpu_per_mb_curve": ("bytes", {"cpu_ms_per_mb"}),
}

TARGETS = {
    "execute_ratio",
    "control_added_ms",
    "start_ratio",
    "start_provisioner_ratio",
    "fd_of_ceiling",
    "cpu_stdout",
    "cpu_log",
    "ingest_lines_s",
    "unwatched_mb_s",
    "replay_s",
    "rss",
}


def _positive(value: object, what: str) -> None:
    """A positive number; CPU times may read 0 in a quick run (10 ms clock resolution)."""
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} = {value!r}"
    if "cpu" in what:
        assert value >= 0, f"{what} = {value!r}"
    else:
        assert value > 0, f"{what} = {value!r}"


def _run(script: str, tmp_path: Path, timeout: float) -> dict[str, Any]:
    """``benchmarks/SCRIPT --quick --json-only`` in a private runtime dir; its JSON line."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--json-only"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json-only printed more than the JSON line:\n{proc.stdout}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


@pytest.mark.timeout(180)
def test_bench_core_quick_json(tmp_path: Path) -> None:
    report = _run("bench_core.py", tmp_path, 170)
    assert report["benchmark"] == "core"
    assert report["n"] > 0 and report["reps"] > 0
    for key in CORE_KEYS:
        _positive(report[key], key)
    assert isinstance(report["control_added_ms"], (int, float))  # may be negative
    assert report["leaked_processes"] == 0
    assert set(report["targets_met"]) == {
        "execute_ratio",
        "control_added_ms",
        "start_ratio",
        "start_provisioner_ratio",
    }
    assert all(isinstance(v, bool) for v in report["targets_met"].values())


@pytest.mark.timeout(240)
def test_bench_capture_quick_json(tmp_path: Path) -> None:
    report = _run("bench_capture.py", tmp_path, 230)
    assert report["benchmark"] == "capture"
    assert report["quick"] is True
    for key in CAPTURE_KEYS:
        _positive(report[key], key)
    assert report["fanout_subscribers"], "no fan-out measured"
    for n in report["fanout_subscribers"]:
        _positive(report[f"fanout_{n}_seconds"], f"fanout_{n}_seconds")
        _positive(report[f"fanout_{n}_records_s"], f"fanout_{n}_records_s")
    curve = report["rss_curve"]
    assert len(curve) == 4
    assert all(written > 0 and rss > 0 for written, rss in curve)
    assert [written for written, _ in curve] == sorted(written for written, _ in curve)
    assert report["leaked_processes"] == 0
    assert set(report["targets_met"]) == {
        "fd_of_ceiling",
        "cpu_stdout",
        "cpu_log",
        "ingest_lines_s",
        "replay_s",
        "rss",
        "unwatched_mb_s",
    }
    assert all(isinstance(v, bool) for v in report["targets_met"].values())


@pytest.mark.timeout(400)
def test_bench_report_quick_json(tmp_path: Path) -> None:
    report = _run("report.py", tmp_path, 390)
    assert report["benchmark"] == "report"
    assert report["quick"] is True
    for key in ("date", "python", "load_avg_start", "load_avg_end", "versions", "runs"):
        assert report[key], key
    assert len(report["load_avg_start"]) == 3
    assert {run["name"] for run in report["runs"]} >= {"core", "capture"}
    for key in REPORT_KEYS:
        _positive(report[key], key)
    assert isinstance(report["control_added_ms"], (int, float))  # may be negative
    for name, (x, ys) in CURVES.items():
        curve = report[name]
        assert len(curve) >= 2, f"{name} has fewer than 2 points: {curve}"
        for point in curve:
            _positive(point[x], f"{name}.{x}")
            for y in ys:
                _positive(point[y], f"{name}.{y}")
    for name in ("fd_curve", "line_curve", "ingest_curve", "rss_curve"):
        xs = [point[CURVES[name][0]] for point in report[name]]
        assert xs == sorted(xs) and len(set(xs)) == len(xs), f"{name} x values: {xs}"
    assert report["lost_records"] == 0
    assert report["leaked_processes"] == 0
    assert set(report["targets_met"]) == TARGETS
    assert all(isinstance(v, bool) for v in report["targets_met"].values())


@pytest.mark.timeout(240)
def test_bench_replay_quick_json(tmp_path: Path) -> None:
    report = _run("bench_replay.py", tmp_path, 230)
    assert report["benchmark"] == "replay"
    assert report["records"] == [1000, 20000] and report["reps"] == 2
    for count in report["records"]:
        for key in ("seconds", "cpu", "nanny_cpu"):
            _positive(report[f"this_{count}_{key}"], f"this_{count}_{key}")
    assert report["leaked_processes"] == 0


@pytest.mark.timeout(240)
def test_bench_managed_quick_json(tmp_path: Path) -> None:
    report = _run("bench_managed.py", tmp_path, 230)
    assert report["benchmark"] == "managed"
    assert report["reps"] == 1
    for side in ("managed", "start"):
        for key in ("fd_mb_s", "fd_cpu", "log_lines_s", "log_cpu"):
            _positive(report[f"{side}_{key}"], f"{side}_{key}")
    # the managed nanny echoed the log FIFO's lines, tagged, into the server's log
    assert report["server_log_bytes"] > report["log_lines"] * 100
    assert report["leaked_processes"] == 0
