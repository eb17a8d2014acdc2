"""MembershipMonitor: membership-inference AUCs (forget vs holdout) logged during unlearning."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_unlearn.callbacks.monitor import has_split
from lightning_unlearn.evaluation.membership import MEMBERSHIP_ATTACKS, TOKEN_ATTACKS
from lightning_unlearn.evaluation.scoring import score_on_all_ranks
from lightning_unlearn.functional.membership import membership_auc, zlib_sizes
from lightning_unlearn.integrations.huggingface import get_model
from lightning_unlearn.utilities.errors import ConfigurationError


class MembershipMonitor(Callback):
    """Logs ``membership/{name}_auc``: how well each attack tells forget (members) from holdout (non-members) samples.

    0.5 is ideal after unlearning; the original model's forget set usually scores well above. Measured before
    training, every ``every_n_train_steps`` optimizer steps, and at the end; ``history`` holds
    ``(step, {name: auc})``. Every process scores a share. Needs an UnlearningDataModule with a holdout split.

    Args:
        every_n_train_steps: optimizer steps between measurements.
        attacks: names among ``"loss"``, ``"zlib"``, ``"min_k"``.
    """

    def __init__(self, every_n_train_steps: int = 10, attacks: tuple[str, ...] = ("loss", "zlib", "min_k")) -> None:
        unknown = set(attacks) - set(MEMBERSHIP_ATTACKS)
        if unknown:
            raise ConfigurationError(f"unknown attacks {sorted(unknown)}; choose from {sorted(MEMBERSHIP_ATTACKS)}")
        self.every_n_train_steps = every_n_train_steps
        self.attacks = attacks
        self.history: list[tuple[int, dict[str, float]]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not has_split(trainer, "holdout"):
            raise ConfigurationError(
                "MembershipMonitor needs an UnlearningDataModule with a holdout split (the non-members)"
            )

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Each attack's AUC for the current model."""
        model = get_model(pl_module)
        aucs = {}
        with getattr(pl_module, "scoring_context", nullcontext)():
            for name in self.attacks:
                members = self._scores(model, trainer, name, "forget")
                nonmembers = self._scores(model, trainer, name, "holdout")
                aucs[name] = membership_auc(members, nonmembers)
        self.history.append((trainer.global_step, aucs))
        return aucs

    @staticmethod
    def _scores(model: torch.nn.Module, trainer: L.Trainer, name: str, split: str) -> Tensor:
        """One attack's score of every record of ``split``, on every process (zlib: the LOSS score over the
        compressed size of each record's text)."""
        loader = trainer.datamodule.scoring_dataloader(split)
        measure = TOKEN_ATTACKS["loss" if name == "zlib" else name]
        ids, values = score_on_all_ranks(model, loader, trainer.strategy, measure=measure)
        if name == "zlib":
            texts = trainer.datamodule.split(split).texts
            values = values / zlib_sizes([texts[i] for i in ids.tolist()])
        return values

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_train_steps == 0:
            aucs = self.measure(trainer, pl_module)
            pl_module.log_dict({f"membership/{k}_auc": v for k, v in aucs.items()}, on_step=True, batch_size=1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history[-1][0] != trainer.global_step:
            self.measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
