"""The memorization functions against hand-computed values and naive one-sequence-at-a-time references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn.functional import memorization
from lightning_unlearn.functional.memorization import memorization_accuracy, nll_and_accuracy, sequence_nll


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
    checked = memorization.recheck_near_ties(half, targets, half.argmax(-1), hidden, memorization.linear_logits(head))
    assert torch.equal((checked == targets) & counted, want)
