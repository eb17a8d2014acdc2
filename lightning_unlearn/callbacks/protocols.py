"""What the memorization callbacks ask of a LightningModule beyond a Hugging Face causal LM (``model`` or
``get_model()``): nothing, or, to save the scoring passes, that it hands them the g of its own training forward."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class ScoresInTrainingStep(Protocol):
    """A LightningModule that scores each forget batch in its own training forward and hands the scores to the
    callbacks itself, with :func:`~lightning_unlearn.callbacks.hand_off_scores` (every
    :class:`~lightning_unlearn.UnlearningModule` does).

    The callbacks then take their per-step decisions (the selection's weights, the stop rule) inside its training
    step from those very scores, and run no scoring pass for the batch. A module that is not one gets them before
    its step instead: :class:`~lightning_unlearn.callbacks.SelectiveAscent` puts the step's weights in
    ``batch["forget"]["weight"]`` from the scores of the monitor's own passes.
    """

    def scores_in_training_step(self) -> bool:
        """Whether this step's training forward scores the weights the monitor watches (task arithmetic's does not:
        the monitor watches its edit)."""
        ...

    def set_forget_weights(self, sample_id: Tensor, weights: Tensor) -> None:
        """Takes the selection's weights (``Tensor[B]``, float32, >= 0) of forget records ``sample_id``
        (``Tensor[B]``, every process's) for the step it is taking."""
        ...
