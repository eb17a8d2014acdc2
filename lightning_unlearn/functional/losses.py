"""Per-sample unlearning losses (``Tensor[B]``, to minimize), importable on their own: gradient ascent and descent,
NPO, SimNPO, the token-weighted ascents WGA and SatImp, the soft-target cross-entropies UNDIAL and CE-U, RMU's
activation distance, and the token-level KL to a reference.

Each returns a ``Tensor[B]`` to *minimize*; the modules weight and average them (see
:class:`~lightning_unlearn.UnlearningModule`). Log-likelihoods are in nats; padding never counts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_unlearn.functional.memorization import (
    IGNORE_INDEX,
    chunk_rows,
    next_token_targets,
    predicted_positions,
    sequence_nll,
    token_nll,
)
from lightning_unlearn.utilities.errors import ConfigurationError


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
        raise ConfigurationError(f"beta must be > 0, got {beta}")
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
        raise ConfigurationError(f"beta must be > 0, got {beta}")
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - delta))


def token_kl(logits: Tensor, reference_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean token-level KL(p_ref ‖ p_θ) of each sample (nats, ``Tensor[B]``), over the positions that predict a
    real token (t = 1..L−1, as :func:`~lightning_unlearn.functional.memorization.sequence_nll`); padding never counts.

    KL at a position = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v)), with p = softmax of the logits there.

    Args:
        logits: ``Tensor[B, T, V]`` of the model being trained.
        reference_logits: ``Tensor[B, T, V]`` of the reference (the model before unlearning) on the same batch.
        attention_mask: ``Tensor[B, T]``, 1 on real tokens (right-padded).
    """
    return _soft_target_loss(logits, reference_logits, attention_mask, cross_entropy=False)


def undial_loss(
    logits: Tensor, reference_logits: Tensor, input_ids: Tensor, attention_mask: Tensor, beta: float = 10.0
) -> Tensor:
    """UNDIAL (Dong et al. 2025, eq. 2–3): the cross-entropy of p_θ against softmax(z_ref − β · onehot(x_t)), the
    original model's logits with each target token's logit lowered by β; mean over each sample's predicted
    positions (nats, ``Tensor[B]``). The authors average over the batch's tokens; here each sample's mean is
    weighted by the per-sample weights.

    Args:
        logits: ``Tensor[B, T, V]`` of the model being trained.
        reference_logits: ``Tensor[B, T, V]`` of the original model on the same batch (no gradient).
        input_ids, attention_mask: ``Tensor[B, T]`` (right-padded).
        beta: β >= 0, the logit adjustment (the paper and open-unlearning: 10).

    Example:
        >>> import torch
        >>> z = torch.zeros(1, 2, 2)  # two positions, two tokens; the target of position 0 is token 1
        >>> undial_loss(z, z, torch.tensor([[0, 1]]), torch.ones(1, 2), beta=float("inf"))  # −log ½
        tensor([0.6931])
    """
    if not beta >= 0:
        raise ConfigurationError(f"beta must be >= 0, got {beta}")
    targets = next_token_targets(input_ids, attention_mask)
    return _soft_target_loss(logits, reference_logits, attention_mask, targets=targets, shift=beta)


def ce_u_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """CE-U (Yang 2025, eq. 3): the cross-entropy of p_θ against the model's own distribution with the target
    token's logit set to −∞ (detached: q = softmax(stop_grad(z) masked at x_t)); mean over each sample's predicted
    positions (nats, ``Tensor[B]``). Its gradient on the logits is p_θ − q: the target token's probability is
    pushed to 0 and the rest keep their relative sizes, so it does not diverge as gradient ascent does. The
    authors' QA setting skips each answer's first token; on whole records every predicted position counts.

    Example:
        >>> import torch
        >>> z = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # target token 1: q puts all mass on token 0
        >>> ce_u_loss(z, torch.tensor([[0, 1]]), torch.ones(1, 2))  # −log p(0) = log 2
        tensor([0.6931])
    """
    targets = next_token_targets(input_ids, attention_mask)
    return _soft_target_loss(logits, logits, attention_mask, targets=targets, shift=float("inf"))


