"""Measuring models (lightning_unlearn.evaluation.scoring): EL_n and verbatim extraction equal their definitions
(brute-force greedy decoding), whole loaders are scored by sample_id, and half-precision logits have their near ties
decided in float32 through the output layer's head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn.evaluation.scoring import (
    extraction_likelihood,
    output_layer_input,
    score_memorization,
    verbatim_extraction,
)
from lightning_unlearn.functional.memorization import memorization_accuracy, nll_and_accuracy
from tests.conftest import VOCAB, greedy, make_model, pad


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


def test_memorization_accuracy_of_half_logits_with_the_head_matches_float32(model64, samples):
    ids, mask = pad(samples)
    model = make_model()  # float32 weights under bf16 autocast, as "bf16-mixed" trains
    with torch.autocast("cpu", dtype=torch.bfloat16), output_layer_input(model) as head:
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == torch.bfloat16 and set(head) == {"head", "head_input"}
    reference = memorization_accuracy(
        F.linear(head["head_input"].float(), model.get_output_embeddings().weight), ids, mask
    )  # the float32 output layer on the same bf16 input
    assert torch.equal(memorization_accuracy(logits, ids, mask, **head), reference)
    assert torch.equal(nll_and_accuracy(logits, ids, mask, **head)[1], reference)
