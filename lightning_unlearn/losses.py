"""Per-sample unlearning losses (``Tensor[B]``, to minimize), importable on their own: gradient ascent and descent,
NPO, SimNPO, and the token-level KL to a reference.

Each returns a ``Tensor[B]`` to *minimize*; the modules weight and average them (see
:class:`~lightning_unlearn.UnlearningModule`). Log-likelihoods are in nats; padding never counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_unlearn.memorization import CHUNK_ELEMENTS, predicted_positions, sequence_nll


def gradient_ascent_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """−NLL per sample (mean over its tokens): minimizing it ascends the likelihood's negative (Jang et al.)."""
    return -sequence_nll(logits, input_ids, attention_mask)


def gradient_descent_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """NLL per sample (mean over its tokens): ordinary fine-tuning."""
    return sequence_nll(logits, input_ids, attention_mask)


def npo_loss(log_likelihood: Tensor, reference_log_likelihood: Tensor, beta: float = 0.1) -> Tensor:
    """NPO (Zhang et al. 2024): (2/β) · log(1 + (π_θ(x) / π_ref(x))^β) per sample, ``Tensor[B]``.

    Computed as (2/β) · softplus(β · (log π_θ(x) − log π_ref(x))), which is exact and never overflows. Its gradient
    is that of gradient ascent on −log π_θ scaled by 2σ(β·(log π_θ − log π_ref)): it fades as a sample falls below
    its reference likelihood, which is what keeps NPO from collapsing as fast as GA.

    Args:
        log_likelihood: log π_θ(x), sequence log-likelihood under the model being unlearned (``Tensor[B]``).
        reference_log_likelihood: log π_ref(x), under the model before unlearning (``Tensor[B]``).
        beta: β > 0 (the paper: 0.1).

    Example:
        >>> import torch
        >>> npo_loss(torch.tensor([-10.0]), torch.tensor([-10.0]), beta=0.1)  # (2/β) · log 2 at the start
        tensor([13.8629])
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return (2.0 / beta) * F.softplus(beta * (log_likelihood - reference_log_likelihood))


def simnpo_loss(nll: Tensor, beta: float = 4.5, delta: float = 0.0) -> Tensor:
    """SimNPO (Fan et al. 2024): −(2/β) · log σ(β · (NLL_mean(x) − δ)) per sample, ``Tensor[B]``; reference-free
    and length-normalized.

    Args:
        nll: each sample's mean token NLL (nats per token, ``Tensor[B]``).
        beta: β > 0 (the paper: 4.5).
        delta: δ, the reward margin (nats per token, default 0).

    Example:
        >>> import torch
        >>> simnpo_loss(torch.tensor([0.0]), beta=2.0)  # −log σ(0) = log 2
        tensor([0.6931])
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - delta))


def token_kl(logits: Tensor, reference_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean token-level KL(p_ref ‖ p_θ) of each sample (nats, ``Tensor[B]``), over the positions that predict a
    real token (t = 1..L−1, as :func:`~lightning_unlearn.memorization.sequence_nll`); padding never counts.

    KL at a position = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v)), with p = softmax of the logits there.

    Args:
        logits: ``Tensor[B, T, V]`` of the model being trained.
        reference_logits: ``Tensor[B, T, V]`` of the reference (the model before unlearning) on the same batch.
        attention_mask: ``Tensor[B, T]``, 1 on real tokens (right-padded).
    """
    batch, width, vocabulary = logits.shape
    rows = max(1, CHUNK_ELEMENTS // 4 // vocabulary)  # two float32 temporaries per chunk: 32 MB at most
    kl = _ChunkedKL.apply(logits.reshape(-1, vocabulary), reference_logits.reshape(-1, vocabulary), rows)
    kl = kl.view(batch, width)[:, :-1]  # the last position predicts nothing
    counted = predicted_positions(attention_mask).to(kl.dtype)
    return (kl * counted).sum(1) / counted.sum(1)


class _ChunkedKL(torch.autograd.Function):
    """KL(softmax(reference) ‖ softmax(logits)) of each row (``Tensor[N]``, at least float32) of ``Tensor[N, V]``
    logits, ``rows`` at a time: no whole-batch float32 copy or log-softmax is kept, forward or backward (which
    recomputes each chunk's softmaxes: d KL / d logits = softmax(logits) − softmax(reference)). Only the logits
    themselves are kept for backward; the gradient is written in their dtype."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: Tensor, reference: Tensor, rows: int) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)  # at least float32; float64 stays float64
        kl = torch.empty(len(logits), dtype=dtype, device=logits.device)
        for start in range(0, len(logits), rows):
            chunk = slice(start, start + rows)
            difference = F.log_softmax(logits[chunk].to(dtype), dim=-1).neg_()
            log_ref = F.log_softmax(reference[chunk].to(dtype), dim=-1)
            difference += log_ref  # log p_ref − log p_θ
            kl[chunk] = (difference * log_ref.exp_()).sum(-1)
        ctx.save_for_backward(logits, reference)
        ctx.rows, ctx.dtype = rows, dtype
        return kl

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_kl: Tensor) -> tuple[Tensor, None, None]:
        logits, reference = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, len(logits), ctx.rows):
            chunk = slice(start, start + ctx.rows)
            difference = logits[chunk].to(ctx.dtype).softmax(-1)
            difference -= reference[chunk].to(ctx.dtype).softmax(-1)
            grad[chunk] = difference.mul_(grad_kl[chunk, None].nan_to_num())  # ignored rows: 0, even under a NaN
        return grad, None, None
