"""Per-sample memorization from a forward pass's logits: pure functions on tensors.

Every function takes a right-padded batch: ``input_ids`` and ``attention_mask`` are ``Tensor[B, T]`` and a
sample's real tokens x_0 … x_{L-1} are those where the mask is 1 (L is its own length). Padding never counts.
Nothing here runs a model or a collective: :mod:`lightning_unlearn.evaluation.scoring` runs models (greedy
extraction, every record of a loader, on every process). ``tests/functional/test_memorization.py`` checks every
function against its formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

#: The exact float32 logits of chosen tokens at chosen positions: (head_input Tensor[R, H], tokens LongTensor[R, C])
#: -> Tensor[R, C]. :func:`lightning_unlearn.evaluation.scoring.output_layer_input` gives one for a model's output
#: layer (gathered under ZeRO-3); :func:`linear_logits` for a plain ``nn.Linear``.
CandidateLogits = Callable[[Tensor, Tensor], Tensor]


def predicted_positions(attention_mask: Tensor) -> Tensor:
    """BoolTensor[B, T-1]: whether the prediction at position t-1 (of x_t, t = 1..T-1) is of a real token from a
    real prefix, i.e. counts for the sample. Padding never counts."""
    return attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()


def teacher_forced_hits(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """BoolTensor[B, T-1] pair: whether argmax p(· | x_<t) == x_t, and whether position t counts at all."""
    counted = predicted_positions(attention_mask)
    hits = (logits[:, :-1].argmax(-1) == input_ids[:, 1:]) & counted
    return hits, counted


def memorization_accuracy(
    logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    head: CandidateLogits | None = None,
    head_input: Tensor | None = None,
) -> Tensor:
    """Memorization accuracy g(x) (Jang et al.'s MA) of each sample, from one teacher-forced forward pass.

    g(x) = (1 / (L-1)) · Σ_{t=1}^{L-1} 1[argmax_v p(v | x_<t) = x_t], a fraction in [0, 1].

    Args:
        logits: ``Tensor[B, T, V]``, the model's output on ``input_ids``.
        input_ids: ``Tensor[B, T]`` token ids, right-padded.
        attention_mask: ``Tensor[B, T]``, 1 on real tokens.
        head, head_input: the output layer's :data:`CandidateLogits` and its input, ``Tensor[B, T, H]``
            (:func:`~lightning_unlearn.evaluation.scoring.output_layer_input` gives both): half-precision logits then
            have their near ties decided in float32 (:func:`recheck_near_ties`).

    Returns:
        ``Tensor[B]`` (float32) of g; NaN for a sample with fewer than 2 tokens.

    Example:
        >>> import torch
        >>> ids = torch.tensor([[1, 2, 3, 0]])
        >>> logits = torch.nn.functional.one_hot(torch.tensor([[2, 0, 0, 0]]), 4).float()
        >>> memorization_accuracy(logits, ids, torch.tensor([[1, 1, 1, 0]]))
        tensor([0.5000])
    """
    if head is None:
        hits, counted = teacher_forced_hits(logits, input_ids, attention_mask)
        return hits.sum(1).float() / counted.sum(1).float()
    targets = next_token_targets(input_ids, attention_mask)
    predicted = _exact_ties(logits, targets, logits.argmax(-1), head, head_input)
    return (predicted == targets).sum(1).float() / predicted_positions(attention_mask).sum(1).float()


#: the target of a position that does not count (cross-entropy's default ignore_index)
IGNORE_INDEX = -100
#: logits per float32 chunk of half-precision logits on the CPU: 64 MB, whatever the vocabulary
CHUNK_ELEMENTS = 1 << 24
#: ... and on an accelerator: 512 MB, where kernel launches, not memory, bound small chunks (64 MB is 131 rows at
#: V = 128,256, about 100 chunks of 8 kernels each for a batch of 64 × 200 tokens; 512 MB is 1,046 rows)
ACCELERATOR_CHUNK_ELEMENTS = 1 << 27


def chunk_rows(vocabulary: int, device: torch.device, temporaries: int = 1) -> int:
    """Rows of ``vocabulary`` logits per chunk, so that ``temporaries`` float32 tensors of a chunk stay within the
    device's byte budget (:data:`CHUNK_ELEMENTS` on the CPU, :data:`ACCELERATOR_CHUNK_ELEMENTS` elsewhere).

    Example:
        >>> chunk_rows(128_256, torch.device("cpu")), chunk_rows(128_256, torch.device("cuda"))
        (130, 1046)
    """
    budget = CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    return max(1, budget // temporaries // vocabulary)


def next_token_targets(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``Tensor[B, T]``: at position t, x_{t+1} when its prediction counts (:func:`predicted_positions`), else
    ``IGNORE_INDEX`` (padding, and the last position, which predicts nothing). Aligned with the logits, so they
    need no shift (a shifted slice of the logits would be a non-contiguous view)."""
    targets = input_ids[:, 1:].masked_fill(~predicted_positions(attention_mask), IGNORE_INDEX)
    return F.pad(targets, (0, 1), value=IGNORE_INDEX)


class _Float32CrossEntropy(torch.autograd.Function):
    """Token NLL (``Tensor[N]``, float32; float64 for float64 logits) and, with ``argmax``, the argmax token
    (``LongTensor[N]``, not differentiable; else empty) of logits (``Tensor[N, V]``), ``rows`` at a time in at
    least float32: no float32 copy of the whole logits, forward or backward (which recomputes each chunk's softmax
    and writes the gradient in the logits' dtype)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, rows: int, argmax: bool) -> tuple[Tensor, Tensor]:
        precision = torch.promote_types(logits.dtype, torch.float32)
        nll = torch.empty(len(logits), dtype=precision, device=logits.device)
        predicted = torch.empty(len(logits) if argmax else 0, dtype=torch.long, device=logits.device)
        for start in range(0, len(logits), rows):
            chunk = slice(start, start + rows)
            nll[chunk] = F.cross_entropy(logits[chunk].to(precision), targets[chunk], reduction="none")
            if argmax:
                predicted[chunk] = logits[chunk].argmax(-1)
        ctx.save_for_backward(logits, targets)
        ctx.mark_non_differentiable(predicted)
        ctx.rows = rows
        return nll, predicted

    @staticmethod
    def backward(ctx: Any, grad_nll: Tensor, grad_predicted: Tensor | None) -> tuple[Tensor, None, None, None]:
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, len(logits), ctx.rows):
            chunk = slice(start, start + ctx.rows)
            target = targets[chunk]
            counted = target != IGNORE_INDEX
            probabilities = logits[chunk].to(grad_nll.dtype).softmax(-1)  # d nll / d logits = softmax − one-hot
            # minus 1 at each counted target, 0 elsewhere: no data-dependent indexing, so no host sync per chunk
            probabilities.scatter_add_(1, target.clamp_min(0)[:, None], -counted[:, None].to(probabilities.dtype))
            probabilities *= torch.where(counted, grad_nll[chunk], 0.0)[:, None]  # ignored: 0, even under a NaN
            grad[chunk] = probabilities
        return grad, None, None, None


@overload
def token_nll(logits: Tensor, targets: Tensor, argmax: Literal[True]) -> tuple[Tensor, Tensor]: ...
@overload
def token_nll(logits: Tensor, targets: Tensor, argmax: Literal[False] = False) -> tuple[Tensor, None]: ...
def token_nll(logits: Tensor, targets: Tensor, argmax: bool = False) -> tuple[Tensor, Tensor | None]:
    """Next-token NLL (nats) at every position, ``Tensor[B, T]`` (0 where the target is ``IGNORE_INDEX``), and
    with ``argmax`` the argmax token there (``LongTensor[B, T]``, no gradient; else None), from ``logits``
    ``Tensor[B, T, V]`` and aligned ``targets`` (:func:`next_token_targets`).

    One flattened cross-entropy, as a model's own loss computes it, with float32 accumulation (float64 for float64
    logits). Half-precision logits, and any logits that need no gradient (scoring), go through in chunks of
    :func:`chunk_rows` rows (a byte budget on the logits' device), which yield the NLL and the argmax in one pass
    over them: cross-entropy's log-softmax never holds a float32 tensor of the logits' size.
    """
    batch, width, vocabulary = logits.shape
    flat, flat_targets = logits.reshape(batch * width, vocabulary), targets.reshape(-1)
    needs_graph = torch.is_grad_enabled() and logits.requires_grad
    if logits.dtype in (torch.float32, torch.float64) and needs_graph:
        nll = F.cross_entropy(flat, flat_targets, reduction="none")
        return nll.view(batch, width), logits.detach().argmax(-1) if argmax else None
    nll, predicted = _Float32CrossEntropy.apply(flat, flat_targets, chunk_rows(vocabulary, logits.device), argmax)
    return nll.view(batch, width), predicted.view(batch, width) if argmax else None


def nll_and_accuracy(
    logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    head: CandidateLogits | None = None,
    head_input: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_nll` (differentiable) and :func:`memorization_accuracy` (float32, no gradient) of each
    sample, ``Tensor[B]`` each, from one pass over the logits (``Tensor[B, T, V]``).

    With the output layer's ``head`` and its input ``head_input`` (``Tensor[B, T, H]``, see
    :func:`~lightning_unlearn.evaluation.scoring.output_layer_input`), half-precision logits have their near ties
    re-checked in float32 (:func:`recheck_near_ties`), so that g does not depend on how the half-precision matmul
    rounded."""
    targets = next_token_targets(input_ids, attention_mask)
    nll, predicted = token_nll(logits, targets, argmax=True)
    predicted = _exact_ties(logits, targets, predicted, head, head_input)
    counted = predicted_positions(attention_mask).sum(1)
    hits = (predicted == targets).sum(1)  # an ignored target (-100) is never a token id
    return nll.sum(1) / counted, hits.float() / counted.float()


def sequence_nll(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean next-token negative log-likelihood (nats per token) of each sample: ``Tensor[B]`` (float32; float64
    for float64 logits).

    Differentiable, so it serves as the per-sample training loss too. Padding never counts. It costs what a
    model's own loss costs (:func:`token_nll`: flattened, no float32 copy of half-precision logits).
    """
    counted = predicted_positions(attention_mask).sum(1)
    return token_nll(logits, next_token_targets(input_ids, attention_mask))[0].sum(1) / counted


def sequence_log_likelihood(nll: Tensor, attention_mask: Tensor) -> Tensor:
    """log π(x) = Σ_{t=1}^{L-1} log p(x_t | x_<t) of each sample (nats, ``Tensor[B]``) from its mean token NLL
    (``Tensor[B]``, :func:`sequence_nll`): −NLL_mean · (L − 1). Differentiable through ``nll``."""
    return -nll * predicted_positions(attention_mask).sum(1).to(nll.dtype)


#: a near tie: within this fraction of the row's top ``|logit|`` (half-precision rounding is 2^-9)
TIE_MARGIN = 2.0**-5
#: tokens of a near-tied row whose logits are re-computed in float32
TIE_CANDIDATES = 32


def _exact_ties(
    logits: Tensor, targets: Tensor, predicted: Tensor, head: CandidateLogits | None, head_input: Tensor | None
) -> Tensor:
    """``predicted`` (``LongTensor[B, T]``) with near ties re-checked when the logits are half precision and the
    output layer is known; as it is otherwise."""
    if head is None or head_input is None or logits.dtype not in (torch.bfloat16, torch.float16):
        return predicted
    flat_logits = logits.detach().reshape(-1, logits.shape[-1])
    flat_input = head_input.reshape(-1, head_input.shape[-1])
    checked = recheck_near_ties(flat_logits, targets.reshape(-1), predicted.reshape(-1), flat_input, head)
    return checked.view_as(predicted)


def linear_logits(layer: torch.nn.Linear) -> CandidateLogits:
    """The :data:`CandidateLogits` of a plain output layer: its weights (and bias) of the chosen tokens, in float32.

    Example:
        >>> layer = torch.nn.Linear(2, 3, bias=False)
        >>> _ = layer.weight.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        >>> linear_logits(layer)(torch.tensor([[2.0, 3.0]]), torch.tensor([[2, 0]])).detach()
        tensor([[5., 2.]])
    """

    def logits(head_input: Tensor, tokens: Tensor) -> Tensor:
        exact = torch.einsum("rh,rch->rc", head_input.float(), layer.weight[tokens].float())
        return exact + layer.bias[tokens].float() if layer.bias is not None else exact

    return logits


@torch.no_grad()
def recheck_near_ties(
    logits: Tensor, targets: Tensor, predicted: Tensor, head_input: Tensor, head: CandidateLogits
) -> Tensor:
    """``predicted`` (``LongTensor[N]``, the argmax of half-precision ``logits``, ``Tensor[N, V]``) with every
    counted position whose target is within :data:`TIE_MARGIN` of deciding the argmax decided again in float32.

    Half-precision rounding can flip such a tie between batch compositions, kernels and processes, and with it a
    record's g. Only the near-tied positions are re-computed, and for each only its :data:`TIE_CANDIDATES` most
    likely tokens and its target, from the output layer's input (``Tensor[N, H]``) by ``head``: no float32 output
    of vocabulary size. ``head`` is called once, also when nothing is tied (under ZeRO-3 it gathers the layer's
    weights on every process, together)."""
    counted = targets != IGNORE_INDEX
    target = targets.clamp_min(0)
    top = logits.topk(2, dim=-1)
    target_logit = logits.gather(1, target[:, None]).squeeze(1).float()
    best_other = torch.where(top.indices[:, 0] == target, top.values[:, 1], top.values[:, 0]).float()
    margin = TIE_MARGIN * top.values[:, 0].float().abs().clamp_min(1.0)
    rows = (((target_logit - best_other).abs() <= margin) & counted).nonzero().flatten()
    candidates = logits[rows].topk(min(TIE_CANDIDATES, logits.shape[-1]), dim=-1).indices
    candidates = torch.cat([target[rows, None], candidates], dim=1)  # the target first: it wins exact ties
    exact = head(head_input[rows], candidates)  # Tensor[R, C + 1]
    if len(rows) == 0:
        return predicted
    predicted = predicted.clone()
    predicted[rows] = candidates.gather(1, exact.argmax(1, keepdim=True)).squeeze(1)
    return predicted
