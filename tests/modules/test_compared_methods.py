"""WGA, SatImp, CE-U, UNDIAL and RMU as modules: each one's loss in a training step is its formula's, their
reference is the model before unlearning, RMU trains what the paper trains, and WGA, CE-U and UNDIAL meet the
per-sample rule gently on the small testbed."""

from __future__ import annotations

import copy
import statistics

import lightning as L
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.evaluation.membership import loss_attack
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.losses import rmu_loss, undial_loss
from lightning_unlearn.methods import make_method
from lightning_unlearn.modules import RMU, UNDIAL
from lightning_unlearn.modules.rmu import decoder_layers, layer_output
from tests.conftest import find, make_trainer, unlearning_data


def holdout_nll(model: torch.nn.Module, datamodule) -> float:
    """The holdout records' mean NLL per token under ``model`` (minus their mean LOSS-attack score)."""
    scores = score_memorization(model, datamodule.scoring_dataloader("holdout"), measure=loss_attack)
    return -statistics.fmean(scores.values())


# Learning rates at which each meets the rule gently on the small testbed (2 layers of width 64). SatImp and RMU have
# none there: each either stalls or, in 2 steps, takes holdout NLL past 1.4x; on the demo's testbed their registry
# settings meet it in 121 and 337 steps (benchmarks/robust_forgetting.py). Nor do gd and simnpo-kl: gd (every record
# ascended) meets it at 1.41x-1.46x holdout NLL at every rate from 2e-4 to 5e-3; simnpo-kl not in 200 steps at 1e-3
# to 5e-3, and at 2e-2 in 2 steps at 1.78x.
FAST = {"wga": 2e-3, "ce-u": 2e-3, "undial": 5e-3}


