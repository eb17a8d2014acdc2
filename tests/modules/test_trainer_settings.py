"""The Trainer settings users already have: gradient accumulation, mixed precision, the default logger, and a
stop rule that max_steps cut short."""

from __future__ import annotations

import copy
import csv

import lightning as L
import pytest
import torch

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, TaskArithmetic, UnlearningDataModule
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from tests.conftest import find, make_trainer, unlearning_data

METHODS = {
    "GA": (
        lambda model: GradientAscent(model, learning_rate=3e-4),
        lambda: [MemorizationMonitor(), MemorizationEarlyStopping(criterion="mean", threshold="holdout_mean")],
    ),
    "SGA": (lambda model: SelectiveGradientAscent(model, learning_rate=3e-4), list),
    "TA": (lambda model: TaskArithmetic(model, learning_rate=1e-3), list),
}


def unlearn(tb, method, batch_size, **trainer_options):
    """``method`` on the small testbed: its stop step and final per-sample g (``Tensor[N]``)."""
    make, callbacks = METHODS[method]
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=callbacks(), **trainer_options)
    trainer.fit(make(copy.deepcopy(tb.model)), unlearning_data(tb, batch_size=batch_size))
    return find(trainer, MemorizationEarlyStopping).stopped_step, find(trainer, MemorizationMonitor).values


