"""NPO, SimNPO and the token-level KL against values and gradients computed by hand (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_unlearn.functional import memorization
from lightning_unlearn.functional.losses import hit_token_ascent_loss, npo_loss, simnpo_loss, token_kl
from lightning_unlearn.functional.memorization import sequence_log_likelihood, sequence_nll

# Two samples over a 3-token vocabulary: [0, 2, 1] (three tokens) and [1, 0] (two tokens, then padding).
IDS = torch.tensor([[0, 2, 1], [1, 0, 0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LOGITS = [
    [[0.5, -1.0, 2.0], [1.5, 0.3, -0.2], [9.0, 9.0, 9.0]],
    [[2.0, 0.0, -1.0], [-3.0, 4.0, 1.0], [7.0, -7.0, 0.0]],  # the last row predicts padding: never counts
]


def softmax(row):
    total = sum(math.exp(z) for z in row)
    return [math.exp(z) / total for z in row]


def by_hand():
    """Each sample's counted predictions: (position, target, probabilities)."""
    return [
        [(0, 2, softmax(LOGITS[0][0])), (1, 1, softmax(LOGITS[0][1]))],
        [(0, 0, softmax(LOGITS[1][0]))],
    ]


def logits_tensor():
    return torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)


def expected_gradient(scale_per_sample):
    """d loss / d logits when d loss / d log π(x) = scale(x): scale · (one-hot − p) at each counted position."""
    grad = torch.zeros(2, 3, 3, dtype=torch.float64)
    for b, positions in enumerate(by_hand()):
        for t, target, p in positions:
            for v in range(3):
                grad[b, t, v] = scale_per_sample[b] * ((v == target) - p[v])
    return grad


def test_npo_matches_the_formula_and_its_gradient():
    beta = 0.1
    log_pi = [sum(math.log(p[target]) for _, target, p in sample) for sample in by_hand()]
    reference = [log_pi[0] + 0.7, log_pi[1] - 1.3]  # the model is now less (sample 0) or more (1) likely
    ratio = [math.exp(a - r) for a, r in zip(log_pi, reference, strict=True)]  # π_θ / π_ref
    expected = [(2 / beta) * math.log(1 + q**beta) for q in ratio]
    # d/d log π of (2/β)·log(1 + e^{β(log π − log π_ref)}) = 2·q^β / (1 + q^β)
    scale = [2 * q**beta / (1 + q**beta) for q in ratio]

    logits = logits_tensor()
    nll = sequence_nll(logits, IDS, MASK)
    loss = npo_loss(sequence_log_likelihood(nll, MASK), torch.tensor(reference, dtype=torch.float64), beta)
    assert loss.dtype == torch.float64
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    loss.sum().backward()
    assert torch.allclose(logits.grad, expected_gradient(scale), rtol=1e-10, atol=1e-12)


def test_npo_starts_at_two_over_beta_log_two():
    start = npo_loss(torch.tensor([-50.0, -3.0]), torch.tensor([-50.0, -3.0]), beta=0.5)
    assert start.tolist() == pytest.approx([4 * math.log(2)] * 2)


def test_simnpo_matches_the_formula_and_its_gradient():
    beta, delta = 4.5, 0.2
    nll_by_hand = [-sum(math.log(p[target]) for _, target, p in s) / len(s) for s in by_hand()]
    sigmoid = [1 / (1 + math.exp(-beta * (n - delta))) for n in nll_by_hand]
    expected = [-(2 / beta) * math.log(s) for s in sigmoid]
    # d loss / d NLL_mean = −2(1 − σ); NLL_mean = −log π / (L − 1), so d loss / d log π = 2(1 − σ) / (L − 1).
    scale = [2 * (1 - s) / len(sample) for s, sample in zip(sigmoid, by_hand(), strict=True)]

    logits = logits_tensor()
    loss = simnpo_loss(sequence_nll(logits, IDS, MASK), beta, delta)
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    loss.sum().backward()
    assert torch.allclose(logits.grad, expected_gradient(scale), rtol=1e-10, atol=1e-12)


