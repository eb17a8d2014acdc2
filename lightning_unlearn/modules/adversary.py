"""Relearning-aware unlearning: the forget loss taken after a simulated relearning attack.

Gradient ascent with a retain term hides records more than it removes them: a few fine-tuning steps on *other* texts
of the same kind bring them back (see :mod:`lightning_unlearn.evaluation.recovery`). The cure used by tamper-resistance
work (Tamirisa et al. 2024, first-order meta-learning) is to unlearn the model *as the attacker will have it*: before
each step, a copy θ' of the weights θ is fine-tuned for a few Adam steps on related texts (a batch of the datamodule's
relearn split, else its retain split); the forget loss is taken at θ', and its gradient ∇_θ' L_forget(θ') is applied to
θ (the first-order approximation of ∇_θ L_forget(θ'(θ))). A record counts as forgotten only when it is forgotten both at
θ and at θ': g = max(g(θ), g(θ')), which SGA's selection and the per-sample stop rule then read, for the records of the
training batch and for those that the memorization monitor scores between steps alike. The copy is attacked once per
optimizer step (micro-batches of an accumulated step share it), holds its own copy of only what trains (an adapter's
weights under LoRA; the frozen base is shared), and its inner steps use the run's loss scaler under ``16-mixed``.

The attacker's texts are the datamodule's ``relearn`` split when it has one (texts of the same kind that the model
has *not* memorized, e.g. fresh records: they move the weights as a real attacker's data would), else its retain
split. :class:`RelearningAdversary` holds the copy; ``UnlearningModule(adversary_steps=k)`` uses it in every step.

:class:`SharpnessAdversary` is the same mechanism with another θ': the worst point within a small radius of θ for the
forget batch (sharpness-aware unlearning, ``UnlearningModule(sharpness=ρ)``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from lightning_unlearn.data import relearn_split
from lightning_unlearn.distributed.zero import has_sharded_parameters
from lightning_unlearn.evaluation.scoring import output_layer_input
from lightning_unlearn.functional.memorization import nll_and_accuracy, sequence_nll
from lightning_unlearn.utilities.errors import ConfigurationError


class RelearningAdversary:
    """A fine-tunable copy of a model's weights: :meth:`attack` relearns from the model's current weights,
    :meth:`logits` runs the attacked copy, and :meth:`transplant` moves a loss's gradient at the copy onto the
    model's own parameters.

    Args:
        model: the model being unlearned (the copy is made once; its weights follow the model's at each attack).
        texts: the attacker's tokenized texts (a :class:`~lightning_unlearn.data.TokenizedSplit`).
        collate: makes a batch of them.
        steps: Adam steps per simulated attack, k >= 1.
        learning_rate: the simulated attacker's learning rate.
        batch_size: texts per attack step, drawn at random (seeded by the seed and the optimizer step, so a resumed
            run draws what an uninterrupted one does).
        seed: the draws' seed.
        scaler: the run's gradient scaler (``16-mixed``), whose scale the inner steps start from; None: no scaling.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        texts: Any,
        collate: Any,
        steps: int,
        learning_rate: float,
        batch_size: int,
        seed: int = 0,
        scaler: Any = None,
    ) -> None:
        if steps < 1 or not learning_rate > 0:
            raise ConfigurationError(
                f"relearning needs steps >= 1 and a positive learning rate, got {steps}, {learning_rate}"
            )
        if has_sharded_parameters(model):
            raise ConfigurationError(
                "relearning-aware unlearning (adversary_steps > 0) copies the weights, and ZeRO-3 shards them: use one "
                "process or DDP, or adversary_steps=0"
            )
        self.texts, self.collate = texts, collate
        self.steps, self.learning_rate = steps, learning_rate
        self.batch_size, self.seed = min(batch_size, len(texts)), seed
        self.scaler = scaler
        shared = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
        self.copy = copy.deepcopy(model, memo={id(tensor): tensor for tensor in shared})  # frozen: one copy, shared
        self.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        self.attacked_at: int | None = None  # the optimizer step whose weights the copy was attacked from

    #: whether a record must be forgotten at the copy too (the stop rule and selection read max(g at θ, g at θ'))
    scores_copy = True

    @classmethod
    def for_module(cls, module: Any) -> RelearningAdversary:
        """The adversary of an :class:`~lightning_unlearn.UnlearningModule` with ``adversary_steps`` > 0, on its
        datamodule's relearn split (else retain split), in batches of the datamodule's batch size."""
        hp, trainer = module.hparams, module.trainer
        if "deepspeed" in type(trainer.strategy).__name__.lower():
            raise ConfigurationError(
                "relearning-aware unlearning (adversary_steps > 0) runs on one process or under DDP; it is not "
                "supported under DeepSpeed: drop the DeepSpeed strategy, or set adversary_steps=0"
            )
        datamodule = trainer.datamodule
        texts = datamodule.split(relearn_split(datamodule, "adversary_steps > 0"))
        seed = trainer.global_rank  # each process its own draws, as each has its own batches
        return cls(
            module.model,
            texts,
            datamodule.collate,
            hp.adversary_steps,
            hp.adversary_learning_rate,
            datamodule.batch_size,
            seed,
            getattr(trainer.precision_plugin, "scaler", None),
        )

    def batch(self, step: int, device: torch.device) -> dict[str, Tensor]:
        """The attacker's batch of optimizer step ``step``: ``batch_size`` texts drawn without replacement."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = torch.randperm(len(self.texts), generator=generator)[: self.batch_size].tolist()
        batch = self.collate([self.texts[row] for row in rows])
        return {key: value.to(device) for key, value in batch.items()}

    def forget_terms(
        self, model: torch.nn.Module, forget: dict[str, Tensor], g: Tensor | None, step: int
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Relearns from ``model``'s weights with step ``step``'s batch (once per step: :meth:`attack_at`), then runs
        the forget batch on θ': its logits (``Tensor[B, T, V]``), NLL (``Tensor[B]``) and g = max(``g`` at θ, g at θ')
        (None when ``g`` is)."""
        self.attack_at(model, step, forget["input_ids"].device)
        logits, head = self.logits(forget)
        nll, attacked_g = nll_and_accuracy(logits, forget["input_ids"], forget["attention_mask"], **head)
        return logits, nll, None if g is None else torch.maximum(g, attacked_g)

    def attack_at(self, model: torch.nn.Module, step: int, device: torch.device) -> torch.nn.Module:
        """The copy attacked from ``model``'s weights after ``step`` optimizer steps with that step's batch: attacked
        now, unless it already was for this step (the weights change only at an optimizer step: every micro-batch of
        an accumulated step, and the scoring after the previous step, share one attack)."""
        if self.attacked_at != step:
            self.attack(model, self.batch(step, device))
            self.attacked_at = step
        return self.copy

    def _pairs(self, model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        own, theirs = dict(model.named_parameters()), dict(self.copy.named_parameters())
        return [(own[name], theirs[name]) for name in self.trainable]

    @torch.no_grad()
    def _reset(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        copied = []
        for own, theirs in self._pairs(model):
            theirs.copy_(own)
            theirs.requires_grad_(True)
            theirs.grad = None
            copied.append(theirs)
        return copied

    def attack(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> None:
        """θ' ← θ, then ``steps`` Adam steps on the mean NLL of ``batch`` (``input_ids``, ``attention_mask``); with
        a ``scaler``, each step's loss scaled and its gradients unscaled (a step with infinite gradients skipped),
        as the run's own steps are under ``16-mixed``."""
        parameters = self._reset(model)
        optimizer = torch.optim.Adam(parameters, lr=self.learning_rate)
        scaler = None
        if self.scaler is not None:  # the run's current scale to start from, its own growth after
            scaler = torch.amp.GradScaler(batch["input_ids"].device.type, init_scale=self.scaler.get_scale())
        self.attacked_at = None
        with torch.enable_grad():
            for _ in range(self.steps):
                logits = self.copy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = sequence_nll(logits, batch["input_ids"], batch["attention_mask"]).mean()
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """``Tensor[B, T, V]`` logits of the attacked copy θ' (with grad, for :meth:`transplant`), and its output
        layer with that layer's input (:func:`~lightning_unlearn.evaluation.scoring.output_layer_input`)."""
        with output_layer_input(self.copy) as head:
            return self.copy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, head

    def transplant(self, model: torch.nn.Module, loss: Tensor) -> Tensor:
        """A loss on ``model`` whose value is ``loss`` (a scalar computed at θ') and whose gradient with respect to
        ``model``'s trainable parameters is ∇_θ' ``loss``: Σ ⟨θ, ∇_θ' loss⟩ plus a constant."""
        pairs = self._pairs(model)
        gradients = torch.autograd.grad(loss, [theirs for _, theirs in pairs], allow_unused=True)
        surrogate = sum(
            (own * gradient.to(own.dtype)).sum()
            for (own, _), gradient in zip(pairs, gradients, strict=True)
            if gradient is not None
        )
        return surrogate + (loss - surrogate).detach()


class SharpnessAdversary(RelearningAdversary):
    """Sharpness-aware unlearning (Fan et al., ICML 2025, "Towards LLM Unlearning Resilient to Relearning Attacks: A
    Sharpness-Aware Minimization Perspective"): the forget loss is taken at the worst point within a radius ρ of θ,
    θ' = θ + ρ · d/‖d‖, where d = −∇ NLL(forget batch) at θ points to relearning the batch, so that the forget
    loss is low on a neighbourhood of θ rather than at a sharp point that a few relearning steps climb out of. This is
    SAM's first-order inner step for gradient ascent's loss (ℓ_f = −NLL; for other losses the NLL's direction stands
    for theirs), applied with :meth:`~RelearningAdversary.transplant` like the relearning adversary's: one more
    forward and backward pass per step. Unlike relearning-aware unlearning, the rule reads g at θ: θ' is an
    optimizer's look-ahead, not an attacker's model.

    Args:
        model: the model being unlearned.
        rho: the radius ρ, in the L2 norm over every trainable parameter (the paper's ρ, 1e-3 to 1e-1).
        scaler: the run's gradient scaler (``16-mixed``): the direction's gradient is taken at its scale, so that
            half-precision gradients do not underflow (the direction is normalized, so the scale cancels).
    """

    def __init__(self, model: torch.nn.Module, rho: float, scaler: Any = None) -> None:
        if not rho > 0:
            raise ConfigurationError(f"sharpness-aware unlearning needs a radius rho > 0, got {rho}")
        if has_sharded_parameters(model):
            raise ConfigurationError(
                "sharpness-aware unlearning copies the weights, and ZeRO-3 shards them: use one process or DDP"
            )
        half = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.element_size() < 4})
        if half:
            raise ConfigurationError(
                f"sharpness-aware unlearning moves the weights by rho along a unit direction, and these are {half[0]}: "
                "the move rounds away for most of them, and the method would quietly be plain SGA. Train float32 "
                "weights (precision '32-true', or 'bf16-mixed', which keeps float32 weights)"
            )
        self.rho = rho
        self.scaler = scaler
        shared = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
        self.copy = copy.deepcopy(model, memo={id(tensor): tensor for tensor in shared})
        self.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        self.attacked_at = None

    scores_copy = False  # θ' is the optimizer's look-ahead, not an attacker's model

    def forget_terms(
        self, model: torch.nn.Module, forget: dict[str, Tensor], g: Tensor | None, step: int
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Moves the copy to θ' (ρ along the direction that relearns this batch), then runs the batch there: its
        logits and NLL for the loss, and ``g`` (at θ) as it is."""
        parameters = self._reset(model)
        with torch.enable_grad():
            logits = self.copy(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
            nll = sequence_nll(logits, forget["input_ids"], forget["attention_mask"]).mean()
            scale = self.scaler.get_scale() if self.scaler is not None else 1.0
            gradients = torch.autograd.grad(nll * scale, parameters, allow_unused=True)
        norm = torch.sqrt(sum((gr.float() ** 2).sum() for gr in gradients if gr is not None)).clamp_min(1e-12)
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients, strict=True):
                if gradient is not None:
                    parameter.sub_((self.rho / norm) * gradient.to(parameter.dtype))
        logits, _ = self.logits(forget)
        return logits, sequence_nll(logits, forget["input_ids"], forget["attention_mask"]), g


def adversary_for(module: Any) -> RelearningAdversary | None:
    """The adversary of an :class:`~lightning_unlearn.UnlearningModule`: relearning with ``adversary_steps`` > 0,
    the sharpness-aware look-ahead with ``sharpness`` > 0, else None."""
    if module.hparams.get("adversary_steps"):
        return RelearningAdversary.for_module(module)
    if module.hparams.get("sharpness"):
        scaler = getattr(module.trainer.precision_plugin, "scaler", None)
        return SharpnessAdversary(module.model, module.hparams.sharpness, scaler)
    return None


def check_adversary_options(owner: str, takes: bool | str, adversary_steps: int, sharpness: float) -> None:
    """A clear error for options that take the forget loss at another point and cannot be given together, or to a
    method whose ``takes_adversary`` says why it cannot take them."""
    if not sharpness >= 0:
        raise ConfigurationError(f"sharpness is a radius, >= 0, got {sharpness}")
    if sharpness and adversary_steps:
        raise ConfigurationError("adversary_steps and sharpness each take the forget loss at another point: give one")
    if (sharpness or adversary_steps) and takes is not True:
        option = "sharpness" if sharpness else "adversary_steps"
        raise ConfigurationError(f"{owner} takes no {option}: {takes}")
