"""DeepSpeed ZeRO-2 and ZeRO-3 with two CPU processes over gloo (tests/deepspeed_cpu.py): unlearning finishes with
every forget record at or below the threshold, and the saved folder loads in plain transformers."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_unlearn import TAU, SelectiveGradientAscent, TaskArithmetic
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from lightning_unlearn.distributed.zero import deepspeed_config
from lightning_unlearn.evaluation.scoring import extraction_likelihood, score_memorization
from tests.conftest import (
    DISTRIBUTED_METHODS,
    RankReport,
    assert_close_scaled,
    find,
    lora,
    make_trainer,
    unlearning_data,
)

METHODS = {
    **DISTRIBUTED_METHODS,
    "TA": (lambda model: TaskArithmetic(model, learning_rate=1e-3), list),
    "SGA + LoRA": (
        lambda model: SelectiveGradientAscent(model, learning_rate=1e-3, peft=lora(["q_proj", "v_proj"])),
        list,
    ),
}

pytest.importorskip("deepspeed")

EXAMPLES = Path(__file__).parents[2] / "examples"
PREFIX = 24  # tokens of each record that the extraction-likelihood check decodes (decoding under ZeRO-3 is slow)


class SaveAndReport(L.Callback):
    """On every process, after fit (and after TA's final edit): save_pretrained, and write the run's view."""

    def __init__(self, folder):
        self.folder = str(folder)

    def on_fit_end(self, trainer, pl_module):
        pl_module.save_pretrained(f"{self.folder}/model")
        # Decoding differs in length between processes (a different share of the data each): nothing may hang.
        batch = next(iter(trainer.datamodule.scoring_dataloader("forget", batch_size=1 + 2 * trainer.global_rank)))
        ids, mask = batch["input_ids"][:, :PREFIX], batch["attention_mask"][:, :PREFIX]
        el = extraction_likelihood(pl_module.model, ids, mask, n=4)
        monitor = find(trainer, MemorizationMonitor)
        stopping = find(trainer, MemorizationEarlyStopping)
        report = {"stopped_step": stopping.stopped_step, "threshold": stopping.threshold_value}
        report["micro_batch"] = trainer.strategy.config["train_micro_batch_size_per_gpu"]
        report["retain_loss"] = float(trainer.callback_metrics.get("train/retain_loss", -1.0))
        report["el"] = dict(zip(batch["sample_id"].tolist(), el.tolist(), strict=True))
        with open(f"{self.folder}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(report | {"scores": monitor.values.tolist()}, f)


@pytest.fixture(scope="module")
def one_process(small_testbed):
    """Each method on one process with the same effective batch: its stop step and final per-sample g."""
    results = {}

    def result(method):
        if method not in results:
            make, callbacks = METHODS[method]
            trainer = make_trainer(callbacks=callbacks())
            trainer.fit(make(copy.deepcopy(small_testbed.model)), unlearning_data(small_testbed))
            stopping = find(trainer, MemorizationEarlyStopping)
            monitor = find(trainer, MemorizationMonitor)
            results[method] = {"stopped_step": stopping.stopped_step, "scores": monitor.values.tolist()}
        return results[method]

    return result


@pytest.mark.parametrize(
    ("stage", "method"),
    [(2, "SGA"), (3, "SGA"), (3, "TA"), (3, "SGA + KL retain"), (3, "selective NPO + KL retain")],
)
@pytest.mark.slow
def test_zero_unlearns_and_saves_a_loadable_model(small_testbed, one_process, tmp_path, stage, method):
    from tests.deepspeed_cpu import CPUDeepSpeedStrategy

    tb = small_testbed
    half = len(tb.forget) // 2
    strategy = CPUDeepSpeedStrategy(config=deepspeed_config(stage=stage, micro_batch_size=half, bucket_size=10**6))
    make, callbacks = METHODS[method]
    trainer = make_trainer(devices=2, strategy=strategy, callbacks=[*callbacks(), SaveAndReport(tmp_path)])
    trainer.fit(make(copy.deepcopy(tb.model)), unlearning_data(tb, batch_size=half))

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    el = {int(i): v for rank in ranks for i, v in rank.pop("el").items()}
    assert ranks[0] == ranks[1]  # the same decisions and scores on both processes
    assert ranks[0]["stopped_step"] is not None
    if "KL" in method:  # the reference pass saw the reference's shards, not the model's: a KL above zero
        assert ranks[0]["retain_loss"] > 0.01
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # one ordinary Hugging Face folder
    g = score_memorization(model, unlearning_data(tb).scoring_dataloader("forget"))
    assert max(g.values()) <= ranks[0]["threshold"]
    assert [g[i] for i in sorted(g)] == pytest.approx(ranks[0]["scores"], abs=1e-5)  # the saved model is the result
    forget = unlearning_data(tb, batch_size=len(tb.forget))
    batch = next(iter(forget.scoring_dataloader("forget")))
    expected = extraction_likelihood(model, batch["input_ids"][:, :PREFIX], batch["attention_mask"][:, :PREFIX], n=4)
    expected = dict(zip(batch["sample_id"].tolist(), expected.tolist(), strict=True))
    assert el == pytest.approx({i: expected[i] for i in el}, abs=1e-6)
    if method != "TA":  # and it is the result one process reaches
        single = one_process(method)
        assert abs(ranks[0]["stopped_step"] - single["stopped_step"]) <= 2
        difference = [abs(a - b) for a, b in zip(ranks[0]["scores"], single["scores"], strict=True)]
        assert max(difference) <= 0.05 and sum(difference) / len(difference) <= 0.01


def test_config_checks_its_arguments():
    assert deepspeed_config(3)["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert deepspeed_config(2, offload_optimizer=True)["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(ValueError, match="stage"):
        deepspeed_config(4)
    with pytest.raises(ValueError, match="offload_parameters needs ZeRO stage 3"):
        deepspeed_config(2, offload_parameters=True)


@pytest.fixture
def cpu_deepspeed_names():
    """Lightning's DeepSpeed names (``"deepspeed_stage_2"``, …) resolved to the CPU strategy of these tests."""
    from lightning.pytorch.strategies import StrategyRegistry

    from tests.deepspeed_cpu import CPUDeepSpeedStrategy

    saved = {name: StrategyRegistry[name] for name in ("deepspeed_stage_2", "deepspeed_stage_3")}
    for stage in (2, 3):  # with small buckets: Lightning's 2e8-element ones take long to allocate on a CPU
        StrategyRegistry.register(
            f"deepspeed_stage_{stage}",
            CPUDeepSpeedStrategy,
            stage=stage,
            allgather_bucket_size=10**6,
            reduce_bucket_size=10**6,
            override=True,
        )
    yield
    StrategyRegistry.update(saved)


@pytest.mark.slow
def test_deepspeed_by_name_takes_its_batch_size_from_the_forget_loader(
    small_testbed, one_process, cpu_deepspeed_names, tmp_path
):
    """``strategy="deepspeed_stage_2"`` (``DeepSpeedStrategy(stage=2)``, no config) guesses the batch size from the
    train loader: our combined loader answers with the forget loader's."""
    tb = small_testbed
    trainer = make_trainer(devices=2, strategy="deepspeed_stage_2", callbacks=[SaveAndReport(tmp_path)])
    trainer.fit(METHODS["SGA"][0](copy.deepcopy(tb.model)), unlearning_data(tb, batch_size=len(tb.forget) // 2))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["micro_batch"] == len(tb.forget) // 2
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert abs(ranks[0]["stopped_step"] - one_process("SGA")["stopped_step"]) <= 2
    assert max(ranks[0]["scores"]) <= ranks[0]["threshold"]


@pytest.mark.slow
def test_cli_fit_with_a_deepspeed_strategy_name(small_testbed, cpu_deepspeed_names, tmp_path, monkeypatch):
    """``lightning-unlearn fit --trainer.strategy deepspeed_stage_3`` on two processes: the per-sample rule holds at
    the end, as the default logger's metrics.csv shows."""
    from lightning_unlearn.cli import main

    monkeypatch.chdir(tmp_path)
    small_testbed.export(tmp_path / "testbed")
    args = ["--trainer.strategy=deepspeed_stage_3", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    args += ["--model.init_args.learning_rate=3e-4", "--data.batch_size=8", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.enable_model_summary=false"]
    assert main(["fit", "--config", str(EXAMPLES / "sga.yaml"), *args]) == 0
    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").open()))
    last = [row for row in rows if row["forget/g_max"]][-1]
    threshold = next(float(row["holdout/threshold"]) for row in rows if row["holdout/threshold"])
    assert float(last["forget/g_max"]) <= threshold


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "method"), [(2, "SGA + LoRA"), (3, "TA"), (3, "SGA + KL retain")])
def test_zero_resumes_from_a_checkpoint_to_the_same_end(small_testbed, tmp_path, stage, method):
    """A run checkpointed every third step; another resumed from its step-3 checkpoint ends at the same step with the
    same per-sample scores: the per-sample weights, scores and threshold travel in DeepSpeed's client state, and
    under ZeRO-3 TA's θ_base and the KL term's reference are gathered whole into it, each process taking back its
    own shards. With LoRA, DeepSpeed's checkpoint holds
    the adapter's weights alone (the frozen base is loaded again from its source)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.deepspeed_cpu import CPUDeepSpeedStrategy

    tb = small_testbed
    half = len(tb.forget) // 2

    def fit(name, callbacks, ckpt_path=None):
        strategy = CPUDeepSpeedStrategy(config=deepspeed_config(stage=stage, micro_batch_size=half, bucket_size=10**6))
        report = RankReport(tmp_path / name)
        callbacks = [*callbacks, report]
        trainer = make_trainer(
            devices=2, strategy=strategy, callbacks=callbacks, enable_checkpointing=True, default_root_dir=tmp_path
        )
        module = METHODS[method][0](copy.deepcopy(tb.model))
        trainer.fit(module, unlearning_data(tb, batch_size=half), ckpt_path=ckpt_path)
        return report.read(2)

    every_third_step = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=3, save_top_k=-1)
    whole = fit("whole", [every_third_step])
    assert whole[0]["stopped_step"] > 4
    (checkpoint,) = (tmp_path / "checkpoints").glob("*step=3.ckpt")
    if "LoRA" in method:
        (states,) = checkpoint.rglob("mp_rank_00_model_states.pt")
        saved = torch.load(states, weights_only=False)
        assert saved["module"] and all(".lora_A." in name or ".lora_B." in name for name in saved["module"])
        assert not saved["frozen_param_fragments"]  # nor the base's shards
    resumed = fit("resumed", [], ckpt_path=checkpoint)
    assert resumed[0] == resumed[1]
    assert resumed[0]["stopped_step"] == whole[0]["stopped_step"]
    assert resumed[0]["scores"] == pytest.approx(whole[0]["scores"], abs=1e-6)


class SaveBothForms(L.Callback):
    """On every process, after fit: the merged folder, the adapter folder, and the run's view."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def on_fit_end(self, trainer, pl_module):
        pl_module.save_pretrained(self.folder / "merged")
        pl_module.save_pretrained(self.folder / "adapter", merge=False)
        RankReport(self.folder).on_fit_end(trainer, pl_module)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "method"), [(2, SelectiveGradientAscent), (3, TAU)])
def test_zero_trains_a_lora_adapter_and_saves_it_gathered(small_testbed, tmp_path, stage, method):
    """LoRA under ZeRO-2 and ZeRO-3 (TAU: both adapters, the move at the switch and the edit on shards): the rule
    holds, the merged folder loads in plain transformers and is the result, and the adapter folder is not the
    empty shards (it gives the same model)."""
    peft = pytest.importorskip("peft")
    from tests.deepspeed_cpu import CPUDeepSpeedStrategy

    tb = small_testbed
    half = len(tb.forget) // 2
    strategy = CPUDeepSpeedStrategy(config=deepspeed_config(stage=stage, micro_batch_size=half, bucket_size=10**6))
    module = method(copy.deepcopy(tb.model), learning_rate=1e-3, peft=lora())
    trainer = make_trainer(devices=2, strategy=strategy, callbacks=[SaveBothForms(tmp_path)])
    trainer.fit(module, unlearning_data(tb, batch_size=half))

    ranks = RankReport(tmp_path).read(2)
    assert ranks[0] == ranks[1] and ranks[0]["stopped_step"] is not None
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    scoring = unlearning_data(tb).scoring_dataloader("forget")
    g = score_memorization(merged, scoring)
    assert [g[i] for i in sorted(g)] == pytest.approx(ranks[0]["scores"], abs=1e-5)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(tb.model), tmp_path / "adapter")
    if method is TAU:
        loaded.load_adapter(tmp_path / "adapter" / "ascent", "ascent")
        loaded.base_model.set_adapter(["default", "ascent"])
    batch = next(iter(scoring))
    with torch.no_grad():
        expected = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        adapted = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert_close_scaled(adapted, expected)
