"""Smoke test of benchmarks/bench_core.py: it runs end to end and reports sane numbers.

Only the shape of the report is checked, never the timing targets (CI machines are noisy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_core.py"

POSITIVE_KEYS = (
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
)


@pytest.mark.timeout(180)
def test_bench_core_quick_json(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json-only"],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json-only printed more than the JSON line:\n{proc.stdout}"
    report = json.loads(lines[-1])

    assert report["benchmark"] == "core"
    assert report["n"] > 0 and report["reps"] > 0
    for key in POSITIVE_KEYS:
        value = report[key]
        assert isinstance(value, (int, float)) and value > 0, f"{key} = {value!r}"
    assert isinstance(report["control_added_ms"], (int, float))  # may be negative
    assert report["leaked_processes"] == 0
    assert set(report["targets_met"]) == {"execute_ratio", "control_added_ms", "start_ratio"}
    assert all(isinstance(v, bool) for v in report["targets_met"].values())
