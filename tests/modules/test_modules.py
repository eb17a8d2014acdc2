"""Unlearning modules: each method on the small testbed, loss normalization, saving, and every bad input."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoConfig, GPTNeoForCausalLM, GPTNeoModel

from lightning_unlearn import (
    NPO,
    TAU,
    GradientAscent,
    GradientDifference,
    SelectiveGradientAscent,
    SimNPO,
    TaskArithmetic,
    UnlearningDataModule,
)
from lightning_unlearn.callbacks import (
    MemorizationEarlyStopping,
    MemorizationMonitor,
    SelectiveAscent,
    per_sample_control,
)
from lightning_unlearn.evaluation.scoring import score_log_likelihood, score_memorization
from lightning_unlearn.functional.memorization import sequence_log_likelihood, sequence_nll
from lightning_unlearn.functional.thresholds import holdout_threshold
from lightning_unlearn.modules import retain
from lightning_unlearn.modules.reference import ReferenceWeights, host_buffer
from lightning_unlearn.utilities.errors import ConfigurationError
from tests.conftest import assert_close_scaled, find, make_tokenizer, make_trainer, unlearning_data
from tests.helpers.contract import private_overrides
from tests.helpers.peak_memory import StepPeak, WeightCopies
from tests.helpers.random_data import IdTokenizer, random_texts


def unlearn(module, tb):
    """Fits ``module`` on the testbed; returns the trainer, the stopping callback and the final forget scores."""
    trainer = make_trainer()
    datamodule = unlearning_data(tb)
    trainer.fit(module, datamodule)
    final = score_memorization(module.model, datamodule.scoring_dataloader("forget"))
    return trainer, find(trainer, MemorizationEarlyStopping), final


def test_selective_gradient_ascent_forgets_every_record(small_testbed):
    tb = small_testbed
    trainer, stopping, final = unlearn(SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4), tb)
    assert stopping.stopped_step is not None and stopping.stopped_step > 1
    holdout_g = score_memorization(tb.model, unlearning_data(tb).scoring_dataloader("holdout"))
    assert stopping.threshold_value == pytest.approx(
        holdout_threshold(torch.tensor(list(holdout_g.values())), "quantile")
    )
    assert max(final.values()) <= stopping.threshold_value  # every record, not just the mean
    assert find(trainer, MemorizationMonitor).scores == pytest.approx(final)
    assert trainer.callback_metrics["forget/above_threshold"] == 0


def test_gradient_ascent_with_the_mean_rule_stops_earlier(small_testbed):
    tb = small_testbed
    module = GradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4)
    stopping = MemorizationEarlyStopping(criterion="mean", threshold="holdout_mean")
    trainer = make_trainer(callbacks=[MemorizationMonitor(), stopping])
    trainer.fit(module, unlearning_data(tb))
    scores = find(trainer, MemorizationMonitor).scores
    assert sum(scores.values()) / len(scores) <= stopping.threshold_value
    assert stopping.stopped_step is not None


def test_gradient_difference_trains_on_retain(small_testbed):
    tb = small_testbed
    module = GradientDifference(copy.deepcopy(tb.model), retain_weight=2.0, learning_rate=3e-4)
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, unlearning_data(tb, batch_size=8))
    assert {"train/forget_nll", "train/retain_nll", "train/selected"} <= set(trainer.callback_metrics)
    with pytest.raises(ValueError, match="retain split too"):
        make_trainer(max_steps=1).fit(GradientDifference(copy.deepcopy(tb.model)), unlearning_data(tb, retain=None))


def test_step_is_the_weighted_mean_over_selected_samples(small_testbed):
    """One SGD step (lr 1) equals the gradient of Σ w·(−NLL) / Σ w, computed by hand."""
    tb = small_testbed
    datamodule = unlearning_data(tb, shuffle=False, batch_size=6)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))[0]["forget"]
    weights = torch.zeros(len(tb.forget))
    weights[[1, 4]] = 1.0
    weights[2] = 0.5

    reference = copy.deepcopy(tb.model)
    nll = sequence_nll(
        reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
        batch["input_ids"],
        batch["attention_mask"],
    )
    w = weights[batch["sample_id"]]
    (-(w * nll).sum() / w.sum()).backward()
    expected = {n: p.detach() - p.grad for n, p in reference.named_parameters()}

    class OneSGDStep(GradientAscent):
        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=1.0)

    module = OneSGDStep(copy.deepcopy(tb.model))
    module.forget_weights.values = weights
    make_trainer(max_steps=1).fit(module, datamodule)
    for name, parameter in module.model.named_parameters():
        assert torch.allclose(parameter, expected[name], atol=1e-5), name


def test_non_finite_loss_stops_with_the_step(small_testbed):
    class Exploding(GradientAscent):
        def forget_loss(self, batch, output, nll):
            return nll * float("nan") if self.global_step == 2 else -nll

    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step 2"):
        make_trainer(max_steps=5).fit(Exploding(copy.deepcopy(small_testbed.model)), unlearning_data(small_testbed))


def test_model_without_causal_lm_head_is_rejected(small_testbed):
    with pytest.raises(ConfigurationError, match="no causal-LM head"):
        GradientAscent(GPTNeoModel(small_testbed.model.config))


def test_model_by_path_is_created_in_configure_model(small_testbed, tmp_path):
    small_testbed.model.save_pretrained(tmp_path / "m")
    module = GradientAscent(str(tmp_path / "m"))
    assert module.model is None
    make_trainer(max_steps=1).fit(module, unlearning_data(small_testbed))
    assert module.model is not None and module.global_step == 1


def test_missing_model_path_fails_at_setup(small_testbed, tmp_path):
    module = GradientAscent(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="cannot load a model from"):
        make_trainer(max_steps=1).fit(module, unlearning_data(small_testbed))


def test_mismatched_tokenizer_fails_before_any_step(small_testbed):
    wide = make_tokenizer(small_testbed.forget, vocab_size=2000)  # ids beyond the small model's vocabulary
    datamodule = UnlearningDataModule(wide, small_testbed.forget, holdout=small_testbed.holdout)
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model))
    with pytest.raises(ValueError, match="tokenizer does not fit the model"):
        make_trainer().fit(module, datamodule)
    assert module.global_step == 0


def test_save_pretrained_writes_a_loadable_folder(small_testbed, tmp_path):
    module = GradientAscent(copy.deepcopy(small_testbed.model))
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, unlearning_data(small_testbed))
    module.save_pretrained(tmp_path / "out")
    module.save_pretrained(tmp_path / "out")  # overwriting is fine
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert_close_scaled(loaded(ids).logits, module.model(ids).logits)
    assert (tmp_path / "out" / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_sga_scores_from_the_training_forward_not_extra_passes(small_testbed, monkeypatch):
    passes = []
    original = MemorizationMonitor.refresh

    def counted(self, trainer, pl_module, log=True):
        passes.append(trainer.global_step)
        original(self, trainer, pl_module, log)

    monkeypatch.setattr(MemorizationMonitor, "refresh", counted)
    trainer = make_trainer()
    trainer.fit(
        SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4), unlearning_data(small_testbed)
    )
    # The step at which the rule held is counted by Lightning but not taken.
    assert find(trainer, MemorizationEarlyStopping).stopped_step == trainer.global_step - 1 > 1
    assert passes == [0]  # one pass before training; every later score came from a training forward


def test_task_arithmetic_result_is_the_edit(small_testbed):
    tb = small_testbed
    module = TaskArithmetic(copy.deepcopy(tb.model), learning_rate=1e-3)
    trainer, stopping, final = unlearn(module, tb)
    assert stopping.stopped_step is not None and module.scale == -3.0
    assert max(final.values()) <= stopping.threshold_value  # the saved model is the edit, and it forgot
    assert find(trainer, MemorizationMonitor).scores == pytest.approx(final)


def test_scale_search_finds_the_known_answer(small_testbed, monkeypatch):
    """With a rule that holds exactly when λ <= −1.3, bisection from −3 lands just below −1.3."""
    module = TaskArithmetic(copy.deepcopy(small_testbed.model), learning_rate=1e-3, search_scale=True)
    monkeypatch.setattr(module.stopping, "holds", lambda trainer: (module.scale <= -1.3, 0.0))
    make_trainer().fit(module, unlearning_data(small_testbed))
    assert -1.3 - 3 / 2**8 <= module.scale <= -1.3


def test_scale_search_keeps_the_rule(small_testbed):
    tb = small_testbed
    module = TaskArithmetic(copy.deepcopy(tb.model), learning_rate=1e-3, search_scale=True)
    _, stopping, final = unlearn(module, tb)
    assert -3.0 <= module.scale < 0
    assert max(final.values()) <= stopping.threshold_value


def test_tau_switches_once_and_forgets(small_testbed):
    tb = small_testbed
    module = TAU(copy.deepcopy(tb.model), learning_rate=1e-3)
    trainer, stopping, final = unlearn(module, tb)
    assert module.switch_step is not None and 0 < module.switch_step < trainer.global_step
    assert trainer.callback_metrics["tau/switch_step"] == module.switch_step
    assert max(final.values()) <= stopping.threshold_value
    assert -3.0 <= module.scale < 0  # λ searched from -3 towards 0, the rule still met


def test_task_arithmetic_needs_a_negative_scale(small_testbed):
    with pytest.raises(ValueError, match="scale must be negative"):
        TaskArithmetic(small_testbed.model, scale=1.0)


def test_samples_longer_than_the_model_fail_before_any_step(small_testbed):
    tb = small_testbed
    long_text = " ".join(tb.forget[:3])  # about 270 tokens; the model takes 128
    datamodule = UnlearningDataModule(tb.tokenizer, [long_text, *tb.forget], holdout=tb.holdout, max_length=400)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model))
    with pytest.raises(ValueError, match=r"forget split has a \d+-token sample but the model takes at most 128"):
        make_trainer().fit(module, datamodule)
    assert module.global_step == 0


def test_sga_with_kl_retain_forgets_every_record_and_starts_from_zero_kl(small_testbed):
    tb = small_testbed
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4, retain_loss="kl")
    probe = FirstStepMetrics()
    trainer = make_trainer(callbacks=[probe, MemorizationMonitor(split="retain")])
    trainer.fit(module, unlearning_data(tb))
    stopping = find(trainer, MemorizationEarlyStopping)
    final = score_memorization(module.model, unlearning_data(tb).scoring_dataloader("forget"))
    assert stopping.stopped_step is not None and max(final.values()) <= stopping.threshold_value
    assert probe.metrics["train/retain_loss"] == pytest.approx(0.0, abs=1e-6)  # the reference is the start model
    assert trainer.callback_metrics["train/retain_loss"] > 0
    assert {"retain/g_mean", "retain/collateral"} <= set(trainer.callback_metrics)


class FirstStepMetrics(L.Callback):
    """The metrics logged by the first training step."""

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 1:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_reference_weights_swap_in_and_back_bit_for_bit(small_testbed):
    tb = small_testbed
    model = copy.deepcopy(tb.model)
    reference = ReferenceWeights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    edited = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = next(iter(unlearning_data(tb).scoring_dataloader("forget")))
    with torch.no_grad():
        expected = tb.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(reference.logits(model, batch), expected)  # the original model's logits
    assert all(torch.equal(p, edited[n]) for n, p in model.named_parameters())  # and the edit back, exactly
    restored = ReferenceWeights.from_state_dict(reference.state_dict(model), model)
    assert torch.equal(restored.logits(model, batch), expected)


class WeightTraffic(L.Callback):
    """Bytes copied from or to the weights (the model's and the KL reference's) in the second step cycle."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            watched = [*pl_module.model.parameters(), *pl_module.reference.weights.values()]
            self.copies = WeightCopies(watched).__enter__()
        elif trainer.global_step == 2:
            self.copies.__exit__(None, None, None)


