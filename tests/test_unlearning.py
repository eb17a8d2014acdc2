"""unlearn(): the holdout's size, the tokenizer it takes, the summary; the whole path runs in test_cli and
test_readme."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lightning_unlearn.unlearning import check_holdout_size, summary_text, unlearn
from tests.cli.test_main import UNLEARN


def test_the_holdout_must_place_a_quantile():
    with pytest.raises(ValueError, match=r"the holdout has 15 records.*at least 16"):
        check_holdout_size(15)
    with pytest.warns(UserWarning, match="the holdout has 63 records.*64 or more"):
        check_holdout_size(63)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_holdout_size(64)


def test_a_model_instance_without_a_source_needs_its_tokenizer(tiny_model):
    tiny_model.name_or_path = ""
    with pytest.raises(ValueError, match="give tokenizer= too"):
        unlearn(tiny_model, ["a b c"], ["d e f"] * 16, method="sga")


def test_the_summary_says_whether_the_rule_was_met():
    record = {
        "method": "sga-kl",
        "rule_met": False,
        "steps": 600,
        "forget_records": 32,
        "above_threshold": {"before": 32, "after": 3},
        "threshold": {"value": 0.3431, "interval": [0.31, 0.37], "holdout_records": 64},
        "holdout_nll": {"ratio": 1.2},
        "membership_auc": {"before": {"loss": 0.99}, "after": {"loss": 0.55}},
    }
    text = summary_text(record)
    assert (
        text.splitlines()[0] == "sga-kl: RULE NOT MET after 600 steps: 3 of 32 records above the threshold (before: 32)"
    )
    assert "threshold 0.3431" in text and "0.3100–0.3700" in text and "LOSS attack AUC 0.990 -> 0.550" in text


def _processes(*command: str, folder: Path, testbed_cache) -> subprocess.CompletedProcess:
    """``command`` in a fresh environment (no process group settings of earlier tests), from ``folder``."""
    from tests.distributed.test_checkpoints import DISTRIBUTED_ENVIRONMENT, ROOT

    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENVIRONMENT}
    env |= {"PYTHONPATH": str(ROOT), "LIGHTNING_UNLEARN_CACHE": str(testbed_cache)}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _g_after(record: dict) -> list[float]:
    return [row["g_after"] for row in record["records"]]


@pytest.mark.slow
def test_the_one_command_and_unlearn_on_two_processes_give_what_one_gives(small_testbed, testbed_cache, tmp_path):
    """``lightning-unlearn unlearn --trainer.devices=2`` (DDP) and ``unlearn()`` under 2-process ZeRO-3 through
    torchrun: the rule met in the one-process steps (±2), every record's g within 0.05, every process returning the
    same result, one summary printed and one output folder written once."""
    bin_folder = Path(sys.executable).parent
    _processes(sys.executable, "-m", "tests.unlearn_run", "one", folder=tmp_path, testbed_cache=testbed_cache)
    one = json.loads((tmp_path / "one/rank0.json").read_text())
    assert one["rule_met"]
    small_testbed.export(tmp_path / "testbed")
    ddp = _processes(
        str(bin_folder / "lightning-unlearn"), *UNLEARN, "--method", "sga",  # UNLEARN: the files of testbed/
        "--method.learning_rate=1e-3", "--trainer.devices=2", "--trainer.strategy=ddp", "--output", "ddp-out",
        folder=tmp_path, testbed_cache=testbed_cache,
    )  # fmt: skip
    assert ddp.stdout.count("written to ddp-out/") == 1 and ddp.stdout.count("rule met after") == 1, ddp.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    assert len(list((tmp_path / "ddp-out").glob("*.safetensors"))) == 1
    torchrun = [str(bin_folder / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "tests.unlearn_run"]
    torchrun += ["zero3", "--zero3"]  # --standalone: a free port
    _processes(*torchrun, folder=tmp_path, testbed_cache=testbed_cache)
    ranks = [json.loads((tmp_path / f"zero3/rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    from transformers import AutoModelForCausalLM

    from lightning_unlearn.evaluation.evidence import weights_sha256

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3/model")  # gathered from the shards, then saved
    assert ranks[0]["record"]["weights_sha256"]["after"] == weights_sha256(saved)
    for record in (json.loads((tmp_path / "ddp-out/unlearning.json").read_text()), ranks[0]["record"]):
        assert record["rule_met"] and abs(record["steps"] - one["record"]["steps"]) <= 2
        difference = [abs(a - b) for a, b in zip(_g_after(record), _g_after(one["record"]), strict=True)]
        assert max(difference) <= 0.05
