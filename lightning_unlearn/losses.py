"""Per-sample unlearning losses (``Tensor[B]``, to minimize), importable on their own."""

from __future__ import annotations

from torch import Tensor

from lightning_unlearn.memorization import sequence_nll


def gradient_ascent_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """−NLL per sample (mean over its tokens): minimizing it ascends the likelihood's negative (Jang et al.)."""
    return -sequence_nll(logits, input_ids, attention_mask)


def gradient_descent_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """NLL per sample (mean over its tokens): ordinary fine-tuning."""
    return sequence_nll(logits, input_ids, attention_mask)
