"""Dropout off while the model trains, and gradient checkpointing on with it."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM

from lightning_unlearn import GradientAscent, UnlearningDataModule
from lightning_unlearn.evaluation.scoring import eval_mode
from lightning_unlearn.integrations.training_mode import checkpointing, drops, set_checkpointing, train_without_dropout
from tests.conftest import make_trainer
from tests.helpers.peak_memory import PeakTensorMemory
from tests.helpers.random_data import IdTokenizer, random_texts

VOCABULARY = 96


def with_dropout(kind: str, layers: int = 2, positions: int = 64) -> torch.nn.Module:
    """A model built from config, in training mode (as built), with every dropout at 0.1."""
    torch.manual_seed(0)
    if kind == "gpt-neo":
        config = GPTNeoConfig(
            vocab_size=VOCABULARY,
            hidden_size=32,
            num_layers=layers,
            num_heads=2,
            attention_types=[[["global"], layers]],
            max_position_embeddings=positions,
            resid_dropout=0.1,
            embed_dropout=0.1,
            attention_dropout=0.1,
        )
        return GPTNeoForCausalLM(config)
    if kind == "gpt2":  # its sdpa attention reads self.attn_dropout.p while the attention module trains
        config = GPT2Config(vocab_size=VOCABULARY, n_embd=32, n_layer=layers, n_head=2, n_positions=positions)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(  # attention dropout handed to the attention function, no dropout module at all
        vocab_size=VOCABULARY,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        attention_dropout=0.1,
    )
    return LlamaForCausalLM(config)


class StepProbe(L.Callback):
    """During the first training step: the model's training flag, the dropout modules found in training mode
    (forward pre-hooks), and the training forward's logits."""

    def on_train_start(self, trainer, pl_module):
        self.model_training, self.dropping, self.logits = [], [], None
        model = pl_module.model
        for module in model.modules():
            if drops(module):
                module.register_forward_pre_hook(self._pre_hook)
        model.register_forward_hook(self._hook)

    def _pre_hook(self, module, args):
        if module.training:
            self.dropping.append(type(module).__name__)

    def _hook(self, model, args, output):
        if torch.is_grad_enabled() and self.logits is None:
            self.model_training.append(model.training)
            self.logits = output.logits.detach().clone()


def _data(length: int = 16, count: int = 4, **options) -> UnlearningDataModule:
    forget = random_texts(count, length, VOCABULARY, seed=1)
    return UnlearningDataModule(
        IdTokenizer(VOCABULARY), forget, max_length=length, batch_size=count, shuffle=False, **options
    )


@pytest.mark.parametrize("kind", ["gpt-neo", "gpt2", "llama"])
def test_no_dropout_during_a_step_and_the_model_stays_in_training_mode(kind):
    model = with_dropout(kind)
    assert model.training  # built from config: training mode, where Lightning leaves it
    original = copy.deepcopy(model).eval()
    probe, data = StepProbe(), _data()
    make_trainer(max_steps=1, callbacks=[probe]).fit(GradientAscent(model), data)
    assert probe.dropping == [] and probe.model_training == [True]
    batch = next(iter(data.scoring_dataloader("forget")))
    with torch.no_grad():
        expected = original(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(probe.logits, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_dropout_true_keeps_dropout_on():
    model = with_dropout("gpt-neo").eval()  # from_pretrained gives eval mode: dropout=True must still drop
    probe = StepProbe()
    make_trainer(max_steps=1, callbacks=[probe]).fit(GradientAscent(model, dropout=True), _data())
    assert probe.model_training == [True] and "Dropout" in probe.dropping


def test_scoring_passes_give_back_each_modules_mode():
    model = with_dropout("gpt2")
    count = train_without_dropout(model)
    assert count > 0 and model.training
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and not any(module.training for module in model.modules() if drops(module))
    assert all(module.training for module in model.transformer.h)  # decoder layers: where checkpointing lives


class Gradients(L.Callback):
    """The forward and backward pass's peak tensor memory (bytes), and the gradients, of the first step."""

    def on_train_batch_start(self, *args):
        self.memory = PeakTensorMemory().__enter__()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not hasattr(self, "grads"):
            self.memory.__exit__(None, None, None)
            self.grads = [p.grad.detach().clone() for p in pl_module.model.parameters()]


def _checkpointed_step(setting: bool | None) -> Gradients:
    model = with_dropout("gpt-neo", layers=4, positions=512)
    probe = Gradients()
    module = GradientAscent(model, gradient_checkpointing=setting)
    make_trainer(max_steps=1, callbacks=[probe]).fit(module, _data(length=512, count=2))
    assert checkpointing(model) is bool(setting)
    return probe


def test_gradient_checkpointing_lowers_a_steps_peak_with_the_same_gradients():
    """A 4-layer model at 512 tokens: at least 40% less peak memory in the forward and backward pass, the same
    gradients (dropout off, so the recomputed forward is the same forward)."""
    plain, checkpointed = _checkpointed_step(None), _checkpointed_step(True)
    assert checkpointed.memory.peak <= 0.6 * plain.memory.peak, checkpointed.memory.peak / plain.memory.peak
    for a, b in zip(checkpointed.grads, plain.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_gradient_checkpointing_false_turns_the_models_own_off():
    model = with_dropout("gpt-neo")
    set_checkpointing(model, True)
    module = GradientAscent(model, gradient_checkpointing=False)
    module.configure_model()
    assert not checkpointing(model)
    kept = with_dropout("gpt-neo")
    set_checkpointing(kept, True)
    GradientAscent(kept).configure_model()  # None: the model's own setting
    assert checkpointing(kept)
