"""The benchmark scripts run (on tiny sizes) and report identical values, so they never rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memorization_speed_runs_and_values_are_identical():
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/memorization_speed.py",
            "--length",
            "16",
            "--batch",
            "2",
            "--n",
            "4",
            "--vocab",
            "64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rows = [line for line in out.splitlines() if re.search(r" (EL|MA) ", line)]
    assert len(rows) == 6, out
    assert all("True" in row for row in rows), out


def test_step_overhead_runs(tmp_path):
    env = os.environ | {"LIGHTNING_UNLEARN_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "benchmarks/step_overhead.py", "--small", "--steps", "4", "--warmup", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=env,
    ).stdout
    assert re.search(r"GA / bare = \d+\.\d+", out) and re.search(r"SGA / GA  = \d+\.\d+", out), out
