"""DeepSpeed ZeRO-2 and ZeRO-3 with two CPU processes over gloo (tests/deepspeed_cpu.py): unlearning finishes with
every forget record at or below the threshold, and the saved folder loads in plain transformers."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
from transformers import AutoModelForCausalLM

from lightning_unlearn import TaskArithmetic
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from lightning_unlearn.memorization import extraction_likelihood, score_memorization
from lightning_unlearn.strategies import deepspeed_config
from tests.conftest import DISTRIBUTED_METHODS, find, make_trainer, unlearning_data

METHODS = {**DISTRIBUTED_METHODS, "TA": (lambda model: TaskArithmetic(model, learning_rate=1e-3), list)}

pytest.importorskip("deepspeed")

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