def test_token_kl_matches_the_formula_and_ignores_padding():
    reference = torch.tensor(LOGITS, dtype=torch.float64).flip(-1) * 0.5
    expected = []
    for b, positions in enumerate(by_hand()):
        kls = []
        for t, _, p in positions:
            q = softmax(reference[b, t].tolist())
            kls.append(sum(qv * (math.log(qv) - math.log(pv)) for qv, pv in zip(q, p, strict=True)))
        expected.append(sum(kls) / len(kls))
    logits = logits_tensor()
    assert token_kl(logits, reference, MASK).tolist() == pytest.approx(expected, rel=1e-12)
    changed = logits.detach().clone()
    changed[1, 1:] = 100.0  # logits at sample 1's last real token and padding: predictions of padding
    reference_changed = reference.clone()
    reference_changed[1, 1:] = -100.0
    assert token_kl(changed, reference_changed, MASK).tolist() == pytest.approx(expected, rel=1e-12)
    assert token_kl(logits, logits.detach(), MASK).abs().max() < 1e-12  # the reference itself: zero


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_losses_reject_a_non_positive_beta(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        npo_loss(torch.zeros(1), torch.zeros(1), beta)
    with pytest.raises(ValueError, match="beta must be > 0"):
        simnpo_loss(torch.zeros(1), beta)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_token_kl_in_chunks_has_the_formulas_gradient(dtype, monkeypatch):
    """Chunk by chunk (here 3 rows at a time), the KL and its gradient are the full computation's, and the gradient
    comes in the logits' dtype."""

    torch.manual_seed(0)
    vocabulary = 11
    monkeypatch.setattr(memorization, "CHUNK_ELEMENTS", 4 * 3 * vocabulary)
    logits = torch.randn(3, 7, vocabulary, dtype=torch.float64)
    reference = torch.randn(3, 7, vocabulary, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    leaf = logits.clone().requires_grad_(True)
    log_p, log_ref = leaf[:, :-1].log_softmax(-1), reference[:, :-1].log_softmax(-1)
    counted = memorization.predicted_positions(mask).double()
    expected = ((log_ref.exp() * (log_ref - log_p)).sum(-1) * counted).sum(1) / counted.sum(1)
    (expected * weights).sum().backward()
    ours = logits.to(dtype).requires_grad_(True)
    kl = token_kl(ours, reference.to(dtype), mask)
    (kl * weights.to(kl.dtype)).sum().backward()
    tolerance = 1e-12 if dtype == torch.float64 else 2e-2
    assert ours.grad.dtype == dtype
    assert torch.allclose(kl.double(), expected.detach(), rtol=tolerance, atol=tolerance)
    assert torch.allclose(ours.grad.double(), leaf.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hit_token_ascent_pushes_only_the_tokens_still_predicted(dtype):
    """Its gradient is the mean NLL's on the teacher-forced hits and zero on the tokens already missed, so a record
    whose every token is missed is not pushed at all (the whole-record loss pushes it further below unseen text)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11).to(dtype).requires_grad_()
    input_ids = torch.randint(0, 11, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    predicted = logits.detach()[:, :-1].argmax(-1)
    input_ids[0, 1:4] = predicted[0, :3]  # three hits in the first record
    input_ids[1, 1:] = (predicted[1] + 1) % 11  # none in the second
    loss = hit_token_ascent_loss(logits, input_ids, mask)
    loss.sum().backward()
    hits = (predicted == input_ids[:, 1:]) & (mask[:, 1:] * mask[:, :-1]).bool()
    nll = -torch.log_softmax(logits.detach().float()[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    counted = (mask[:, 1:] * mask[:, :-1]).sum(1)
    expected = -(nll * hits).sum(1) / counted
    assert loss.detach().float().tolist() == pytest.approx(
        expected.tolist(), rel=1e-2 if dtype == torch.bfloat16 else 1e-5
    )
    assert loss[1] == 0 and logits.grad[1].abs().max() == 0  # nothing left to push in the second record
    moved = logits.grad[:, :-1].abs().amax(-1) > 0
    assert torch.equal(moved, hits) and hits[0, :3].all()  # only the hits move
