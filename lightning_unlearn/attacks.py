"""Membership-inference attacks: per-sample scores (higher = more likely a training member) and their ROC-AUC.

An ideal unlearned model scores forget samples like unseen (holdout) ones: AUC ≈ 0.5. Attacks on token
log-probabilities (LOSS, zlib, min-k%) take a right-padded batch; the neighbourhood attack (MIAU, as the paper
uses it) takes texts and compares each with perturbed neighbours.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_unlearn.data import PadCollator
from lightning_unlearn.memorization import eval_mode, predicted_positions


def log_probs_from_logits(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """log p(x_t | x_<t) for t = 1..T-1 (``Tensor[B, T-1]``, float32) from a forward pass's logits
    (``Tensor[B, T, V]``), and which of them are real tokens (bool)."""
    counted = predicted_positions(attention_mask)
    logits = logits[:, :-1].float()
    log_probs = -F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
    return log_probs.masked_fill(~counted, 0.0), counted


@torch.no_grad()
def token_log_probs(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`log_probs_from_logits` of the model's forward pass (no grad, eval mode)."""
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return log_probs_from_logits(logits, input_ids, attention_mask)


def loss_score(log_probs: Tensor, counted: Tensor) -> Tensor:
    """The LOSS attack's score from token log-probabilities: their mean per sample, ``Tensor[B]``."""
    return log_probs.sum(1) / counted.sum(1)


def zlib_score(
    log_probs: Tensor, input_ids: Tensor, attention_mask: Tensor, texts: Sequence[str] | None = None
) -> Tensor:
    """The zlib attack's score from token log-probabilities: total log-probability over the zlib-compressed length
    in bytes of ``texts`` (UTF-8) when given, else of the token ids (4 bytes each), ``Tensor[B]``."""
    if texts is None:
        lengths = attention_mask.sum(1).tolist()
        blobs = [input_ids[row, :n].to(torch.int32).cpu().numpy().tobytes() for row, n in enumerate(lengths)]
    else:
        blobs = [text.encode("utf-8") for text in texts]
    compressed = torch.tensor([len(zlib.compress(blob)) for blob in blobs], dtype=torch.float32)
    return log_probs.sum(1) / compressed.to(log_probs.device)


def min_k_score(log_probs: Tensor, counted: Tensor, k: float = 0.2) -> Tensor:
    """The min-k% attack's score from token log-probabilities: the mean of each sample's lowest ``k`` fraction (at
    least one), ``Tensor[B]``."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    lowest_first = log_probs.masked_fill(~counted, float("inf")).sort(dim=1).values
    count = (counted.sum(1).float() * k).long().clamp(min=1)
    keep = torch.arange(lowest_first.shape[1], device=count.device)[None, :] < count[:, None]
    return (lowest_first * keep).nan_to_num(posinf=0.0).sum(1) / count


def attack_scores(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
    """Every attack of :data:`ATTACKS` (``Tensor[B]`` each, by name) from one forward pass's logits."""
    log_probs, counted = log_probs_from_logits(logits, input_ids, attention_mask)
    return {
        "loss": loss_score(log_probs, counted),
        "zlib": zlib_score(log_probs, input_ids, attention_mask),
        "min_k": min_k_score(log_probs, counted),
    }


