"""UnlearningModule: a LightningModule around a Hugging Face causal LM, with per-sample weighted forget losses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, SelectiveAscent
from lightning_unlearn.files import atomic_folder
from lightning_unlearn.memorization import memorization_accuracy, sequence_nll
from lightning_unlearn.strategies import full_state_dict, has_sharded_parameters, offloads_optimizer

# Expected here, not a problem: the model trains in eval mode (no dropout).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def load_causal_lm(source: str | os.PathLike, gguf_file: str | None = None, **kwargs: Any) -> PreTrainedModel:
    """A causal LM from a hub id or a local folder (``gguf_file``: a GGUF file inside it); clear errors otherwise."""
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise ValueError(f"{source} is not a causal language model (no causal-LM head): {error}") from None
        raise
    except OSError as error:
        raise FileNotFoundError(f"cannot load a model from {source!s}: {error}") from None


def check_causal_lm(model: torch.nn.Module) -> None:
    """Raises a clear error unless ``model`` is a Hugging Face model with a language-modelling head."""
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    if head is None:
        raise TypeError(
            f"{type(model).__name__} has no causal-LM head: pass a model loaded with AutoModelForCausalLM "
            f"(e.g. GPTNeoForCausalLM, not GPTNeoModel)"
        )


class UnlearningModule(L.LightningModule):
    """Base of every unlearning method: subclasses override :meth:`forget_loss` (and :meth:`retain_loss`).

    ``training_step`` runs the model on the forget batch, takes each sample's g from that forward pass (which the
    memorization callbacks use, so no second pass is needed), weights each sample's forget loss by
    ``forget_weights[sample_id]`` and normalizes by the weighted count over **all processes**, so a step on N
    processes equals a step on one with the same effective batch (per-device batch × devices × accumulation).

    Args:
        model: a causal LM instance, a hub id or a local path (created in ``configure_model`` when given by name).
        learning_rate: Adam learning rate (the paper: 5e-5).
        betas: Adam betas (the paper: (0.9, 0.98)).
        weight_decay: Adam weight decay.
        dropout: keep the model's dropout during training (off by default: unlearning edits a trained model).
        gguf_file: a GGUF file inside ``model``'s folder or repository.
        model_kwargs: more ``from_pretrained`` arguments (``torch_dtype``, ``revision``, …).
        refresh: the memorization monitor's policy for methods that bring one (SGA, TA, TAU): ``"all"`` re-scores
            every forget sample, ``"above_threshold"`` only those not yet forgotten (much faster for forget sets
            far larger than a batch; the samples assumed forgotten are re-scored before stopping). See
            :class:`~lightning_unlearn.callbacks.MemorizationMonitor`.
        refresh_every: optimizer steps between those scoring passes.
    """

    needs_retain = False  # whether the method trains on the retain split too

    def __init__(
        self,
        model: PreTrainedModel | str | os.PathLike,
        learning_rate: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        dropout: bool = False,
        gguf_file: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        refresh: Literal["all", "above_threshold"] = "all",
        refresh_every: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, torch.nn.Module) else None)
        if isinstance(model, torch.nn.Module):
            check_causal_lm(model)
            self.model: PreTrainedModel | None = model
            self.model_source = None
        else:
            self.model = None
            self.model_source = str(model)
        self.forget_weights = torch.ones(0)  # Tensor[N]: weight of each forget sample_id (1 when never set)
        self._rule_holds = False  # set by training_step: the stop rule holds, take no optimizer step

    # --- model -----------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.model is None:
            self.model = load_causal_lm(self.model_source, self.hparams.gguf_file, **(self.hparams.model_kwargs or {}))
            check_causal_lm(self.model)

    def memorization_monitor(self) -> MemorizationMonitor:
        """The forget-set monitor that methods bring through ``configure_callbacks``, with this module's policy."""
        return MemorizationMonitor(every_n_train_steps=self.hparams.refresh_every, refresh=self.hparams.refresh)

    def get_model(self) -> PreTrainedModel:
        """The Hugging Face model being edited (after fit: the result)."""
        if self.model is None:
            self.configure_model()
        return self.model

    def train(self, mode: bool = True) -> UnlearningModule:
        super().train(mode)
        if mode and not self.hparams.dropout and self.model is not None:
            self.model.eval()  # no dropout; gradients flow in eval mode all the same
        return self

    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "split"):
            return
        datamodule.setup(stage)
        if self.needs_retain and not datamodule.has_split("retain"):
            raise ValueError(f"{type(self).__name__} trains on the retain split too: give the datamodule one")
        vocabulary = self.model.get_input_embeddings().num_embeddings
        positions = getattr(self.model.config, "max_position_embeddings", None)
        for name in ("forget", "retain", "holdout"):
            if datamodule.has_split(name):
                longest = max(datamodule.split(name).lengths)
                if positions is not None and longest > positions:
                    raise ValueError(
                        f"the {name} split has a {longest}-token sample but the model takes at most {positions} "
                        f"positions: set the datamodule's max_length to {positions} or less"
                    )
                top = max(int(ids.max()) for ids in datamodule.split(name).input_ids)
                if top >= vocabulary:
                    raise ValueError(
                        f"the tokenizer does not fit the model: the {name} split has token id {top}, but the model's "
                        f"vocabulary has {vocabulary} entries. Use the model's own tokenizer."
                    )
        if len(self.forget_weights) == 0:
            self.forget_weights = torch.ones(len(datamodule.split("forget")))

    # --- per-sample weights ----------------------------------------------------------------------------------

    def set_forget_weights(self, sample_id: Tensor, weights: Tensor) -> None:
        """Sets the weights (``Tensor[B]``, >= 0) of forget samples ``sample_id`` (``Tensor[B]``)."""
        sample_id = sample_id.cpu()
        if len(sample_id) and int(sample_id.max()) >= len(self.forget_weights):
            grown = torch.ones(int(sample_id.max()) + 1)
            grown[: len(self.forget_weights)] = self.forget_weights
            self.forget_weights = grown
        self.forget_weights[sample_id] = weights.detach().float().cpu()

    def forget_weights_for(self, sample_id: Tensor) -> Tensor:
        """``Tensor[B]`` weights of forget samples ``sample_id`` (1 for a sample never weighted)."""
        ids = sample_id.cpu()
        known = ids < len(self.forget_weights)
        weights = torch.ones(len(ids))
        weights[known] = self.forget_weights[ids[known]]
        return weights.to(sample_id.device)

    # --- losses ----------------------------------------------------------------------------------------------

    def forget_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        """Per-sample loss to minimize on forget samples (``Tensor[B]``); ``nll`` is their mean token NLL."""
        raise NotImplementedError(f"{type(self).__name__} must define forget_loss()")

    def retain_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        """Per-sample loss to minimize on retain samples (``Tensor[B]``); used when ``needs_retain``."""
        raise NotImplementedError(f"{type(self).__name__} must define retain_loss() when needs_retain is True")

    def _global_sum(self, value: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(value.detach(), reduce_op="sum") if self.trainer.world_size > 1 else value

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or "forget" not in batch:
            raise KeyError("training batches must be dicts with a 'forget' batch (as UnlearningDataModule makes)")
        forget = batch["forget"]
        ids = forget["sample_id"]
        logits = self.model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        self._rule_holds = self._before_step(
            ids, memorization_accuracy(logits.detach(), forget["input_ids"], forget["attention_mask"])
        )
        if self._rule_holds:  # the stop rule holds for these weights: a zero loss, and optimizer_step takes no step
            return logits.sum() * 0.0
        nll = sequence_nll(logits, forget["input_ids"], forget["attention_mask"])
        weights = self.forget_weights_for(ids).to(nll.dtype)
        world = self.trainer.world_size
        total_weight = self._global_sum(weights.sum()).clamp_min(1e-12)
        loss = world * (weights * self.forget_loss(forget, logits, nll)).sum() / total_weight
        metrics = {"train/forget_nll": nll.detach().mean()}
        if self.needs_retain:
            retain = batch["retain"]
            retain_logits = self.model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
            retain_nll = sequence_nll(retain_logits, retain["input_ids"], retain["attention_mask"])
            count = self._global_sum(torch.tensor(float(len(retain_nll)), device=loss.device))
            loss = loss + world * self.retain_loss(retain, retain_logits, retain_nll).sum() / count
            metrics["train/retain_nll"] = retain_nll.detach().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.global_step}: lower the learning rate or check the data"
            )
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=world > 1, batch_size=len(ids))
        self.log("train/selected", self._global_sum((weights > 0).sum().float()), on_step=True, batch_size=len(ids))
        return loss

    def _forget_monitors(self) -> list[MemorizationMonitor]:
        return [cb for cb in self.trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == "forget"]

    def _before_step(self, sample_id: Tensor, g: Tensor) -> bool:
        """Score-in-the-loop: hands the batch's fresh g to the callbacks; True when training must stop now."""
        callbacks = self.trainer.callbacks
        for monitor in self._forget_monitors():  # SelectiveAscent and the stopping rule require one
            batch_ids = monitor.record(self.trainer, self, sample_id, g)  # every process's ids
            if any(cb.check(self.trainer) for cb in callbacks if isinstance(cb, MemorizationEarlyStopping)):
                return True
            for selective in (cb for cb in callbacks if isinstance(cb, SelectiveAscent)):
                selective.apply(self.trainer, self, batch_ids)
        return False

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        self._rule_holds = False
        loss = optimizer_closure()  # training_step and backward
        if not self._rule_holds:
            optimizer.step(closure=lambda: loss)  # DeepSpeed's precision plugin requires the closure's result
            return
        # No step, yet Lightning counts one: the weights, and so the scores, stay those of this global_step.
        for monitor in self._forget_monitors():
            monitor.carry_forward(self.global_step, self.global_step + 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; DeepSpeed's CPU Adam (the same update) when a DeepSpeed strategy offloads the optimizer."""
        hp = self.hparams
        options = {"lr": hp.learning_rate, "betas": tuple(hp.betas), "weight_decay": hp.weight_decay}
        if self._trainer is not None and offloads_optimizer(self.trainer.strategy):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(self.model.parameters(), adamw_mode=False, **options)
        return torch.optim.Adam(self.model.parameters(), **options)

    # --- checkpoints and saving ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["forget_weights"] = self.forget_weights.clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.forget_weights = checkpoint.get("forget_weights", torch.ones(0)).clone()

    def save_pretrained(self, path: str | os.PathLike, tokenizer: Any = None) -> None:
        """Writes the model (and ``tokenizer``, default: the datamodule's) to a folder that
        ``AutoModelForCausalLM.from_pretrained`` loads. Call it on every process (under ZeRO-3 the shards are
        gathered one parameter at a time); the folder appears whole or not at all (written aside, then renamed)."""
        path = Path(path)
        if tokenizer is None and self._trainer is not None and self.trainer.datamodule is not None:
            tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        model = self.get_model()
        # Under ZeRO-3 every process takes part in gathering the shards, one parameter at a time.
        state = full_state_dict(model) if has_sharded_parameters(model) else None
        if self.global_rank == 0:
            with atomic_folder(path) as staging:
                model.save_pretrained(staging, state_dict=state)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
        if self._trainer is not None:
            self.trainer.strategy.barrier("save_pretrained")