def test_a_step_with_the_kl_term_copies_no_weights(small_testbed):
    """The KL reference's pass swaps ``param.data`` pointers: a step cycle of SGA + KL copies at most 10% of the
    parameter bytes (it copied 6x: a clone and two copies per swap, two swaps per pass), and the model's weights are
    the same storage, bit for bit, after a reference pass."""
    model = copy.deepcopy(small_testbed.model)
    module = SelectiveGradientAscent(model, retain_loss="kl", retain_weight=1.0, learning_rate=1e-5)
    traffic = WeightTraffic()
    make_trainer(max_steps=3, callbacks=[traffic]).fit(module, unlearning_data(small_testbed))
    parameters = sum(p.nbytes for p in model.parameters())
    assert traffic.copies.bytes <= 0.1 * parameters
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in module.model.named_parameters()}
    module.reference.logits(module.model, next(iter(unlearning_data(small_testbed).scoring_dataloader("retain"))))
    for name, p in module.model.named_parameters():
        assert p.data_ptr() == before[name][0] and torch.equal(p, before[name][1]), name


def test_npo_scores_its_reference_once_and_forgets_every_record(small_testbed):
    tb = small_testbed
    datamodule = unlearning_data(tb)
    expected = score_memorization(tb.model, datamodule.scoring_dataloader("forget"), measure=score_log_likelihood)
    module = NPO(copy.deepcopy(tb.model), learning_rate=1e-3)
    trainer = make_trainer(callbacks=per_sample_control())
    trainer.fit(module, datamodule)
    stopping = find(trainer, MemorizationEarlyStopping)
    final = score_memorization(module.model, datamodule.scoring_dataloader("forget"))
    assert stopping.stopped_step is not None and max(final.values()) <= stopping.threshold_value
    assert module.reference_log_likelihood.tolist() == pytest.approx([expected[i] for i in range(len(tb.forget))])
    assert any(isinstance(cb, SelectiveAscent) for cb in trainer.callbacks)