def loss_attack(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """LOSS attack (Yeom et al.): −mean token NLL per sample, ``Tensor[B]``."""
    return loss_score(*token_log_probs(model, input_ids, attention_mask))


def zlib_attack(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, texts: Sequence[str] | None = None
) -> Tensor:
    """zlib attack (Carlini et al. 2021): −(total NLL in nats) / (zlib-compressed length in bytes), ``Tensor[B]``.

    The compressed length is that of ``texts`` (UTF-8) when given, else of the token ids (4 bytes each): a
    sequence the model finds likelier than its compressibility suggests is likely a member.
    """
    log_probs, _ = token_log_probs(model, input_ids, attention_mask)
    return zlib_score(log_probs, input_ids, attention_mask, texts)


def min_k_attack(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, k: float = 0.2) -> Tensor:
    """Min-k% prob attack (Shi et al. 2024): mean of the lowest ``k`` fraction (at least one) of each sample's token
    log-probabilities, ``Tensor[B]``."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    return min_k_score(*token_log_probs(model, input_ids, attention_mask), k)


# The attacks on token log-probabilities, by name: (model, input_ids, attention_mask) -> Tensor[B].
ATTACKS: dict[str, Callable[[torch.nn.Module, Tensor, Tensor], Tensor]] = {
    "loss": loss_attack,
    "zlib": zlib_attack,
    "min_k": min_k_attack,
}


def word_perturbation(text: str, rng: random.Random, pool: Sequence[str], mask_fraction: float, span: int) -> str:
    """Replaces about ``mask_fraction`` of the words of ``text``, in spans of ``span`` words, by words of ``pool``."""
    words = text.split()
    if not words:
        return text
    spans = max(1, round(len(words) * mask_fraction / span))
    for start in rng.sample(range(len(words)), min(spans, len(words))):
        for i in range(start, min(start + span, len(words))):
            words[i] = rng.choice(pool)
    return " ".join(words)


def mask_fill_neighbours(
    text: str,
    count: int,
    rng: random.Random,
    mask_model: torch.nn.Module,
    mask_tokenizer: object,
    mask_fraction: float,
    span: int,
) -> list[str]:
    """``count`` neighbours of ``text``: spans of ``span`` words (about ``mask_fraction`` of them) replaced by
    T5 sentinels ``<extra_id_i>`` and filled by a mask-filling model, as the paper's authors did."""
    words = text.split()
    spans = max(1, round(len(words) * mask_fraction / span))
    masked_texts, chosen = [], []
    for _ in range(count):
        starts = sorted(rng.sample(range(0, len(words), span), min(spans, -(-len(words) // span))))
        chosen.append(starts)
        pieces, position = [], 0
        for i, start in enumerate(starts):
            pieces += [*words[position:start], f"<extra_id_{i}>"]
            position = start + span
        masked_texts.append(" ".join(pieces + words[position:]))
    device = next(mask_model.parameters()).device
    encoded = mask_tokenizer(masked_texts, return_tensors="pt", padding=True).to(device)
    with torch.no_grad(), eval_mode(mask_model):
        generated = mask_model.generate(**encoded, max_new_tokens=4 * span * spans + 8, do_sample=False)
    neighbours = []
    for starts, output in zip(chosen, mask_tokenizer.batch_decode(generated, skip_special_tokens=False), strict=True):
        fills = [f.replace("<pad>", "").replace("</s>", "").strip() for f in re.split(r"<extra_id_\d+>", output)[1:]]
        new_words, position = [], 0
        for i, start in enumerate(starts):
            fill = fills[i] if i < len(fills) and fills[i] else " ".join(words[start : start + span])
            new_words += [*words[position:start], fill]
            position = start + span
        neighbours.append(" ".join(new_words + words[position:]))
    return neighbours


class NeighbourhoodAttack:
    """MIAU's neighbourhood attack (Mattern et al. 2023): score(x) = |ll(x) − mean_k ll(x̃_k)|, ``Tensor[B]``.

    ll is the mean token log-likelihood; x̃_1..x̃_K are perturbed neighbours of x. A member's likelihood stands
    out from its neighbours'; a non-member's does not. Neighbours come from ``perturb(text) -> text`` when given;
    else from a Hugging Face mask-filling model (``mask_model`` and ``mask_tokenizer``, T5-style sentinel spans,
    as the authors did with T5); else from a word-level perturbation needing no download: ``mask_fraction`` of
    the words, in spans of ``span`` words, replaced by words drawn from all scored texts. Seeded, reproducible.

    Args:
        perturb: a function making one neighbour of a text.
        mask_model: a T5-style mask-filling model (e.g. ``T5ForConditionalGeneration``).
        mask_tokenizer: its tokenizer, with ``<extra_id_i>`` sentinels.
        num_neighbours: K.
        mask_fraction: fraction of words perturbed, in [0, 1].
        span: words per perturbed span.
        seed: random seed of the built-in perturbation.
        batch_size: texts scored per forward pass.
    """

    def __init__(
        self,
        perturb: Callable[[str], str] | None = None,
        mask_model: torch.nn.Module | None = None,
        mask_tokenizer: object = None,
        num_neighbours: int = 25,
        mask_fraction: float = 0.3,
        span: int = 2,
        seed: int = 0,
        batch_size: int = 32,
    ) -> None:
        if mask_model is not None and mask_tokenizer is None:
            raise ValueError("mask_model needs its mask_tokenizer")
        self.perturb = perturb
        self.mask_model = mask_model
        self.mask_tokenizer = mask_tokenizer
        self.num_neighbours = num_neighbours
        self.mask_fraction = mask_fraction
        self.span = span
        self.seed = seed
        self.batch_size = batch_size

    def neighbours(self, texts: Sequence[str]) -> list[list[str]]:
        """K neighbours of each text."""
        if self.perturb is not None:
            return [[self.perturb(text) for _ in range(self.num_neighbours)] for text in texts]
        rng = random.Random(self.seed)
        if self.mask_model is not None:
            return [
                mask_fill_neighbours(
                    text, self.num_neighbours, rng, self.mask_model, self.mask_tokenizer, self.mask_fraction, self.span
                )
                for text in texts
            ]
        pool = sorted({word for text in texts for word in text.split()})
        return [
            [word_perturbation(text, rng, pool, self.mask_fraction, self.span) for _ in range(self.num_neighbours)]
            for text in texts
        ]

    def score(self, model: torch.nn.Module, tokenizer: object, texts: Sequence[str]) -> Tensor:
        """|ll(x) − mean ll(neighbours)| of each text, ``Tensor[B]`` (nats per token)."""
        neighbours = self.neighbours(texts)
        own = self._log_likelihood(model, tokenizer, list(texts))
        flat = self._log_likelihood(model, tokenizer, [n for group in neighbours for n in group])
        return (own - flat.view(len(texts), self.num_neighbours).mean(1)).abs()

    def _log_likelihood(self, model: torch.nn.Module, tokenizer: object, texts: list[str]) -> Tensor:
        device = next(model.parameters()).device
        collate = PadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        # Neighbours can tokenize longer than their text: keep them within the model's positions.
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        values = []
        for start in range(0, len(texts), self.batch_size):
            samples = [
                {"input_ids": torch.tensor(tokenizer(text)["input_ids"][:limit]), "sample_id": i}
                for i, text in enumerate(texts[start : start + self.batch_size])
            ]
            batch = collate(samples)
            values.append(loss_attack(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu())
        return torch.cat(values)


def attack_auc(member_scores: Tensor | Sequence[float], nonmember_scores: Tensor | Sequence[float]) -> float:
    """ROC-AUC of telling members from non-members by score (higher = member), ties counted half.

    Equals the fraction of (member, non-member) pairs in which the member scores higher, plus half the ties.

    Example:
        >>> attack_auc([0.9, 0.5], [0.5, 0.1])
        0.875
    """
    members = torch.as_tensor(member_scores, dtype=torch.float64).flatten()
    nonmembers = torch.as_tensor(nonmember_scores, dtype=torch.float64).flatten()
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError(f"attack_auc needs members and non-members, got {len(members)} and {len(nonmembers)}")
    if members.isnan().any() or nonmembers.isnan().any():
        raise ValueError("attack_auc got NaN scores")
    combined = torch.cat([members, nonmembers])
    _, inverse, counts = torch.unique(combined, return_inverse=True, return_counts=True)
    first_rank = counts.cumsum(0) - counts + 1  # ranks 1.. of each distinct value
    average_rank = first_rank.double() + (counts.double() - 1) / 2  # ties share their mean rank
    member_rank_sum = average_rank[inverse[: len(members)]].sum()
    n, m = len(members), len(nonmembers)
    return ((member_rank_sum - n * (n + 1) / 2) / (n * m)).item()
