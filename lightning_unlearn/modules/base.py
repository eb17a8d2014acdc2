"""UnlearningModule: a LightningModule around a Hugging Face causal LM, with per-sample weighted forget losses."""

from __future__ import annotations

import os
import warnings
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from torch import Tensor
from transformers import PreTrainedModel

from lightning_unlearn.callbacks.monitor import monitors_of
from lightning_unlearn.distributed.zero import adam, release_gathered_parameters
from lightning_unlearn.integrations.huggingface import check_causal_lm, prepared_model
from lightning_unlearn.integrations.peft import is_adapted, plain_config
from lightning_unlearn.integrations.training_mode import train_without_dropout
from lightning_unlearn.modules import checkpointing as checkpoints
from lightning_unlearn.modules.adversary import RelearningAdversary, adversary_for, check_adversary_options
from lightning_unlearn.modules.hooks import UnlearningHooks
from lightning_unlearn.modules.reference import ReferenceWeights
from lightning_unlearn.modules.retain import RetainTerm
from lightning_unlearn.modules.step import ForgetWeights, Steps, check_finite, forget_forward, global_sum
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_gguf, require_peft

if TYPE_CHECKING:
    from peft import PeftConfig

# Expected here, not a problem: dropout modules are in eval mode while the model trains.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class UnlearningModule(UnlearningHooks, L.LightningModule):
    """Base of every unlearning method: a method overrides ``forget_loss`` (and ``retain_loss``).

    ``training_step`` runs the model on the forget batch, takes each sample's g from that forward pass (for the
    memorization callbacks: no second pass), weights each sample's forget loss by its ``forget_weights`` and
    normalizes by the weighted count over **all processes**, so a step on N processes equals a step on one with the
    same effective batch (per-device batch × devices × accumulation). SGA's selection and the per-sample stop rule
    compose with every method: add :func:`~lightning_unlearn.callbacks.per_sample_control` to the Trainer's callbacks.

    The module orchestrates named parts: ``retain_term`` (:class:`~lightning_unlearn.modules.retain.RetainTerm`),
    ``reference`` (:class:`~lightning_unlearn.modules.reference.ReferenceWeights`, the model before unlearning),
    ``forget_weights`` (:class:`~lightning_unlearn.modules.step.ForgetWeights`), ``adversary``, the step's
    :class:`~lightning_unlearn.modules.step.StepState` and :meth:`checkpoint_shards`.

    A method overrides the hooks of :class:`~lightning_unlearn.modules.hooks.UnlearningHooks` (``forget_loss``,
    required; ``model_forward``; ``retain_loss``, ``retain_inputs``; ``forget_inputs``; ``on_forget_scores``;
    ``scores_in_training_step``; the class attributes ``retain_losses``, ``forget_uses_reference``,
    ``takes_adversary``) and Lightning's own (``configure_model``, ``configure_callbacks``, ``on_train_start``,
    ``on_train_end``, ``on_save_checkpoint``/``on_load_checkpoint``), calling ``super()``; no private name.

    Args:
        model: a causal LM instance, a hub id or a local path (loaded in ``configure_model`` when given by name).
        learning_rate, betas, weight_decay: Adam's (the paper: 5e-5, (0.9, 0.98), 0).
        dropout: keep the model's dropout while training (off by default: unlearning edits a trained model; off means
            dropout and attention modules in eval mode, the model in training mode, so that checkpointing runs).
        gradient_checkpointing: ``True`` recomputes each decoder layer's activations in the backward pass (much less
            activation memory for about one more forward pass), ``False`` does not, ``None`` keeps the model's.
        gguf_file, model_kwargs: a GGUF file in ``model``'s folder; more ``from_pretrained`` arguments.
        refresh, every_n_train_steps: the policy of the memorization monitor that SGA, TA and TAU bring
            (:class:`~lightning_unlearn.callbacks.MemorizationMonitor`).
        retain_loss, retain_weight, cache_reference: the retain term (:mod:`~lightning_unlearn.modules.retain`):
            ``None``, ``"nll"`` or ``"kl"``, its weight α >= 0, and for ``"kl"`` each retain sample's reference logits
            kept on the CPU after its first step (retain tokens × vocabulary × 4 bytes).
        peft: an adapter config (the ``[peft]`` extra): only a fresh adapter trains; the base stays frozen and out
            of checkpoints; ``save_pretrained`` merges it or writes it alone. A ``PeftModel`` trains as it is.
        adversary_steps, adversary_learning_rate: k > 0 takes each step's forget loss and g after k simulated Adam
            steps of a copy on the relearn split (else retain): relearning-aware unlearning
            (:mod:`~lightning_unlearn.modules.adversary`; a copy, its Adam state, k + 1 more passes per step).
        sharpness: ρ > 0 takes each step's forget loss at the point within ρ that relearns the batch most (Fan et
            al. 2025: :class:`~lightning_unlearn.modules.adversary.SharpnessAdversary`; one more pass per step).
    """

    def __init__(
        self,
        model: PreTrainedModel | str | os.PathLike,
        learning_rate: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        dropout: bool = False,
        gradient_checkpointing: bool | None = None,
        gguf_file: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        refresh: Literal["auto", "all", "above_threshold"] = "auto",
        every_n_train_steps: int = 1,
        retain_loss: str | None = None,
        retain_weight: float = 1.0,
        cache_reference: bool = False,
        peft: PeftConfig | None = None,
        adversary_steps: int = 0,
        adversary_learning_rate: float = 5e-4,
        sharpness: float = 0.0,
    ) -> None:
        super().__init__()
        RetainTerm.check(type(self).__name__, retain_loss, self.retain_losses)
        check_adversary_options(type(self).__name__, self.takes_adversary, adversary_steps, sharpness)
        if gguf_file is not None:
            require_gguf()
        if peft is not None:
            require_peft()
        given = isinstance(model, torch.nn.Module)
        self.save_hyperparameters(ignore=["model", "peft"] if given else ["peft"])
        self.hparams["peft"] = plain_config(peft) if peft is not None else None  # plain values for checkpoints
        if given:
            check_causal_lm(model)
        self.model: PreTrainedModel | None = model if given else None
        self.model_source = None if given else str(model)
        builtin = type(self).retain_loss is UnlearningHooks.retain_loss
        self.retain_term = RetainTerm(retain_loss, retain_weight, cache_reference, builtin)
        self.forget_weights = ForgetWeights()
        self.reference: ReferenceWeights | None = None  # the weights at fit start (uses_reference)
        self._reference_state: dict[str, Any] | None = None  # restored from a checkpoint, placed at train start
        self.adversary: RelearningAdversary | None = None  # adversary_steps or sharpness: made at train start
        self.steps = Steps()  # the current optimizer step's state
        if peft is not None or is_adapted(model):
            self.strict_loading = False  # checkpoints hold the adapter, not the frozen base (state_dict)

    # --- the model ----------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Loads the model when given by name, and wraps it with the ``peft`` adapter (once: Lightning calls this
        for every stage)."""
        hp = self.hparams
        options = hp.gguf_file, hp.model_kwargs, hp.get("peft"), hp.get("gradient_checkpointing")
        self.model = prepared_model(self.model, self.model_source, *options)

    def get_model(self) -> PreTrainedModel:
        """The Hugging Face model being edited (after fit: the result)."""
        if self.model is None:
            self.configure_model()
        return self.model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that train (with an adapter: the adapter's)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> UnlearningModule:
        """Training mode with the model's dropout off unless ``dropout=True`` (at every step too: Lightning never calls
        ``train()`` on a model that came in one mode or the other, and scoring passes switch modes)."""
        super().train(mode)
        if mode and self.model is not None:
            self._set_training_mode()
        return self

    def _set_training_mode(self) -> None:
        """The model (only: no walk over the module's other children) in training mode, dropout off unless asked."""
        if self.hparams.dropout:
            self.model.train()
        else:
            train_without_dropout(self.model)

    def setup(self, stage: str) -> None:
        self.configure_model()
        if is_adapted(self.model) and hasattr(self.trainer.strategy, "exclude_frozen_parameters"):
            self.trainer.strategy.exclude_frozen_parameters = True  # DeepSpeed's checkpoints: without the base
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "split"):
            return
        datamodule.setup(stage)
        self.retain_term.check_datamodule(type(self).__name__, datamodule)
        datamodule.check_fits(self.model)
        self.forget_weights.reserve(len(datamodule.split("forget")))

    # --- what the callbacks call ------------------------------------------------------------------------------

    def scoring_models(self) -> list[torch.nn.Module]:
        """The models whose largest g is a forget record's g when the memorization monitor scores it between steps:
        the model, and with ``adversary_steps`` the copy attacked from its current weights with this step's batch."""
        if self.adversary is None or not self.adversary.scores_copy:
            return [self.get_model()]
        device = next(self.model.parameters()).device
        return [self.model, self.adversary.attack_at(self.model, self.global_step, device)]

    def set_forget_weights(self, sample_id: Tensor, weights: Tensor) -> None:
        """Sets the weights (``Tensor[B]``, >= 0) of forget samples ``sample_id`` (``Tensor[B]``)."""
        self.forget_weights.set(sample_id, weights)

    @property
    def needs_retain(self) -> bool:
        """Whether the method trains on the retain split too."""
        return self.retain_term.kind is not None

    @property
    def uses_reference(self) -> bool:
        """Whether the model as it was before unlearning is kept (``reference``, taken at train start): for a KL
        retain term, or a forget loss that needs it."""
        return self.retain_term.kind == "kl" or self.forget_uses_reference

    # --- one optimizer step: training_step, backward (the deferred retain part), optimizer_step ----------------

    def on_train_start(self) -> None:
        """Makes the adversary (``adversary_steps`` or ``sharpness``) and keeps the reference weights
        (:attr:`uses_reference`): the model now, before the first step, or as a checkpoint restored it."""
        if self.adversary is None:
            self.adversary = adversary_for(self)
        if self.uses_reference and self.reference is None:
            release = partial(release_gathered_parameters, self.trainer.strategy)
            state, self._reference_state = self._reference_state, None
            self.reference = ReferenceWeights.restored(self.model, state, release)

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or "forget" not in batch:
            raise ConfigurationError(
                "training batches must be dicts with a 'forget' batch (as UnlearningDataModule makes)"
            )
        self._set_training_mode()
        retain = self.retain_term.batch(self, batch)  # with its inputs now, unless its part runs in backward
        forget = self.forget_inputs(batch["forget"])
        output, nll, g = forget_forward(self, forget)
        accumulation = self.trainer.accumulate_grad_batches
        window_ids = forget.get("window_ids") if accumulation > 1 else None
        if window_ids is None or batch_idx % accumulation == 0:  # the first micro-batch of an optimizer step
            self.steps.start(self, forget["sample_id"], g, window_ids, retain)
        elif g is not None:  # the weights are the step's: the scores come for free
            for monitor in monitors_of(self.trainer, "forget"):
                monitor.record(self.trainer, self, forget["sample_id"], g)
        if self.steps.current.rule_holds:  # the stop rule holds for these weights: a zero loss, and no optimizer step
            return output.logits.sum() * 0.0
        weights = self.forget_weights.of(forget["sample_id"]).to(nll.dtype)
        # Each micro-batch's share of the step's weighted mean; Lightning divides every loss by the accumulation.
        scale = self.trainer.world_size * (accumulation if window_ids is not None else 1)
        loss = scale * (weights * self.forget_loss(forget, output, nll)).sum() / self.steps.current.forget_weight
        if self.adversary is not None:
            loss = self.adversary.transplant(self.model, loss)
        metrics = {"train/forget_nll": nll.detach().mean()}
        if retain is not None:  # its part now, or after the forget part's backward (see backward)
            loss, metrics = self.retain_term.add(self, retain, scale, loss, metrics)
        check_finite(loss, self.global_step)
        size = len(forget["sample_id"])
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=self.trainer.world_size > 1, batch_size=size)
        self.log("train/selected", global_sum(self.trainer, (weights > 0).sum().float()), on_step=True, batch_size=size)
        return loss

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The forget part's backward, then (one device, a retain term) the retain part's forward and backward."""
        super().backward(loss, *args, **kwargs)
        self.retain_term.run_deferred(self, lambda part: super(UnlearningModule, self).backward(part, *args, **kwargs))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.retain_term.metrics:  # the deferred retain part's, logged once its backward has run
            self.log_dict(self.retain_term.metrics, on_step=True, on_epoch=False, batch_size=1)
            self.retain_term.metrics = {}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        loss = optimizer_closure()  # training_step and backward
        if not self.steps.current.rule_holds:
            optimizer.step(closure=lambda: loss)  # DeepSpeed's precision plugin requires the closure's result
            return
        # No step, yet Lightning counts one: the weights, and so the scores, stay those of this global_step.
        for monitor in monitors_of(self.trainer, "forget"):
            monitor.carry_forward(self.global_step, self.global_step + 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; DeepSpeed's CPU Adam (the same update) when a DeepSpeed strategy offloads the optimizer."""
        hp, strategy = self.hparams, self.trainer.strategy if self._trainer is not None else None
        options = {"lr": hp.learning_rate, "betas": tuple(hp.betas), "weight_decay": hp.weight_decay}
        return adam(self.trainable_parameters(), strategy, **options)

    # --- checkpoints and saving --------------------------------------------------------------------------------

    def checkpoint_shards(self) -> checkpoints.CheckpointShards:
        """This process's shards of state beyond the model's (the KL reference, TA's base) in checkpoints."""
        return checkpoints.CheckpointShards(self.model, self.trainer.strategy if self._trainer is not None else None)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's state; with an adapter, without the frozen base's parameters (a resume loads it again)."""
        return checkpoints.without_frozen_base(
            super().state_dict(*args, **kwargs), self.model, kwargs.get("prefix", "")
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["forget_weights"] = self.forget_weights.values.clone()
        if self.reference is not None:
            checkpoints.put_reference(checkpoint, self.reference, self.checkpoint_shards())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoints.check_adapter_checkpoint(self.model, checkpoint)
        self.forget_weights.values = checkpoint.get("forget_weights", torch.ones(0)).clone()
        self._reference_state, self.reference = checkpoints.reference_state(checkpoint), None

    def save_pretrained(
        self, path: str | os.PathLike, tokenizer: Any = None, merge: bool = True, files: dict[str, str] | None = None
    ) -> None:
        """Writes the model, ``tokenizer`` (default: the datamodule's) and ``files`` (``{name: text}``) to the folder
        ``path`` (local or an fsspec URL), whole or not at all; with an adapter, merged into the base's weights
        (``merge=True``: a plain Hugging Face folder; the model in memory unchanged) or alone (``merge=False``, for
        ``peft.PeftModel.from_pretrained``). Call it on every process (ZeRO-3 gathers one parameter at a time)."""
        if tokenizer is None and self._trainer is not None and self.trainer.datamodule is not None:
            tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        checkpoints.save_model_folder(self.get_model(), path, tokenizer, merge, files, writes=self.global_rank == 0)
        if self._trainer is not None:
            self.trainer.strategy.barrier("save_pretrained")