def token_weighted_ascent_loss(nll: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """−Σ_t w_t · NLL_t / (predicted positions) per sample (``Tensor[B]``): gradient ascent with each token's NLL
    weighted by ``weights`` (``Tensor[B, T]``, no gradient), over the positions whose ``targets`` count."""
    counted = (targets != IGNORE_INDEX).to(nll.dtype)
    return -(weights.detach() * nll * counted).sum(1) / counted.sum(1)


def hit_token_ascent_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Gradient ascent on the tokens the model still predicts: −Σ_t 1[argmax p(· | x_<t) = x_t] · NLL_t / (predicted
    positions) per sample (``Tensor[B]``). The tokens g counts (teacher-forced hits) are pushed until they are no
    longer the argmax; the tokens already missed are left where they are, so a record's NLL rises no further than
    bringing its g down takes. On a pretrained LM the whole-sequence NLL rises far faster than g falls, and ascending
    it pushes records far below unseen text (SmolLM2-135M: LOSS AUC 0.18, docs/benchmarks.md); this does not.

    Example:
        >>> import torch
        >>> z = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])  # predicts token 0 at every position
        >>> hit_token_ascent_loss(z, torch.tensor([[0, 0, 1]]), torch.ones(1, 3))  # only x_1 = 0 is a hit
        tensor([-0.0635])
    """
    targets = next_token_targets(input_ids, attention_mask)
    nll, predicted = token_nll(logits, targets, argmax=True)
    return token_weighted_ascent_loss(nll, targets, (predicted == targets).to(nll.dtype))


def wga_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor, beta: float = 1.0) -> Tensor:
    """WGA (Wang et al. 2025, "Rethinking LLM Unlearning Objectives", weighted GA): −mean_t p_θ(x_t | x_<t)^β ·
    NLL_t per sample (``Tensor[B]``), the weight p^β taken without gradient, as the authors' code does. Tokens the
    model already finds unlikely weigh little, so ascent stops pushing on what is forgotten.

    Args:
        beta: β >= 0 (open-unlearning: 1); β = 0 is gradient ascent.

    Example:
        >>> import torch
        >>> z = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # p = ½ on the one predicted token
        >>> wga_loss(z, torch.tensor([[0, 1]]), torch.ones(1, 2), beta=1.0)  # −½ · log 2
        tensor([-0.3466])
    """
    if not beta >= 0:
        raise ConfigurationError(f"beta must be >= 0, got {beta}")
    targets = next_token_targets(input_ids, attention_mask)
    nll = token_nll(logits, targets)[0]
    return token_weighted_ascent_loss(nll, targets, torch.exp(-nll.detach()) ** beta)


def satimp_loss(
    logits: Tensor, input_ids: Tensor, attention_mask: Tensor, beta1: float = 5.0, beta2: float = 1.0
) -> Tensor:
    """SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning"): gradient
    ascent with each token weighted by saturation and importance, w_t = p_t^β1 · (1 − p_t)^β2 (no gradient), p_t =
    p_θ(x_t | x_<t): −mean_t w_t · NLL_t per sample (``Tensor[B]``), as the authors' code (open-unlearning's
    ``compute_satimp_loss``) computes it.

    Args:
        beta1, beta2: the exponents (the authors: 5 and 1).

    Example:
        >>> import torch
        >>> z = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # p = ½: w = ½^5 · ½
        >>> satimp_loss(z, torch.tensor([[0, 1]]), torch.ones(1, 2))
        tensor([-0.0108])
    """
    if not (beta1 >= 0 and beta2 >= 0):
        raise ConfigurationError(f"beta1 and beta2 must be >= 0, got {beta1} and {beta2}")
    targets = next_token_targets(input_ids, attention_mask)
    nll = token_nll(logits, targets)[0]
    p = torch.exp(-nll.detach())
    return token_weighted_ascent_loss(nll, targets, p**beta1 * (1 - p) ** beta2)


def rmu_loss(activations: Tensor, target: Tensor, attention_mask: Tensor) -> Tensor:
    """RMU's distance (Li et al. 2024, "The WMDP Benchmark", eq. 1–2): per sample, the mean over its real tokens of
    the mean squared difference between ``activations`` (``Tensor[B, T, D]``) and ``target`` (``Tensor[D]`` or
    ``Tensor[B, T, D]``), as the authors' code (``mse_loss``: ‖·‖² divided by D) computes it; ``Tensor[B]``,
    float32 or wider.

    Example:
        >>> import torch
        >>> rmu_loss(torch.ones(1, 2, 4), torch.zeros(4), torch.tensor([[1, 0]]))  # padding does not count
        tensor([1.])
    """
    dtype = torch.promote_types(activations.dtype, torch.float32)
    squared = (activations.to(dtype) - target.to(dtype)).square().mean(-1)
    counted = attention_mask.to(dtype)
    return (squared * counted).sum(1) / counted.sum(1)


def _soft_target_loss(
    logits: Tensor,
    teacher_logits: Tensor,
    attention_mask: Tensor,
    targets: Tensor | None = None,
    shift: float = 0.0,
    cross_entropy: bool = True,
) -> Tensor:
    """Per sample (``Tensor[B]``), the mean over predicted positions of the cross-entropy (or, with
    ``cross_entropy=False``, the KL) of p_θ = softmax(logits) against q = softmax(teacher_logits − shift ·
    onehot(targets)), q without gradient; ``targets`` aligned with the logits (:func:`next_token_targets`)."""
    batch, width, vocabulary = logits.shape
    rows = chunk_rows(vocabulary, logits.device, temporaries=4)  # its two float32 temporaries: half the budget
    flat_targets = targets.reshape(-1) if targets is not None else None
    flat = (logits.reshape(-1, vocabulary), teacher_logits.detach().reshape(-1, vocabulary))
    loss = _ChunkedSoftTarget.apply(*flat, flat_targets, shift, rows, cross_entropy)
    loss = loss.view(batch, width)[:, :-1]  # the last position predicts nothing
    counted = predicted_positions(attention_mask).to(loss.dtype)
    return (loss * counted).sum(1) / counted.sum(1)


def _teacher(teacher: Tensor, targets: Tensor | None, shift: float, dtype: torch.dtype) -> Tensor:
    """The teacher's logits of a chunk in ``dtype``, each target token's lowered by ``shift`` (ignored rows too:
    they never count)."""
    if targets is None or not shift:
        return teacher.to(dtype)
    teacher = teacher.to(dtype, copy=True)
    index = targets.clamp_min(0)[:, None]
    return teacher.scatter_(-1, index, teacher.gather(-1, index) - shift)


class _ChunkedSoftTarget(torch.autograd.Function):
    """Per row of ``Tensor[N, V]`` logits (``Tensor[N]``, at least float32), the cross-entropy −Σ_v q(v) log p_θ(v)
    or the KL Σ_v q(v) (log q(v) − log p_θ(v)) against the teacher's q (see :func:`_soft_target_loss`), ``rows``
    at a time: no whole-batch float32 copy or log-softmax is kept, forward or backward (which recomputes each
    chunk's softmaxes: both have the gradient p_θ − q on the logits). Only the logits, the teacher's and the
    targets are kept for backward; the gradient is written in the logits' dtype."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        teacher: Tensor,
        targets: Tensor | None,
        shift: float,
        rows: int,
        cross_entropy: bool,
    ) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)  # at least float32; float64 stays float64
        loss = torch.empty(len(logits), dtype=dtype, device=logits.device)
        for start in range(0, len(logits), rows):
            chunk = slice(start, start + rows)
            difference = F.log_softmax(logits[chunk].to(dtype), dim=-1).neg_()  # −log p_θ
            log_q = F.log_softmax(_teacher(teacher[chunk], _rows(targets, chunk), shift, dtype), dim=-1)
            if not cross_entropy:
                difference += log_q  # log q − log p_θ
            loss[chunk] = (difference * log_q.exp_()).sum(-1)
        ctx.save_for_backward(logits, teacher, targets)
        ctx.rows, ctx.dtype, ctx.shift = rows, dtype, shift
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        logits, teacher, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, len(logits), ctx.rows):
            chunk = slice(start, start + ctx.rows)
            difference = logits[chunk].to(ctx.dtype).softmax(-1)
            difference -= _teacher(teacher[chunk], _rows(targets, chunk), ctx.shift, ctx.dtype).softmax(-1)
            grad[chunk] = difference.mul_(grad_loss[chunk, None].nan_to_num())  # ignored rows: 0, even under a NaN
        return grad, None, None, None, None, None


def _rows(targets: Tensor | None, chunk: slice) -> Tensor | None:
    return targets[chunk] if targets is not None else None