class FirstStepRatio(NPO):
    """NPO that keeps log π_θ(x) − log π_ref(x) of its first training step."""

    first: torch.Tensor | None = None

    def forget_loss(self, batch, output, nll):
        if self.first is None:
            own = sequence_log_likelihood(nll.detach().float(), batch["attention_mask"])
            self.first = own - self.reference_log_likelihood[batch["sample_id"].cpu()].to(own.device)
        return super().forget_loss(batch, output, nll)


def test_npo_scores_its_reference_under_the_training_autocast(small_testbed):
    """Under bf16-mixed (the GPU default) π_ref is scored as the training forward runs, in autocast: at the first
    step log π_θ − log π_ref is 0 for every record (scored in float32 it was off by the bf16 rounding of the logits)."""
    module = FirstStepRatio(copy.deepcopy(small_testbed.model))
    trainer = make_trainer(max_steps=1, precision="bf16-mixed", callbacks=per_sample_control())
    trainer.fit(module, unlearning_data(small_testbed))
    assert module.first is not None and module.first.abs().max().item() <= 1e-3


@pytest.mark.parametrize(("method", "beta"), [(NPO, 0.02), (SimNPO, 1.0)])
def test_selective_npo_and_simnpo_with_kl_retain_reach_the_rule(small_testbed, method, beta):
    tb = small_testbed
    module = method(copy.deepcopy(tb.model), beta=beta, learning_rate=1e-3, retain_loss="kl", retain_weight=0.5)
    trainer = make_trainer(callbacks=per_sample_control())
    trainer.fit(module, unlearning_data(tb))
    stopping = find(trainer, MemorizationEarlyStopping)
    final = score_memorization(module.model, unlearning_data(tb).scoring_dataloader("forget"))
    assert stopping.stopped_step is not None and max(final.values()) <= stopping.threshold_value
    assert trainer.callback_metrics["train/selected"] < len(tb.forget)  # the selection took part


