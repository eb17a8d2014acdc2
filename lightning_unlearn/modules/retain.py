"""The retain term of :class:`~lightning_unlearn.modules.UnlearningModule`: how it runs within a step.

``retain_loss="nll"`` adds ``retain_weight`` · NLL(retain batch) (gradient difference); ``"kl"`` adds
``retain_weight`` · KL(p_ref ‖ p_θ), the token-level KL on the retain batch's real tokens against the model as it
was when training started (:class:`~lightning_unlearn.modules.reference.ReferenceWeights`: no second model; the KL in
chunks, with no whole-batch float32 copy); a method may bring a term of its own (RMU's activations). Each is averaged
over the retain samples of all processes. On one device the retain part runs its forward and backward after the
forget part's backward, so that the activations of the two passes are never alive together (DDP and DeepSpeed
expect one backward pass per step, so there both run in one).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor

from lightning_unlearn.callbacks.monitor import monitors_of
from lightning_unlearn.functional.losses import token_kl
from lightning_unlearn.functional.memorization import nll_and_accuracy, sequence_nll
from lightning_unlearn.modules.reference import ReferenceLogitsCache
from lightning_unlearn.modules.step import ForwardOutput, check_finite
from lightning_unlearn.utilities.errors import ConfigurationError

if TYPE_CHECKING:
    from lightning_unlearn.modules.base import UnlearningModule

#: the retain terms of every method: none, NLL, KL to the model before unlearning
RETAIN_LOSSES = (None, "nll", "kl")


class RetainTerm:
    """One module's retain term: which (``kind``), its weight α, the KL reference's cache, and the part of a step
    that runs after the forget part's backward.

    Args:
        kind: ``None``, ``"nll"``, ``"kl"`` or a method's own (RMU's ``"activations"``).
        weight: α >= 0.
        cache_reference: for ``"kl"``, keep each retain sample's reference logits on the CPU after its first step
            (:class:`~lightning_unlearn.modules.reference.ReferenceLogitsCache`).
        builtin: the loss is the base class's ``retain_loss`` (not a method's own).
    """

    def __init__(self, kind: str | None, weight: float, cache_reference: bool = False, builtin: bool = True) -> None:
        if not weight >= 0:
            raise ConfigurationError(f"retain_weight must be >= 0, got {weight}")
        self.kind, self.weight, self.cache_reference, self.builtin = kind, weight, cache_reference, builtin
        self.cache = ReferenceLogitsCache()
        self.deferred: tuple[dict[str, Tensor], float] | None = None  # the retain part, run in backward
        self.metrics: dict[str, Tensor] = {}  # the deferred part's, logged before the optimizer step

    @staticmethod
    def check(owner: str, kind: str | None, kinds: tuple[str | None, ...]) -> None:
        """A clear error unless ``kind`` is one of the method's retain terms ``kinds``."""
        if kind is not None and kinds == (None,):
            raise ConfigurationError(f"{owner} takes no retain_loss (got {kind!r}): use a method that takes one")
        if kind not in kinds:
            choices = ", ".join(repr(each) for each in kinds)
            raise ConfigurationError(f"{owner}'s retain_loss must be one of {choices}, got {kind!r}")

    def check_datamodule(self, owner: str, datamodule: Any) -> None:
        """A clear error when the term needs the datamodule's retain split and it has none."""
        if self.kind is not None and not datamodule.has_split("retain"):
            raise ConfigurationError(
                f"{owner} trains on the retain split too (retain_loss={self.kind!r}): give the datamodule one"
            )

    def batch(self, module: UnlearningModule, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor] | None:
        """The step's retain batch (None without a retain term), with what the loss needs besides the model's output
        (``retain_inputs``, before any forward pass whose graph a
        backward pass will use: the reference's weights are swapped in place), unless its part runs in the backward
        (:func:`backward_per_part`)."""
        if self.kind is None:
            return None
        if "retain" not in batch:
            raise ConfigurationError(
                f"retain_loss={self.kind!r} needs training batches with a 'retain' batch: give the "
                "UnlearningDataModule a retain split"
            )
        return batch["retain"] if backward_per_part(module) else module.retain_inputs(batch["retain"])

    def inputs(self, module: Any, retain: dict[str, Tensor]) -> dict[str, Tensor]:
        """The built-in terms' inputs: for ``"kl"``, the reference's logits (``retain["reference_logits"]``)."""
        if self.kind != "kl":
            return retain
        return {**retain, "reference_logits": self.reference_logits(module, retain)}

    def loss(self, module: Any, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        """The built-in terms' per-sample loss (``Tensor[B]``): the mean token NLL ``nll`` for ``"nll"``, the mean
        token KL(p_ref ‖ p_θ) for ``"kl"``."""
        if self.kind == "nll":
            return nll
        if self.kind == "kl":
            return token_kl(output.logits, batch["reference_logits"], batch["attention_mask"])
        raise NotImplementedError(f"{type(module).__name__} must define retain_loss() for {self.kind!r}")

    def add(
        self,
        module: UnlearningModule,
        retain: dict[str, Tensor],
        scale: float,
        loss: Tensor,
        metrics: dict[str, Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The step's ``loss`` and ``metrics`` with the retain part's added, or as they are with the part deferred to
        the backward (:meth:`run_deferred`)."""
        if backward_per_part(module):
            self.deferred = (retain, scale)
            return loss, metrics
        part, retain_metrics = self.part(module, retain, scale, module.steps.current.retain_count)
        return loss + part, metrics | retain_metrics

    def reference_logits(self, module: UnlearningModule, retain: dict[str, Tensor]) -> Tensor:
        """The reference's logits (``Tensor[B, T, V]``) on a retain batch, from the cache with ``cache_reference``."""
        if module.reference is None:
            raise RuntimeError("the reference weights are taken at train start: call super().on_train_start()")
        if not self.cache_reference:
            return module.reference.logits(module.get_model(), retain)
        any_missing = partial(module.trainer.strategy.reduce_boolean_decision, all=False)
        return self.cache.logits(module.reference, module.get_model(), retain, any_missing)

    def part(
        self, module: UnlearningModule, retain: dict[str, Tensor], scale: float, count: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The retain term's share of the step's loss (``scale`` · α · Σ loss / ``count``, normalized like the forget
        term's) and its metrics; the retain forward scores its batch for the retain monitors for free."""
        output = module.model_forward(retain)
        # The built-in KL term does not use the NLL: taken without a graph, whose saved softmax would be alive at
        # the KL's peak.
        kl_only = self.kind == "kl" and self.builtin
        scored = output.logits.detach() if kl_only else output.logits
        monitors = monitors_of(module.trainer, "retain")
        if monitors:
            nll, g = nll_and_accuracy(scored, retain["input_ids"], retain["attention_mask"], **output.head)
            for monitor in monitors:
                monitor.record(module.trainer, module, retain["sample_id"], g)
        else:
            nll = sequence_nll(scored, retain["input_ids"], retain["attention_mask"])
        term = module.retain_loss(retain, output, nll)
        part = scale * self.weight * term.sum() / count
        return part, {"train/retain_nll": nll.detach().mean(), "train/retain_loss": term.detach().mean()}

    def run_deferred(self, module: UnlearningModule, backward: Callable[[Tensor], None]) -> None:
        """After the forget part's backward: the deferred retain part's forward (under the precision plugin's
        autocast, as ``training_step`` runs) and ``backward``, scaled as Lightning scaled the forget part's (gradient
        accumulation, a mixed-precision loss scaler). Nothing when no part is deferred."""
        if self.deferred is None:
            return
        (retain, scale), self.deferred = self.deferred, None
        trainer = module.trainer
        with trainer.precision_plugin.forward_context():
            retain = module.retain_inputs(retain)
            part, self.metrics = self.part(module, retain, scale, module.steps.current.retain_count)
        check_finite(part, module.global_step)
        part = part / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        backward(scaler.scale(part) if scaler is not None else part)


def backward_per_part(module: UnlearningModule) -> bool:
    """Whether the retain part runs its own forward and backward after the forget part's backward, so that the
    activations of the two passes are never alive together: on one device, where a step may take two backward
    passes (DDP and DeepSpeed reduce gradients during the one backward pass they expect)."""
    return isinstance(module.trainer.strategy, SingleDeviceStrategy) and module.automatic_optimization
