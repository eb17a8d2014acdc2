"""What one optimizer step of :class:`~lightning_unlearn.modules.UnlearningModule` passes between its parts: the
model's forward output, typed, and the step's decisions, made at its first micro-batch."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_unlearn.callbacks.control import hand_off_scores
from lightning_unlearn.callbacks.monitor import monitors_of
from lightning_unlearn.functional.memorization import nll_and_accuracy, sequence_nll

if TYPE_CHECKING:
    from lightning_unlearn.modules.base import UnlearningModule


def check_finite(loss: Tensor, step: int) -> None:
    """Raises a clear error on a NaN or infinite loss."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at step {step}: lower the learning rate or check the data"
        )


@dataclass
class ForwardOutput:
    """The model's forward pass on a batch, as ``model_forward`` returns it and a
    method's ``forget_loss`` and ``retain_loss`` receive it.

    Attributes:
        logits: ``Tensor[B, T, V]``, at the model's own precision (half precision under mixed precision).
        head: the output layer and its input (:func:`~lightning_unlearn.evaluation.scoring.output_layer_input`), with
            which :func:`~lightning_unlearn.functional.memorization.nll_and_accuracy` re-checks near ties in float32.
        activations: ``Tensor[B, T, D]``, a hidden layer's output, for a method whose ``model_forward`` captures one
            (RMU's steered layer); None otherwise.
    """

    logits: Tensor
    head: dict[str, Any] = field(default_factory=dict)
    activations: Tensor | None = None


@dataclass
class StepState:
    """An optimizer step's decisions, made at its first micro-batch and read by every micro-batch of the step.

    Attributes:
        rule_holds: the stop rule holds for the weights the step starts from: a zero loss and no optimizer step.
        forget_weight: the step's forget weights summed over every process and micro-batch (> 0): the forget term's
            normalizer, so that the step is the weighted mean over one big batch.
        retain_count: the step's retain samples counted the same way (read only with a retain term).
    """

    rule_holds: bool = False
    forget_weight: Tensor = field(default_factory=lambda: torch.ones(()))
    retain_count: Tensor = field(default_factory=lambda: torch.ones(()))


class ForgetWeights:
    """Each forget record's weight in the forget term, by ``sample_id`` (1 for a record never weighted): what the
    per-sample selection (:class:`~lightning_unlearn.callbacks.SelectiveAscent`) sets, kept in float32 on the CPU."""

    def __init__(self) -> None:
        self.values = torch.ones(0, dtype=torch.float32)  # Tensor[N]: none held until reserve or set

    def reserve(self, count: int) -> None:
        """``count`` records of weight 1 when no weight is held yet (a resumed run keeps its own)."""
        if len(self.values) == 0:
            self.values = torch.ones(count, dtype=torch.float32)

    def set(self, sample_id: Tensor, weights: Tensor) -> None:
        """Sets the weights (``Tensor[B]``, >= 0) of records ``sample_id`` (``Tensor[B]``)."""
        sample_id = sample_id.cpu()
        if len(sample_id) and int(sample_id.max()) >= len(self.values):
            grown = torch.ones(int(sample_id.max()) + 1, dtype=torch.float32)
            grown[: len(self.values)] = self.values
            self.values = grown
        self.values[sample_id] = weights.detach().float().cpu()

    def of(self, sample_id: Tensor) -> Tensor:
        """``Tensor[B]`` float32 weights of records ``sample_id``, on its device (float32 under bf16-true too)."""
        ids = sample_id.cpu()
        known = ids < len(self.values)
        weights = torch.ones(len(ids), dtype=torch.float32)
        weights[known] = self.values[ids[known]]
        return weights.to(sample_id.device)


class Steps:
    """A module's optimizer steps: the current step's :class:`StepState`, made at its first micro-batch from the stop
    rule and the selection (the fresh g handed to the callbacks:
    :func:`~lightning_unlearn.callbacks.hand_off_scores`) and the normalizers of one big batch."""

    def __init__(self) -> None:
        self.current = StepState()
        self.warned = False  # the warning about accumulation without the step's sample ids, given once

    def start(
        self,
        module: UnlearningModule,
        sample_id: Tensor,
        g: Tensor | None,
        window_ids: Tensor | None,
        retain: dict[str, Tensor] | None,
    ) -> StepState:
        """The state of the step whose first micro-batch holds forget records ``sample_id`` (``Tensor[B]``, with g
        ``Tensor[B]`` when a monitor takes it) and ``retain``: over the step's records (``window_ids``, every
        micro-batch's; this micro-batch alone without them) and every process."""
        trainer = module.trainer
        if window_ids is None and trainer.accumulate_grad_batches > 1 and not self.warned:
            self.warned = True
            rank_zero_warn(
                "gradient accumulation without UnlearningDataModule's loader: per-sample selection and normalization "
                "are per micro-batch, not per optimizer step"
            )
        if g is not None and hand_off_scores(trainer, module, sample_id, g, window_ids):
            self.current = StepState(rule_holds=True)
            return self.current
        if g is not None:
            module.on_forget_scores()
        step_ids = sample_id if window_ids is None else window_ids
        forget_weight = global_sum(trainer, module.forget_weights.of(step_ids).sum()).clamp_min(1e-12)
        self.current = StepState(forget_weight=forget_weight)
        if retain is not None:
            step_retain = retain.get("window_ids", retain["sample_id"])  # window_ids come with the forget split's
            size = torch.tensor(float(len(step_retain)), dtype=torch.float32, device=sample_id.device)
            self.current.retain_count = global_sum(trainer, size)
        return self.current


def global_sum(trainer: L.Trainer, value: Tensor) -> Tensor:
    """``value`` summed over every process (detached)."""
    return trainer.strategy.reduce(value.detach(), reduce_op="sum") if trainer.world_size > 1 else value


def forget_forward(module: UnlearningModule, forget: dict[str, Tensor]) -> tuple[ForwardOutput, Tensor, Tensor | None]:
    """The forget batch's forward output (``model_forward``), NLL (``Tensor[B]``) and g (``Tensor[B]``; None when no
    monitor takes it). With an adversary the loss is taken at its copy: the model's own pass only scores g and keeps
    no graph, so that one activation graph (the copy's) is alive at the step's peak."""
    with torch.no_grad() if module.adversary is not None else nullcontext():
        output = module.model_forward(forget)
    ids, mask = forget["input_ids"], forget["attention_mask"]
    if module.scores_in_training_step() and monitors_of(module.trainer, "forget"):
        nll, g = nll_and_accuracy(output.logits, ids, mask, **output.head)
    else:
        nll, g = sequence_nll(output.logits, ids, mask), None
    if module.adversary is not None:  # the forget loss and g as a relearning attacker will have them
        logits, nll, g = module.adversary.forget_terms(module.get_model(), forget, g, module.global_step)
        output = ForwardOutput(logits)
    return output, nll, g