@pytest.mark.parametrize("method", ["GA", "SGA", "TA"])
def test_gradient_accumulation_equals_one_big_batch(small_testbed, method):
    size = len(small_testbed.forget)
    big_steps, big_g = unlearn(small_testbed, method, batch_size=size)
    steps, g = unlearn(small_testbed, method, batch_size=size // 2, accumulate_grad_batches=2)
    assert big_steps is not None and abs(steps - big_steps) <= 2
    assert (g - big_g).abs().max() <= 0.05


def test_selection_and_normalization_span_the_accumulated_micro_batches(small_testbed):
    """keep_top records per optimizer step, not per micro-batch, and the step's mean over the selected records of
    every micro-batch: the weights and the normalizer of one big batch."""

    def first_step(batch_size, accumulate):
        normalizers = []

        class Spy(L.Callback):
            def on_before_backward(self, trainer, pl_module, loss):
                normalizers.append(float(pl_module.steps.current.forget_weight))

        module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), gamma=0.99, keep_top=4)
        trainer = make_trainer(max_steps=1, accumulate_grad_batches=accumulate, callbacks=[Spy()])
        trainer.fit(module, unlearning_data(small_testbed, batch_size=batch_size))
        return module.forget_weights.values, normalizers

    size = len(small_testbed.forget)
    weights, (normalizer,) = first_step(size, 1)
    accumulated, normalizers = first_step(size // 2, 2)
    assert float(weights.sum()) == 4.0 and torch.equal(accumulated, weights)
    assert normalizers == [normalizer, normalizer]


def test_bf16_mixed_runs_no_float32_matmul_of_vocabulary_size_in_the_training_step(small_testbed):
    """Under bf16-mixed the output layer runs as the user's own training runs it, in bf16, forward and backward:
    no float32 matmul has a vocabulary-sized output (g's near ties are re-checked on a few candidates only)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocabulary = small_testbed.model.config.vocab_size
    matmuls: list[tuple[torch.dtype, tuple[int, ...]]] = []

    class Matmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if any(name in func.__name__ for name in ("mm", "linear", "matmul")):
                matmuls.append((out.dtype, tuple(out.shape)))
            return out

    class Watched(SelectiveGradientAscent):
        def training_step(self, batch, batch_idx):
            with Matmuls():
                return super().training_step(batch, batch_idx)

        def backward(self, loss, *args, **kwargs):
            with Matmuls():
                super().backward(loss, *args, **kwargs)

    module = Watched(copy.deepcopy(small_testbed.model), learning_rate=3e-4)
    make_trainer(precision="bf16-mixed", max_steps=2).fit(module, unlearning_data(small_testbed))
    vocabulary_sized = [(dtype, shape) for dtype, shape in matmuls if vocabulary in shape]
    assert vocabulary_sized and all(dtype == torch.bfloat16 for dtype, _ in vocabulary_sized), vocabulary_sized


def test_bf16_mixed_trains_in_half_precision_and_reaches_the_rule(small_testbed):
    first_step = {}

    class Spy(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            monitor = find(trainer, MemorizationMonitor)
            first_step.setdefault("g", monitor.values.clone())
            first_step.setdefault("start", monitor.start_values.clone())

    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4)
    head = module.model.get_output_embeddings()
    dtypes = set()
    head.register_forward_hook(lambda layer, inputs, output: dtypes.add(output.dtype))
    trainer = make_trainer(precision="bf16-mixed", callbacks=[Spy()])
    trainer.fit(module, unlearning_data(small_testbed))
    assert dtypes == {torch.bfloat16, torch.float32}  # the training forward (autocast); the scoring passes
    stopping = find(trainer, MemorizationEarlyStopping)
    assert stopping.rule_met and stopping.stopped_step is not None
    # g of the original model from the bf16 training forward against the float32 scoring pass at train start
    assert (first_step["g"] - first_step["start"]).abs().max() <= 0.02


def test_bf16_true_reaches_the_rule(small_testbed):
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4)
    trainer = make_trainer(precision="bf16-true")
    trainer.fit(module, unlearning_data(small_testbed))
    assert module.model.dtype == torch.bfloat16
    assert find(trainer, MemorizationEarlyStopping).rule_met


def test_task_arithmetic_keeps_float32_task_vectors_under_bf16_mixed(small_testbed):
    dtypes = set()

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            dtypes.update(tensor.dtype for tensor in pl_module.base.values())

    module = TaskArithmetic(copy.deepcopy(small_testbed.model), learning_rate=1e-3)
    trainer = make_trainer(precision="bf16-mixed", callbacks=[Spy()])
    trainer.fit(module, unlearning_data(small_testbed))
    assert dtypes == {torch.float32}
    assert find(trainer, MemorizationEarlyStopping).rule_met


def test_every_logged_metric_reaches_the_default_logger_with_a_step(small_testbed, tmp_path):
    """The Trainer's default logger (CSV without TensorBoard installed) gets every metric, each row with a step
    (every step: unlearning runs are tens of steps, shorter than the default log_every_n_steps=50)."""
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4, retain_loss="kl")
    callbacks = [MemorizationMonitor(split="retain")]
    trainer = make_trainer(logger=True, default_root_dir=tmp_path, log_every_n_steps=1, callbacks=callbacks)
    trainer.fit(module, unlearning_data(small_testbed))
    log_dir = trainer.logger.log_dir
    with open(f"{log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = set(trainer.callback_metrics)
    expected = {"forget/g_max", "holdout/threshold", "retain/collateral", "train/retain_loss", "train/selected"}
    assert expected <= logged
    assert logged <= set(rows[0]), logged - set(rows[0])
    assert all(row["step"] != "" for row in rows)
    steps = [int(row["step"]) for row in rows if row["forget/g_max"]]
    assert steps == sorted(steps) and steps[-1] >= find(trainer, MemorizationEarlyStopping).stopped_step - 1


def test_a_rule_not_met_when_training_ends_is_said_out_loud(small_testbed):
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4)
    trainer = make_trainer(max_steps=2)
    with pytest.warns(UserWarning, match=r"ended after 2 steps without meeting the rule: \d+ of 16 forget records"):
        trainer.fit(module, unlearning_data(small_testbed))
    stopping = find(trainer, MemorizationEarlyStopping)
    assert stopping.rule_met is False and stopping.stopped_step is None
    assert stopping.state_dict()["rule_met"] is False


def test_16_mixed_with_a_loss_scaler_steps_through_our_optimizer_step(small_testbed):
    """The paper's fp16: Lightning's loss scaler (CPU has one too) unscales, steps and updates inside our
    optimizer_step, and SGA still meets its rule."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4)
    trainer = make_trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module, unlearning_data(small_testbed))
    stopping = find(trainer, MemorizationEarlyStopping)
    assert stopping.rule_met and stopping.stopped_step > 1
    assert scaler.get_scale() > 2.0**10  # updated after every step it took (growth_interval=1)


def test_accumulation_with_a_loader_of_ones_own_warns_that_selection_is_per_micro_batch(small_testbed):
    from lightning.pytorch.utilities import CombinedLoader

    class PlainLoader(UnlearningDataModule):  # batches without the optimizer step's sample ids
        def train_dataloader(self):
            return CombinedLoader(super().train_dataloader().iterables, mode="max_size_cycle")

    tb = small_testbed
    datamodule = PlainLoader(tb.tokenizer, tb.forget, holdout=tb.holdout, batch_size=len(tb.forget) // 2)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4)
    trainer = make_trainer(max_steps=2, accumulate_grad_batches=2)
    with pytest.warns(UserWarning, match="per micro-batch, not per optimizer step") as warned:
        trainer.fit(module, datamodule)
    assert sum("per micro-batch" in str(w.message) for w in warned) == 1  # once
