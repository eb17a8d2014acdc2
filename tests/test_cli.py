"""The command line: audit of a saved model on a text file, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from lightning_unlearn.cli import main


@pytest.fixture
def saved_model(small_testbed, tmp_path):
    small_testbed.model.save_pretrained(tmp_path / "model")
    small_testbed.tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_audit_flags_records_above_the_holdout_mean(small_testbed, saved_model, tmp_path, capsys):
    tb = small_testbed
    data = write_jsonl(tmp_path / "forget.jsonl", tb.forget)
    holdout = write_jsonl(tmp_path / "holdout.jsonl", tb.holdout)
    out_csv = tmp_path / "report" / "audit.csv"
    args = ["audit", "--model", str(saved_model), "--data", str(data), "--holdout", str(holdout)]
    assert main([*args, "--output", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(tb.forget)} samples" in printed and "(holdout mean)" in printed
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["sample_id"]) for r in rows] == list(range(len(tb.forget)))
    flagged = sum(r["above_threshold"] == "True" for r in rows)
    assert f"{flagged} above the threshold {tb.summary['holdout_g_mean']:.3f}" in printed
    # The most duplicated records are memorized far above unseen data.
    assert all(r["above_threshold"] == "True" for r, d in zip(rows, tb.duplicates, strict=True) if d >= 16)


def test_audit_errors_are_one_line(saved_model, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_unlearn.cli",
            "audit",
            "--model",
            str(saved_model),
            "--data",
            str(tmp_path / "missing.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lightning-unlearn audit: error: forget split: no such file: {tmp_path / 'missing.jsonl'}"
    ]
    assert main(["audit", "--model", str(tmp_path / "nowhere"), "--data", "x.jsonl"]) == 2
