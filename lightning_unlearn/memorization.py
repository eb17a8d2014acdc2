"""Per-sample memorization of a causal LM: pure functions on tensors and models.

Every function takes a right-padded batch: ``input_ids`` and ``attention_mask`` are ``Tensor[B, T]`` and a
sample's real tokens x_0 … x_{L-1} are those where the mask is 1 (L is its own length). Padding never counts.
``tests/test_memorization.py`` checks every one against its formula.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutputWithPast

from lightning_unlearn.strategies import equal_forward_passes, gathered

# transformers >= 5.24 calls the KV cache `cache`; earlier 5.x releases call it `past_key_values`.
_CACHE_KEY = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def predicted_positions(attention_mask: Tensor) -> Tensor:
    """BoolTensor[B, T-1]: whether the prediction at position t-1 (of x_t, t = 1..T-1) is of a real token from a
    real prefix, i.e. counts for the sample. Padding never counts."""
    return attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()


def _teacher_forced_hits(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """BoolTensor[B, T-1] pair: whether argmax p(· | x_<t) == x_t, and whether position t counts at all."""
    counted = predicted_positions(attention_mask)
    hits = (logits[:, :-1].argmax(-1) == input_ids[:, 1:]) & counted
    return hits, counted


def memorization_accuracy(
    logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    head: torch.nn.Module | None = None,
    head_input: Tensor | None = None,
) -> Tensor:
    """Memorization accuracy g(x) (Jang et al.'s MA) of each sample, from one teacher-forced forward pass.

    g(x) = (1 / (L-1)) · Σ_{t=1}^{L-1} 1[argmax_v p(v | x_<t) = x_t], a fraction in [0, 1].

    Args:
        logits: ``Tensor[B, T, V]``, the model's output on ``input_ids``.
        input_ids: ``Tensor[B, T]`` token ids, right-padded.
        attention_mask: ``Tensor[B, T]``, 1 on real tokens.
        head, head_input: the output layer and its input (:func:`output_layer_input`): half-precision logits
            then have their near ties decided in float32 (:func:`recheck_near_ties`).

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
        hits, counted = _teacher_forced_hits(logits, input_ids, attention_mask)
        return hits.sum(1).float() / counted.sum(1).float()
    targets = next_token_targets(input_ids, attention_mask)
    predicted = _exact_ties(logits, targets, logits.argmax(-1), head, head_input)
    return (predicted == targets).sum(1).float() / predicted_positions(attention_mask).sum(1).float()


IGNORE_INDEX = -100  # the target of a position that does not count (cross-entropy's default ignore_index)
CHUNK_ELEMENTS = 1 << 24  # logits per float32 chunk of half-precision logits: 64 MB, whatever the vocabulary


def next_token_targets(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``Tensor[B, T]``: at position t, x_{t+1} when its prediction counts (:func:`predicted_positions`), else
    ``IGNORE_INDEX`` (padding, and the last position, which predicts nothing). Aligned with the logits, so they
    need no shift (a shifted slice of the logits would be a non-contiguous view)."""
    targets = input_ids[:, 1:].masked_fill(~predicted_positions(attention_mask), IGNORE_INDEX)
    return F.pad(targets, (0, 1), value=IGNORE_INDEX)


class _Float32CrossEntropy(torch.autograd.Function):
    """Token NLL (``Tensor[N]``, float32) and, with ``argmax``, the argmax token (``LongTensor[N]``, not
    differentiable; else empty) of half-precision logits (``Tensor[N, V]``), ``rows`` at a time in float32: no
    float32 copy of the whole logits, forward or backward (which recomputes each chunk's softmax and writes the
    gradient in the logits' dtype)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, logits: Tensor, targets: Tensor, rows: int, argmax: bool
    ) -> tuple[Tensor, Tensor]:
        nll = torch.empty(len(logits), dtype=torch.float32, device=logits.device)
        predicted = torch.empty(len(logits) if argmax else 0, dtype=torch.long, device=logits.device)
        for start in range(0, len(logits), rows):
            chunk = slice(start, start + rows)
            nll[chunk] = F.cross_entropy(logits[chunk].float(), targets[chunk], reduction="none")
            if argmax:
                predicted[chunk] = logits[chunk].argmax(-1)
        ctx.save_for_backward(logits, targets)
        ctx.mark_non_differentiable(predicted)
        ctx.rows = rows
        return nll, predicted

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_nll: Tensor, grad_predicted: Tensor | None
    ) -> tuple[Tensor, None, None, None]:
        logits, targets = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, len(logits), ctx.rows):
            chunk = slice(start, start + ctx.rows)
            target = targets[chunk]
            counted = target != IGNORE_INDEX
            probabilities = logits[chunk].float().softmax(-1)  # d nll / d logits = softmax − one-hot(target)
            rows = counted.nonzero().flatten()
            probabilities[rows, target[rows]] -= 1.0
            probabilities *= torch.where(counted, grad_nll[chunk], 0.0)[:, None]  # ignored: 0, even under a NaN
            grad[chunk] = probabilities
        return grad, None, None, None