def test_npo_reference_and_kl_reference_are_restored_on_resume(small_testbed, tmp_path):
    tb = small_testbed
    module = NPO(copy.deepcopy(tb.model), learning_rate=1e-3, retain_loss="kl")
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = make_trainer(max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(module, unlearning_data(tb))
    reference = module.reference_log_likelihood.clone()
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):  # after the module's on_train_start
            if seen:
                return
            batch = next(iter(trainer.datamodule.scoring_dataloader("retain")))
            seen["likelihood"] = pl_module.reference_log_likelihood.clone()
            seen["logits"] = pl_module.reference.logits(pl_module.model, batch)
            seen["batch"] = batch

    resumed = NPO(copy.deepcopy(tb.model), learning_rate=1e-3, retain_loss="kl")
    trainer = make_trainer(max_epochs=4, callbacks=[Probe()])
    trainer.fit(resumed, unlearning_data(tb), ckpt_path=tmp_path / "last.ckpt")
    assert torch.equal(seen["likelihood"], reference)  # not re-scored with the partly unlearned model
    batch = seen["batch"]
    with torch.no_grad():
        original = tb.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(seen["logits"], original)  # the reference is the model before the first step


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: NPO(m, beta=0.0), "beta must be > 0"),
        (lambda m: SimNPO(m, beta=-1.0), "beta must be > 0"),
        (lambda m: GradientAscent(m, retain_loss="kl", retain_weight=-0.5), "retain_weight must be >= 0"),
        (lambda m: GradientAscent(m, retain_loss="mse"), "retain_loss must be one of None, 'nll', 'kl'"),
        (lambda m: TaskArithmetic(m, retain_loss="kl"), "takes no retain_loss"),
        (lambda m: GradientDifference(m, retain_loss=None), "needs a retain term"),
    ],
)
def test_bad_method_arguments_are_refused(small_testbed, make, message):
    with pytest.raises(ValueError, match=message):
        make(small_testbed.model)


