"""Relearning-aware unlearning: the gradient moved from the attacked copy, the draws, and SGA with it."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_unlearn import NPO, TAU, SelectiveGradientAscent, TaskArithmetic
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from lightning_unlearn.data import PadCollator
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.memorization import sequence_nll
from lightning_unlearn.modules.adversary import RelearningAdversary
from tests.conftest import find, make_model, make_trainer, unlearning_data


def texts(count: int = 12, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 10, (count,), generator=generator).tolist()
    return [
        {"input_ids": torch.randint(1, 64, (n,), generator=generator), "sample_id": i} for i, n in enumerate(lengths)
    ]


def adversary(model: torch.nn.Module, steps: int = 2) -> RelearningAdversary:
    return RelearningAdversary(model, texts(), PadCollator(0), steps, learning_rate=1e-2, batch_size=4, seed=1)


def test_transplant_gives_the_model_the_gradient_taken_at_the_attacked_copy():
    model = make_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    enemy = adversary(model)
    forget = PadCollator(0)(texts(3, seed=5))
    enemy.attack(model, enemy.batch(0, torch.device("cpu")))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the model is not touched
    moved = [name for name, p in enemy.copy.named_parameters() if not torch.equal(p, before[name])]
    assert moved

    loss = -sequence_nll(enemy.logits(forget)[0], forget["input_ids"], forget["attention_mask"]).mean()
    expected = torch.autograd.grad(loss, list(enemy.copy.parameters()), retain_graph=True)
    surrogate = enemy.transplant(model, loss)
    assert surrogate.item() == pytest.approx(loss.item(), rel=1e-6)
    surrogate.backward()
    for (name, p), gradient in zip(model.named_parameters(), expected, strict=True):
        assert torch.equal(p.grad, gradient), name


def test_each_step_draws_its_own_batch_and_a_resumed_run_draws_the_same():
    enemy = adversary(make_model())
    first, again, other = (enemy.batch(step, torch.device("cpu")) for step in (3, 3, 4))
    assert torch.equal(first["input_ids"], again["input_ids"]) and len(first["sample_id"]) == 4
    assert not torch.equal(first["sample_id"], other["sample_id"])
    twin = RelearningAdversary(make_model(), texts(), PadCollator(0), 2, 1e-2, batch_size=4, seed=1)
    assert torch.equal(twin.batch(3, torch.device("cpu"))["sample_id"], first["sample_id"])


def test_relearning_aware_sga_stops_only_when_records_stay_forgotten_after_the_simulated_attack(small_testbed):
    """The scores the rule reads are max(g at θ, g at θ'): at the stop, every record is at or below the level both
    before and after the simulated relearning; g at θ alone is lower for some records."""
    tb = small_testbed
    module = SelectiveGradientAscent(
        copy.deepcopy(tb.model), learning_rate=3e-4, adversary_steps=2, adversary_learning_rate=1e-3
    )
    data = unlearning_data(tb, relearn=tb.fresh_records(24, seed=99))
    trainer = make_trainer(max_epochs=150)
    trainer.fit(module, data)
    stopping = find(trainer, MemorizationEarlyStopping)
    assert stopping.rule_met
    scores = find(trainer, MemorizationMonitor).scores
    plain = score_memorization(module.model, data.scoring_dataloader("forget"))
    assert max(scores.values()) <= stopping.threshold_value
    assert all(scores[i] >= plain[i] for i in plain) and any(scores[i] > plain[i] for i in plain)
    assert module.adversary.texts is data.split("relearn")  # the relearn split, not the retain split


@pytest.mark.parametrize("method", [TaskArithmetic, TAU])
def test_task_arithmetic_refuses_adversary_steps(small_testbed, method):
    with pytest.raises(ValueError, match="takes no adversary_steps"):
        method(small_testbed.model, adversary_steps=2)


def test_adversary_steps_without_texts_to_relearn_on_fail_before_any_step(small_testbed):
    module = NPO(copy.deepcopy(small_testbed.model), adversary_steps=2)
    with pytest.raises(ValueError, match="needs texts to relearn on"):
        make_trainer().fit(module, unlearning_data(small_testbed, retain=None))
    assert module.global_step == 0


def test_the_copy_holds_only_what_trains_and_shares_the_frozen_base():
    """Under LoRA the attacked copy owns the adapter's weights alone: the base's are the model's own tensors."""
    from tests.conftest import lora

    model = SelectiveGradientAscent(make_model(), peft=lora(["q_proj", "v_proj"]))
    model.configure_model()
    enemy = adversary(model.model)
    own = {name: p for name, p in model.model.named_parameters()}
    for name, p in enemy.copy.named_parameters():
        assert (p is own[name]) != own[name].requires_grad, name  # frozen: shared; trained: a copy of its own
    enemy.attack(model.model, enemy.batch(0, torch.device("cpu")))
    assert all(not own[name].requires_grad for name in own if "lora" not in name)


def test_the_attack_runs_once_per_optimizer_step(monkeypatch):
    """Micro-batches of one optimizer step (and the scoring between steps) share one attack of the copy."""
    model = make_model()
    enemy = adversary(model)
    attacks = []
    monkeypatch.setattr(enemy, "attack", lambda m, batch: attacks.append(batch))
    forget = PadCollator(0)(texts(3, seed=5))
    for step in (0, 0, 0, 1, 1):
        enemy.forget_terms(model, forget, None, step)
    assert len(attacks) == 2


def test_inner_steps_use_the_loss_scaler_under_16_mixed(monkeypatch):
    """With the run's scaler, each inner step's loss is scaled from its current scale, and unscaled before the step:
    the copy moves as it does without a scaler (float32 here, so no underflow to rescue)."""
    model = make_model()
    plain, scaled = adversary(model), adversary(model)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scales = []
    original = torch.amp.GradScaler.scale
    monkeypatch.setattr(
        torch.amp.GradScaler, "scale", lambda self, loss: scales.append(self.get_scale()) or original(self, loss)
    )
    batch = plain.batch(0, torch.device("cpu"))
    plain.attack(model, batch)
    scaled.attack(model, batch)
    assert scales and scales[0] == 2.0**10 and len(scales) == scaled.steps
    for (name, p), q in zip(plain.copy.named_parameters(), scaled.copy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_records_scored_between_steps_are_scored_after_the_simulated_attack_too(small_testbed):
    """The monitor's own scoring passes (every N steps, and the stale records) read max(g at θ, g at θ'), as the
    training forward does, with the copy attacked for that step."""
    tb = small_testbed
    data = unlearning_data(tb, relearn=tb.fresh_records(24, seed=99), batch_size=4)  # batches: most records unscored
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4, adversary_steps=2)
    trainer = make_trainer(max_steps=3)
    trainer.fit(module, data)
    monitor = find(trainer, MemorizationMonitor)
    monitor.refresh(trainer, module, log=False)  # a scoring pass of every record at the final weights
    loader = data.scoring_dataloader("forget")
    plain = score_memorization(module.model, loader)
    attacked = score_memorization(module.adversary.attack_at(module.model, trainer.global_step, "cpu"), loader)
    expected = {i: max(plain[i], attacked[i]) for i in plain}
    assert monitor.scores == pytest.approx(expected, abs=1e-6)
    assert any(attacked[i] > plain[i] for i in plain)


def test_sharpness_takes_the_forget_loss_at_the_worst_point_within_rho():
    """θ' = θ − ρ · ∇NLL/‖∇NLL‖ over what trains: exactly ρ away, where the batch's NLL is lower (relearned), the
    loss's gradient taken there and given to the model; g is the one at θ (the rule reads the weights)."""
    from lightning_unlearn.modules.adversary import SharpnessAdversary

    model = make_model()
    forget = PadCollator(0)(texts(3, seed=5))
    enemy = SharpnessAdversary(model, rho=0.5)
    g = torch.rand(3)
    _, nll, same_g = enemy.forget_terms(model, forget, g, step=0)
    pairs = zip(model.parameters(), enemy.copy.parameters(), strict=True)
    moved = torch.sqrt(sum(((q - p) ** 2).sum() for p, q in pairs))
    assert moved.item() == pytest.approx(0.5, rel=1e-4) and same_g is g
    at_theta = sequence_nll(model(**_ids(forget)).logits, **_ids(forget))
    assert nll.mean() < at_theta.mean()  # the direction relearns the batch
    loss = -nll.mean()
    expected = torch.autograd.grad(loss, list(enemy.copy.parameters()), retain_graph=True)
    enemy.transplant(model, loss).backward()
    for (name, p), gradient in zip(model.named_parameters(), expected, strict=True):
        assert torch.equal(p.grad, gradient), name


def _ids(batch):
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_sharpness_is_refused_where_it_does_not_apply(tiny_model):
    from lightning_unlearn import RMU

    with pytest.raises(ValueError, match="give one"):
        SelectiveGradientAscent(copy.deepcopy(tiny_model), sharpness=0.1, adversary_steps=2)
    with pytest.raises(ValueError, match="takes no sharpness"):
        TaskArithmetic(copy.deepcopy(tiny_model), sharpness=0.1)
    with pytest.raises(ValueError, match="sharpness-aware training do not apply"):
        RMU(copy.deepcopy(tiny_model), sharpness=0.1)
    with pytest.raises(ValueError, match="a radius"):
        SelectiveGradientAscent(copy.deepcopy(tiny_model), sharpness=-1.0)


def test_sharpness_on_bf16_weights_is_refused_rather_than_quietly_plain_sga(tiny_model):
    """ρ = 0.05 over a model's norm moves each weight by far less than a bf16 spacing: refused, with what to do."""
    from lightning_unlearn.modules.adversary import SharpnessAdversary

    with pytest.raises(ValueError, match=r"torch.bfloat16.*'bf16-mixed'"):
        SharpnessAdversary(copy.deepcopy(tiny_model).to(torch.bfloat16).requires_grad_(True), rho=0.05)
    assert SharpnessAdversary(copy.deepcopy(tiny_model).requires_grad_(True), rho=0.05).rho == 0.05


def test_with_an_adversary_the_models_own_pass_keeps_no_graph(small_testbed):
    """The forget loss is taken at the adversary's copy: the model's own training forward only scores g, so it keeps
    no activation graph, and one graph (the copy's) is alive at the step's peak instead of two."""
    import lightning as L

    seen: list[bool] = []

    class ModelForwards(L.Callback):
        hooked = False

        def on_train_batch_start(self, trainer, pl_module, *args):  # after the copy is made: the model's alone
            if not self.hooked:
                pl_module.model.register_forward_hook(lambda module, a, out: seen.append(out.logits.requires_grad))
                self.hooked = True

    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), sharpness=0.05, learning_rate=1e-5)
    make_trainer(max_steps=2, callbacks=[ModelForwards()]).fit(module, unlearning_data(small_testbed))
    assert seen and not any(seen)
