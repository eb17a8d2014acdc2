"""unlearn(): the holdout's size, the tokenizer it takes, the summary; the whole path runs in test_cli and
test_readme."""

from __future__ import annotations

import warnings

import pytest

from lightning_unlearn.unlearning import check_holdout_size, summary_text, unlearn


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
        "above_level": {"before": 32, "after": 3},
        "level": {"value": 0.3431, "interval": [0.31, 0.37], "holdout_records": 64},
        "holdout_nll": {"ratio": 1.2},
        "attack_auc": {"before": {"loss": 0.99}, "after": {"loss": 0.55}},
    }
    text = summary_text(record)
    assert text.splitlines()[0] == "sga-kl: RULE NOT MET after 600 steps: 3 of 32 records above the level (before: 32)"
    assert "level 0.3431" in text and "0.3100–0.3700" in text and "LOSS attack AUC 0.990 -> 0.550" in text
