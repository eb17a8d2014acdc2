"""The losses of the methods people compare against (WGA, SatImp, CE-U, UNDIAL, RMU) against values computed by hand
on a two-token vocabulary, and their chunked gradients against autograd of the formula."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_unlearn.functional import memorization
from lightning_unlearn.functional.losses import ce_u_loss, rmu_loss, satimp_loss, undial_loss, wga_loss

# One record [0, 1, 1] over the vocabulary {0, 1}; the model predicts token 1 with p = 3/4, then p = 1/4 (the last
# position predicts nothing). A second record [1, 1, ·] has one counted prediction, then padding.
LN3 = math.log(3.0)
IDS = torch.tensor([[0, 1, 1], [1, 1, 0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LOGITS = torch.tensor(
    [
        [[0.0, LN3], [LN3, 0.0], [5.0, -5.0]],
        [[LN3, 0.0], [9.0, -9.0], [-9.0, 9.0]],  # p(1) = 1/4; the rest never counts
    ],
    dtype=torch.float64,
)
REFERENCE = torch.zeros(2, 3, 2, dtype=torch.float64)  # the original model: ½ and ½ everywhere


def test_wga_weights_each_tokens_nll_by_its_probability():
    first = -(0.75 * math.log(4 / 3) + 0.25 * math.log(4)) / 2
    second = -0.25 * math.log(4)
    assert wga_loss(LOGITS, IDS, MASK, beta=1.0).tolist() == pytest.approx([first, second], rel=1e-12)
    squared = -(0.75**2 * math.log(4 / 3) + 0.25**2 * math.log(4)) / 2
    assert wga_loss(LOGITS, IDS, MASK, beta=2.0)[0].item() == pytest.approx(squared, rel=1e-12)
    ascent = -memorization.sequence_nll(LOGITS, IDS, MASK)
    assert torch.allclose(wga_loss(LOGITS, IDS, MASK, beta=0.0), ascent, rtol=1e-12)  # β = 0: gradient ascent


def test_satimp_weights_by_saturation_and_importance():
    w = (0.75**5 * 0.25, 0.25**5 * 0.75)  # p^β1 · (1 − p)^β2 with β1 = 5, β2 = 1
    first = -(w[0] * math.log(4 / 3) + w[1] * math.log(4)) / 2
    second = -(0.25**5 * 0.75) * math.log(4)
    assert satimp_loss(LOGITS, IDS, MASK).tolist() == pytest.approx([first, second], rel=1e-12)
    w2 = (0.75**2 * 0.25**3, 0.25**2 * 0.75**3)
    other = -(w2[0] * math.log(4 / 3) + w2[1] * math.log(4)) / 2
    assert satimp_loss(LOGITS, IDS, MASK, beta1=2.0, beta2=3.0)[0].item() == pytest.approx(other, rel=1e-12)


def test_weighted_ascents_take_their_weights_without_gradient():
    """The gradient on the target logit is w · (p − 1) per counted token over their count (ascent's, weighted)."""
    leaf = LOGITS.clone().requires_grad_(True)
    wga_loss(leaf, IDS, MASK, beta=1.0)[0].backward()
    # NLL's gradient on the target logit is p − 1, so −w · NLL's is −w · (p − 1), over the 2 counted tokens.
    assert leaf.grad[0, 0, 1].item() == pytest.approx(-0.75 * (0.75 - 1) / 2, rel=1e-12)
    assert leaf.grad[0, 1, 1].item() == pytest.approx(-0.25 * (0.25 - 1) / 2, rel=1e-12)
    assert leaf.grad[0, 2].abs().max() == 0  # the last position predicts nothing


def test_ce_u_trains_towards_the_models_own_distribution_without_the_target():
    # With two tokens, q puts all its mass on the other token: the loss is −log p(other).
    first = (math.log(4) + math.log(4 / 3)) / 2
    second = math.log(4 / 3)
    assert ce_u_loss(LOGITS, IDS, MASK).tolist() == pytest.approx([first, second], rel=1e-12)
    leaf = LOGITS.clone().requires_grad_(True)
    ce_u_loss(leaf, IDS, MASK)[0].backward()  # p − q, q = onehot(0): on the target's logit, p_1 over the count
    assert leaf.grad[0, 0, 1].item() == pytest.approx(0.75 / 2, rel=1e-12)
    assert leaf.grad[0, 1, 1].item() == pytest.approx(0.25 / 2, rel=1e-12)


def test_undial_distils_the_reference_with_the_target_logit_lowered():
    # The reference's [0, 0] lowered by β = ln 3 at the target: q = (3/4, 1/4) at every counted position.
    ce_first = 0.75 * math.log(4) + 0.25 * math.log(4 / 3)  # against p = (1/4, 3/4)
    ce_second = 0.75 * math.log(4 / 3) + 0.25 * math.log(4)  # against p = (3/4, 1/4)
    expected = [(ce_first + ce_second) / 2, ce_second]
    assert undial_loss(LOGITS, REFERENCE, IDS, MASK, beta=LN3).tolist() == pytest.approx(expected, rel=1e-12)
    plain = [  # β = 0: the cross-entropy against the reference's uniform distribution, −Σ ½ log p
        -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)),
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)),
    ]
    assert undial_loss(LOGITS, REFERENCE, IDS, MASK, beta=0.0)[0].item() == pytest.approx(sum(plain) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        undial_loss(LOGITS, REFERENCE, IDS, MASK, beta=-1.0)


def test_rmu_is_the_mean_squared_distance_over_real_tokens():
    activations = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert rmu_loss(activations, target, torch.tensor([[1, 1]])).tolist() == pytest.approx([(2.0 + 10.0) / 2])
    assert rmu_loss(activations, target, torch.tensor([[1, 0]])).tolist() == pytest.approx([2.0])
    assert rmu_loss(activations, activations, torch.tensor([[1, 1]])).tolist() == [0.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("loss", ["undial", "ce-u"])
def test_soft_target_losses_in_chunks_have_the_formulas_gradient(dtype, loss, monkeypatch):
    """Chunk by chunk (3 rows at a time), the loss and its gradient are those of the formula by autograd (float64),
    and the gradient comes in the logits' dtype."""
    torch.manual_seed(0)
    vocabulary = 11
    monkeypatch.setattr(memorization, "CHUNK_ELEMENTS", 4 * 3 * vocabulary)
    logits = torch.randn(3, 7, vocabulary, dtype=torch.float64)
    reference = torch.randn(3, 7, vocabulary, dtype=torch.float64)
    ids = torch.randint(vocabulary, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    targets = memorization.next_token_targets(ids, mask)[:, :-1]
    onehot = torch.nn.functional.one_hot(targets.clamp_min(0), vocabulary).double()
    leaf = logits.clone().requires_grad_(True)
    if loss == "undial":
        q = (reference[:, :-1] - 2.0 * onehot).softmax(-1)
    else:
        q = leaf[:, :-1].detach().masked_fill(onehot.bool(), float("-inf")).softmax(-1)
    counted = memorization.predicted_positions(mask).double()
    expected = (-(q * leaf[:, :-1].log_softmax(-1)).sum(-1) * counted).sum(1) / counted.sum(1)
    (expected * weights).sum().backward()
    ours = logits.to(dtype).requires_grad_(True)
    if loss == "undial":
        value = undial_loss(ours, reference.to(dtype), ids, mask, beta=2.0)
    else:
        value = ce_u_loss(ours, ids, mask)
    (value * weights.to(value.dtype)).sum().backward()
    tolerance = 1e-12 if dtype == torch.float64 else 3e-2
    assert ours.grad.dtype == dtype
    assert torch.allclose(value.double(), expected.detach(), rtol=tolerance, atol=tolerance)
    assert torch.allclose(ours.grad.double(), leaf.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("loss", [wga_loss, satimp_loss])
def test_weighted_ascents_reject_a_negative_exponent(loss):
    with pytest.raises(ValueError, match="must be >= 0"):
        loss(LOGITS, IDS, MASK, -1.0)
