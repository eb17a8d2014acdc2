"""UnlearningModule: a LightningModule around a Hugging Face causal LM, with per-sample weighted forget losses."""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from transformers import PreTrainedModel

from lightning_unlearn.callbacks import MemorizationMonitor, hand_off_scores
from lightning_unlearn.distributed.checkpoints import PER_PROCESS
from lightning_unlearn.distributed.zero import (
    gather_local_shards,
    has_sharded_parameters,
    offloads_optimizer,
    partition_like,
    place_like,
    release_gathered_parameters,
)
from lightning_unlearn.evaluation.scoring import output_layer_input
from lightning_unlearn.functional.losses import token_kl
from lightning_unlearn.functional.memorization import nll_and_accuracy, sequence_nll
from lightning_unlearn.integrations.huggingface import check_causal_lm, load_causal_lm
from lightning_unlearn.integrations.peft import (
    add_adapter,
    config_from_plain,
    frozen_keys,
    is_adapted,
    plain_config,
    saved_state,
)
from lightning_unlearn.integrations.training_mode import checkpointing, set_checkpointing, train_without_dropout
from lightning_unlearn.modules.adversary import RelearningAdversary, SharpnessAdversary
from lightning_unlearn.modules.reference import ReferenceLogitsCache, ReferenceWeights
from lightning_unlearn.utilities.deprecation import renamed_argument
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_gguf, require_peft
from lightning_unlearn.utilities.files import atomic_folder

if TYPE_CHECKING:
    from peft import PeftConfig

# Expected here, not a problem: dropout modules are in eval mode while the model trains.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


RETAIN_LOSSES = (None, "nll", "kl")


