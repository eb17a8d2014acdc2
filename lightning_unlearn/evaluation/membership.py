"""Membership attacks on a model: is this record a training member? Per-sample scores (higher = more likely a
member); their AUC against unseen records is :func:`~lightning_unlearn.functional.membership.membership_auc`.

An ideal unlearned model scores forget records like unseen (holdout) ones: AUC ≈ 0.5. The attacks on token
log-probabilities (LOSS, zlib, min-k%) take a right-padded batch; the neighbourhood attack (MIAU, as the paper
uses it) takes texts and compares each with perturbed neighbours. (Attacks that try to bring a forgotten record
back are the recovery attacks, :mod:`lightning_unlearn.evaluation.recovery`.)
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_unlearn.data import PadCollator
from lightning_unlearn.evaluation.scoring import eval_mode
from lightning_unlearn.functional.membership import log_probs_from_logits, loss_score, min_k_score, zlib_score
from lightning_unlearn.utilities.errors import ConfigurationError


@torch.no_grad()
def token_log_probs(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`log_probs_from_logits` of the model's forward pass (no grad, eval mode)."""
    with eval_mode(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return log_probs_from_logits(logits, input_ids, attention_mask)


def loss_attack(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """LOSS attack (Yeom et al.): −mean token NLL per sample, ``Tensor[B]``."""
    return loss_score(*token_log_probs(model, input_ids, attention_mask))


def zlib_attack(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, texts: Sequence[str]) -> Tensor:
    """zlib attack (Carlini et al. 2021): −(mean token NLL in nats) / (zlib-compressed size of the UTF-8 text in
    bytes), ``Tensor[B]``: a sequence the model finds likelier than its compressibility suggests is likely a member.
    ``texts`` are the samples' texts, one per row."""
    return zlib_score(*token_log_probs(model, input_ids, attention_mask), texts)


def min_k_attack(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, k: float = 0.2) -> Tensor:
    """Min-k% prob attack (Shi et al. 2024): mean of the lowest ``k`` fraction (at least one) of each sample's token
    log-probabilities, ``Tensor[B]``."""
    if not 0 < k <= 1:
        raise ConfigurationError(f"k must be in (0, 1], got {k}")
    return min_k_score(*token_log_probs(model, input_ids, attention_mask), k)


#: The membership attacks on token log-probabilities, by name, as reports and ``MembershipMonitor`` take them.
MEMBERSHIP_ATTACKS = ("loss", "zlib", "min_k")

#: The attacks that need only the tokens: (model, input_ids, attention_mask) -> Tensor[B]. zlib needs the texts
#: too: it is the LOSS score over :func:`~lightning_unlearn.functional.membership.zlib_sizes`.
TOKEN_ATTACKS: dict[str, Callable[[torch.nn.Module, Tensor, Tensor], Tensor]] = {
    "loss": loss_attack,
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
    """MIAU's neighbourhood attack (Mattern et al. 2023): score(x) = ``|ll(x) − mean_k ll(x̃_k)|``, ``Tensor[B]``.

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
            raise ConfigurationError("mask_model needs its mask_tokenizer")
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
        """``|ll(x) − mean ll(neighbours)|`` of each text, ``Tensor[B]`` (nats per token)."""
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
