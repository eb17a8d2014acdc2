"""Membership attacks from a forward pass's logits: per-sample scores (higher = more likely a training member) and
their ROC-AUC, pure functions on tensors.

An ideal unlearned model scores forget records like unseen (holdout) ones: AUC ≈ 0.5. The attacks that run a model
(and the neighbourhood attack, MIAU) are in :mod:`lightning_unlearn.evaluation.membership`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_unlearn.functional.memorization import next_token_targets, predicted_positions, token_nll
from lightning_unlearn.utilities.errors import ConfigurationError


def log_probs_from_logits(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """log p(x_t | x_<t) for t = 1..T-1 (``Tensor[B, T-1]``, float32) from a forward pass's logits
    (``Tensor[B, T, V]``), and which of them are real tokens (bool).

    Through :func:`~lightning_unlearn.functional.memorization.token_nll`: no float32 or float64 copy of the whole
    logits is made (half-precision logits go through in float32 chunks), so it fits wherever the logits do."""
    counted = predicted_positions(attention_mask)
    nll, _ = token_nll(logits, next_token_targets(input_ids, attention_mask))
    return (-nll[:, :-1].float()).masked_fill(~counted, 0.0), counted


def loss_score(log_probs: Tensor, counted: Tensor) -> Tensor:
    """The LOSS attack's score from token log-probabilities: their mean per sample, ``Tensor[B]``."""
    return log_probs.sum(1) / counted.sum(1)


def zlib_sizes(texts: Sequence[str]) -> Tensor:
    """The zlib-compressed size in bytes of each text's UTF-8 encoding (Carlini et al. 2021's zlib entropy),
    ``Tensor[B]`` (float32).

    Example:
        >>> zlib_sizes(["aaaaaaaaaaaaaaaa", "abc"])
        tensor([11., 11.])
    """
    return torch.tensor([len(zlib.compress(text.encode("utf-8"))) for text in texts], dtype=torch.float32)


def zlib_score(log_probs: Tensor, counted: Tensor, texts: Sequence[str]) -> Tensor:
    """The zlib attack's score as Carlini et al. (2021) and open-unlearning define it: the mean token NLL (log
    perplexity, nats) over the zlib-compressed size in bytes of the UTF-8 text, negated so that higher means member:
    −NLL_mean(x) / zlib(x), ``Tensor[B]``."""
    if len(texts) != len(log_probs):
        raise ConfigurationError(
            f"zlib_score needs one text per sample, got {len(texts)} texts for {len(log_probs)} samples"
        )
    return loss_score(log_probs, counted) / zlib_sizes(texts).to(log_probs.device)


def min_k_score(log_probs: Tensor, counted: Tensor, k: float = 0.2) -> Tensor:
    """The min-k% attack's score from token log-probabilities: the mean of each sample's lowest ``k`` fraction (at
    least one), ``Tensor[B]``."""
    if not 0 < k <= 1:
        raise ConfigurationError(f"k must be in (0, 1], got {k}")
    lowest_first = log_probs.masked_fill(~counted, float("inf")).sort(dim=1).values
    count = (counted.sum(1).float() * k).long().clamp(min=1)
    keep = torch.arange(lowest_first.shape[1], device=count.device)[None, :] < count[:, None]
    return (lowest_first * keep).nan_to_num(posinf=0.0).sum(1) / count


def membership_scores(
    logits: Tensor, input_ids: Tensor, attention_mask: Tensor, texts: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Every membership attack's score (``Tensor[B]`` each, by name) from one forward pass's logits; zlib only with
    the samples' ``texts`` (its compressed sizes are of the text, not of the tokens)."""
    log_probs, counted = log_probs_from_logits(logits, input_ids, attention_mask)
    scores = {"loss": loss_score(log_probs, counted), "min_k": min_k_score(log_probs, counted)}
    if texts is not None:
        scores["zlib"] = zlib_score(log_probs, counted, texts)
    return scores


def membership_auc(member_scores: Tensor | Sequence[float], nonmember_scores: Tensor | Sequence[float]) -> float:
    """ROC-AUC of telling members from non-members by score (higher = member), ties counted half.

    Equals the fraction of (member, non-member) pairs in which the member scores higher, plus half the ties.

    Example:
        >>> membership_auc([0.9, 0.5], [0.5, 0.1])
        0.875
    """
    members = torch.as_tensor(member_scores, dtype=torch.float64).flatten()
    nonmembers = torch.as_tensor(nonmember_scores, dtype=torch.float64).flatten()
    if len(members) == 0 or len(nonmembers) == 0:
        raise ConfigurationError(
            f"membership_auc needs members and non-members, got {len(members)} and {len(nonmembers)}"
        )
    if members.isnan().any() or nonmembers.isnan().any():
        raise ConfigurationError("membership_auc got NaN scores")
    combined = torch.cat([members, nonmembers])
    _, inverse, counts = torch.unique(combined, return_inverse=True, return_counts=True)
    first_rank = counts.cumsum(0) - counts + 1  # ranks 1.. of each distinct value
    average_rank = first_rank.double() + (counts.double() - 1) / 2  # ties share their mean rank
    member_rank_sum = average_rank[inverse[: len(members)]].sum()
    n, m = len(members), len(nonmembers)
    return ((member_rank_sum - n * (n + 1) / 2) / (n * m)).item()