class FirstStep(L.Callback):
    """The first training step's batch and loss, and the model's weights before it."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 0:
            self.batch, self.before = batch, copy.deepcopy(module.model)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and not hasattr(self, "loss"):
            self.loss = outputs["loss"].detach()


@pytest.mark.parametrize(  # UNDIAL's 200-odd steps make it an end-to-end run
    "method", [pytest.param(m, marks=pytest.mark.slow) if m == "undial" else m for m in FAST]
)
def test_each_method_meets_the_per_sample_rule_gently(small_testbed, method):
    """With its registry settings but a faster learning rate: the rule met in more than a few steps, at under 1.15x
    holdout NLL."""
    data = unlearning_data(small_testbed)
    before = holdout_nll(small_testbed.model.eval(), data)
    module, callbacks = make_method(method, copy.deepcopy(small_testbed.model), learning_rate=FAST[method])
    trainer = make_trainer(max_steps=200, callbacks=callbacks)
    trainer.fit(module, data)
    assert find(trainer, MemorizationEarlyStopping).rule_met, method
    assert 5 < trainer.global_step < 200, (method, trainer.global_step)
    assert holdout_nll(module.model.eval(), data) < 1.15 * before, method


def test_rmu_trains_the_mlps_up_to_its_layer_and_steers_that_layers_output(small_testbed):
    """Layer ℓ = 1 of 2: the MLPs' output projections of layers 0 and 1 train, nothing else (the authors'
    ``down_proj``; GPT-Neo's ``c_proj``); the first step's forget loss is the mean squared distance of layer 1's
    output (the model's own hidden states) to c·u, with ‖c·u‖ = c."""
    module = RMU(copy.deepcopy(small_testbed.model), layer=1, retain_loss=None, steering_coefficient=4.0)
    first = FirstStep()
    make_trainer(max_steps=1, callbacks=[first]).fit(module, unlearning_data(small_testbed))
    trained = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trained and all(".mlp." in name and (".h.0." in name or ".h.1." in name) for name in trained)
    assert trained == {f"transformer.h.{i}.mlp.c_proj.{kind}" for i in (0, 1) for kind in ("weight", "bias")}
    forget = first.batch["forget"]
    with torch.no_grad():
        hidden = first.before(
            input_ids=forget["input_ids"], attention_mask=forget["attention_mask"], output_hidden_states=True
        ).hidden_states
    target = module.target(hidden[0])
    assert target.norm().item() == pytest.approx(4.0, rel=1e-6)
    assert torch.equal(target, module.target(hidden[0]))  # drawn from the seed: the same after a resume
    with layer_output(decoder_layers(first.before)[1]) as captured, torch.no_grad():
        first.before(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"])
    expected = rmu_loss(captured[0], target, forget["attention_mask"]).mean()  # every weight is 1 at the start
    assert first.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rmus_retain_term_compares_with_the_original_models_activations(small_testbed):
    """After steps that moved the trained MLPs, the reference pass still gives the original model's activations
    of layer ℓ on the retain records, and the weights are the trained ones again afterwards."""
    original = copy.deepcopy(small_testbed.model)
    module = RMU(copy.deepcopy(small_testbed.model), layer=0, learning_rate=1e-2, retain_weight=1.0, trained_part="mlp")
    make_trainer(max_steps=3).fit(module, unlearning_data(small_testbed))
    trained = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    retain = next(iter(unlearning_data(small_testbed).scoring_dataloader("retain")))
    with layer_output(decoder_layers(original)[0]) as captured, torch.no_grad():
        original(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"])
    reference = module.retain_inputs(dict(retain))["reference_activations"]
    assert torch.allclose(reference, captured[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(trained["transformer.h.0.mlp.c_fc.weight"], original.transformer.h[0].mlp.c_fc.weight)
    assert all(torch.equal(p, trained[name]) for name, p in module.model.named_parameters())


def test_undial_distils_the_model_before_unlearning_not_the_one_training(small_testbed):
    """The first step's loss is UNDIAL's formula with the model's own logits as the teacher's (it starts as its own
    teacher); after steps the teacher's logits are still the original model's."""
    module = UNDIAL(copy.deepcopy(small_testbed.model), learning_rate=1e-3)
    first = FirstStep()
    make_trainer(max_steps=3, callbacks=[first]).fit(module, unlearning_data(small_testbed))
    forget = first.batch["forget"]
    with torch.no_grad():
        logits = first.before(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    expected = undial_loss(logits, logits, forget["input_ids"], forget["attention_mask"], beta=10.0).mean()
    assert first.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    teacher = module.forget_inputs(dict(forget))["reference_logits"]
    assert torch.allclose(teacher, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: RMU(m, adversary_steps=2), "relearning-aware and sharpness-aware training do not apply"),
        (lambda m: RMU(m, sharpness=0.05), "relearning-aware and sharpness-aware training do not apply"),
        (lambda m: RMU(m, trained_layers=0), "trained_layers must be >= 1"),
        (lambda m: RMU(m, trained_part="attn"), "trained_part must be 'output_projection' or 'mlp'"),
        (lambda m: RMU(m, steering_coefficient=0.0), "steering_coefficient must be > 0"),
        (lambda m: RMU(m, retain_loss="mse"), "retain_loss must be one of None, 'nll', 'kl', 'activations'"),
        (lambda m: UNDIAL(m, beta=-1.0), "beta must be >= 0"),
    ],
)
def test_bad_arguments_of_the_compared_methods_are_refused(tiny_model, make, message):
    with pytest.raises(ValueError, match=message):
        make(tiny_model)


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_rmu_trains_the_down_projections_of_a_llama_as_the_authors_do():
    """On a Llama (the authors' architecture), the trained parameters are ``mlp.down_proj`` of layers ℓ−2..ℓ, as in
    Li et al.'s code; ``trained_part="mlp"`` trains the whole MLPs."""
    module = RMU(tiny_llama(), layer=2)
    module.configure_model()
    trained = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trained == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)}
    whole = RMU(tiny_llama(), layer=2, trained_part="mlp", trained_layers=1)
    whole.configure_model()
    trained = {name for name, p in whole.model.named_parameters() if p.requires_grad}
    assert trained == {f"model.layers.2.mlp.{part}_proj.weight" for part in ("gate", "up", "down")}


def test_rmu_names_a_layer_that_the_model_has(small_testbed):
    module = RMU(copy.deepcopy(small_testbed.model), layer=5)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\), got 5"):
        module.configure_model()
