"""Task vectors: exact arithmetic, bit-identical restore after an edit, and adapter-only vectors."""

from __future__ import annotations

import pytest
import torch

from lightning_unlearn.modules.task_vectors import apply_task_vector, edited, snapshot, task_vector
from lightning_unlearn.utilities.errors import ConfigurationError
from tests.conftest import make_model


def test_task_vector_and_edit_are_exact():
    base_model, tuned_model = make_model(seed=0), make_model(seed=1)
    base, tuned = snapshot(base_model), snapshot(tuned_model)
    vector = task_vector(base, tuned)
    apply_task_vector(tuned_model, vector, -2.0, base)
    for name, p in tuned_model.named_parameters():
        assert torch.allclose(p, base[name] - 2.0 * (tuned[name] - base[name]), atol=1e-6), name


def test_edit_restores_weights_bit_for_bit():
    base = snapshot(make_model(seed=0))
    model = make_model(seed=1)
    before = snapshot(model)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        plain = model(ids).logits
        with edited(model, base, -3.0):
            edited_logits = model(ids).logits
            assert not torch.equal(edited_logits, plain)
        assert torch.equal(model(ids).logits, plain)
    after = snapshot(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_only_trainable_parameters_like_a_lora_adapter():
    model = make_model(seed=0)
    for name, p in model.named_parameters():
        p.requires_grad_("attn" in name)  # stands in for adapter weights
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    base = snapshot(model, names=trainable)
    assert base and all("attn" in name for name in base)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    apply_task_vector(model, task_vector(base, snapshot(model, names=trainable)), -1.0, base)
    for name, p in model.named_parameters():
        if name in base:
            assert torch.allclose(p, base[name] - 0.01, atol=1e-6)
        else:
            assert torch.allclose(p, frozen[name] + 0.01)  # untouched by the edit


def test_missing_parameters_are_named():
    base = snapshot(make_model())
    with pytest.raises(ConfigurationError, match="lack 1 parameters"):
        task_vector(base, {k: v for k, v in list(base.items())[1:]})
