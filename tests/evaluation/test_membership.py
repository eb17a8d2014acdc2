"""Membership attacks against hand-computed values, and the AUC against a brute-force pairwise count."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import pytest
import torch

from lightning_unlearn.evaluation.membership import (
    NeighbourhoodAttack,
    loss_attack,
    min_k_attack,
    token_log_probs,
    zlib_attack,
)
from lightning_unlearn.functional.membership import membership_auc


class FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token distribution is given: p(x_t | x_<t) is row t-1 of ``probs``."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.log(probs)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits[: len(input_ids), : input_ids.shape[1]])


# Sample 0: tokens 0 1 2 3 4 with p(x_t) = 0.5, 0.25, 0.125, 0.5 ; sample 1: tokens 1 1 1 (padded) with 0.5, 0.5.
IDS = torch.tensor([[0, 1, 2, 3, 4], [1, 1, 1, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def fixed_model() -> FixedLogits:
    probs = torch.full((2, 5, 5), 0.125)
    for t, (token, p) in enumerate([(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.5)]):
        probs[0, t] = (1 - p) / 4
        probs[0, t, token] = p
    for t in range(2):
        probs[1, t] = 0.125
        probs[1, t, 1] = 0.5
    return FixedLogits(probs)


def test_token_log_probs_and_loss_attack():
    log_probs, counted = token_log_probs(fixed_model(), IDS, MASK)
    assert counted.tolist() == [[True] * 4, [True, True, False, False]]
    assert log_probs[0].tolist() == pytest.approx([math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.5)])
    expected = [(math.log(0.5) * 2 + math.log(0.25) + math.log(0.125)) / 4, math.log(0.5)]
    assert loss_attack(fixed_model(), IDS, MASK).tolist() == pytest.approx(expected)


def test_zlib_attack_is_carlini_et_als_log_perplexity_over_zlib_entropy():
    """Carlini et al. (2021), extraction.py: ``np.log(perplexity) / len(zlib.compress(bytes(text, "utf-8")))``,
    ranked low-first; ours is negated (higher = member)."""
    texts = ["alpha beta gamma", "aaaaaaaaaaaaaaaaaaaaaaaa"]
    token_probs = [[0.5, 0.25, 0.125, 0.5], [0.5, 0.5]]
    for row, (text, probs) in enumerate(zip(texts, token_probs, strict=True)):
        perplexity = math.exp(-sum(math.log(p) for p in probs) / len(probs))
        carlini = math.log(perplexity) / len(zlib.compress(bytes(text, "utf-8")))
        assert zlib_attack(fixed_model(), IDS, MASK, texts=texts)[row].item() == pytest.approx(-carlini, rel=1e-6)
    with pytest.raises(ValueError, match="one text per sample"):
        zlib_attack(fixed_model(), IDS, MASK, texts=texts[:1])


def test_min_k_attack_averages_the_lowest_log_probs():
    # Sample 0's log-probs: log .5, log .25, log .125, log .5 -> the lowest half: log .125 and log .25.
    scores = min_k_attack(fixed_model(), IDS, MASK, k=0.5)
    assert scores.tolist() == pytest.approx([(math.log(0.125) + math.log(0.25)) / 2, math.log(0.5)])
    # k so small that int(k * n) == 0: the single lowest token counts.
    assert min_k_attack(fixed_model(), IDS, MASK, k=0.01)[0].item() == pytest.approx(math.log(0.125))
    with pytest.raises(ValueError, match="k must be in"):
        min_k_attack(fixed_model(), IDS, MASK, k=0.0)


def test_neighbourhood_attack_with_a_deterministic_perturbation(small_testbed):
    tb = small_testbed
    texts = tb.forget[:3]
    attack = NeighbourhoodAttack(perturb=lambda text: text.replace("Name", "Nom"), num_neighbours=2)
    scores = attack.score(tb.model, tb.tokenizer, texts)

    def ll(text):
        ids = torch.tensor([tb.tokenizer(text)["input_ids"]])
        return loss_attack(tb.model, ids, torch.ones_like(ids)).item()

    expected = [abs(ll(t) - ll(t.replace("Name", "Nom"))) for t in texts]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)


def test_builtin_neighbours_are_seeded_and_perturb_about_the_fraction():
    texts = ["one two three four five six seven eight nine ten", "a b c d e f g h i j"]
    attack = NeighbourhoodAttack(num_neighbours=3, mask_fraction=0.4, span=2, seed=7)
    first, second = attack.neighbours(texts), attack.neighbours(texts)
    assert first == second
    for text, group in zip(texts, first, strict=True):
        for neighbour in group:
            changed = sum(a != b for a, b in zip(text.split(), neighbour.split(), strict=True))
            assert 1 <= changed <= 4  # 2 spans of 2 words, some replacements may pick the same word
    assert NeighbourhoodAttack(num_neighbours=3, seed=8).neighbours(texts) != first


def brute_force_auc(members, nonmembers):
    pairs = [(m > n) + 0.5 * (m == n) for m in members for n in nonmembers]
    return sum(pairs) / len(pairs)


def test_attack_auc_equals_pairwise_ranking_with_half_ties():
    g = torch.Generator().manual_seed(0)
    members = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    nonmembers = torch.randint(0, 5, (30,), generator=g).float()
    assert membership_auc(members, nonmembers) == pytest.approx(brute_force_auc(members.tolist(), nonmembers.tolist()))
    assert membership_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    assert membership_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert membership_auc([0.0], [1.0]) == 0.0


def test_attack_auc_rejects_an_empty_class_and_nan():
    with pytest.raises(ValueError, match="needs members and non-members, got 0 and 2"):
        membership_auc([], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        membership_auc([float("nan")], [1.0])


def test_loss_attack_separates_the_testbeds_forget_records(small_testbed):
    tb = small_testbed
    tokenizer = tb.tokenizer
    scores = {}
    for name, texts in (("forget", tb.forget), ("holdout", tb.holdout)):
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        scores[name] = loss_attack(tb.model, encoded["input_ids"], encoded["attention_mask"])
    assert membership_auc(scores["forget"], scores["holdout"]) >= 0.75


def tiny_t5():
    """A random 1-layer T5 and a word-level tokenizer with T5's sentinels: fills are noise, but real ones."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    specials = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(10)]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=specials[3:],
    )
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config), tokenizer


