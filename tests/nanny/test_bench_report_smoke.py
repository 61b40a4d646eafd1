"""Smoke test of benchmarks/report.py: every sub-benchmark runs and the report has its shape.

Only the shape of the report is checked, never the timing targets (CI machines are noisy).
``--quick`` takes about 20 s on a 2-vCPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "report.py"

POSITIVE_KEYS = (
    "execute_direct_median_ms",
    "execute_nanny_median_ms",
    "execute_ratio",
    "control_direct_median_ms",
    "control_nanny_median_ms",
    "start_direct_median_s",
    "start_nanny_median_s",
    "start_ratio",
    "fd_bytes",
    "fd_direct_mb_s",
    "fd_nanny_mb_s",
    "fd_ratio",
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
    "fd_curve": ("bytes", {"direct_mb_s", "nanny_mb_s", "ratio", "nanny_cpu_ms_per_mb"}),
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
    "fd_ratio",
    "ingest_lines_s",
    "replay_s",
    "rss",
}


def _positive(value: object, what: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} = {value!r}"
    assert value > 0, f"{what} = {value!r}"


@pytest.mark.timeout(400)
def test_bench_report_quick_json(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPORT), "--quick", "--json-only"],
        capture_output=True,
        text=True,
        timeout=390,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json-only printed more than the JSON line:\n{proc.stdout}"
    report = json.loads(lines[-1])

    assert report["benchmark"] == "report"
    assert report["quick"] is True
    for key in ("date", "python", "load_avg_start", "load_avg_end", "versions", "runs"):
        assert report[key], key
    assert len(report["load_avg_start"]) == 3
    assert {run["name"] for run in report["runs"]} >= {"core", "capture"}
    for key in POSITIVE_KEYS:
        _positive(report[key], key)
    assert isinstance(report["control_added_ms"], (int, float))  # may be negative
    for name, (x, ys) in CURVES.items():
        curve = report[name]
        assert len(curve) >= 2, f"{name} has fewer than 2 points: {curve}"
        for point in curve:
            _positive(point[x], f"{name}.{x}")
            for y in ys:
                _positive(point[y], f"{name}.{y}")
    for name in ("fd_curve", "ingest_curve", "rss_curve"):
        xs = [point[CURVES[name][0]] for point in report[name]]
        assert xs == sorted(xs) and len(set(xs)) == len(xs), f"{name} x values: {xs}"
    assert report["lost_records"] == 0
    assert report["leaked_processes"] == 0
    assert set(report["targets_met"]) == TARGETS
    assert all(isinstance(v, bool) for v in report["targets_met"].values())
