"""UtilityEvaluation: lm-eval in the training loop, on any module, leaving the run as it was, resumable, and the
same numbers on 1 process, 2 DDP processes and 2 ZeRO-3 processes."""

from __future__ import annotations

import copy
import csv
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_unlearn import SelectiveGradientAscent
from lightning_unlearn.callbacks import UtilityEvaluation
from lightning_unlearn.data import PadCollator, TokenizedSplit
from lightning_unlearn.distributed.zero import deepspeed_config
from lightning_unlearn.evaluation.utility import evaluate_utility, write_record_tasks
from tests.callbacks.test_callbacks import UserFineTuner
from tests.conftest import find, make_trainer, unlearning_data

pytest.importorskip("lm_eval")

TASKS = ["records_fields", "records_perplexity"]


@pytest.fixture(scope="module")
def tasks_folder(small_testbed, tmp_path_factory):
    return write_record_tasks(small_testbed.retain, tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def original_utility(small_testbed, tasks_folder):
    return evaluate_utility(small_testbed.model, small_testbed.tokenizer, TASKS, include_path=tasks_folder, limit=8)


def with_dropout(model, p=0.1):
    """A copy of ``model`` whose dropout layers drop: training then draws random numbers (as does the shuffled
    loader) and depends on the mode, so a re-seeded generator or a leaked eval mode changes the weights."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    return model.train()


def fit_user_module(tb, callbacks, steps=3, **trainer_options):
    torch.manual_seed(0)
    module = UserFineTuner(with_dropout(tb.model))
    split = TokenizedSplit("forget", tb.forget, tb.tokenizer, 128)
    loader = DataLoader(split, batch_size=4, shuffle=True, collate_fn=PadCollator(tb.tokenizer.pad_token_id))
    make_trainer(max_steps=steps, callbacks=callbacks, **trainer_options).fit(module, loader)
    return module


def test_a_run_ends_with_the_same_weights_with_and_without_it(small_testbed, tasks_folder, original_utility, tmp_path):
    tb = small_testbed
    plain = fit_user_module(tb, [])
    utility = UtilityEvaluation(TASKS, include_path=tasks_folder, limit=8, tokenizer=tb.tokenizer)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    evaluated = fit_user_module(tb, [utility], logger=logger)
    for (name, a), b in zip(plain.state_dict().items(), evaluated.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert evaluated.model.training  # as the Trainer left it
    assert utility.results["start"] == original_utility  # the user's module, evaluated in memory
    assert utility.results["end"]["records_fields"].keys() == {"acc"}
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {(row["step"], key) for row in rows for key, value in row.items() if key.startswith("utility/") and value}
    assert ("0", "utility/records_fields/acc") in logged
    assert ("3", "utility/records_perplexity/word_perplexity") in logged


def test_periodic_runs_are_kept_by_step(small_testbed, tasks_folder):
    utility = UtilityEvaluation(
        TASKS[:1], include_path=tasks_folder, every_n_train_steps=2, limit=4, tokenizer=small_testbed.tokenizer
    )
    fit_user_module(small_testbed, [utility], steps=4, accumulate_grad_batches=2)
    assert sorted(utility.results) == ["end", "start", "steps"]
    assert sorted(utility.results["steps"]) == [2, 4]  # once per optimizer step, not per micro-batch


class Counting(UtilityEvaluation):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def evaluate(self, trainer, pl_module):
        self.calls += 1
        return super().evaluate(trainer, pl_module)


def test_resume_keeps_the_start_numbers(small_testbed, tasks_folder, tmp_path):
    tb = small_testbed
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=2e-4)
    first = Counting(TASKS, include_path=tasks_folder, limit=4)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = make_trainer(max_epochs=2, callbacks=[first, checkpoint], enable_checkpointing=True)
    trainer.fit(module, unlearning_data(tb))
    resumed = Counting(TASKS, include_path=tasks_folder, limit=4)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=2e-4)
    trainer = make_trainer(max_epochs=3, callbacks=[resumed])
    trainer.fit(module, unlearning_data(tb), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.calls == 1  # the end only: the start is the first run's
    assert resumed.results["start"] == first.results["start"]
    assert resumed.results["end"] != first.results["start"]


def test_bad_input_fails_at_setup(small_testbed, tasks_folder, tmp_path, monkeypatch):
    tb = small_testbed
    fit = lambda callback: make_trainer(max_epochs=1, callbacks=[callback]).fit(  # noqa: E731
        SelectiveGradientAscent(copy.deepcopy(tb.model)), unlearning_data(tb)
    )
    with pytest.raises(ValueError, match="unknown lm-eval task 'hellaswag'"):
        fit(UtilityEvaluation(["hellaswag"], include_path=tasks_folder))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(UtilityEvaluation(TASKS, include_path=tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="every_n_train_steps"):
        UtilityEvaluation(TASKS, every_n_train_steps=0)
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"lightning-unlearn\[eval\]"):
        fit(UtilityEvaluation(TASKS, include_path=tasks_folder))


class Report(L.Callback):
    def __init__(self, folder):
        self.folder = str(folder)

    def on_train_end(self, trainer, pl_module):
        results = find(trainer, UtilityEvaluation).results
        with open(f"{self.folder}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(results, f)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "zero3"])
def test_two_processes_give_one_process_numbers(small_testbed, tasks_folder, original_utility, tmp_path, strategy):
    tb = small_testbed
    if strategy == "zero3":
        pytest.importorskip("deepspeed")
        from tests.deepspeed_cpu import CPUDeepSpeedStrategy

        strategy = CPUDeepSpeedStrategy(config=deepspeed_config(stage=3, micro_batch_size=8, bucket_size=10**6))
    callbacks = [UtilityEvaluation(TASKS, include_path=tasks_folder, limit=8), Report(tmp_path)]
    trainer = make_trainer(devices=2, strategy=strategy, max_epochs=2, callbacks=callbacks)
    trainer.fit(SelectiveGradientAscent(copy.deepcopy(tb.model)), unlearning_data(tb, batch_size=8))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    for task, metrics in original_utility.items():
        assert ranks[0]["start"][task] == pytest.approx(metrics, rel=1e-6)
