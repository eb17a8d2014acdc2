"""The extension contract of :class:`~lightning_unlearn.modules.UnlearningModule`: what a method overrides.

A method is one small class over ``UnlearningModule`` that overrides some of these hooks and class attributes, and
Lightning's own hooks (``configure_model``, ``configure_callbacks``, ``on_train_start``, ``on_train_end``,
``on_save_checkpoint``/``on_load_checkpoint``) calling ``super()``; nothing private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_unlearn.evaluation.scoring import output_layer_input
from lightning_unlearn.modules.retain import RETAIN_LOSSES
from lightning_unlearn.modules.step import ForwardOutput

if TYPE_CHECKING:
    from lightning_unlearn.modules.retain import RetainTerm


class UnlearningHooks:
    """The hooks and class attributes a method may override, with their defaults.

    - :meth:`forget_loss` (required): each forget record's loss to minimize, ``Tensor[B]``;
    - :meth:`model_forward`: the forward pass, as a :class:`~lightning_unlearn.modules.step.ForwardOutput` (RMU adds
      a hidden layer's activations);
    - :meth:`retain_loss` with :attr:`retain_losses`, and :meth:`retain_inputs`: a retain term of its own;
    - :meth:`forget_inputs` with :attr:`forget_uses_reference`: what the forget loss needs computed before the
      training forward (UNDIAL's reference logits);
    - :meth:`on_forget_scores`: after the step's scores went to the callbacks, before the loss (TAU's switch);
    - :meth:`scores_in_training_step`: ``False`` when the training forward does not score what the monitor watches
      (task arithmetic scores its edit);
    - :attr:`takes_adversary`: why the forget loss cannot be taken at another point, when it cannot.
    """

    #: the retain terms this method takes (``retain_loss=``)
    retain_losses: tuple[str | None, ...] = RETAIN_LOSSES
    #: forget_inputs needs the model as it was before unlearning (``self.reference``)
    forget_uses_reference: bool = False
    #: True when ``adversary_steps`` and ``sharpness`` apply; else the reason they do not (the error's message)
    takes_adversary: bool | str = True

    model: Any
    retain_term: RetainTerm

    def model_forward(self, batch: dict[str, Tensor]) -> ForwardOutput:
        """The model's forward pass on a batch (``input_ids``, ``attention_mask``: ``Tensor[B, T]``): its logits at
        the model's own precision, and the output layer with its input for re-checking near ties."""
        with output_layer_input(self.model) as head:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return ForwardOutput(logits, head)

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        """Each forget sample's loss to minimize (``Tensor[B]``), from the batch (with :meth:`forget_inputs`), the
        forward's output and ``nll``, each sample's mean token NLL (``Tensor[B]``, nats per token)."""
        raise NotImplementedError(f"{type(self).__name__} must define forget_loss()")

    def forget_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The forget batch with what :meth:`forget_loss` needs besides the model's output, computed before the
        training forward pass (a reference pass swaps the weights in place; see :attr:`forget_uses_reference`)."""
        return batch

    def retain_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        """Each retain sample's loss to minimize (``Tensor[B]``), weighted by ``retain_weight``: its mean token NLL
        for ``retain_loss="nll"``, its mean token KL(p_ref ‖ p_θ) for ``"kl"``
        (:class:`~lightning_unlearn.modules.retain.RetainTerm`)."""
        return self.retain_term.loss(self, batch, output, nll)

    def retain_inputs(self, retain: dict[str, Tensor]) -> dict[str, Tensor]:
        """The retain batch with what :meth:`retain_loss` needs besides the model's output, computed before any
        forward pass whose graph a backward pass will use: for a KL term, the reference's logits."""
        return self.retain_term.inputs(self, retain)

    def on_forget_scores(self) -> None:
        """In the training step: the step's forget scores have gone to the callbacks, the stop rule does not hold and
        the selection's weights are set; the forget loss is taken next (TAU switches phase here)."""

    def scores_in_training_step(self) -> bool:
        """Whether the training forward's g is the g the monitors watch (not for task arithmetic, which scores its
        edit): :class:`~lightning_unlearn.callbacks.ScoresInTrainingStep`."""
        return True