@pytest.mark.parametrize("method", [SelectiveGradientAscent, NPO])
def test_a_retain_term_without_a_retain_split_fails_before_any_step(small_testbed, method):
    module = method(copy.deepcopy(small_testbed.model), retain_loss="kl")
    with pytest.raises(ValueError, match=r"retain split too \(retain_loss='kl'\)"):
        make_trainer().fit(module, unlearning_data(small_testbed, retain=None))
    assert module.global_step == 0


def test_cached_reference_logits_give_the_same_run_with_one_reference_pass_per_sample(small_testbed, monkeypatch):
    tb = small_testbed
    passes = []
    original = ReferenceWeights.logits

    def counted(self, model, batch):
        passes.append(len(batch["sample_id"]))
        return original(self, model, batch)

    monkeypatch.setattr(ReferenceWeights, "logits", counted)
    runs = {}
    for cache in (False, True):
        passes.clear()
        torch.manual_seed(0)
        module = SelectiveGradientAscent(
            copy.deepcopy(tb.model), learning_rate=3e-4, retain_loss="kl", cache_reference=cache
        )
        trainer = make_trainer()
        trainer.fit(module, unlearning_data(tb, batch_size=8))  # 2 retain batches per epoch
        monitor = find(trainer, MemorizationMonitor)
        runs[cache] = (find(trainer, MemorizationEarlyStopping).stopped_step, monitor.values.clone(), list(passes))
    (steps, values, uncached), (cached_steps, cached_values, cached) = runs[False], runs[True]
    assert cached_steps == steps and torch.allclose(cached_values, values, atol=1e-6)
    assert len(uncached) >= steps > 4  # every step ran the reference
    assert sum(cached) == len(tb.retain)  # each retain sample once


def test_cached_reference_logits_from_an_accelerator_are_kept_in_pinned_memory():
    """Logits from a device other than the CPU are kept page-locked, so each step's copy back is asynchronous (on
    this CPU-only build, asking for pinned memory is refused, which shows that it is asked for); from the CPU, plain
    memory. Stands in for the GPU's pageable host-to-device copy per sample and step."""
    plain = host_buffer((2, 3), torch.float32, torch.device("cpu"))
    assert plain.shape == (2, 3) and plain.device.type == "cpu" and plain.dtype == torch.float32
    if torch.cuda.is_available():
        assert host_buffer((2, 3), torch.bfloat16, torch.device("cuda")).is_pinned()
    else:
        with pytest.raises(RuntimeError, match="pin_memory"):
            host_buffer((2, 3), torch.bfloat16, torch.device("meta"))


