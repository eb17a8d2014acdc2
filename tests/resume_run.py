"""Test-only: one unlearning run on the small testbed in its own process, checkpointed every step, that can be
killed at a step (SIGKILL to its whole process group, as a pre-empted job is) and resumed with ``ckpt_path="last"``.

    python -m tests.resume_run METHOD FOLDER [--kill-at STEP [--while-saving] | --kill-in-save] [--resume] [--zero3]

``--zero3``: two processes under CPU DeepSpeed ZeRO-3 (checkpoints are DeepSpeed's folders). At the end it writes
``FOLDER/result.json`` (the step the rule stopped at and every forget record's final g) and ``FOLDER/model``
(``save_pretrained``, on every process).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_unlearn import NPO, TAU, SelectiveGradientAscent, TaskArithmetic
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, per_sample_control
from lightning_unlearn.distributed.checkpoints import PARTIAL_PREFIX, AtomicCheckpointIO, AtomicDeepSpeedStrategy
from lightning_unlearn.distributed.zero import deepspeed_config
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed
from tests.conftest import lora
from tests.deepspeed_cpu import CPUDeepSpeedStrategy
from tests.helpers.peak_memory import PeakTensorMemory

METHODS = {
    "SGA+KL": lambda model: SelectiveGradientAscent(model, learning_rate=3e-4, retain_loss="kl"),
    "TA": lambda model: TaskArithmetic(model, learning_rate=1e-3),
    "TAU": lambda model: TAU(model, learning_rate=1e-3),
    "NPO+KL": lambda model: NPO(model, beta=0.02, learning_rate=1e-3, retain_loss="kl", retain_weight=0.5),
    "SGA+LoRA": lambda model: SelectiveGradientAscent(model, learning_rate=1e-3, peft=lora(["q_proj", "v_proj"])),
}
CALLBACKS = {"NPO+KL": per_sample_control}  # the methods that do not bring their per-sample control


def kill_this_job() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


class KillAt(L.Callback):
    """SIGKILL once ``step`` optimizer steps are taken (before that step's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            kill_this_job()


class KillWhileSaving(AtomicCheckpointIO):
    """Writes half of the checkpoint of ``step`` where a checkpoint is written, then SIGKILL."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if checkpoint["global_step"] == self.step:  # half of it written where AtomicCheckpointIO writes it
            data = io.BytesIO()
            torch.save(checkpoint, data)
            Path(path).parent.joinpath(f"{PARTIAL_PREFIX}{'0' * 32}").write_bytes(data.getvalue()[: data.tell() // 2])
            kill_this_job()
        super().save_checkpoint(checkpoint, path, storage_options)


class AtomicCPUDeepSpeed(CPUDeepSpeedStrategy, AtomicDeepSpeedStrategy):
    """AtomicDeepSpeedStrategy on CPU processes."""


class SavePeakTrainer(L.Trainer):
    """A Trainer that keeps the largest peak of tensor memory allocated while saving a checkpoint (bytes)."""

    save_peak = saves = 0

    def save_checkpoint(self, *args, **kwargs) -> None:
        with PeakTensorMemory() as memory:
            super().save_checkpoint(*args, **kwargs)
        self.save_peak, self.saves = max(self.save_peak, memory.peak), self.saves + 1


class Report(L.Callback):
    """At fit end, on every process: the model to ``folder/model``; on the first, ``folder/result.json``. With
    ``kill_in_save``, the job dies once the model's files are written, before the folder is complete."""

    def __init__(self, folder: Path, kill_in_save: bool = False) -> None:
        self.folder, self.kill_in_save = folder, kill_in_save

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.kill_in_save:
            from transformers import PreTrainedModel

            write = PreTrainedModel.save_pretrained

            def dies_after_writing(model, *args, **kwargs):
                write(model, *args, **kwargs)
                kill_this_job()

            PreTrainedModel.save_pretrained = dies_after_writing
        pl_module.save_pretrained(self.folder / "model")
        parameters = sum(p.ds_numel * p.element_size() if hasattr(p, "ds_numel") else p.nbytes
                         for p in pl_module.model.parameters() if p.requires_grad)  # fmt: skip
        peak = {"save_peak": trainer.save_peak, "saves": trainer.saves, "trainable_bytes": parameters}
        (self.folder / f"save_peak_rank{trainer.global_rank}.json").write_text(json.dumps(peak))
        if trainer.global_rank == 0:
            stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
            monitor = next(
                cb for cb in trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == "forget"
            )
            result = {
                "stopped_step": stopping.stopped_step,
                "rule_met": stopping.rule_met,
                "g": monitor.values.tolist(),
            }
            (self.folder / "result.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=tuple(METHODS))
    parser.add_argument("folder")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--while-saving", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--zero3", action="store_true", help="two processes under CPU DeepSpeed ZeRO-3")
    parser.add_argument("--kill-in-save", action="store_true", help="die while save_pretrained writes the model")
    args = parser.parse_args()
    folder = Path(args.folder)
    testbed = build_testbed(seed=0, progress=False, **SMALL_TESTBED)
    L.seed_everything(0, verbose=False)
    module = METHODS[args.method](testbed.model)
    checkpoints = ModelCheckpoint(dirpath=folder / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=1)
    callbacks: list[L.Callback] = [checkpoints, Report(folder, args.kill_in_save), *CALLBACKS.get(args.method, list)()]
    checkpoint_io = AtomicCheckpointIO()
    if args.kill_at is not None and args.while_saving:
        checkpoint_io = KillWhileSaving(args.kill_at)
    elif args.kill_at is not None:
        callbacks.append(KillAt(args.kill_at))
    where: dict = {"devices": 1, "plugins": [checkpoint_io]}
    data = testbed.datamodule()
    if args.zero3:  # DeepSpeed writes its own checkpoint folders, whole or absent with AtomicDeepSpeedStrategy
        half = len(testbed.forget) // 2
        config = deepspeed_config(stage=3, micro_batch_size=half, bucket_size=10**6)
        strategy = AtomicCPUDeepSpeed(config=config)
        where, data = {"devices": 2, "strategy": strategy}, testbed.datamodule(batch_size=half)
    trainer = SavePeakTrainer(
        accelerator="cpu",
        max_epochs=200,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **where,
    )
    trainer.fit(module, data, ckpt_path="last" if args.resume else None)


if __name__ == "__main__":
    main()
