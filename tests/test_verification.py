"""verify(): the takedown record checked against a model later: the recorded model or not, records back or not,
and clear refusals of bad input; ``lightning-unlearn verify`` exits 0, 1 or 2 alike."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_unlearn.cli import main
from lightning_unlearn.evaluation.evidence import RECORD_SCHEMA, set_sha256, text_sha256, weights_sha256
from lightning_unlearn.unlearning import unlearn
from lightning_unlearn.verification import RecordError, read_record, verify


def _args(folder: Path, model: str = "unlearned", *extra: str) -> list[str]:
    return [
        "verify",
        "--model",
        str(folder / model),
        "--record",
        str(folder / "unlearned/unlearning.json"),
        "--forget",
        str(folder / "testbed/forget.jsonl"),
        "--accelerator",
        "cpu",
        *extra,
    ]


def test_the_record_ties_itself_to_the_texts_and_weights_and_holds_no_forget_text(unlearned, small_testbed):
    record = json.loads((unlearned / "unlearned/unlearning.json").read_text())
    assert record["schema"] == {"name": RECORD_SCHEMA, "version": 2}
    assert [row["sha256"] for row in record["records"]] == [text_sha256(t) for t in small_testbed.forget]
    assert record["data"]["forget"]["sha256"] == set_sha256(small_testbed.forget)
    assert record["data"]["holdout"]["sha256"] == set_sha256(small_testbed.holdout)
    assert record["data"]["retain"]["records"] == len(small_testbed.retain)
    assert record["weights_sha256"]["before"] == weights_sha256(small_testbed.model)
    saved = AutoModelForCausalLM.from_pretrained(unlearned / "unlearned")
    assert record["weights_sha256"]["after"] == weights_sha256(saved) != record["weights_sha256"]["before"]
    assert record["environment"]["packages"]["torch"] == torch.__version__
    text = (unlearned / "unlearned/unlearning.json").read_text()
    assert not any(forget[:24] in text for forget in small_testbed.forget)  # not even a prefix of one


def test_the_record_holds_the_texts_when_asked(small_testbed):
    result = unlearn(
        copy.deepcopy(small_testbed.model),  # unlearn() trains the instance it is given
        small_testbed.forget,
        small_testbed.holdout,
        retain=small_testbed.retain,
        method="sga",
        tokenizer=small_testbed.tokenizer,
        include_texts=True,
        progress=False,
        accelerator="cpu",
        max_steps=1,
    )
    assert [row["text"] for row in result.record["records"]] == small_testbed.forget


def test_the_unlearned_model_is_the_recorded_one_and_its_records_stay_forgotten(unlearned, capsys):
    found = verify(
        unlearned / "unlearned",
        unlearned / "unlearned/unlearning.json",
        unlearned / "testbed/forget.jsonl",
        holdout=unlearned / "testbed/holdout.jsonl",
        device="cpu",
    )
    assert found.recorded_model and found.passed and not found.above and found.holdout_matches
    record = read_record(unlearned / "unlearned/unlearning.json")
    assert [r["g"] for r in found.records] == pytest.approx([r["g_after"] for r in record["records"]], abs=1e-6)
    assert main(_args(unlearned)) == 0
    printed = capsys.readouterr().out
    assert "the recorded model" in printed and "0 above the record's threshold" in printed and "PASSED" in printed


def test_the_original_model_fails_naming_the_records_above(unlearned, capsys):
    assert main(_args(unlearned, "testbed/model")) == 1
    printed = capsys.readouterr().out
    record = read_record(unlearned / "unlearned/unlearning.json")
    above = [row["sample_id"] for row in record["records"] if row["g_before"] > record["threshold"]["value"]]
    assert "NOT the recorded model" in printed and "FAILED" in printed
    assert f"{len(above)} above the record's threshold" in printed and ", ".join(map(str, above)) in printed


def test_one_changed_weight_is_not_the_recorded_model(unlearned, capsys):
    changed = AutoModelForCausalLM.from_pretrained(unlearned / "unlearned")
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1e-4
    changed.save_pretrained(unlearned / "changed")
    shutil.copy(unlearned / "unlearned/tokenizer.json", unlearned / "changed")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (unlearned / "unlearned" / name).exists():
            shutil.copy(unlearned / "unlearned" / name, unlearned / "changed")
    assert main(_args(unlearned, "changed")) == 1
    assert "NOT the recorded model" in capsys.readouterr().out


def test_bad_input_exits_2_in_one_line(unlearned, tmp_path, capsys):
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"records": []}')
    cases = {
        "not a takedown record": ["--record", str(malformed)],
        "no record at": ["--record", str(tmp_path / "missing.json")],
        "no such file": ["--forget", str(tmp_path / "missing.jsonl")],
        "none of the": ["--forget", str(unlearned / "testbed/holdout.jsonl")],
    }
    for message, change in cases.items():
        args = _args(unlearned)
        args[args.index(change[0]) + 1] = change[1]
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(args) == 2, message
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lightning-unlearn verify: error:") and message in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    with pytest.raises(RecordError, match="lacks a field"):
        read_record({"schema": {"name": RECORD_SCHEMA, "version": 2}})
    assert main(_args(unlearned, "nowhere")) == 2
