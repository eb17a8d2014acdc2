"""The attacks that try to bring forgotten records back, against hand-checked values and brute force."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_unlearn.evaluation.recovery import (
    continuation_log_prob,
    discovery_probability,
    quantize,
    quantized_layers,
    recovery_scores,
    recovery_summary,
    relearn,
    relearn_sweep,
    round_to_nearest,
    sample_extraction,
    worst_point,
)
from lightning_unlearn.evaluation.scoring import score_memorization, verbatim_extraction
from lightning_unlearn.functional.memorization import sequence_nll
from tests.conftest import lora, unlearning_data


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_round_to_nearest_moves_each_weight_by_at_most_half_its_groups_step(bits):
    weight = torch.randn(5, 150, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    quantized = round_to_nearest(weight, bits, group_size=64)
    levels = 2 ** (bits - 1) - 1
    for start in range(0, 150, 64):  # groups of 64 inputs, the last one of 22
        group, rounded = weight[:, start : start + 64], quantized[:, start : start + 64]
        step = group.abs().amax(1, keepdim=True) / levels
        assert ((group - rounded).abs() <= step / 2 + 1e-12 * step).all()
        codes = rounded / step
        assert torch.allclose(codes, codes.round(), atol=1e-9) and codes.abs().max() <= levels + 1e-9
        assert torch.allclose(rounded.abs().amax(1), group.abs().amax(1), rtol=1e-12)  # the largest is a code
    assert torch.equal(round_to_nearest(quantized, bits, group_size=64), quantized)  # idempotent
    assert quantized.dtype == weight.dtype


def test_round_to_nearest_by_hand_and_its_errors():
    weight = torch.tensor([[0.7, -0.3, 0.1, 0.0, 0.25, -0.6]])
    # Groups of 3, int3 (codes -3..3): steps 0.7/3 and 0.6/3; codes 3, -1.29 -> -1, 0.43 -> 0 and 0, 1.25 -> 1, -3.
    expected = torch.tensor([[0.7, -0.7 / 3, 0.0, 0.0, 0.2, -0.6]])
    assert torch.allclose(round_to_nearest(weight, 3, group_size=3), expected)
    with pytest.raises(ValueError, match="bits must be >= 2"):
        round_to_nearest(weight, 1)
    with pytest.raises(ValueError, match="matrix"):
        round_to_nearest(weight[0], 4)


def test_quantize_rounds_a_copys_linear_layers_and_leaves_the_model_as_it_was(tiny_model):
    before = state(tiny_model)
    int8, int4 = quantize(tiny_model, bits=8), quantize(tiny_model, bits=4)
    assert unchanged(tiny_model, before)
    layers = dict(quantized_layers(tiny_model))
    assert layers and "lm_head" not in layers  # the output layer (tied to the embeddings) is kept, as bitsandbytes
    for name, layer in quantized_layers(int4):
        assert torch.equal(layer.weight, round_to_nearest(layers[name].weight, 4))
    assert torch.equal(int4.get_output_embeddings().weight, tiny_model.get_output_embeddings().weight)
    ids = torch.arange(12)[None]
    with torch.no_grad():
        exact, by8, by4 = (m(ids).logits for m in (tiny_model, int8, int4))
    assert 0 < (by8 - exact).abs().max() < (by4 - exact).abs().max()
    with pytest.raises(ValueError, match="8 or 4 bits"):
        quantize(tiny_model, bits=3, backend="bitsandbytes")
    with pytest.raises(ValueError, match="'fp4' or 'nf4'"):  # bitsandbytes' 4-bit codes; fp4 by default
        quantize(tiny_model, bits=4, backend="bitsandbytes", quant_type="int4")


def test_continuation_log_prob_is_the_product_of_each_tokens_probability(tiny_model):
    """Against brute force: one forward pass per token of the growing prefix, unpadded."""
    ids = torch.tensor([[5, 9, 2, 7, 7, 1, 3], [4, 4, 8, 6, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    got = continuation_log_prob(tiny_model, ids, mask)  # prefixes: 3 and 2 tokens (half of each)
    for row, (length, prefix) in enumerate([(7, 3), (4, 2)]):
        total = 0.0
        for t in range(prefix, length):
            with torch.no_grad():
                logits = tiny_model(ids[row : row + 1, :t]).logits[0, -1].double()
            total += torch.log_softmax(logits, -1)[ids[row, t]].item()
        assert got[row].item() == pytest.approx(total, rel=1e-5)
    assert got.dtype == torch.float64
    fixed = continuation_log_prob(tiny_model, ids, mask, prefix_length=1)
    assert (fixed < got).all()  # more tokens to reproduce: less likely
    with pytest.raises(ValueError, match="prefix"):
        continuation_log_prob(tiny_model, ids, mask, prefix_length=4)  # the second sample has no continuation


def test_discovery_probability_is_one_minus_missing_n_times():
    p = torch.tensor([0.5, 0.01, 1e-12, 1.0, 0.0], dtype=torch.float64)
    got = discovery_probability(p.log(), 100)
    expected = [1 - (1 - v) ** 100 for v in p.tolist()]
    expected[2] = 100 * 1e-12  # where 1 − (1 − p)^n rounds away, its first-order value
    assert got.tolist() == pytest.approx(expected, rel=1e-9)
    assert discovery_probability(torch.tensor([math.log(0.5)]), 1).item() == pytest.approx(0.5)


def test_sampling_with_top_k_1_is_greedy_extraction(small_testbed):
    """Top-1 sampling reproduces a continuation in every sample exactly when greedy decoding does."""
    batch = next(iter(unlearning_data(small_testbed).scoring_dataloader("forget", batch_size=6)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    counts = sample_extraction(small_testbed.model, ids, mask, num_samples=3, prefix_length=8, top_k=1)
    suffix = int(mask.sum(1).min()) - 8
    lengths = mask.sum(1).tolist()
    greedy = [
        bool(verbatim_extraction(small_testbed.model, ids[r : r + 1, :n], mask[r : r + 1, :n], 8, n - 8))
        for r, n in enumerate(lengths)
    ]
    assert counts.tolist() == [3 * g for g in greedy] and suffix > 0
    again = sample_extraction(small_testbed.model, ids, mask, num_samples=4, prefix_length=8, seed=3)
    assert torch.equal(again, sample_extraction(small_testbed.model, ids, mask, num_samples=4, prefix_length=8, seed=3))


def test_relearn_is_deterministic_and_leaves_the_model_as_it_was(small_testbed):
    model = small_testbed.model
    data = unlearning_data(small_testbed)
    loader = data.scoring_dataloader("retain", batch_size=8)
    before = state(model)
    first, second = (relearn(model, loader, steps=5, learning_rate=1e-3) for _ in range(2))
    assert unchanged(model, before)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters(), strict=True))
    assert not all(torch.equal(p, before[name]) for name, p in first.named_parameters())
    from lightning_unlearn.evaluation.membership import loss_attack

    def retain_nll(m):
        return -sum(score_memorization(m, loader, measure=loss_attack).values())

    assert retain_nll(first) < retain_nll(model)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        relearn(model, loader, steps=0)


def test_relearn_with_an_adapter_trains_the_adapter_alone(small_testbed):
    pytest.importorskip("peft")
    loader = unlearning_data(small_testbed).scoring_dataloader("retain", batch_size=8)
    before = state(small_testbed.model)
    attacked = relearn(small_testbed.model, loader, steps=3, learning_rate=1e-2, peft=lora())
    changed = {n for n, p in attacked.named_parameters() if "lora_B" in n and p.abs().sum() > 0}
    assert changed and unchanged(small_testbed.model, before)
    base = attacked.get_base_model()
    for name, p in base.named_parameters():
        if "lora" not in name:
            assert torch.equal(p, before[name.replace(".base_layer", "")]), name


def test_attacks_refuse_a_zero3_sharded_model_with_what_to_do(tiny_model):
    sharded = copy.deepcopy(tiny_model)
    next(sharded.parameters()).ds_tensor = torch.zeros(1)  # what ZeRO-3 marks a partitioned parameter with
    with pytest.raises(ValueError, match="save_pretrained"):
        quantize(sharded)
    with pytest.raises(ValueError, match="sharded"):
        relearn(sharded, [{"input_ids": torch.ones(1, 3, dtype=torch.long)}])


def test_attacked_scores_and_their_summary_count_what_rose_above_the_level(small_testbed):
    tb = small_testbed
    data = unlearning_data(tb)
    attacked = recovery_scores(tb.model, data, attacks=("relearn", "int4", "sampling"), relearn_steps=3)
    assert set(attacked) == {"relearn", "int4", "sampling"}
    for splits in attacked.values():
        assert sorted(splits["forget"]) == list(range(len(tb.forget)))
        assert sorted(splits["holdout"]) == list(range(len(tb.holdout)))
    relearned = relearn(tb.model, data.scoring_dataloader("retain", batch_size=len(tb.retain)), steps=3)
    assert attacked["relearn"]["forget"] == score_memorization(relearned, data.scoring_dataloader("forget"))
    summary = recovery_summary(attacked, threshold=0.5, discovery=0.5)
    for attack, splits in attacked.items():
        assert summary[f"{attack}_above"] == sum(
            v > 0.5 if attack != "sampling" else v >= 0.5 for v in splits["forget"].values()
        )
        assert summary[f"{attack}_holdout_mean"] == pytest.approx(sum(splits["holdout"].values()) / len(tb.holdout))
    assert all(0 <= p <= 1 for p in attacked["sampling"]["forget"].values())
    with pytest.raises(ValueError, match="unknown attack"):
        recovery_scores(tb.model, data, attacks=("int2",))
    with pytest.raises(ValueError, match="relearn or a retain split"):
        recovery_scores(tb.model, unlearning_data(tb, retain=None), attacks=("relearn",))


def test_the_relearning_sweep_scores_every_point_as_its_own_run_and_keeps_the_worst(small_testbed):
    """Each (learning rate, steps) point scores what a relearning run of that many steps gives (scoring between the
    steps changes nothing), its ``back`` is the per-record verdict against the holdout relearned alike, and the
    worst point has the most records back; through ``recovery_scores`` it is the worst point's scores."""
    from lightning_unlearn.functional.verdict import record_verdict

    tb = small_testbed
    data = unlearning_data(tb)
    loader = data.scoring_dataloader("retain", batch_size=len(tb.retain))
    points = relearn_sweep(tb.model, data, loader, grid=((1e-4, 3e-3), (2, 4)))
    assert [(p.learning_rate, p.steps) for p in points] == [(1e-4, 2), (1e-4, 4), (3e-3, 2), (3e-3, 4)]
    own = relearn(tb.model, loader, steps=4, learning_rate=3e-3)
    for split in ("forget", "holdout"):
        assert points[-1].scores[split] == score_memorization(own, data.scoring_dataloader(split))
    for point in points:
        forget, holdout = (list(point.scores[split].values()) for split in ("forget", "holdout"))
        assert point.back == len(record_verdict(forget, holdout).back)
    worst = worst_point(points)
    assert worst.back == max(p.back for p in points) > 0  # the original model: its records are back anyway
    attacked = recovery_scores(tb.model, data, ("relearn_sweep",), relearn_sweep_grid=((1e-4, 3e-3), (2, 4)))
    assert attacked["relearn_sweep"] == worst.scores
    with pytest.raises(ValueError, match="step counts >= 1"):
        relearn_sweep(tb.model, data, loader, grid=((1e-4,), (0,)))
    with pytest.raises(ValueError, match="against holdout records"):
        recovery_scores(tb.model, unlearning_data(tb, holdout=None), ("relearn_sweep",))


