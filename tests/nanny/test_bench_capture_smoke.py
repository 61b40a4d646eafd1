"""Smoke test of benchmarks/bench_capture.py: it runs end to end and reports sane numbers.

Only the shape of the report is checked, never the timing targets (CI machines are noisy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_capture.py"

POSITIVE_KEYS = (
    "fd_bytes",
    "fd_direct_mb_s",
    "fd_nanny_mb_s",
    "fd_ratio",
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


def _positive(report: dict[str, object], key: str) -> None:
    value = report[key]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} = {value!r}"
    assert value > 0, f"{key} = {value!r}"


@pytest.mark.timeout(240)
def test_bench_capture_quick_json(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json-only"],
        capture_output=True,
        text=True,
        timeout=230,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json-only printed more than the JSON line:\n{proc.stdout}"
    report = json.loads(lines[-1])

    assert report["benchmark"] == "capture"
    assert report["quick"] is True
    for key in POSITIVE_KEYS:
        _positive(report, key)
    assert report["fanout_subscribers"], "no fan-out measured"
    for n in report["fanout_subscribers"]:
        _positive(report, f"fanout_{n}_seconds")
        _positive(report, f"fanout_{n}_records_s")
    curve = report["rss_curve"]
    assert len(curve) == 4
    assert all(written > 0 and rss > 0 for written, rss in curve)
    assert [written for written, _ in curve] == sorted(written for written, _ in curve)
    assert report["leaked_processes"] == 0
    assert set(report["targets_met"]) == {"fd_ratio", "ingest_lines_s", "replay_s", "rss"}
    assert all(isinstance(v, bool) for v in report["targets_met"].values())