def test_mask_model_neighbours_fill_sentinel_spans():
    model, tokenizer = tiny_t5()
    text = "one two three four five six seven eight nine ten"
    attack = NeighbourhoodAttack(mask_model=model, mask_tokenizer=tokenizer, num_neighbours=4, seed=1)
    neighbours = attack.neighbours([text])
    assert neighbours == attack.neighbours([text])  # seeded
    assert len(neighbours[0]) == 4
    for neighbour in neighbours[0]:
        assert "<extra_id" not in neighbour and neighbour.split()
    with pytest.raises(ValueError, match="needs its mask_tokenizer"):
        NeighbourhoodAttack(mask_model=model)


class FixedFill(torch.nn.Module):
    """A mask-filling stand-in that always answers the same two fills."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, **kwargs):
        answer = "<pad> <extra_id_0> nine nine <extra_id_1> ten ten </s>"
        return torch.tensor([self.tokenizer(answer)["input_ids"]] * len(input_ids))


def test_mask_model_fills_replace_the_masked_spans():
    _, tokenizer = tiny_t5()
    text = "one two three four five six seven eight"
    attack = NeighbourhoodAttack(
        mask_model=FixedFill(tokenizer), mask_tokenizer=tokenizer, num_neighbours=3, mask_fraction=0.5, span=2
    )
    for neighbour in attack.neighbours([text])[0]:
        words = neighbour.split()
        assert len(words) == 8 and neighbour != text
        # Two spans of two words were masked and came back as "nine nine" and "ten ten", in order.
        assert neighbour.count("nine nine") == 1 and neighbour.count("ten ten") == 1
        assert neighbour.index("nine nine") < neighbour.index("ten ten")
