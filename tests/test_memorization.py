"""The memorization functions against hand-computed values and naive one-sequence-at-a-time references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn.memorization import (
    extraction_likelihood,
    memorization_accuracy,
    score_memorization,
    sequence_nll,
    verbatim_extraction,
)
from tests.conftest import make_model

VOCAB = 64


def greedy(model, prefix: list[int], num_tokens: int) -> list[int]:
    """Reference greedy decoding: no padding, no cache, no stop at EOS."""
    ids = list(prefix)
    for _ in range(num_tokens):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


def naive_extraction_likelihood(model, sample: list[int], n: int) -> float:
    """EL_n straight from its definition (DESIGN.md §2)."""
    length = len(sample)
    overlaps = []
    for t in range(1, length - n + 1):
        a = greedy(model, sample[:t], length - t)[t:]
        b = sample[t:]
        grams_b = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
        positions = len(a) - n + 1
        overlaps.append(sum(tuple(a[i : i + n]) in grams_b for i in range(positions)) / positions)
    return sum(overlaps) / len(overlaps)


def pad(samples: list[list[int]], pad_id: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(samples):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def model64():
    return make_model(VOCAB, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def samples(model64) -> list[list[int]]:
    """Mixed lengths: memorized (the model's own greedy text), corrupted memorized, and random sequences."""
    g = torch.Generator().manual_seed(1)
    memorized = greedy(model64, [3, 17], 20)
    short_memorized = greedy(model64, [40], 13)
    corrupted = list(memorized)
    corrupted[9] = (corrupted[9] + 1) % VOCAB
    twice_corrupted = list(short_memorized)
    twice_corrupted[4] = (twice_corrupted[4] + 7) % VOCAB
    twice_corrupted[11] = (twice_corrupted[11] + 3) % VOCAB
    random = torch.randint(1, VOCAB, (16,), generator=g).tolist()
    random_long = torch.randint(1, VOCAB, (22,), generator=g).tolist()
    return [memorized, corrupted, random, short_memorized, twice_corrupted, random_long]


def test_memorization_accuracy_hand_computed():
    ids = torch.tensor([[1, 2, 3, 1], [2, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # Predictions (argmax at each position): row 0 predicts 2, 0, 1 for x_1..x_3 -> 2 of 3 right.
    # Row 1 predicts 2 for x_1 (right); its padding predictions (3, 3) would be "right" if counted, but are not.
    predicted = torch.tensor([[2, 0, 1, 0], [2, 0, 3, 0]])
    logits = F.one_hot(predicted, 4).float()
    logits[1, 1, 0] = 0.0  # make position 1's argmax 0 explicit: it predicts padding's token
    assert memorization_accuracy(logits, ids, mask).tolist() == pytest.approx([2 / 3, 1.0])


def test_memorization_accuracy_single_token_is_nan():
    g = memorization_accuracy(torch.zeros(1, 2, 4), torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    assert math.isnan(g.item())


def test_sequence_nll_hand_computed():
    ids = torch.tensor([[0, 1, 2], [1, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]]] * 2) + 1e-30)
    expected_0 = (-math.log(0.5) - math.log(0.5)) / 2  # p(x_1=1)=0.5, p(x_2=2)=0.5
    expected_1 = -math.log(0.5)  # p(x_1=0)=0.5; the padded position does not count
    assert sequence_nll(logits, ids, mask).tolist() == pytest.approx([expected_0, expected_1], rel=1e-5)


@pytest.mark.parametrize("n", [3, 10])
def test_extraction_likelihood_equals_definition(model64, samples, n):
    ids, mask = pad(samples)
    fast = extraction_likelihood(model64, ids, mask, n=n)
    reference = [naive_extraction_likelihood(model64, s, n) for s in samples]
    assert fast.tolist() == pytest.approx(reference, abs=1e-6)
    assert fast[0] > 0.8 > fast[2]  # memorized vs random: the test data spans the range


def test_extraction_likelihood_small_generation_batches_agree(model64, samples):
    ids, mask = pad(samples)
    assert torch.equal(
        extraction_likelihood(model64, ids, mask, n=3, generation_batch_size=1),
        extraction_likelihood(model64, ids, mask, n=3),
    )


def test_extraction_likelihood_decodes_nothing_for_memorized_text(model64):
    memorized = greedy(model64, [9], 24)
    ids, mask = pad([memorized[:20], memorized])
    calls = []
    hook = model64.register_forward_hook(lambda *args: calls.append(1))
    try:
        el = extraction_likelihood(model64, ids, mask, n=4)
    finally:
        hook.remove()
    assert el.tolist() == [1.0, 1.0]
    assert len(calls) == 1  # the teacher-forced pass only


def test_extraction_likelihood_rejects_short_samples(model64):
    ids, mask = pad([list(range(1, 20)), [1, 2, 3, 4]])
    with pytest.raises(ValueError, match=r"rows \[1\] have \[4\]"):
        extraction_likelihood(model64, ids, mask, n=10)


def test_verbatim_extraction_matches_greedy_decoding(model64, samples):
    ids, mask = pad(samples)
    prefix, suffix = 4, 10
    got = verbatim_extraction(model64, ids, mask, prefix_length=prefix, suffix_length=suffix)
    expected = [greedy(model64, s[:prefix], suffix)[prefix:] == s[prefix : prefix + suffix] for s in samples]
    assert got.tolist() == expected
    assert expected[0] and not expected[1] and not expected[2]


def test_verbatim_extraction_rejects_short_samples(model64, samples):
    ids, mask = pad(samples)
    with pytest.raises(ValueError, match="prefix_length \\+ suffix_length = 100"):
        verbatim_extraction(model64, ids, mask)


def test_score_memorization_keys_by_sample_id_and_restores_mode(model64, samples):
    ids, mask = pad(samples)
    batches = [
        {"input_ids": ids[:4], "attention_mask": mask[:4], "sample_id": torch.tensor([10, 11, 12, 13])},
        {"input_ids": ids[4:], "attention_mask": mask[4:], "sample_id": torch.tensor([14, 15])},
    ]
    model64.train()
    scores = score_memorization(model64, batches)
    assert model64.training
    model64.eval()
    expected = memorization_accuracy(model64(input_ids=ids, attention_mask=mask).logits, ids, mask)
    assert list(scores) == [10, 11, 12, 13, 14, 15]
    assert list(scores.values()) == pytest.approx(expected.tolist())
    assert scores[10] == pytest.approx(20 / 21)  # greedy text after a 2-token prompt: all but x_1 predicted


def test_extraction_likelihood_within_the_models_positions():
    """Mixed lengths up to the model's last position: batched decoding never runs past it."""
    model = make_model(VOCAB, seed=3, dtype=torch.float64, max_positions=24)
    g = torch.Generator().manual_seed(2)
    samples = [greedy(model, [5], 23), torch.randint(1, VOCAB, (12,), generator=g).tolist(), greedy(model, [7], 15)]
    samples[0][3] = (samples[0][3] + 1) % VOCAB
    ids, mask = pad(samples)
    reference = [naive_extraction_likelihood(model, s, 3) for s in samples]
    assert extraction_likelihood(model, ids, mask, n=3).tolist() == pytest.approx(reference, abs=1e-6)
