"""The memorization functions against hand-computed values and naive one-sequence-at-a-time references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn import memorization
from lightning_unlearn.memorization import (
    extraction_likelihood,
    memorization_accuracy,
    nll_and_accuracy,
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


def transposed_float32_nll(logits, input_ids, attention_mask):
    """The former sequence_nll, the reference: a float32 copy of the shifted logits, transposed to (B, V, T)."""
    counted = memorization.predicted_positions(attention_mask).float()
    shifted = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(shifted.transpose(1, 2), input_ids[:, 1:], reduction="none")
    return (nll * counted).sum(1) / counted.sum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_flattened_nll_and_accuracy_equal_the_reference(dtype, chunk_rows, monkeypatch):
    """Values and gradients of the flattened, chunked path equal the float32 copy's (NLL within 1e-5 relative, g
    exactly), with padding, samples of one token, and chunks that split samples (5 rows of 7 positions)."""
    vocabulary = 50
    if chunk_rows is not None:
        monkeypatch.setattr(memorization, "CHUNK_ELEMENTS", chunk_rows * vocabulary)
    torch.manual_seed(0)
    logits = (3 * torch.randn(4, 7, vocabulary)).to(dtype)
    logits[0, 2, 7] = logits[0, 2].max()  # a tie in the argmax, decided alike
    input_ids = torch.randint(0, vocabulary, (4, 7))
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5, [1] + [0] * 6])
    expected_nll = transposed_float32_nll(logits, input_ids, attention_mask)
    expected_g = memorization_accuracy(logits, input_ids, attention_mask)

    nll, g = nll_and_accuracy(logits, input_ids, attention_mask)
    assert nll.dtype == expected_nll.dtype and g.dtype == torch.float32
    assert torch.allclose(nll[:3], expected_nll[:3], rtol=1e-5, atol=0) and nll[3].isnan() and g[3].isnan()
    assert torch.equal(g[:3], expected_g[:3])
    assert torch.equal(sequence_nll(logits, input_ids, attention_mask)[:3], nll[:3])

    weights = torch.tensor([0.5, -1.0, 2.0], dtype=nll.dtype)
    grads = []
    for compute in (transposed_float32_nll, sequence_nll):
        leaf = logits.clone().requires_grad_(True)
        (compute(leaf, input_ids, attention_mask)[:3] * weights).sum().backward()
        grads.append(leaf.grad)
    assert grads[1].dtype == dtype
    tolerance = {torch.bfloat16: 1e-2, torch.float16: 1e-3}.get(dtype, 1e-6)
    # (the reference's gradient is NaN on the one-token sample: 0 · (1/0); ours is 0 there)
    assert torch.allclose(grads[1][:3].float(), grads[0][:3].float(), rtol=tolerance, atol=tolerance * 1e-2)
    assert torch.equal(grads[1][3], torch.zeros_like(grads[1][3]))


def test_half_precision_nll_never_copies_all_logits_to_float32(monkeypatch):
    """Chunk by chunk: no operation of the NLL, forward or backward, makes a float32 tensor larger than one chunk
    (every op's outputs are watched, so a .to(), .float() or an upcast inside an op would show)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocabulary, rows = 64, 3
    monkeypatch.setattr(memorization, "CHUNK_ELEMENTS", rows * vocabulary)
    logits = torch.randn(2, 12, vocabulary, dtype=torch.bfloat16, requires_grad=True)
    input_ids = torch.randint(0, vocabulary, (2, 12))
    largest = [0]

    class Float32Outputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32:
                    largest[0] = max(largest[0], tensor.numel())
            return out

    with Float32Outputs():
        sequence_nll(logits, input_ids, torch.ones_like(input_ids)).sum().backward()
    assert 0 < largest[0] <= rows * vocabulary < logits.numel()
    assert logits.grad.dtype == torch.bfloat16
    with Float32Outputs():  # the former implementation does copy them all
        transposed_float32_nll(logits.detach(), input_ids, torch.ones_like(input_ids))
    assert largest[0] >= 2 * 11 * vocabulary


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


def test_near_ties_of_half_precision_logits_are_decided_in_float32():
    """Logits from a bf16 matmul flip argmax ties that float32 decides otherwise; after the re-check, every hit is
    the float32 output layer's, while only the near-tied positions were recomputed."""
    torch.manual_seed(0)
    positions, hidden_size, vocabulary = 4096, 16, 50
    head = torch.nn.Linear(hidden_size, vocabulary, bias=True)
    with torch.no_grad():  # rivals: tokens 1-3 are token 0 with a small change, so ties are frequent
        head.weight[1:4] = head.weight[0] + 1e-3 * torch.randn(3, hidden_size)
    hidden = torch.randn(positions, hidden_size).bfloat16()
    exact = F.linear(hidden.float(), head.weight, head.bias)
    half = F.linear(hidden, head.weight.bfloat16(), head.bias.bfloat16())
    targets = exact.argmax(-1).where(torch.rand(positions) < 0.5, torch.randint(0, 4, (positions,)))
    targets[::7] = memorization.IGNORE_INDEX
    counted = targets != memorization.IGNORE_INDEX
    want = (exact.argmax(-1) == targets) & counted
    before = (half.argmax(-1) == targets) & counted
    assert (before != want).sum() > 5  # bf16 alone gets some wrong
    checked = memorization.recheck_near_ties(half, targets, half.argmax(-1), hidden, head)
    assert torch.equal((checked == targets) & counted, want)


def test_memorization_accuracy_of_half_logits_with_the_head_matches_float32(model64, samples):
    ids, mask = pad(samples)
    model = make_model()  # float32 weights under bf16 autocast, as "bf16-mixed" trains
    with torch.autocast("cpu", dtype=torch.bfloat16), memorization.output_layer_input(model) as head:
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == torch.bfloat16 and set(head) == {"head", "head_input"}
    reference = memorization_accuracy(
        F.linear(head["head_input"].float(), head["head"].weight), ids, mask
    )  # the float32 output layer on the same bf16 input
    assert torch.equal(memorization_accuracy(logits, ids, mask, **head), reference)
    assert torch.equal(nll_and_accuracy(logits, ids, mask, **head)[1], reference)