def test_a_stop_rule_given_to_the_trainer_is_the_one_that_decides(small_testbed, caplog):
    """The user's configuration wins: SGA brings its own MemorizationEarlyStopping, and uses the Trainer's instead."""
    tb = small_testbed
    users = MemorizationEarlyStopping(threshold=0.3)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4)
    trainer = make_trainer(callbacks=[users])
    with caplog.at_level("INFO"):
        trainer.fit(module, unlearning_data(tb))
    assert [cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping)] == [users]
    assert module.stopping is users and users.threshold_value == 0.3 and users.rule_met
    final = score_memorization(module.model, unlearning_data(tb).scoring_dataloader("forget"))
    assert max(final.values()) <= 0.3
    assert "using the MemorizationEarlyStopping given to the Trainer" in caplog.text


def _logits_heavy_run(retain_loss, steps=2, **options):
    """SGA (every record ascended, no stop) for ``steps`` steps on a model whose memory is its logits: vocabulary
    32k, hidden size 64, 8 x 64 tokens. Returns the model and the steps' peak tensor memory in bytes."""
    vocabulary = 32_000
    config = GPTNeoConfig(
        vocab_size=vocabulary,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        window_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(config).eval()
    tokenizer, forget = IdTokenizer(vocabulary), random_texts(8, 64, vocabulary, seed=1)
    retain = random_texts(8, 64, vocabulary, seed=2)
    data = UnlearningDataModule(tokenizer, forget, retain=retain, max_length=64, batch_size=8, shuffle=False)
    module = SelectiveGradientAscent(model, gamma=0.0, threshold=-1.0, retain_loss=retain_loss, **options)
    probe = StepPeak()
    make_trainer(max_steps=steps, callbacks=[probe]).fit(module, data)
    return module.model, probe.peak


def test_kl_retain_term_stays_within_1_3x_of_sgas_peak_memory():
    """On one device the retain part runs its forward and backward after the forget part's backward, and the KL
    is taken in chunks from the logits: the activations of the two passes are never alive together (3.2x before)."""
    _, alone = _logits_heavy_run(None)
    _, with_kl = _logits_heavy_run("kl")
    assert with_kl <= 1.3 * alone, with_kl / alone


def test_the_retain_part_after_the_forget_backward_takes_the_same_steps(monkeypatch):
    """Backward per part (one device) and one backward of the summed loss (as under DDP and DeepSpeed) give the
    same weights."""
    per_part, _ = _logits_heavy_run("kl", steps=3)
    monkeypatch.setattr(retain, "backward_per_part", lambda module: False)
    summed, _ = _logits_heavy_run("kl", steps=3)
    for a, b in zip(per_part.parameters(), summed.parameters(), strict=True):
        assert_close_scaled(a, b, rel=1e-5)


def test_no_method_overrides_a_private_name_of_the_base():
    """The extension contract holds for every method we ship: public hooks only (``UnlearningHooks``)."""
    import lightning_unlearn.modules as modules
    from lightning_unlearn.modules import UnlearningModule

    methods = [cls for cls in vars(modules).values() if isinstance(cls, type) and issubclass(cls, UnlearningModule)]
    assert len(methods) >= 13
    for method in methods:
        assert not private_overrides(method), private_overrides(method)


def test_private_overrides_are_found():
    class Sneaky(GradientAscent):
        def _start_step(self):  # not a name of the base: allowed
            pass

        def _check_options(self):  # not a name of the base either
            pass

    class Overriding(GradientAscent):
        def _load_from_state_dict(self, *args):
            pass

    assert private_overrides(Sneaky) == []
    assert private_overrides(Overriding) == ["Overriding._load_from_state_dict"]
