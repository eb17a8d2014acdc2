"""The command line: unlearn, demo, testbed export, fit on every example config, audit, and one-line errors."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_unlearn.cli import main
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.thresholds import holdout_threshold
from lightning_unlearn.utilities.errors import ConfigurationError

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def exported(small_testbed, tmp_path, monkeypatch):
    """The small testbed written as files (``testbed/``) in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    small_testbed.export(tmp_path / "testbed")
    return tmp_path / "testbed"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command line in a process of its own (``python -m lightning_unlearn.cli``): what a shell sees."""
    return subprocess.run([sys.executable, "-m", "lightning_unlearn.cli", *args], capture_output=True, text=True)


def run_main(*args: str) -> subprocess.CompletedProcess:
    """The command line in this process (its exit status, stdout and stderr): the same as :func:`run_cli` but for
    the interpreter's start-up, which the error paths do not need."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_info:  # LightningCLI (fit) and argparse exit on their own
            status = exit_info.code if isinstance(exit_info.code, int) else 1
    return subprocess.CompletedProcess(["lightning-unlearn", *args], status, out.getvalue(), err.getvalue())


def test_testbed_export_writes_model_and_splits(small_testbed, exported):
    model = AutoModelForCausalLM.from_pretrained(exported / "model")
    assert model.num_parameters() == small_testbed.model.num_parameters()
    records = [json.loads(line) for line in (exported / "forget.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == small_testbed.forget
    assert [r["duplicates"] for r in records] == small_testbed.duplicates
    with pytest.raises(FileExistsError):
        small_testbed.export(exported)


@pytest.mark.slow
def test_demo_compares_methods_and_writes_its_files(small_testbed, testbed_cache, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--small", "--cache-dir", str(testbed_cache), "--methods", "ga-mean,sga", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| original |" in printed and "| sga |" in printed and "KS not rejected" in printed
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert list(rows) == ["original", "retrain", "ga-mean", "sga"]
    threshold = summary["threshold"]  # the holdout's 0.95 quantile of g, above its mean
    assert threshold > small_testbed.summary["holdout_g_mean"]
    # The per-sample rule leaves no record above the threshold; the mean rule only brings the mean to the mean.
    assert rows["sga"]["rule_met"] and rows["sga"]["g_max"] <= threshold and rows["sga"]["above_threshold"] == 0
    assert rows["ga-mean"]["rule_met"] and rows["ga-mean"]["g_mean"] <= small_testbed.summary["holdout_g_mean"] + 1e-6
    assert rows["original"]["above_threshold"] > 0 and rows["original"]["holdout_nll_ratio"] == 1.0
    for row in rows.values():
        assert row["forget_holdout_nll"] == pytest.approx(row["forget_nll"] / row["holdout_nll"])
    # Memorized records are likelier than unseen ones; in the retrain, which never saw them, much less so.
    assert rows["original"]["forget_holdout_nll"] < min(1.0, rows["retrain"]["forget_holdout_nll"])
    for key in ("steps", "seconds", "outliers", "verbatim_extractable", "retain_g", "loss_auc", "miau_auc"):
        assert key in rows["sga"]
    # The attacks and the exact-retrain reference, on every row; the retrained model never saw the forget set.
    for row in rows.values():
        assert {"relearn_above", "relearn_holdout_above", "int4_above", "sampling_above"} <= set(row)
    assert rows["retrain"]["retrain_distance"] == 0 < rows["sga"]["retrain_distance"]
    assert rows["sga"]["retrain_distance"] < rows["original"]["retrain_distance"]
    assert rows["retrain"]["relearn_above"] < rows["original"]["relearn_above"]
    assert "| retrain |" in printed and "| relearn |" in printed
    # The KS comparison with the retrain, per attack: the retrain is like itself, the original is not; each row
    # carries its own per-record verdict against the holdout under each attack.
    verdicts = rows["sga"]["retrain_ks"]
    assert set(verdicts) == {"none", "relearn", "int8", "int4", "sampling"}
    assert verdicts["none"]["retrain_above"] == rows["retrain"]["above_threshold"]
    assert verdicts["relearn"]["above"] == rows["sga"]["relearn_above"]
    assert rows["retrain"]["ks_not_rejected"] == "5/5" and rows["original"]["retrain_ks"]["none"]["p_value"] < 0.05
    assert rows["original"]["verdict"]["none"]["back"] > 0 and set(rows["sga"]["verdict"]) == set(verdicts)
    assert (out / "verdict.png").read_bytes()[:4] == b"\x89PNG"
    assert rows["original"]["collateral"] == 0 and 0 <= rows["sga"]["collateral"] <= len(small_testbed.retain)
    assert rows["sga"]["retain_g_before"] == pytest.approx(rows["original"]["retain_g"])
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    with (out / "per_sample.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(small_testbed.forget)
    assert max(float(r["g_sga"]) for r in table) == pytest.approx(rows["sga"]["g_max"], abs=1e-4)
    assert "g_retrain" in table[0]
    assert (out / "forget_g.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        "| method |" in (out / "summary.md").read_text() and "above after relearn" in (out / "summary.md").read_text()
    )
    # Utility by lm-eval on tasks written from the retain records, for every row.
    assert "MC acc" in (out / "summary.md").read_text() and "mc_acc" in rows["sga"]
    assert sorted(p.name for p in (out / "utility_tasks").glob("*.yaml")) == [
        "testbed_fields.yaml",
        "testbed_perplexity.yaml",
    ]
    for row in rows.values():
        assert row["utility"]["testbed_fields"]["acc"] == row["mc_acc"] and 0 <= row["mc_acc"] <= 1
        assert row["utility"]["testbed_perplexity"]["byte_perplexity"] == row["byte_perplexity"] > 1


METHOD_CONFIGS = ["ga.yaml", "sga.yaml", "sga-kl.yaml", "ta.yaml", "tau.yaml"]
#: each method example's registry method: its class and settings (and the stop rule's) must be the registry's
REGISTRY_NAMES = {"ga.yaml": "ga-mean", "sga.yaml": "sga", "sga-kl.yaml": "sga-kl", "ta.yaml": "ta", "tau.yaml": "tau"}


@pytest.mark.parametrize("config", METHOD_CONFIGS)
def test_method_examples_agree_with_the_registry(config):
    """The LightningCLI examples are the registry's methods: the same class, every setting of the registry's with its
    value, the learning rate the class's default unless the registry sets one, and the same stop rule."""
    import yaml

    from lightning_unlearn.methods import METHODS
    from lightning_unlearn.modules.registry import option_default
    from lightning_unlearn.testbed.settings import TESTBED_SETTINGS

    method, example = METHODS[REGISTRY_NAMES[config]], yaml.safe_load((EXAMPLES / config).read_text())
    assert example["model"]["class_path"] == f"lightning_unlearn.{method.cls.__name__}"
    options = example["model"]["init_args"]
    assert {key: options.get(key) for key in method.settings} == method.settings
    expected_rate = method.settings.get("learning_rate", option_default(method.cls, "learning_rate"))
    assert options["learning_rate"] in (
        expected_rate,
        TESTBED_SETTINGS.get(REGISTRY_NAMES[config], {}).get("learning_rate"),
    )
    stops = [cb for cb in method.callbacks() if type(cb).__name__ == "MemorizationEarlyStopping"]
    given = [cb for cb in example["trainer"].get("callbacks", []) if cb["class_path"].endswith("EarlyStopping")]
    for callback, declared in zip(stops, given, strict=True):
        assert {key: getattr(callback, key) for key in declared.get("init_args", {})} == declared["init_args"]


def test_every_example_is_tested():
    tested = [*METHOD_CONFIGS, *DEEPSPEED_SETTINGS, "lora.yaml"]
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(tested)


DEEPSPEED_SETTINGS = {  # each example's DeepSpeed JSON is deepspeed_config with these arguments
    "zero2_offload.yaml": {"stage": 2, "offload_optimizer": True, "micro_batch_size": 4},
    "zero3.yaml": {"stage": 3, "micro_batch_size": 4},
    "zero3_offload.yaml": {"stage": 3, "offload_optimizer": True, "offload_parameters": True, "micro_batch_size": 2},
}


@pytest.mark.parametrize("config", list(DEEPSPEED_SETTINGS))
def test_deepspeed_examples_resolve_on_top_of_a_method(config, exported, capsys):
    """They need GPUs to run (the tests run ZeRO on CPU with tests/deepspeed_cpu.py); here: they resolve, and
    their DeepSpeed JSON is what deepspeed_config writes, which Lightning's DeepSpeedStrategy loads."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from lightning_unlearn.distributed.zero import deepspeed_config

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXAMPLES / "sga.yaml"), "--config", str(EXAMPLES / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    json_path = f"examples/deepspeed/{config.removesuffix('.yaml')}.json"
    assert "class_path: lightning_unlearn.distributed.checkpoints.AtomicDeepSpeedStrategy" in printed
    assert f"config: {json_path}" in printed
    written = json.loads((EXAMPLES.parent / json_path).read_text())
    assert written == deepspeed_config(on_gpu=True, **DEEPSPEED_SETTINGS[config])
    assert DeepSpeedStrategy(config=str(EXAMPLES.parent / json_path)).config == written


@pytest.mark.parametrize(  # sga-kl, the KL term's reference pass each step, is the slowest: an end-to-end run
    "config", [pytest.param(c, marks=pytest.mark.slow) if c == "sga-kl.yaml" else c for c in METHOD_CONFIGS]
)
def test_fit_runs_every_example_config(config, small_testbed, exported):
    """Each example unlearns the exported testbed until its rule holds and saves a folder transformers loads."""
    args = ["fit", "--config", str(EXAMPLES / config), "--data.batch_size=16", "--trainer.enable_progress_bar=false"]
    if config == "tau.yaml":  # the small testbed's 0.16M-parameter model needs larger TA steps than the default's
        args.append("--model.init_args.learning_rate=1e-3")
    assert main([*args, "--trainer.enable_model_summary=false"]) == 0
    saved = Path("unlearned") / config.removesuffix(".yaml")
    model = AutoModelForCausalLM.from_pretrained(saved)
    from lightning_unlearn import UnlearningDataModule

    datamodule = UnlearningDataModule(str(saved), small_testbed.forget)
    g = score_memorization(model, datamodule.scoring_dataloader("forget"))
    if config == "ga.yaml":  # Jang's mean rule at the holdout mean
        assert sum(g.values()) / len(g) <= small_testbed.summary["holdout_g_mean"] + 1e-6
    else:  # the per-sample rule at the holdout's 0.95 quantile
        holdout = UnlearningDataModule(str(saved), small_testbed.holdout).scoring_dataloader("forget")
        threshold = holdout_threshold(torch.tensor(list(score_memorization(small_testbed.model, holdout).values())))
        assert max(g.values()) <= threshold + 1e-6


def test_lora_example_unlearns_through_an_adapter(small_testbed, exported):
    """The LoRA overlay on SGA: the peft config comes from YAML, the rule holds, and ``--output`` is a plain folder
    with the adapter merged."""
    pytest.importorskip("peft")
    overlay = ["--config", str(EXAMPLES / "sga.yaml"), "--config", str(EXAMPLES / "lora.yaml")]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    assert main(["fit", *overlay, "--data.batch_size=16", *quiet, "--output=unlearned/lora"]) == 0
    with Path("lightning_logs/version_0/metrics.csv").open() as log:
        rows = list(csv.DictReader(log))
    last = [row for row in rows if row["forget/g_max"]][-1]
    threshold = next(float(row["holdout/threshold"]) for row in rows if row["holdout/threshold"])
    assert float(last["forget/g_max"]) <= threshold
    assert not list(Path("unlearned/lora").glob("adapter_*"))
    record = json.loads(Path("unlearned/lora/unlearning.json").read_text())  # fit writes the training record too
    assert record["rule_met"] is True and record["module"] == "SelectiveGradientAscent"
    assert max(r["g_after"] for r in record["records"]) <= record["threshold"]["value"] == pytest.approx(threshold)
    model = AutoModelForCausalLM.from_pretrained("unlearned/lora")
    from lightning_unlearn import UnlearningDataModule

    forget = UnlearningDataModule("unlearned/lora", small_testbed.forget).scoring_dataloader("forget")
    g = score_memorization(model, forget)
    assert max(g.values()) <= threshold + 1e-6


def test_fit_errors_come_from_lightning_cli(tmp_path):
    result = run_main("fit", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0 and "missing.yaml" in result.stderr


def test_audit_flags_records_above_the_holdout_mean(small_testbed, exported, capsys):
    tb = small_testbed
    args = ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--holdout", "testbed/holdout.jsonl"]
    assert main([*args, "--el", "--threshold", "holdout_mean", "--output", "report"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(tb.forget)} samples" in printed and "(holdout mean)" in printed and "EL_10" in printed
    # A tail fitted to 16 holdout records is loose: the audit says so, and how many it would want.
    assert "p-value" in printed and "give at least 32 holdout records" in printed
    with open("report/per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["sample_id"]) for r in rows] == list(range(len(tb.forget)))
    flagged = sum(r["above_threshold"] == "True" for r in rows)
    assert f"{flagged} above the threshold {tb.summary['holdout_g_mean']:.3f}" in printed
    # The most duplicated records are memorized far above unseen data.
    assert all(r["above_threshold"] == "True" for r, d in zip(rows, tb.duplicates, strict=True) if d >= 16)
    summary = json.loads(Path("report/summary.json").read_text())
    assert summary["above_threshold"] == flagged and "el_10_mean" in summary and "membership_auc" in summary
    assert summary["holdout_size"] == len(tb.holdout)
    assert summary["flagged"] == sum(r["flagged"] == "True" for r in rows)
    # Empirical p-values could not go below 1/17; the holdout's tail finds the memorized records all the same.
    assert all(r["flagged"] == "True" for r, d in zip(rows, tb.duplicates, strict=True) if d >= 16)
    assert f"any record at g >= {summary['detectable_at']:.3f} is found" in printed


def test_audit_tests_each_record_against_a_large_enough_holdout(small_testbed, exported, capsys):
    tb = small_testbed
    Path("unseen.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in tb.fresh_records(60, seed=7)))
    args = ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--holdout", "unseen.jsonl"]
    assert main([*args, "--max-length", "128", "--output", "report"]) == 0
    printed = capsys.readouterr().out
    assert "(holdout 0.95 quantile)" in printed and "against 60 holdout records" in printed
    assert "warning" not in printed
    with open("report/per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["flagged"] == "True" for r in rows if float(r["g"]) >= 0.7)
    summary = json.loads(Path("report/summary.json").read_text())
    assert summary["flagged"] == sum(r["flagged"] == "True" for r in rows) > 0
    assert f"{summary['flagged']} flagged as more memorized than unseen data" in printed


def test_audit_attacks_each_record_and_its_holdout_control(small_testbed, exported, capsys):
    tb = small_testbed
    args = ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--holdout", "testbed/holdout.jsonl"]
    attacks = ["--recovery-attacks", "relearn,int8,int4,sampling", "--relearn-data", "testbed/retain.jsonl"]
    assert main([*args, *attacks, "--relearn-steps", "5", "--output", "report"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(Path("report/summary.json").read_text())
    with open("report/per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    threshold = summary["threshold"]
    for attack in ("relearn", "int8", "int4"):
        above = sum(float(r[f"{attack}_g"]) > threshold for r in rows)
        assert summary[f"{attack}_above"] == above
        line = f"{attack}: {above} of {len(tb.forget)} records above the threshold after "
        assert line in printed and f"holdout: {summary[f'{attack}_holdout_above']} of {len(tb.holdout)}" in printed
    assert "5 relearning steps (lr 0.0001) on --relearn-data" in printed
    discoverable = sum(float(r["sampling_p"]) >= 0.5 for r in rows)
    assert summary["sampling_above"] == discoverable and f"sampling: {discoverable} of" in printed
    # The original model: its memorized records stay above the threshold under each attack.
    assert summary["relearn_above"] > 0 and abs(summary["int8_above"] - summary["above_threshold"]) <= 2


@pytest.mark.slow
def test_demo_and_testbed_on_a_pretrained_base_model(exported, testbed_cache, tmp_path, capsys):
    base = ["--base-model", "testbed/model", "--small", "--seed", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main(["testbed", *base, "--output", "injected"]) == 0
    assert "testbed/model trained in" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained("injected/model").num_parameters() > 0
    assert main(["demo", *base, "--methods", "sga", "--no-retrain", "--output", "demo"]) == 0  # testbed: cached
    summary = json.loads(Path("demo/summary.json").read_text())
    assert summary["base_model"] == "testbed/model" and summary["rows"]["sga"]["rule_met"]


def test_audit_adds_lm_eval_tasks(small_testbed, exported, capsys, monkeypatch):
    from lightning_unlearn.evaluation.utility import evaluate_utility, write_record_tasks

    write_record_tasks(small_testbed.retain, "tasks")
    args = ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--include-path", "tasks"]
    assert main([*args, "--utility", "records_fields,records_perplexity", "--output", "report"]) == 0
    printed = capsys.readouterr().out
    expected = evaluate_utility(small_testbed.model, small_testbed.tokenizer, ["records_fields"], include_path="tasks")
    assert f"utility records_fields: acc {expected['records_fields']['acc']:.4f}" in printed
    summary = json.loads(Path("report/summary.json").read_text())
    assert summary["utility"]["records_fields"] == pytest.approx(expected["records_fields"])
    assert "word_perplexity" in summary["utility"]["records_perplexity"]
    assert "| utility records_fields | acc " in Path("report/summary.md").read_text()
    assert main([*args, "--utility", "records_feilds"]) == 2
    assert "unknown lm-eval task 'records_feilds'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main([*args, "--utility", "records_fields"]) == 2
    assert "pip install 'lightning-unlearn[eval]'" in capsys.readouterr().err


def test_audit_without_holdout_uses_the_given_threshold(exported, capsys):
    assert main(["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--threshold", "0.9"]) == 0
    assert "above the threshold 0.900;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "--model", "testbed/model", "--data", "missing.jsonl"], "forget split: no such file: missing.jsonl"),
        (["audit", "--model", "nowhere", "--data", "testbed/forget.jsonl"], "cannot load a tokenizer from nowhere"),
        (
            ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--text-column", "body"],
            "column 'body'",
        ),
        (
            ["demo", "--methods", "ga-mean,DPO"],
            "unknown method(s) DPO; choose from sga-kl, sga, sga-kl-ra, sga-kl-sam, ga, ga-mean, gd, wga, satimp,",
        ),
        (
            ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--recovery-attacks", "int4,prune"],
            "unknown attack(s) prune in --recovery-attacks; choose from relearn, relearn_sweep, int8, int4, sampling",
        ),
        (
            ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl", "--recovery-attacks", "relearn"],
            "--recovery-attacks relearn needs --relearn-data",
        ),
        (["testbed", "--small", "--output", "testbed"], "testbed exists already"),
    ],
)
def test_errors_are_one_line(exported, testbed_cache, args, message):
    if args[0] in ("demo", "testbed"):
        args = [*args, "--cache-dir", str(testbed_cache)]
    result = run_main(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"lightning-unlearn {args[0]}: error:") and message in lines[0]


def test_a_programming_error_keeps_its_traceback(exported, monkeypatch):
    """Only what a user can fix (ConfigurationError, a missing file, a missing extra) is one line with exit 2."""
    cli = importlib.import_module("lightning_unlearn.cli.main")  # the module (the package's `main` is the function)

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_audit", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl"])


def test_audit_refuses_a_model_without_a_causal_lm_head(exported):
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=1024, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained("encoder")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (Path("encoder") / name).write_bytes((Path("testbed/model") / name).read_bytes())
    result = run_main("audit", "--model", "encoder", "--data", "testbed/forget.jsonl", "--threshold", "0.5")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "encoder holds a DistilBertModel, which has no causal-LM head" in lines[0]


def test_utility_examples_run(small_testbed, exported, capsys, caplog):
    """examples/utility: the local task (from the working directory, as its YAML says) through the audit and
    through fit with the UtilityEvaluation overlay."""
    Path("examples").symlink_to(EXAMPLES)
    args = ["audit", "--model", "testbed/model", "--data", "testbed/forget.jsonl"]
    assert main([*args, "--utility", "local_task", "--include-path", "examples/utility"]) == 0
    assert "utility local_task: acc " in capsys.readouterr().out
    overlay = ["--config", str(EXAMPLES / "sga.yaml"), "--config", str(EXAMPLES / "utility" / "sga_utility.yaml")]
    with caplog.at_level("INFO"):
        assert main(["fit", *overlay, "--data.batch_size=16", "--trainer.enable_progress_bar=false"]) == 0
    assert "utility (lm-eval), start -> end: local_task/acc " in caplog.text


@pytest.mark.slow
def test_demo_over_seeds_reports_median_and_range(testbed_cache, tmp_path, capsys):
    out = tmp_path / "seeds"
    args = ["demo", "--small", "--cache-dir", str(testbed_cache), "--methods", "sga", "--seeds", "0,1", "--no-retrain"]
    assert main([*args, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and sorted(summary["per_seed"]) == ["0", "1"]
    runs = [summary["per_seed"][seed]["sga"] for seed in ("0", "1")]
    sga = summary["aggregate"]["sga"]
    assert sga["runs"] == 2 and sga["rule_met"] == sum(run["rule_met"] for run in runs)
    steps = sorted(run["steps"] for run in runs)
    assert sga["steps"] == {"median": sum(steps) / 2, "min": steps[0], "max": steps[1]}
    assert sga["holdout_nll_ratio"]["max"] == max(run["holdout_nll_ratio"] for run in runs)
    assert summary["aggregate"]["original"]["holdout_nll_ratio"]["median"] == 1.0
    assert summary["aggregate"]["original"]["rule_met"] is None and "| original | — |" in printed
    assert (out / "seed1" / "per_sample.csv").is_file() and "| method | met |" in (out / "summary.md").read_text()
    low, high = (f"{v:.2f}" for v in (sga["holdout_nll_ratio"]["min"], sga["holdout_nll_ratio"]["max"]))
    assert f"| sga | {sga['rule_met']}/2 |" in printed and f"x [{low}, {high}]" in printed
    assert main(["demo", "--seeds", "0,one"]) == 2
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err


def test_audit_takes_the_holdout_mean_as_its_threshold(exported):
    result = run_cli(
        "audit",
        "--model",
        "testbed/model",
        "--data",
        "testbed/forget.jsonl",
        "--holdout",
        "testbed/holdout.jsonl",
        "--threshold",
        "holdout_mean",
    )
    assert result.returncode == 0, result.stderr
    assert "(holdout mean)" in result.stdout


UNLEARN = [
    "unlearn",
    "--model",
    "testbed/model",
    "--forget",
    "testbed/forget.jsonl",
    "--holdout",
    "testbed/holdout.jsonl",
    "--retain",
    "testbed/retain.jsonl",
    "--accelerator",
    "cpu",
]


@pytest.mark.slow
def test_unlearn_command_writes_a_verified_result(small_testbed, exported, capsys):
    """The one command on the files ``lightning-unlearn testbed`` writes: the rule is met, ``unlearning.json``'s
    per-record values are the report's on the original and on the saved model, and the folder loads in plain
    transformers."""
    from lightning_unlearn import UnlearningDataModule
    from lightning_unlearn.evaluation.report import memorization_report

    small_testbed.retrained(progress=False).model.save_pretrained("retrain")
    with pytest.warns(UserWarning, match="the holdout has 16 records"):
        assert main([*UNLEARN, "--output", "unlearned", "--retrain", "retrain", "--recovery-attacks", "int4"]) == 0
    printed = capsys.readouterr().out
    assert "sga-kl: rule met after" in printed and "0 of 16 records above the threshold" in printed
    record = json.loads(Path("unlearned/unlearning.json").read_text())
    assert record["rule_met"] is True and record["above_threshold"]["after"] == 0 and record["method"] == "sga-kl"
    assert record["settings"]["retain_loss"] == "kl" and record["settings"]["retain_weight"] == 3.0
    assert record["above_threshold"]["before"] > 0 and record["holdout_nll"]["ratio"] > 1.0
    threshold = record["threshold"]["value"]
    low, high = record["threshold"]["interval"]
    assert low <= threshold <= high and record["threshold"]["holdout_records"] == 16
    data = UnlearningDataModule("testbed/model", "testbed/forget.jsonl", holdout="testbed/holdout.jsonl")
    for model, when in ((small_testbed.model, "before"), (AutoModelForCausalLM.from_pretrained("unlearned"), "after")):
        report = memorization_report(model.eval(), data, el_n=None, threshold=threshold)
        assert [r[f"g_{when}"] for r in record["records"]] == pytest.approx([r["g"] for r in report.rows], abs=1e-6)
        assert [r[f"nll_{when}"] for r in record["records"]] == pytest.approx([r["nll"] for r in report.rows], rel=1e-5)
        assert record["membership_auc"][when] == pytest.approx(report.summary["membership_auc"], abs=1e-6)
    assert max(r["g_after"] for r in record["records"]) <= threshold
    # Judged per record against the holdout, and against the retrain (which never saw the records), with no attack
    # and after int4 quantization.
    verdict = record["verdict"]
    assert set(verdict) == {"none", "int4"} and verdict["none"]["back"] == 0 and "int4_above" in record["recovery"]
    assert verdict["none"]["retrain_back"] == 0 and 0 <= verdict["none"]["p_value"] <= 1
    assert "verdict per record" in printed and "  int4: " in printed and "against the retrain: KS" in printed


def test_unlearn_command_exits_1_when_the_rule_is_not_met(exported, capsys):
    args = [*UNLEARN, "--method", "sga", "--max-steps", "2", "--trainer.enable_model_summary=false"]
    assert main([*args, "--output", "short"]) == 1
    record = json.loads(Path("short/unlearning.json").read_text())
    assert record["rule_met"] is False and record["steps"] == 2 and record["above_threshold"]["after"] > 0
    assert "RULE NOT MET" in capsys.readouterr().out
    assert main([*args, "--method.learning_rate=1e-6", "--allow-unmet", "--output", "short2"]) == 0
    assert json.loads(Path("short2/unlearning.json").read_text())["settings"]["learning_rate"] == 1e-6


def test_trainer_flags_are_parsed_by_lightning_clis_own_parser():
    """``--trainer.KEY=VALUE`` as ``fit`` (LightningCLI) reads it: typed from the Trainer's signature, class paths
    instantiated, only what is given; ``--method.KEY=VALUE`` as Python literals, else YAML."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from lightning_unlearn.cli.main import dotted_options, method_options, trainer_options

    flags = dotted_options(
        [
            "--trainer.max_steps",
            "7",
            "--trainer.gradient_clip_val=1",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks+=LearningRateMonitor",
            "--trainer.callbacks.logging_interval=step",
            "--method.learning_rate=3e-4",
            "--method.tokens=all",
        ],
        ("trainer", "method"),
    )
    options = trainer_options(flags["trainer"])
    assert set(options) == {"max_steps", "gradient_clip_val", "enable_checkpointing", "callbacks"}
    assert (options["max_steps"], options["gradient_clip_val"], options["enable_checkpointing"]) == (7, 1.0, False)
    assert isinstance(options["max_steps"], int)
    (monitor,) = options["callbacks"]
    assert isinstance(monitor, LearningRateMonitor) and monitor.logging_interval == "step"
    assert method_options(flags["method"]) == {"learning_rate": 3e-4, "tokens": "all"}
    assert trainer_options([]) == {}


def _write_jsonl(path: str, texts: list[str]) -> None:
    Path(path).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing file", "forget split: no such file: nothing.jsonl"),
        ("empty forget set", "forget split is empty"),
        ("small holdout", "the holdout has 8 records"),
        ("no causal-LM head", "holds a GPTNeoModel, which has no causal-LM head"),
        ("other tokenizer", "the tokenizer does not fit the model"),
        ("retain missing", "method 'sga-kl' keeps the retain texts"),
        ("unknown option", "unrecognized argument '--trainer_max_steps=3'"),
        ("unknown method option", "sga-kl: SelectiveGradientAscent got unexpected arguments: lerning_rate"),
        ("unknown trainer option", "--trainer: unrecognized arguments: --trainer.max_stepz=3"),
        ("mistyped trainer option", 'Parser key "trainer.max_steps"'),
        ("unknown method", "unknown method 'dpo'"),
    ],
)
def test_unlearn_command_refuses_bad_input_writing_nothing(small_testbed, exported, case, message):
    """Each mistake: exit 2, one line naming it, and no ``--output``."""
    args = dict(zip(UNLEARN[1::2], UNLEARN[2::2], strict=True))
    extra: list[str] = []
    if case == "missing file":
        args["--forget"] = "nothing.jsonl"
    elif case == "empty forget set":
        Path("empty.jsonl").write_text("")
        args["--forget"] = "empty.jsonl"
    elif case == "small holdout":
        _write_jsonl("holdout8.jsonl", small_testbed.holdout[:8])
        args["--holdout"] = "holdout8.jsonl"
    elif case == "no causal-LM head":
        small_testbed.model.transformer.save_pretrained("headless")
        args |= {"--model": "headless", "--tokenizer": "testbed/model"}
    elif case == "other tokenizer":
        tokenizer = small_testbed.tokenizer.__class__.from_pretrained("testbed/model")
        tokenizer.add_tokens([f"extra{i}" for i in range(2000)])
        tokenizer.save_pretrained("other_tokenizer")
        args["--tokenizer"] = "other_tokenizer"
    elif case == "retain missing":
        del args["--retain"]
    elif case == "unknown option":
        extra = ["--trainer_max_steps=3"]
    elif case == "unknown method option":
        extra = ["--method.lerning_rate=1e-4"]
    elif case == "unknown trainer option":
        extra = ["--trainer.max_stepz=3"]
    elif case == "mistyped trainer option":
        extra = ["--trainer.max_steps", "three"]
    else:
        args["--method"] = "dpo"
    command = ["unlearn", *(item for pair in args.items() for item in pair), *extra, "--output", "out"]
    result = run_main(*command)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("lightning-unlearn unlearn: error:") and message in lines[0]
    assert not Path("out").exists()


def test_on_a_gpu_every_command_defaults_to_bf16_mixed_and_says_so(exported, monkeypatch, capsys):
    """An 8B model in float32 with Adam needs 128 GB: on a GPU the commands default to bf16-mixed (and audit's
    weights to bf16-true); on the CPU, and when given, the precision is what it was."""
    import lightning_unlearn.unlearning
    from lightning_unlearn.integrations.huggingface import default_precision

    assert default_precision("auto") == "32-true"  # this machine has no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert (default_precision("auto"), default_precision("gpu", mixed=False)) == ("bf16-mixed", "bf16-true")
    assert default_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert default_precision("cuda") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    given = []

    def unlearn(*args, **trainer):  # stops the command once it has chosen its Trainer's precision
        given.append(trainer["precision"])
        raise ConfigurationError("stop here")

    monkeypatch.setattr(lightning_unlearn.unlearning, "unlearn", unlearn)
    on_gpu = [*UNLEARN, "--accelerator", "auto"]
    assert main([*on_gpu, "--output", "a"]) == 2
    assert "precision bf16-mixed: the default on this GPU" in capsys.readouterr().err
    assert main([*on_gpu, "--output", "b", "--precision", "32-true"]) == 2
    assert main([*UNLEARN, "--output", "c"]) == 2  # --accelerator cpu
    assert given == ["bf16-mixed", "32-true", "32-true"]


@pytest.mark.slow
def test_the_one_command_killed_mid_way_and_started_again_resumes_to_the_uninterrupted_result(exported, caplog):
    """``--checkpoints``: a ``lightning-unlearn unlearn`` SIGKILLed at step 7 (its process group) and started again
    with the same arguments resumes from step 6's checkpoint, says so, and ends at the uninterrupted run's stop
    step with every record's g within 1e-6."""
    from tests.distributed.test_checkpoints import DISTRIBUTED_ENVIRONMENT, ROOT

    def args(name):
        method = ["--method", "ga", "--method.learning_rate=3e-4"]  # the rule in a few steps
        return [*UNLEARN, *method, "--output", f"out-{name}", "--checkpoints", f"ck-{name}", "--checkpoint-every", "3"]

    with pytest.warns(UserWarning, match="the holdout has 16"):
        assert main(args("whole")) == 0
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENVIRONMENT} | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.unlearn_killed", "7", *args("killed")]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, start_new_session=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert Path("ck-killed/last.ckpt").exists() and not Path("out-killed").exists()
    with pytest.warns(UserWarning, match="the holdout has 16"):
        assert main(args("killed")) == 0
    assert "resuming from ck-killed/last.ckpt" in caplog.text  # Lightning's console logger
    whole, resumed = (json.loads(Path(f"out-{name}/unlearning.json").read_text()) for name in ("whole", "killed"))
    assert resumed["rule_met"] and resumed["steps"] == whole["steps"] > 7
    for a, b in zip(resumed["records"], whole["records"], strict=True):
        assert abs(a["g_after"] - b["g_after"]) <= 1e-6 and a["g_before"] == b["g_before"]


def test_checkpoints_and_the_result_to_an_fsspec_url(exported):
    """Checkpoints and the saved model go to a remote folder (fsspec's memory://), whole."""
    import fsspec

    from lightning_unlearn.unlearning import unlearn

    with pytest.warns(UserWarning, match="the holdout has 16"):
        result = unlearn(
            "testbed/model",
            "testbed/forget.jsonl",
            "testbed/holdout.jsonl",
            method="ga",
            method_options={"learning_rate": 3e-4},  # the rule in a few steps
            accelerator="cpu",
            checkpoints="memory://run/checkpoints",
            checkpoint_every=5,
            progress=False,
        )
    result.save("memory://run/model")
    fs = fsspec.filesystem("memory")
    assert fs.exists("/run/checkpoints/last.ckpt")
    saved = {Path(name).name for name in fs.ls("/run/model", detail=False)}
    assert {"config.json", "model.safetensors", "unlearning.json", "tokenizer.json"} <= saved
    assert not [name for name in fs.ls("/run", detail=False) if Path(name).name.startswith(".")]