def test_an_adapted_model_is_attacked_as_it_is_deployed(small_testbed):
    """A LoRA-adapted model (as a module holds it mid-run): quantization rounds its *merged* weights (the edit B·A
    meets the base weight's bins), equal to quantizing the merged model; relearning trains the adapter by default
    and every merged weight on request; a fresh attacker's adapter goes on the merged model."""
    pytest.importorskip("peft")
    from lightning_unlearn.integrations.peft import add_adapter

    adapted = add_adapter(copy.deepcopy(small_testbed.model), lora())
    with torch.no_grad():  # an unlearning edit: B != 0
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    before = state(adapted)
    loader = unlearning_data(small_testbed).scoring_dataloader("retain", batch_size=8)
    quantized = quantize(adapted, bits=4)
    merged = copy.deepcopy(adapted).merge_and_unload()
    expected = quantize(merged, bits=4)
    assert not any("lora" in name for name, _ in quantized.named_parameters())
    for (name, got), (_, want) in zip(quantized.named_parameters(), expected.named_parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    relearned = relearn(adapted, loader, steps=2, learning_rate=1e-3)
    assert unchanged(adapted, before)
    moved = {n for n, p in relearned.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved)  # the adapter alone: the cheapest route
    everything = relearn(adapted, loader, steps=2, learning_rate=1e-3, trained="all")
    assert not any("lora" in name for name, _ in everything.named_parameters())
    assert any(not torch.equal(p, merged.state_dict()[n]) for n, p in everything.named_parameters())
    fresh = relearn(adapted, loader, steps=1, peft=lora())
    assert sum("lora_A" in name for name, _ in fresh.named_parameters()) == sum(
        "lora_A" in name for name, _ in adapted.named_parameters()
    )  # one adapter, on the merged weights
    with pytest.raises(ValueError, match="needs an adapted model"):
        relearn(small_testbed.model, loader, steps=1, trained="adapter")


def test_relearning_in_micro_batches_is_the_one_batch_step(small_testbed):
    """The gradient accumulated over micro-batches is the whole batch's: the same weights to float tolerance (Adam
    turns a gradient of about 0 into a step of ±lr whatever its rounding, so a few such weights may differ)."""
    loader = unlearning_data(small_testbed).scoring_dataloader("retain", batch_size=len(small_testbed.retain))
    rows = len(small_testbed.retain)
    whole = relearn(small_testbed.model, loader, steps=3, learning_rate=1e-3, attack_batch_size=rows)
    micro = relearn(small_testbed.model, loader, steps=3, learning_rate=1e-3, attack_batch_size=3)
    a = torch.cat([p.flatten() for p in whole.parameters()])
    b = torch.cat([p.flatten() for p in micro.parameters()])
    assert ((a - b).abs() > 1e-5).float().mean() < 0.005
    assert (a - b).abs().max() <= 6e-3 + 1e-5  # at most 2·lr per step apart


def test_relearning_a_bf16_model_trains_float32_master_weights(small_testbed):
    """Adam at lr 5e-5 moves a bf16 weight of 0.02 by less than half its spacing: without float32 masters most
    weights would never change and the attack would be weaker than a real attacker's."""
    model = copy.deepcopy(small_testbed.model).to(torch.bfloat16)
    loader = unlearning_data(small_testbed).scoring_dataloader("retain", batch_size=len(small_testbed.retain))
    relearned = relearn(model, loader, steps=10, learning_rate=5e-5)
    reference = relearn(model.float(), loader, steps=10, learning_rate=5e-5)
    weight = "transformer.h.0.mlp.c_fc.weight"
    start = model.state_dict()[weight].to(torch.bfloat16)
    got = relearned.state_dict()[weight]
    assert got.dtype == torch.bfloat16
    assert (got != start).float().mean() > 0.8  # plain bf16 Adam leaves most of them as they were
    agree = (got == reference.state_dict()[weight].to(torch.bfloat16)).float().mean()
    assert agree > 0.9  # the float32 run, rounded once at the end


def test_relearning_peak_is_the_copy_its_optimizer_and_one_micro_batch(small_testbed):
    """Peak bytes of the attack: the copy, Adam's two moments of what trains, and the longest micro-batch's forward
    and backward (with its gradients), within 10%, whether the attacker's batches hold 4 records or all 16."""
    from tests.helpers.peak_memory import PeakTensorMemory

    model = small_testbed.model
    data = unlearning_data(small_testbed)
    rows, count = 4, len(small_testbed.retain)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with PeakTensorMemory() as duplicate:
        probe = copy.deepcopy(model).requires_grad_(True)
    longest = max(data.scoring_dataloader("retain", batch_size=rows), key=lambda batch: batch["input_ids"].shape[1])
    with PeakTensorMemory() as one:
        ids, mask = longest["input_ids"], longest["attention_mask"]
        sequence_nll(probe(input_ids=ids, attention_mask=mask).logits, ids, mask).sum().backward()
    expected = duplicate.peak + 2 * weights + one.peak
    for batch_size, steps in ((rows, count // rows), (count, 2)):  # every micro-batch is trained on in both
        loader = data.scoring_dataloader("retain", batch_size=batch_size)
        with PeakTensorMemory() as attack:
            relearn(model, loader, steps=steps, learning_rate=1e-4, attack_batch_size=rows)
        assert attack.peak == pytest.approx(expected, rel=0.10), batch_size
