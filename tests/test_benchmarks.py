"""The benchmark scripts run (on tiny sizes) and report identical values, so they never rot."""

from __future__ import annotations

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