def check_finite(loss: Tensor, step: int) -> None:
    """Raises a clear error on a NaN or infinite loss."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at step {step}: lower the learning rate or check the data"
        )


class UnlearningModule(L.LightningModule):
    """Base of every unlearning method: subclasses override :meth:`forget_loss` (and :meth:`retain_loss`).

    ``training_step`` runs the model on the forget batch, takes each sample's g from that forward pass (which the
    memorization callbacks use, so no second pass is needed), weights each sample's forget loss by
    ``forget_weights[sample_id]`` and normalizes by the weighted count over **all processes**, so a step on N
    processes equals a step on one with the same effective batch (per-device batch × devices × accumulation).

    Every method takes a retain term: ``retain_loss="nll"`` adds ``retain_weight`` · NLL(retain batch) (gradient
    difference), ``retain_loss="kl"`` adds ``retain_weight`` · KL(p_ref ‖ p_θ), the token-level KL on the retain
    batch's real tokens against the model as it was when training started (:class:`ReferenceWeights`: a copy of
    the weights, swapped in for one no-grad forward per step; no second model; the KL taken in chunks, with no
    whole-batch float32 copy). Both are averaged over the retain samples of all processes. On one device the retain
    part runs its forward and backward after the forget part's backward, so the activations of the two passes are
    never alive together (DDP and DeepSpeed expect one backward pass per step, so there both run in one). SGA's
    selection and the per-sample stop rule compose with every method: add
    :func:`~lightning_unlearn.callbacks.per_sample_control` to the Trainer's callbacks.

    A method overrides these, and no private name:

    - :meth:`forget_loss` (required): each forget record's loss to minimize, ``Tensor[B]``;
    - :meth:`retain_loss` (with :attr:`retain_losses`) and :meth:`retain_inputs`: a retain term of its own;
    - :meth:`forget_inputs` (with :attr:`forget_uses_reference`): what the forget loss needs computed before the
      training forward, e.g. the reference's log-likelihoods (NPO);
    - :meth:`on_forget_scores`: after the step's scores went to the callbacks, before the loss (TAU's switch);
    - :meth:`scores_in_training_step`: ``False`` when the training forward does not score what the monitor
      watches (task arithmetic scores its edit);
    - Lightning's own hooks (``configure_model``, ``configure_callbacks``, ``on_train_start``, ``on_train_end``,
      ``on_save_checkpoint``/``on_load_checkpoint``), calling ``super()``.

    Args:
        model: a causal LM instance, a hub id or a local path (created in ``configure_model`` when given by name).
        learning_rate: Adam learning rate (the paper: 5e-5).
        betas: Adam betas (the paper: (0.9, 0.98)).
        weight_decay: Adam weight decay.
        dropout: keep the model's dropout during training (off by default: unlearning edits a trained model). Off
            means the dropout and attention modules in eval mode at every step, the model itself in training mode
            (:func:`~lightning_unlearn.integrations.training_mode.train_without_dropout`), so that gradient
            checkpointing still runs.
        gradient_checkpointing: ``True`` recomputes each decoder layer's activations in the backward pass
            (Hugging Face's ``gradient_checkpointing_enable``, non-reentrant): much less activation memory for
            about one more forward pass per step; ``False`` turns it off; ``None`` keeps the model's own setting.
        gguf_file: a GGUF file inside ``model``'s folder or repository.
        model_kwargs: more ``from_pretrained`` arguments (``torch_dtype``, ``revision``, …).
        refresh: the memorization monitor's policy for methods that bring one (SGA, TA, TAU): ``"all"`` re-scores
            every forget sample, ``"above_threshold"`` only those not yet forgotten (much faster for forget sets
            far larger than a batch; the samples assumed forgotten are re-scored before stopping), ``"auto"`` (the
            default) the latter. See :class:`~lightning_unlearn.callbacks.MemorizationMonitor`.
        every_n_train_steps: optimizer steps between those scoring passes (``refresh_every``, its old name, still
            works with a warning).
        retain_loss: ``None`` (no retain term), ``"nll"`` or ``"kl"``; needs the datamodule's retain split.
        retain_weight: α >= 0, the retain term's weight.
        cache_reference: for ``retain_loss="kl"``, keep each retain sample's reference logits on the CPU after its
            first step instead of running the reference forward again (the reference never changes): the KL term
            then costs no extra forward pass once every retain sample has been seen. Memory: retain tokens ×
            vocabulary × 4 bytes, so for retain sets that are small next to that (the testbed's: 24 MB).
        peft: an adapter config (``peft.LoraConfig`` or any ``PeftConfig``; the ``[peft]`` extra): the model is
            wrapped with a fresh adapter in ``configure_model`` and only the adapter trains. The base's weights
            stay frozen and out of checkpoints (a resumed run loads the base from its source again);
            ``save_pretrained`` merges the adapter or writes it alone. A model given as an instance is wrapped in
            place (peft's ``get_peft_model``). A ``peft.PeftModel`` given as ``model`` trains as it is.
        adversary_steps: k > 0 makes unlearning relearning-aware (:mod:`lightning_unlearn.modules.adversary`): each
            step's forget loss and g are taken after k simulated fine-tuning steps of a copy on the datamodule's relearn
            split (else its retain split), so records that relearning would bring back are unlearned too. Costs a
            copy of the model, its Adam state for the k steps, and k + 1 more forward and backward passes per step.
        adversary_learning_rate: the simulated attacker's Adam learning rate.
        sharpness: ρ > 0 makes unlearning sharpness-aware (Fan et al. 2025;
            :class:`~lightning_unlearn.modules.adversary.SharpnessAdversary`): each step's forget loss is taken at
            the point within ρ of the weights (L2 over what trains) that relearns the forget batch most, so that the
            loss is low on a neighbourhood rather than at a sharp point. One more forward and backward pass per
            step; the rule reads g at the weights themselves.
    """

    #: the retain terms this method takes
    retain_losses: tuple[str | None, ...] = RETAIN_LOSSES
    #: forget_inputs needs the model as it was before unlearning (self.reference)
    forget_uses_reference = False

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
        retain_loss: Literal["nll", "kl"] | None = None,
        retain_weight: float = 1.0,
        cache_reference: bool = False,
        peft: PeftConfig | None = None,
        adversary_steps: int = 0,
        adversary_learning_rate: float = 5e-4,
        sharpness: float = 0.0,
        **deprecated: Any,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        every_n_train_steps = renamed_argument(
            deprecated, owner, "refresh_every", "every_n_train_steps", every_n_train_steps, 1
        )
        adversary_steps = renamed_argument(deprecated, owner, "relearn_steps", "adversary_steps", adversary_steps, 0)
        adversary_learning_rate = renamed_argument(
            deprecated, owner, "relearn_learning_rate", "adversary_learning_rate", adversary_learning_rate, 5e-4
        )
        if deprecated:
            raise TypeError(f"{owner} got unexpected arguments: {', '.join(sorted(deprecated))}")
        if retain_loss not in self.retain_losses:
            choices = ", ".join(repr(kind) for kind in self.retain_losses)
            raise ConfigurationError(f"{owner}'s retain_loss must be one of {choices}, got {retain_loss!r}")
        if not retain_weight >= 0:
            raise ConfigurationError(f"retain_weight must be >= 0, got {retain_weight}")
        if not sharpness >= 0:
            raise ConfigurationError(f"sharpness is a radius, >= 0, got {sharpness}")
        if sharpness and adversary_steps:
            raise ConfigurationError(
                "adversary_steps and sharpness each take the forget loss at another point: give one"
            )
        if gguf_file is not None:
            require_gguf()
        if peft is not None:
            require_peft()
        self.save_hyperparameters(ignore=["model", "peft"] if isinstance(model, torch.nn.Module) else ["peft"])
        self.hparams["peft"] = plain_config(peft) if peft is not None else None  # plain values for checkpoints
        if isinstance(model, torch.nn.Module):
            check_causal_lm(model)
            self.model: PreTrainedModel | None = model
            self.model_source = None
        else:
            self.model = None
            self.model_source = str(model)
        self.forget_weights = torch.ones(0)  # Tensor[N]: weight of each forget sample_id (1 when never set)
        self._rule_holds = False  # set by training_step: the stop rule holds, take no optimizer step
        self._window: dict[str, Any] = {}  # the optimizer step's stop decision and normalizers (_start_window)
        self._warned_window = False
        self.reference: ReferenceWeights | None = None  # the weights at fit start, for retain_loss="kl"
        self._reference_state: dict[str, Any] | None = None  # restored from a checkpoint, placed at train start
        self._reference_cache = ReferenceLogitsCache()  # cache_reference=True: each retain sample's reference logits
        self.adversary: RelearningAdversary | None = None  # adversary_steps > 0: made at train start
        self._deferred: tuple[dict[str, Tensor], float] | None = None  # the retain part, run in backward
        self._deferred_metrics: dict[str, Tensor] = {}
        if peft is not None or is_adapted(model):
            self.strict_loading = False  # checkpoints hold the adapter, not the frozen base (state_dict)

    # --- model -----------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Loads the model when given by name, and wraps it with the ``peft`` adapter (once: Lightning calls this
        for every stage)."""
        if self.model is None:
            self.model = load_causal_lm(self.model_source, self.hparams.gguf_file, **(self.hparams.model_kwargs or {}))
            check_causal_lm(self.model)
        if self.hparams.get("peft") is not None and not is_adapted(self.model):
            self.model = add_adapter(self.model, config_from_plain(self.hparams.peft))
        wanted = self.hparams.get("gradient_checkpointing")
        if wanted is not None and wanted != checkpointing(self.model):  # None: the model's own setting
            set_checkpointing(self.model, wanted)

    def memorization_monitors(self) -> list[MemorizationMonitor]:
        """The monitors that methods bring through ``configure_callbacks``: the forget-set monitor with this module's
        policy, and the Trainer's monitors of other splits (e.g. retain), handed back because Lightning drops every
        Trainer callback of a type that the module brings."""
        given = self.trainer.callbacks if self._trainer is not None else []
        others = [cb for cb in given if isinstance(cb, MemorizationMonitor) and cb.split != "forget"]
        forget = MemorizationMonitor(every_n_train_steps=self.hparams.every_n_train_steps, refresh=self.hparams.refresh)
        return [forget, *others]

    def users_or_own(self, own: Callback) -> Callback:
        """The Trainer's callback of ``own``'s type when the user gave one (the user's configuration wins, and the
        log says so), else ``own``: what ``configure_callbacks`` returns replaces the Trainer's of the same type."""
        given = [cb for cb in (self.trainer.callbacks if self._trainer is not None else []) if type(cb) is type(own)]
        if not given:
            return own
        rank_zero_info(f"{type(self).__name__}: using the {type(own).__name__} given to the Trainer, not its own")
        return given[0]

    def scoring_models(self) -> list[torch.nn.Module]:
        """The models whose largest g is a forget record's g when the memorization monitor scores it between steps:
        the model, and with ``adversary_steps`` the copy attacked from its current weights with this step's batch
        (forgotten means forgotten before and after the simulated attack, as for the training batch's records)."""
        if self.adversary is None or not self.adversary.scores_copy:
            return [self.get_model()]
        device = next(self.model.parameters()).device
        return [self.model, self.adversary.attack_at(self.model, self.global_step, device)]

    def get_model(self) -> PreTrainedModel:
        """The Hugging Face model being edited (after fit: the result)."""
        if self.model is None:
            self.configure_model()
        return self.model

    def train(self, mode: bool = True) -> UnlearningModule:
        super().train(mode)
        if mode and self.model is not None:
            self._set_training_mode()
        return self

    def _set_training_mode(self) -> None:
        """The model in training mode, with its dropout off unless ``dropout=True``: at every step, as Lightning
        never calls ``train()`` on a model that came in one mode or the other, and scoring passes switch modes."""
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
        if self.needs_retain and not datamodule.has_split("retain"):
            kind = self.hparams.get("retain_loss")
            raise ConfigurationError(
                f"{type(self).__name__} trains on the retain split too (retain_loss={kind!r}): give the datamodule one"
            )
        datamodule.check_fits(self.model)
        if len(self.forget_weights) == 0:
            self.forget_weights = torch.ones(len(datamodule.split("forget")), dtype=torch.float32)

    # --- per-sample weights ----------------------------------------------------------------------------------

    def set_forget_weights(self, sample_id: Tensor, weights: Tensor) -> None:
        """Sets the weights (``Tensor[B]``, >= 0) of forget samples ``sample_id`` (``Tensor[B]``)."""
        sample_id = sample_id.cpu()
        if len(sample_id) and int(sample_id.max()) >= len(self.forget_weights):
            grown = torch.ones(int(sample_id.max()) + 1, dtype=torch.float32)
            grown[: len(self.forget_weights)] = self.forget_weights
            self.forget_weights = grown
        self.forget_weights[sample_id] = weights.detach().float().cpu()

    def forget_weights_for(self, sample_id: Tensor) -> Tensor:
        """``Tensor[B]`` weights of forget samples ``sample_id`` (1 for a sample never weighted)."""
        ids = sample_id.cpu()
        known = ids < len(self.forget_weights)
        weights = torch.ones(len(ids), dtype=torch.float32)  # float32 under bf16-true too
        weights[known] = self.forget_weights[ids[known]]
        return weights.to(sample_id.device)

    # --- losses ----------------------------------------------------------------------------------------------

    def forget_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        """Per-sample loss to minimize on forget samples (``Tensor[B]``); ``nll`` is their mean token NLL."""
        raise NotImplementedError(f"{type(self).__name__} must define forget_loss()")

    def forget_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The forget batch with what :meth:`forget_loss` needs besides the model's logits, computed before the
        training forward pass (a reference pass swaps the weights in place; see :attr:`forget_uses_reference`):
        the batch itself by default."""
        return batch

    @property
    def uses_reference(self) -> bool:
        """Whether the model as it was before unlearning is kept (:class:`ReferenceWeights`, taken at train start):
        for a KL retain term, or a forget loss that needs it."""
        return self.hparams.get("retain_loss") == "kl" or self.forget_uses_reference

    def on_train_start(self) -> None:
        """Keeps the reference weights of a KL retain term (the model now, before the first step), and makes the
        relearning adversary (``adversary_steps`` > 0)."""
        if self.hparams.get("adversary_steps") and self.adversary is None:
            self.adversary = RelearningAdversary.for_module(self)
        elif self.hparams.get("sharpness") and self.adversary is None:
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            self.adversary = SharpnessAdversary(self.model, self.hparams.sharpness, scaler)
        self._take_reference()

    def _global_sum(self, value: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(value.detach(), reduce_op="sum") if self.trainer.world_size > 1 else value

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or "forget" not in batch:
            raise ConfigurationError(
                "training batches must be dicts with a 'forget' batch (as UnlearningDataModule makes)"
            )
        forget = batch["forget"]
        ids = forget["sample_id"]
        self._set_training_mode()
        retain = self._retain_batch(batch) if self.needs_retain else None
        deferred = retain is not None and self._backward_per_part()
        if retain is not None and not deferred:  # the reference first: its weights are swapped in place
            retain = self.retain_inputs(retain)
        forget = self.forget_inputs(forget)
        # With an adversary the loss is taken at its copy: the model's own pass only scores g, and keeps no graph,
        # so that one activation graph (the copy's) is alive at the step's peak.
        with torch.no_grad() if self.adversary is not None else nullcontext():
            logits, head = self._logits(forget)
        if self.scores_in_training_step() and self._monitors("forget"):  # the callbacks take each g as it comes
            nll, g = nll_and_accuracy(logits, forget["input_ids"], forget["attention_mask"], **head)
        else:
            nll, g = sequence_nll(logits, forget["input_ids"], forget["attention_mask"]), None
        if self.adversary is not None:  # the forget loss and g as a relearning attacker will have them
            logits, nll, g = self.adversary.forget_terms(self.model, forget, g, self.global_step)
        world, accumulation = self.trainer.world_size, self.trainer.accumulate_grad_batches
        window_ids = forget.get("window_ids") if accumulation > 1 else None
        if window_ids is None or batch_idx % accumulation == 0:  # the first micro-batch of an optimizer step
            self._window = self._start_window(ids, g, window_ids, retain)
        elif g is not None:
            for monitor in self._monitors("forget"):  # the weights are the window's: the scores come for free
                monitor.record(self.trainer, self, ids, g)
        self._rule_holds = self._window["holds"]
        if self._rule_holds:  # the stop rule holds for these weights: a zero loss, and optimizer_step takes no step
            return logits.sum() * 0.0
        weights = self.forget_weights_for(ids).to(nll.dtype)
        # Each micro-batch's share of the window's weighted mean; Lightning divides every loss by the accumulation.
        scale = world * (accumulation if window_ids is not None else 1)
        loss = scale * (weights * self.forget_loss(forget, logits, nll)).sum() / self._window["forget_weight"]
        if self.adversary is not None:
            loss = self.adversary.transplant(self.model, loss)
        metrics = {"train/forget_nll": nll.detach().mean()}
        if deferred:  # its forward and backward run after the forget part's backward (see backward)
            self._deferred = (retain, scale)
        elif retain is not None:
            part, retain_metrics = self._retain_part(retain, scale)
            loss, metrics = loss + part, metrics | retain_metrics
        check_finite(loss, self.global_step)
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=world > 1, batch_size=len(ids))
        self.log("train/selected", self._global_sum((weights > 0).sum().float()), on_step=True, batch_size=len(ids))
        return loss

    def _logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """``Tensor[B, T, V]`` logits of a batch at the model's own precision (half precision under mixed
        precision, as the user's own training runs), and the output layer with its input, with which
        :func:`nll_and_accuracy` re-checks their near ties in float32."""
        with output_layer_input(self.model) as head:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits, head

    def _start_window(
        self, sample_id: Tensor, g: Tensor | None, window_ids: Tensor | None, retain: dict[str, Tensor] | None
    ) -> dict[str, Any]:
        """At an optimizer step's first micro-batch: the stop rule and the per-sample weights of the step's samples
        (``window_ids``, every micro-batch's; this micro-batch alone without them), and the normalizers of one big
        batch: the forget weights' and the retain samples' global sums."""
        if window_ids is None and self.trainer.accumulate_grad_batches > 1 and not self._warned_window:
            self._warned_window = True
            rank_zero_warn(
                "gradient accumulation without UnlearningDataModule's loader: per-sample selection and normalization "
                "are per micro-batch, not per optimizer step"
            )
        holds = self._before_step(sample_id, g, window_ids)
        step_ids = sample_id if window_ids is None else window_ids
        forget_weight = self._global_sum(self.forget_weights_for(step_ids).sum()).clamp_min(1e-12)
        window = {"holds": holds, "forget_weight": forget_weight}
        if retain is not None:
            step_retain = retain.get("window_ids", retain["sample_id"])  # window_ids come with the forget split's
            size = torch.tensor(float(len(step_retain)), dtype=torch.float32, device=sample_id.device)
            window["retain_count"] = self._global_sum(size)
        return window

    def _monitors(self, split: str) -> list[MemorizationMonitor]:
        return [cb for cb in self.trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == split]

    def scores_in_training_step(self) -> bool:
        """Whether the training forward's g is the g the monitors watch (not for task arithmetic, which scores
        its edit): :class:`~lightning_unlearn.callbacks.ScoresInTrainingStep`."""
        return True

    def _before_step(self, sample_id: Tensor, g: Tensor | None, window_ids: Tensor | None = None) -> bool:
        """Score-in-the-loop: hands the batch's fresh g to the callbacks (:func:`hand_off_scores`); True when
        training must stop now."""
        if g is None:  # no monitor takes the training forward's scores (or task arithmetic: they are not its edit's)
            return False
        if hand_off_scores(self.trainer, self, sample_id, g, window_ids):
            return True
        self.on_forget_scores()
        return False

    def on_forget_scores(self) -> None:
        """Hook, in the training step: the step's forget scores have gone to the callbacks, the stop rule does not
        hold and the selection's weights are set; the forget loss is taken next (TAU switches phase here)."""

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        self._rule_holds = False
        loss = optimizer_closure()  # training_step and backward
        if not self._rule_holds:
            optimizer.step(closure=lambda: loss)  # DeepSpeed's precision plugin requires the closure's result
            return
        # No step, yet Lightning counts one: the weights, and so the scores, stay those of this global_step.
        for monitor in self._monitors("forget"):
            monitor.carry_forward(self.global_step, self.global_step + 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; DeepSpeed's CPU Adam (the same update) when a DeepSpeed strategy offloads the optimizer."""
        hp = self.hparams
        options = {"lr": hp.learning_rate, "betas": tuple(hp.betas), "weight_decay": hp.weight_decay}
        if self._trainer is not None and offloads_optimizer(self.trainer.strategy):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(self.trainable_parameters(), adamw_mode=False, **options)
        return torch.optim.Adam(self.trainable_parameters(), **options)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that train (with an adapter: the adapter's)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    # --- the retain term: NLL or KL to the model before unlearning, on the retain split; on one device its own
    # forward and backward after the forget part's, so that the two passes' activations are never alive together

    @property
    def needs_retain(self) -> bool:
        """Whether the method trains on the retain split too."""
        return self.hparams.get("retain_loss") is not None

    def retain_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        """Per-sample loss to minimize on retain samples (``Tensor[B]``), weighted by ``retain_weight``: their mean
        token NLL for ``retain_loss="nll"``, their mean token KL(p_ref ‖ p_θ) for ``"kl"`` (the reference's logits
        are ``batch["reference_logits"]``)."""
        kind = self.hparams.get("retain_loss")
        if kind == "nll":
            return nll
        if kind == "kl":
            return token_kl(logits, batch["reference_logits"], batch["attention_mask"])
        raise NotImplementedError(f"{type(self).__name__} must define retain_loss() when needs_retain is True")

    def _retain_part(self, retain: dict[str, Tensor], scale: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The retain term's share of the step's loss (normalized like the forget term's) and its metrics; the
        retain forward scores its batch for the retain monitors for free."""
        logits, head = self._logits(retain)
        # The built-in KL term does not use the NLL: taken without a graph, whose saved softmax would be alive at
        # the KL's peak.
        kl_only = self.hparams.get("retain_loss") == "kl" and type(self).retain_loss is UnlearningModule.retain_loss
        scored = logits.detach() if kl_only else logits
        if self._monitors("retain"):
            nll, g = nll_and_accuracy(scored, retain["input_ids"], retain["attention_mask"], **head)
            for monitor in self._monitors("retain"):
                monitor.record(self.trainer, self, retain["sample_id"], g)
        else:
            nll = sequence_nll(scored, retain["input_ids"], retain["attention_mask"])
        term = self.retain_loss(retain, logits, nll)
        part = scale * self.hparams.get("retain_weight", 1.0) * term.sum() / self._window["retain_count"]
        return part, {"train/retain_nll": nll.detach().mean(), "train/retain_loss": term.detach().mean()}

    def _backward_per_part(self) -> bool:
        """Whether the retain part runs its own forward and backward after the forget part's backward, so that the
        activations of the two passes are never alive together: on one device, where a step may take two backward
        passes (DDP and DeepSpeed reduce gradients during the one backward pass they expect)."""
        return isinstance(self.trainer.strategy, SingleDeviceStrategy) and self.automatic_optimization

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The forget part's backward, then (one device, a retain term) the retain part's forward and backward,
        scaled as Lightning scaled the first (gradient accumulation, a mixed-precision loss scaler)."""
        super().backward(loss, *args, **kwargs)
        if self._deferred is None:
            return
        retain, scale = self._deferred
        self._deferred = None
        with self.trainer.precision_plugin.forward_context():  # as training_step runs: autocast under mixed precision
            part, self._deferred_metrics = self._retain_part(self.retain_inputs(retain), scale)
        check_finite(part, self.global_step)
        part = part / self.trainer.accumulate_grad_batches
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        super().backward(scaler.scale(part) if scaler is not None else part, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self._deferred_metrics:  # the retain part's, logged once its backward has run
            self.log_dict(self._deferred_metrics, on_step=True, on_epoch=False, batch_size=1)
            self._deferred_metrics = {}

    def _retain_batch(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        """The step's retain batch."""
        if "retain" not in batch:
            raise ConfigurationError(
                f"retain_loss={self.hparams.get('retain_loss')!r} needs training batches with a 'retain' batch: give "
                "the UnlearningDataModule a retain split"
            )
        return batch["retain"]

    def retain_inputs(self, retain: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook: the retain batch with what :meth:`retain_loss` needs besides the model's logits, computed before
        any forward pass whose graph a backward pass will use (the reference's weights are swapped in place): for
        a KL retain term, the reference's logits (``batch["reference_logits"]``); the batch itself otherwise."""
        if self.hparams.get("retain_loss") != "kl":
            return retain
        if self.reference is None:
            raise RuntimeError("the reference weights are taken at train start: call super().on_train_start()")
        return {**retain, "reference_logits": self._reference_logits(retain)}

    def _reference_logits(self, retain: dict[str, Tensor]) -> Tensor:
        """The reference's logits (``Tensor[B, T, V]``) on a retain batch, from the cache with ``cache_reference``."""
        if not self.hparams.get("cache_reference"):
            return self.reference.logits(self.model, retain)
        any_missing = partial(self.trainer.strategy.reduce_boolean_decision, all=False)
        return self._reference_cache.logits(self.reference, self.model, retain, any_missing)

    def _take_reference(self) -> None:
        """Keeps the reference weights (:attr:`uses_reference`): the model now, before the first step, or as a
        checkpoint restored it."""
        if not self.uses_reference or self.reference is not None:
            return
        release = partial(release_gathered_parameters, self.trainer.strategy)
        if self._reference_state is not None:  # resumed: the reference is the model before the first step
            self.reference = ReferenceWeights.from_state_dict(self._reference_state, self.model, release)
            self._reference_state = None
        else:
            self.reference = ReferenceWeights(self.model, release=release)

    # --- checkpoints and saving ------------------------------------------------------------------------------

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's state; with an adapter, without the frozen base's parameters: checkpoints (Lightning's, and
        DeepSpeed's, whose exclusion of frozen parameters misses tied ones) hold what trains, and a resumed run
        loads the base again from its source."""
        state = super().state_dict(*args, **kwargs)
        if self.model is not None and is_adapted(self.model):
            for key in frozen_keys(self.model, prefix=f"{kwargs.get('prefix', '')}model."):
                state.pop(key, None)
        return state

    def per_process_checkpoints(self) -> bool:
        """Whether this process saves its own shards of the module's state (the KL reference, TA's base) beside
        DeepSpeed's, under ZeRO-3 with a strategy that takes them
        (:class:`~lightning_unlearn.distributed.checkpoints.AtomicDeepSpeedStrategy`), instead of gathering them whole
        into the checkpoint."""
        strategy = self.trainer.strategy if self._trainer is not None else None
        return getattr(strategy, "saves_per_process_state", False) and has_sharded_parameters(self.model)

    def shards_for_checkpoint(
        self, checkpoint: dict[str, Any], key: str, shards: dict[str, Tensor]
    ) -> dict[str, Tensor] | None:
        """This process's ``shards`` (as :func:`~lightning_unlearn.distributed.zero.local_shards` lays them out) for a
        checkpoint: under :meth:`per_process_checkpoints` they go to its per-process part under ``key`` and None
        is returned; otherwise they are returned whole (under ZeRO-3 gathered: call it on every process)."""
        if self.per_process_checkpoints():
            checkpoint.setdefault(PER_PROCESS, {})[key] = shards
            return None
        return gather_local_shards(self.model, shards)

    def shards_from_checkpoint(
        self, checkpoint: dict[str, Any], key: str, whole: dict[str, Tensor] | None
    ) -> dict[str, Tensor] | None:
        """The inverse of :meth:`shards_for_checkpoint`: this process's shards, from ``whole`` when the checkpoint
        held them whole, else from its per-process part under ``key``; None when it has neither."""
        if whole is not None:
            return partition_like(self.model, whole)
        own = checkpoint.get(PER_PROCESS, {})
        return place_like(self.model, own[key]) if key in own else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["forget_weights"] = self.forget_weights.clone()
        if self.reference is not None and self.per_process_checkpoints():
            own = checkpoint.setdefault(PER_PROCESS, {})
            own["reference_weights"] = self.reference.state_dict(self.model, per_process=True)
        elif self.reference is not None:
            checkpoint["reference_weights"] = self.reference.state_dict(self.model)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model is not None and is_adapted(self.model) and "state_dict" in checkpoint:
            expected = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
            missing = sorted(expected - set(checkpoint["state_dict"]))
            if missing:
                raise ConfigurationError(
                    f"the checkpoint lacks {len(missing)} adapter parameters, e.g. {missing[0]}: was it written with "
                    "the same peft config?"
                )
        self.forget_weights = checkpoint.get("forget_weights", torch.ones(0)).clone()
        own = checkpoint.get(PER_PROCESS, {})
        self._reference_state = checkpoint.get("reference_weights", own.get("reference_weights"))
        self.reference = None

    def save_pretrained(
        self, path: str | os.PathLike, tokenizer: Any = None, merge: bool = True, files: dict[str, str] | None = None
    ) -> None:
        """Writes the model (and ``tokenizer``, default: the datamodule's) to a folder. Call it on every process
        (under ZeRO-3 the shards are gathered one parameter at a time); the folder appears whole or not at all
        (written aside, then renamed).

        Args:
            path: the folder: a local path or an fsspec URL (``s3://…``; uploaded once complete).
            tokenizer: saved with the model.
            merge: with an adapter: ``True`` writes a plain Hugging Face folder with the adapter merged into the
                base's weights (``AutoModelForCausalLM.from_pretrained`` loads it, no peft needed; the model in
                memory is not changed); ``False`` writes the adapter alone, which
                ``peft.PeftModel.from_pretrained(base, path)`` loads onto the base. Without an adapter the folder
                is always a plain one.
            files: ``{name: text}`` written into the folder with the model (e.g. ``unlearning.json``).
        """
        if tokenizer is None and self._trainer is not None and self.trainer.datamodule is not None:
            tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        target, state = saved_state(self.get_model(), merge)  # every process: ZeRO-3 gathers on all of them
        if self.global_rank == 0:
            with atomic_folder(path) as staging:
                target.save_pretrained(staging, state_dict=state)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
                for name, text in (files or {}).items():
                    (staging / name).write_text(text, encoding="utf-8")
        if self._trainer is not None:
            self.trainer.strategy.barrier("save_pretrained")
