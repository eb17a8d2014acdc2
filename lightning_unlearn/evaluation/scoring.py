"""Measuring a model on records: g of every record of a loader (on every process), log-likelihoods, verbatim
extraction and the extraction likelihood EL_n, each with no grad and in eval mode.

The formulas are :mod:`lightning_unlearn.functional.memorization`'s; here they run on models. Under DeepSpeed
ZeRO-3, every function that runs a forward pass runs the same passes on every process
(:func:`~lightning_unlearn.distributed.zero.equal_forward_passes`; the output layer gathered where its weights are
needed). :func:`score_on_all_ranks` shares a loader's batches among processes and gathers the scores, so results are
identical on 1 or N processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor
from tqdm.auto import tqdm
from transformers.modeling_outputs import CausalLMOutputWithPast

from lightning_unlearn.distributed.gather import gather_scores
from lightning_unlearn.distributed.zero import equal_forward_passes, gathered
from lightning_unlearn.functional.memorization import (
    linear_logits,
    memorization_accuracy,
    sequence_log_likelihood,
    sequence_nll,
    teacher_forced_hits,
)
from lightning_unlearn.utilities.errors import ConfigurationError

_CACHE_KEY = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


@torch.no_grad()
def score_log_likelihood(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """log π(x) of each sample under ``model`` (no grad, eval mode): a ``measure`` for :func:`score_memorization`."""
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return sequence_log_likelihood(sequence_nll(logits, input_ids, attention_mask), attention_mask)


@contextmanager
def output_layer_input(model: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Inside, each forward pass of ``model`` leaves its output layer's
    :data:`~lightning_unlearn.functional.memorization.CandidateLogits` and that layer's input in the yielded dict
    (``{"head": CandidateLogits, "head_input": Tensor[B, T, H]}``, keyword arguments of
    :func:`~lightning_unlearn.functional.memorization.nll_and_accuracy`); empty for a model without a linear output
    layer. No copy: the input is the tensor the layer's backward keeps. Under ZeRO-3 the head gathers the layer's
    weights, on every process, each time it is called."""
    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    captured: dict[str, Any] = {}
    if not isinstance(layer, torch.nn.Linear):
        yield captured
        return

    def head(head_input: Tensor, tokens: Tensor) -> Tensor:
        with gathered([layer.weight] + ([layer.bias] if layer.bias is not None else [])):
            return linear_logits(layer)(head_input, tokens)

    handle = layer.register_forward_hook(lambda _, inputs, output: captured.update(head=head, head_input=inputs[0]))
    try:
        yield captured
    finally:
        handle.remove()


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
        raise ConfigurationError(
            f"prefix_length and suffix_length must be >= 1, got {prefix_length} and {suffix_length}"
        )
    lengths = attention_mask.sum(1)
    short = (lengths < prefix_length + suffix_length).nonzero().flatten().tolist()
    if short:
        raise ConfigurationError(
            f"verbatim_extraction needs prefix_length + suffix_length = {prefix_length + suffix_length} tokens per "
            f"sample; rows {short} have only {lengths[short].tolist()}. Pass shorter lengths."
        )
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    hits, _ = teacher_forced_hits(logits, input_ids, attention_mask)
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
    exactly L-t tokens (EOS does not stop it) and overlap_n(a, b) is the fraction of the ``|a| − n + 1`` n-gram
    positions of a whose n-gram occurs anywhere in b.

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
    :func:`~lightning_unlearn.distributed.zero.equal_forward_passes`); every process must call it equally often.

    Raises:
        ValueError: a sample has fewer than n + 1 tokens.
    """
    if n < 1:
        raise ConfigurationError(f"n must be >= 1, got {n}")
    lengths = attention_mask.sum(1).tolist()
    short = [row for row, length in enumerate(lengths) if length < n + 1]
    if short:
        raise ConfigurationError(
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


def score_on_all_ranks(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    strategy: Strategy | None = None,
    progress: bool = False,
    desc: str = "memorization",
    measure: Callable[[torch.nn.Module, Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """g (or ``measure``, see :func:`score_memorization`) of every sample of ``dataloader``, each process
    scoring every world_size-th batch.

    Returns sorted unique ``sample_id`` (``Tensor[N]`` long, on CPU) and their g (``Tensor[N]`` float, on CPU).
    """
    rank, world = (strategy.global_rank, strategy.world_size) if strategy is not None else (0, 1)
    try:
        len(dataloader)  # a DataLoader over an IterableDataset has __len__, yet raises here
        batches = dataloader
    except TypeError:  # no length to plan equal shares with: collate it once
        batches = list(dataloader)
    if not len(batches):
        raise ConfigurationError(f"nothing to score: the {desc} dataloader is empty")
    mine = _share(batches, rank, world)
    scores = score_memorization(model, mine, progress=progress and rank == 0, desc=desc, measure=measure)
    device = next(model.parameters()).device
    ids = torch.tensor(list(scores), dtype=torch.long, device=device)
    values = torch.tensor(list(scores.values()), dtype=torch.float32, device=device)
    ids, values = gather_scores(strategy, ids, values)
    return ids.cpu(), values.cpu()


def _share(batches: Collection[Mapping[str, Tensor]], rank: int, world: int) -> Iterator[Mapping[str, Tensor]]:
    """Every ``world``-th batch from ``rank`` on, one at a time (a scoring pass never holds the whole set), then
    this rank's last batch again until every rank has yielded ceil(len / world) batches."""
    last, count = None, 0
    for index, batch in enumerate(batches):
        if index % world == rank:
            last, count = batch, count + 1
            yield batch
    if last is None:  # more ranks than batches: repeat the first
        last = next(iter(batches))
    for _ in range(-(-len(batches) // world) - count):
        yield last