def token_nll(logits: Tensor, targets: Tensor, argmax: bool = False) -> tuple[Tensor, Tensor | None]:
    """Next-token NLL (nats) at every position, ``Tensor[B, T]`` (0 where the target is ``IGNORE_INDEX``), and
    with ``argmax`` the argmax token there (``LongTensor[B, T]``, no gradient; else None), from ``logits``
    ``Tensor[B, T, V]`` and aligned ``targets`` (:func:`next_token_targets`).

    One flattened cross-entropy, as a model's own loss computes it, with float32 accumulation (float64 for float64
    logits). Half-precision logits go through in float32 chunks of about ``CHUNK_ELEMENTS`` logits (the rows per
    chunk follow from the vocabulary), which yield the NLL and the argmax in one pass over them.
    """
    batch, width, vocabulary = logits.shape
    flat, flat_targets = logits.reshape(batch * width, vocabulary), targets.reshape(-1)
    if logits.dtype in (torch.float32, torch.float64):
        nll = F.cross_entropy(flat, flat_targets, reduction="none")
        return nll.view(batch, width), logits.detach().argmax(-1) if argmax else None
    rows = max(1, CHUNK_ELEMENTS // vocabulary)
    nll, predicted = _Float32CrossEntropy.apply(flat, flat_targets, rows, argmax)
    return nll.view(batch, width), predicted.view(batch, width) if argmax else None


def nll_and_accuracy(
    logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    head: torch.nn.Module | None = None,
    head_input: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_nll` (differentiable) and :func:`memorization_accuracy` (float32, no gradient) of each
    sample, ``Tensor[B]`` each, from one pass over the logits (``Tensor[B, T, V]``).

    With the output layer ``head`` and its input ``head_input`` (``Tensor[B, T, H]``, see
    :func:`output_layer_input`), half-precision logits have their near ties re-checked in float32
    (:func:`recheck_near_ties`), so that g does not depend on how the half-precision matmul rounded."""
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


@torch.no_grad()
def score_log_likelihood(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """log π(x) of each sample under ``model`` (no grad, eval mode): a ``measure`` for :func:`score_memorization`."""
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return sequence_log_likelihood(sequence_nll(logits, input_ids, attention_mask), attention_mask)


TIE_MARGIN = 2.0**-5  # a near tie: within this fraction of the row's top |logit| (half-precision rounding is 2^-9)
TIE_CANDIDATES = 32  # tokens of a near-tied row whose logits are re-computed in float32


@contextmanager
def output_layer_input(model: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Inside, each forward pass of ``model`` leaves its output layer and that layer's input in the yielded dict
    (``{"head": Linear, "head_input": Tensor[B, T, H]}``, keyword arguments of :func:`nll_and_accuracy`); empty
    for a model without a linear output layer. No copy: the input is the tensor the layer's backward keeps."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    captured: dict[str, Any] = {}
    if not isinstance(head, torch.nn.Linear):
        yield captured
        return
    handle = head.register_forward_hook(lambda layer, inputs, output: captured.update(head=layer, head_input=inputs[0]))
    try:
        yield captured
    finally:
        handle.remove()


def _exact_ties(
    logits: Tensor, targets: Tensor, predicted: Tensor, head: torch.nn.Module | None, head_input: Tensor | None
) -> Tensor:
    """``predicted`` (``LongTensor[B, T]``) with near ties re-checked when the logits are half precision and the
    output layer is known; as it is otherwise."""
    if head is None or head_input is None or logits.dtype not in (torch.bfloat16, torch.float16):
        return predicted
    flat_logits = logits.detach().reshape(-1, logits.shape[-1])
    flat_input = head_input.reshape(-1, head_input.shape[-1])
    checked = recheck_near_ties(flat_logits, targets.reshape(-1), predicted.reshape(-1), flat_input, head)
    return checked.view_as(predicted)


@torch.no_grad()
def recheck_near_ties(
    logits: Tensor, targets: Tensor, predicted: Tensor, head_input: Tensor, head: torch.nn.Linear
) -> Tensor:
    """``predicted`` (``LongTensor[N]``, the argmax of half-precision ``logits``, ``Tensor[N, V]``) with every
    counted position whose target is within :data:`TIE_MARGIN` of deciding the argmax decided again in float32.

    Half-precision rounding can flip such a tie between batch compositions, kernels and processes, and with it a
    record's g. Only the near-tied positions are re-computed, and for each only its :data:`TIE_CANDIDATES` most
    likely tokens and its target, from the output layer's input (``Tensor[N, H]``) and weights in float32: no
    float32 output of vocabulary size. Under ZeRO-3 the layer's weights are gathered, on every process."""
    counted = targets != IGNORE_INDEX
    target = targets.clamp_min(0)
    top = logits.topk(2, dim=-1)
    target_logit = logits.gather(1, target[:, None]).squeeze(1).float()
    best_other = torch.where(top.indices[:, 0] == target, top.values[:, 1], top.values[:, 0]).float()
    margin = TIE_MARGIN * top.values[:, 0].float().abs().clamp_min(1.0)
    tied = ((target_logit - best_other).abs() <= margin) & counted
    rows = tied.nonzero().flatten()
    with gathered([head.weight] + ([head.bias] if head.bias is not None else [])):
        if len(rows) == 0:
            return predicted
        candidates = logits[rows].topk(min(TIE_CANDIDATES, logits.shape[-1]), dim=-1).indices
        candidates = torch.cat([target[rows, None], candidates], dim=1)  # the target first: it wins exact ties
        weights = head.weight[candidates].float()  # Tensor[R, C + 1, H]
        exact = torch.einsum("rh,rch->rc", head_input[rows].float(), weights)
        if head.bias is not None:
            exact = exact + head.bias[candidates].float()
    predicted = predicted.clone()
    predicted[rows] = candidates.gather(1, exact.argmax(1, keepdim=True)).squeeze(1)
    return predicted


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode inside; after (also on error), every module back in the mode it had (dropout modules
    in eval mode in a model that trains stay so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def verbatim_extraction(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    prefix_length: int = 50,
    suffix_length: int = 50,
) -> Tensor:
    """Whether the greedy continuation of x_<p reproduces x_{p:p+s} exactly (Carlini et al.).

    Greedy decoding reproduces the suffix exactly when, and only when, every teacher-forced prediction in
    [p, p+s) is right (by induction over the suffix), so one forward pass decides it: no generation is needed.

    Returns:
        ``BoolTensor[B]``.

    Raises:
        ValueError: a sample is shorter than ``prefix_length + suffix_length`` tokens.
    """
    if prefix_length < 1 or suffix_length < 1:
        raise ValueError(f"prefix_length and suffix_length must be >= 1, got {prefix_length} and {suffix_length}")
    lengths = attention_mask.sum(1)
    short = (lengths < prefix_length + suffix_length).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"verbatim_extraction needs prefix_length + suffix_length = {prefix_length + suffix_length} tokens per "
            f"sample; rows {short} have only {lengths[short].tolist()}. Pass shorter lengths."
        )
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    hits, _ = _teacher_forced_hits(logits, input_ids, attention_mask)
    # hits[:, t-1] is the prediction of x_t; the suffix is positions p .. p+s-1.
    return hits[:, prefix_length - 1 : prefix_length + suffix_length - 1].all(1)


@torch.no_grad()
def extraction_likelihood(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    n: int = 10,
    generation_batch_size: int | None = None,
) -> Tensor:
    """Extraction likelihood EL_n (Jang et al.) of each sample.

    EL_n(x) = (1/(L-n)) · Σ_{t=1}^{L-n} overlap_n(ĝ_t, x_{t:L}), where ĝ_t is the greedy continuation of x_<t for
    exactly L-t tokens (EOS does not stop it) and overlap_n(a, b) is the fraction of the |a|-n+1 n-gram positions
    of a whose n-gram occurs anywhere in b.

    Equal to that definition, computed fast: one teacher-forced pass gives every prefix's first greedy token;
    where it is right (x_t), ĝ_t = [x_t] + ĝ_{t+1}, so only prefixes whose first greedy token is wrong are decoded,
    all of them batched together (longest first) with a KV cache. A fully memorized sample needs no decoding.

    Args:
        model: a Hugging Face causal LM.
        input_ids: ``Tensor[B, T]``, right-padded.
        attention_mask: ``Tensor[B, T]``.
        n: n-gram size.
        generation_batch_size: prefixes decoded at once (default: ``max(B, 32)``).

    Returns:
        ``Tensor[B]`` (float32) of EL_n, fractions in [0, 1].

    Under DeepSpeed ZeRO-3 processes decode different lengths safely (see
    :func:`~lightning_unlearn.strategies.equal_forward_passes`); every process must call it equally often.

    Raises:
        ValueError: a sample has fewer than n + 1 tokens.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lengths = attention_mask.sum(1).tolist()
    short = [row for row, length in enumerate(lengths) if length < n + 1]
    if short:
        raise ValueError(
            f"extraction_likelihood with n={n} needs at least {n + 1} tokens per sample; "
            f"rows {short} have {[lengths[row] for row in short]}"
        )
    with eval_mode(model):
        first_tokens = model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(-1)
        jobs = []  # (row, t): prefixes x_<t whose greedy continuation must be decoded
        for row, length in enumerate(lengths):
            wrong = first_tokens[row, : length - 1] != input_ids[row, 1:length]
            for t in (wrong.nonzero().flatten() + 1).tolist():
                jobs.append((row, t))
                if t >= length - n:  # every later ĝ_t is built from this one
                    break
        chunks = _chunk_jobs(model, jobs, lengths, generation_batch_size or max(len(lengths), 32))
        passes = sum(max(lengths[row] - t - 1 for row, t in chunk) for chunk in chunks)  # one per decoded token
        with equal_forward_passes(model, passes):  # under ZeRO-3, processes may decode different lengths
            decoded = _greedy_continuations(model, input_ids, first_tokens, lengths, chunks)
    per_row: list[dict[int, Tensor]] = [{} for _ in lengths]
    for (row, t), tokens in decoded.items():
        per_row[row][t] = tokens
    values = [_mean_overlap(input_ids[row, :length], per_row[row], n) for row, length in enumerate(lengths)]
    return torch.tensor(values, dtype=torch.float32, device=input_ids.device)


def _greedy_continuations(
    model: torch.nn.Module,
    input_ids: Tensor,
    first_tokens: Tensor,
    lengths: list[int],
    chunks: list[list[tuple[int, int]]],
) -> dict[tuple[int, int], Tensor]:
    """Greedy continuation ĝ_t (``Tensor[L-t]``) of x_<t for each job (row, t), decoded chunk by chunk in
    left-padded batches (``max(L-t-1)`` forward passes per chunk)."""
    results: dict[tuple[int, int], Tensor] = {}
    for chunk in chunks:
        # Each prefix already ends with its first greedy token, known from the teacher-forced pass.
        prefixes = [torch.cat([input_ids[row, :t], first_tokens[row, t - 1 : t]]) for row, t in chunk]
        remaining = [lengths[row] - t - 1 for row, t in chunk]
        generated = _greedy_decode(model, prefixes, max(remaining), [lengths[row] - 1 for row, _ in chunk])
        for (row, t), prefix, count, tokens in zip(chunk, prefixes, remaining, generated, strict=True):
            results[(row, t)] = torch.cat([prefix[-1:], tokens[:count]])
    return results


def _chunk_jobs(
    model: torch.nn.Module, jobs: list[tuple[int, int]], lengths: list[int], batch_size: int
) -> list[list[tuple[int, int]]]:
    """Jobs (row, t) in batches of at most ``batch_size``, longest decoding first, each batch's left-padded prefix
    plus decoded tokens within the model's positions (job (row, t) needs t+1 prefix and L-t-1 new tokens)."""
    cap = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2 * max(lengths)
    chunks: list[list[tuple[int, int]]] = []
    width = remaining = 0
    for row, t in sorted(jobs, key=lambda job: (lengths[job[0]] - job[1], job[1]), reverse=True):
        job_width, job_remaining = t + 1, lengths[row] - t - 1
        if chunks and len(chunks[-1]) < batch_size and max(width, job_width) + max(remaining, job_remaining) <= cap:
            chunks[-1].append((row, t))
            width, remaining = max(width, job_width), max(remaining, job_remaining)
        else:
            chunks.append([(row, t)])
            width, remaining = job_width, job_remaining
    return chunks


def _greedy_decode(
    model: torch.nn.Module, prefixes: list[Tensor], num_tokens: int, last_positions: list[int]
) -> Tensor:
    """``Tensor[J, num_tokens]``: greedy tokens after each prefix, with a KV cache and no stop at EOS.

    A prefix needing fewer tokens than ``num_tokens`` keeps decoding with the others; its surplus tokens are
    discarded by the caller and their positions are held at ``last_positions[j]``, within the model's range.
    """
    device = prefixes[0].device
    if num_tokens == 0:
        return torch.empty(len(prefixes), 0, dtype=torch.long, device=device)
    width = max(len(p) for p in prefixes)
    ids = torch.zeros(len(prefixes), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for j, prefix in enumerate(prefixes):
        ids[j, width - len(prefix) :] = prefix
        mask[j, width - len(prefix) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    tokens = [out.logits[:, -1].argmax(-1)]
    limit = torch.tensor(last_positions, device=device)[:, None]
    next_position = torch.minimum(positions[:, -1:] + 1, limit)
    for _ in range(num_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(len(prefixes), 1)], dim=1)
        out = model(
            input_ids=tokens[-1][:, None],
            attention_mask=mask,
            position_ids=next_position,
            use_cache=True,
            **{_CACHE_KEY: out[_CACHE_KEY]},
        )
        tokens.append(out.logits[:, -1].argmax(-1))
        next_position = torch.minimum(next_position + 1, limit)
    return torch.stack(tokens, dim=1)


def _mean_overlap(sample: Tensor, continuations: Mapping[int, Tensor], n: int) -> float:
    """Mean over t = 1..L-n of overlap_n(ĝ_t, x_{t:L}), given ĝ_m for each decoded prefix length m."""
    length = len(sample)
    count = length - n  # number of prefixes t = 1..L-n
    # rows[t-1] = ĝ_t, right-padded with -1: the sample's own tokens up to the next decoded prefix, then its ĝ.
    rows = torch.full((count, length - 1), -1, dtype=torch.long, device=sample.device)
    decoded_at = sorted(continuations)
    nxt = 0
    for t in range(1, count + 1):
        while nxt < len(decoded_at) and decoded_at[nxt] < t:
            nxt += 1
        m = decoded_at[nxt] if nxt < len(decoded_at) else length
        tail = continuations[m] if m < length else sample[:0]
        rows[t - 1, : length - t] = torch.cat([sample[t:m], tail])
    sample_grams = sample.unfold(0, n, 1)  # [L-n+1, n]; gram j starts at position j
    row_grams = rows.unfold(1, n, 1)  # [L-n, L-n, n]; gram i of ĝ_t
    _, inverse = torch.unique(torch.cat([sample_grams, row_grams.reshape(-1, n)]), dim=0, return_inverse=True)
    sample_ids, row_ids = inverse[: len(sample_grams)], inverse[len(sample_grams) :].view(count, -1)
    # A gram of ĝ_t occurs in x_{t:L} iff its last occurrence in x starts at position >= t.
    last_start = torch.full((int(inverse.max()) + 1,), -1, dtype=torch.long, device=sample.device)
    last_start.scatter_reduce_(0, sample_ids, torch.arange(len(sample_ids), device=sample.device), "amax")
    t = torch.arange(1, count + 1, device=sample.device)[:, None]
    positions = length - t - n + 1  # n-gram positions of ĝ_t
    valid = torch.arange(row_ids.shape[1], device=sample.device)[None, :] < positions
    found = ((last_start[row_ids] >= t) & valid).sum(1)
    return (found.double() / positions.squeeze(1).double()).mean().item()


@torch.no_grad()
def score_memorization(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    progress: bool = False,
    desc: str = "memorization",
    measure: Callable[[torch.nn.Module, Tensor, Tensor], Tensor] | None = None,
) -> dict[int, float]:
    """g(x) of every sample a dataloader yields, keyed by its ``sample_id``: no grad, eval mode, mode restored.

    Batches are dicts with ``input_ids``, ``attention_mask`` and ``sample_id`` (``Tensor[B]``), as the
    :class:`~lightning_unlearn.UnlearningDataModule` makes them. A sample seen twice keeps its last score.
    ``measure(model, input_ids, attention_mask) -> Tensor[B]`` scores something else instead of g (e.g. an attack).
    """
    device = _device(model)
    scores: dict[int, float] = {}
    with eval_mode(model), output_layer_input(model) as head:
        for batch in tqdm(dataloader, desc=desc, disable=not progress, leave=False):
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            if measure is None:  # no name for the logits: freed before the next batch's forward
                values = memorization_accuracy(
                    model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids, attention_mask, **head
                )
            else:
                values = measure(model, input_ids, attention_mask)
            scores.update(zip(batch["sample_id"].tolist(), values.tolist(), strict=True))
    return scores
