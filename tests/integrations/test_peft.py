"""Adapters (peft): every method trains a LoRA adapter alone, task arithmetic edits its B factors exactly, checkpoints
hold the adapter and resume to the same end, both save forms load, and every bad input gets a clear error."""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from transformers import AutoModelForCausalLM

from lightning_unlearn import (
    NPO,
    TAU,
    GradientAscent,
    GradientDifference,
    SelectiveGradientAscent,
    TaskArithmetic,
)
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, per_sample_control
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.integrations.peft import (
    adapter_parameter_names,
    add_adapter,
    lora_layers,
    merged_state_dict,
    task_vector_names,
)
from lightning_unlearn.utilities.errors import ConfigurationError
from tests.conftest import assert_close_scaled, find, lora, make_model, make_trainer, unlearning_data

peft = pytest.importorskip("peft")


def logits(model, tb) -> torch.Tensor:
    batch = next(iter(unlearning_data(tb).scoring_dataloader("forget")))
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def frozen(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}


EVERY_METHOD = {
    "GA": lambda model: GradientAscent(model, learning_rate=1e-3, peft=lora()),
    "GradientDifference": lambda model: GradientDifference(model, learning_rate=1e-3, peft=lora()),
    "SGA + KL retain": lambda model: SelectiveGradientAscent(model, learning_rate=1e-3, retain_loss="kl", peft=lora()),
    "NPO + NLL retain": lambda model: NPO(model, learning_rate=1e-3, retain_loss="nll", peft=lora()),
    "TA": lambda model: TaskArithmetic(model, learning_rate=1e-3, peft=lora()),
    "TAU": lambda model: TAU(model, learning_rate=1e-3, peft=lora()),
}


@pytest.mark.parametrize("method", list(EVERY_METHOD))
def test_every_method_trains_the_adapter_alone(small_testbed, method):
    tb = small_testbed
    module = EVERY_METHOD[method](copy.deepcopy(tb.model))
    module.configure_model()
    module.configure_model()  # Lightning calls it for every stage: one adapter all the same
    assert isinstance(module.model, peft.PeftModel)
    assert list(module.model.peft_config) == (["default", "ascent"] if method == "TAU" else ["default"])
    base = frozen(module.model)
    adapter = set(adapter_parameter_names(module.model))
    assert {name for name, p in module.model.named_parameters() if p.requires_grad} <= adapter
    trainer = make_trainer(max_steps=3, callbacks=per_sample_control() if method == "NPO + NLL retain" else [])
    trainer.fit(module, unlearning_data(tb))
    assert trainer.global_step == 3
    assert all(torch.equal(p, base[name]) for name, p in module.model.named_parameters() if name in base)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.model.parameters() if p.requires_grad}
    b_factors = [p for name, p in module.model.named_parameters() if ".lora_B.default." in name]
    assert any(p.abs().max() > 0 for p in b_factors)  # the adapter moved
    if module.reference is not None:  # the KL reference copies the adapter, not the frozen base
        assert set(module.reference.weights) <= adapter


def test_a_merge_is_the_base_plus_every_lora_update(tiny_model):
    config = lora(["q_proj", "c_fc"], init_lora_weights=False, modules_to_save=["ln_f"])  # B random: a real update
    model = add_adapter(tiny_model, config)
    with torch.no_grad():
        model.base_model.model.transformer.ln_f.modules_to_save["default"].weight.mul_(2.0)  # the trained copy
    state = merged_state_dict(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    expected = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's own merge, on a copy
    assert set(state) == set(expected) - {"lm_head.weight"}  # tied to the embeddings: saved once
    assert all(torch.allclose(state[key], expected[key], atol=1e-6) for key in state)
    final_norm = model.base_model.model.transformer.ln_f
    assert torch.equal(state["transformer.ln_f.weight"], 2 * final_norm.original_module.weight)  # peft's trained copy
    assert not torch.equal(
        state["transformer.h.0.mlp.c_fc.weight"], tiny_model.transformer.h[0].mlp.c_fc.base_layer.weight
    )
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the model is not changed


def test_sga_with_lora_reaches_the_rule_and_saves_both_forms(small_testbed, tmp_path):
    tb = small_testbed
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=1e-3, peft=lora())
    trainer = make_trainer()
    trainer.fit(module, unlearning_data(tb))
    stopping, monitor = find(trainer, MemorizationEarlyStopping), find(trainer, MemorizationMonitor)
    assert stopping.rule_met and stopping.stopped_step > 1
    expected = logits(module.model, tb)
    module.save_pretrained(tmp_path / "merged")
    module.save_pretrained(tmp_path / "adapter", merge=False)
    assert torch.equal(logits(module.model, tb), expected)  # saving changed nothing

    # The merged folder is a plain one: it loads with peft unavailable, and is the result.
    torch.save(unlearning_data(tb).scoring_dataloader("forget").dataset[0]["input_ids"], tmp_path / "ids.pt")
    script = (
        "import sys, torch; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'merged')!r})\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        f"torch.save(model(input_ids=torch.as_tensor(ids)[None]).logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    first = unlearning_data(tb).scoring_dataloader("forget").dataset[0]["input_ids"]
    with torch.no_grad():
        in_memory = module.model(input_ids=torch.as_tensor(first)[None]).logits
    assert_close_scaled(torch.load(tmp_path / "logits.pt"), in_memory)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    g = score_memorization(merged, unlearning_data(tb).scoring_dataloader("forget"))
    assert [g[i] for i in sorted(g)] == pytest.approx(monitor.values.tolist(), abs=1e-6)
    assert max(g.values()) <= stopping.threshold_value

    # The adapter folder holds the adapter alone and loads onto the base.
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(tb.model), tmp_path / "adapter")
    assert_close_scaled(logits(loaded, tb), expected)


class TunedUpdate(Callback):
    """Each LoRA layer's update ΔW = (α/r)·B·A at the end of training, before task arithmetic's final edit."""

    def on_train_end(self, trainer, pl_module):
        self.updates = {name: layer.get_delta_weight("default") for name, layer in lora_layers(pl_module.model)}


def test_task_arithmetic_on_lora_scales_the_update_and_merges_to_the_edit(small_testbed, tmp_path):
    tb = small_testbed
    module = TaskArithmetic(copy.deepcopy(tb.model), learning_rate=1e-3, peft=lora())
    tuned = TunedUpdate()
    trainer = make_trainer(callbacks=[tuned])
    base = frozen(copy.deepcopy(module).get_model())
    trainer.fit(module, unlearning_data(tb))
    stopping = find(trainer, MemorizationEarlyStopping)
    assert stopping.rule_met
    # θ_base and the edit touch B factors only: no copy of the base model; A and the base are kept.
    assert task_vector_names(module.model) and all(".lora_B." in name for name in task_vector_names(module.model))
    assert all(torch.equal(p, base[name]) for name, p in module.model.named_parameters() if name in base)
    for name, layer in lora_layers(module.model):  # the edit is θ_base + λ·ΔW, exactly
        assert_close_scaled(layer.get_delta_weight("default"), module.scale * tuned.updates[name])
    module.save_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    scoring = unlearning_data(tb).scoring_dataloader("forget")
    g_merged, g_edit = score_memorization(merged, scoring), score_memorization(module.model, scoring)
    assert max(abs(g_merged[i] - g_edit[i]) for i in g_edit) <= 1e-5
    assert max(g_merged.values()) <= stopping.threshold_value
    assert_close_scaled(logits(merged, tb), logits(module.model, tb))


def test_tau_with_lora_moves_the_ascent_to_a_frozen_adapter(small_testbed, tmp_path):
    tb = small_testbed
    module = TAU(copy.deepcopy(tb.model), learning_rate=1e-3, peft=lora())
    trainer = make_trainer()
    trainer.fit(module, unlearning_data(tb))
    assert module.switch_step is not None and find(trainer, MemorizationEarlyStopping).rule_met
    ascent = {name: p for name, p in module.model.named_parameters() if ".ascent." in name}
    assert ascent and not any(p.requires_grad for p in ascent.values())
    assert any(p.abs().max() > 0 for name, p in ascent.items() if ".lora_B." in name)  # the SGA phase's update
    expected = logits(module.model, tb)
    module.save_pretrained(tmp_path / "merged")
    module.save_pretrained(tmp_path / "adapters", merge=False)
    assert_close_scaled(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), tb), expected)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(tb.model), tmp_path / "adapters")  # as TAU's docs say
    loaded.load_adapter(tmp_path / "adapters" / "ascent", "ascent")
    loaded.base_model.set_adapter(["default", "ascent"])
    assert_close_scaled(logits(loaded, tb), expected)


@pytest.fixture(scope="module")
def full_checkpoint_size(small_testbed, tmp_path_factory):
    """The size in bytes of a full fine-tuning SGA checkpoint at step 3 (weights and Adam's states)."""
    folder = tmp_path_factory.mktemp("full-checkpoint")
    checkpoint = ModelCheckpoint(dirpath=folder, every_n_train_steps=3, save_top_k=-1)
    trainer = make_trainer(max_steps=3, callbacks=[checkpoint], enable_checkpointing=True, default_root_dir=folder)
    trainer.fit(SelectiveGradientAscent(copy.deepcopy(small_testbed.model)), unlearning_data(small_testbed))
    return next(folder.glob("*step=3.ckpt")).stat().st_size


@pytest.mark.parametrize("method", [SelectiveGradientAscent, TAU])
def test_a_lora_checkpoint_holds_the_adapter_and_resumes_to_the_same_end(
    small_testbed, full_checkpoint_size, tmp_path, method
):
    """Checkpoints every third step hold the trainable adapter and the per-sample state, not the frozen base; a run
    resumed from one (TAU: after its switch, the frozen ascent adapter restored) ends as the whole run did."""
    tb = small_testbed

    def fit(ckpt_path=None, callbacks=()):
        module = method(copy.deepcopy(tb.model), learning_rate=1e-3, peft=lora(["q_proj", "v_proj"]))
        trainer = make_trainer(callbacks=list(callbacks), enable_checkpointing=True, default_root_dir=tmp_path)
        trainer.fit(module, unlearning_data(tb), ckpt_path=ckpt_path)
        return module, find(trainer, MemorizationEarlyStopping), find(trainer, MemorizationMonitor)

    every_third = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=3, save_top_k=-1)
    whole, whole_stop, whole_scores = fit(callbacks=[every_third])
    step = 3 if method is SelectiveGradientAscent else 3 * (whole.switch_step // 3 + 1)  # TAU: after the switch
    assert whole_stop.rule_met and whole_stop.stopped_step > step
    (checkpoint,) = (tmp_path / "checkpoints").glob(f"*step={step}.ckpt")
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert set(state) == {f"model.{name}" for name, p in whole.model.named_parameters() if p.requires_grad}
    assert checkpoint.stat().st_size <= 0.1 * full_checkpoint_size
    _, resumed_stop, resumed_scores = fit(ckpt_path=checkpoint)
    assert resumed_stop.stopped_step == whole_stop.stopped_step
    assert resumed_scores.values.tolist() == pytest.approx(whole_scores.values.tolist(), abs=1e-6)


def test_bad_adapter_input_gets_a_clear_error(small_testbed, tmp_path, monkeypatch):
    tb = small_testbed
    nowhere = SelectiveGradientAscent(copy.deepcopy(tb.model), peft=lora(["query_key_value"]))
    with pytest.raises(ValueError, match=r"match no module of GPTNeoForCausalLM.*'c_fc'"):
        nowhere.configure_model()

    module = SelectiveGradientAscent(copy.deepcopy(tb.model), peft=lora())
    module.configure_model()
    with pytest.raises(ConfigurationError, match="lacks 24 adapter parameters"):
        module.on_load_checkpoint({"state_dict": {}})
    module.get_model().get_base_model().hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace())
    with pytest.raises(ValueError, match="cannot merge an adapter into a quantized base"):
        module.save_pretrained(tmp_path / "merged")
    module.save_pretrained(tmp_path / "adapter", merge=False)  # the adapter alone saves
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ValueError, match="this model has none"):
        SelectiveGradientAscent(copy.deepcopy(tb.model)).save_pretrained(tmp_path / "plain", merge=False)

    for config, message in [
        (lora(init_lora_weights=False), "needs B = 0 at the start"),
        (lora(use_dora=True), "needs plain LoRA"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_trainer(max_steps=1).fit(TaskArithmetic(copy.deepcopy(tb.model), peft=config), unlearning_data(tb))

    import lightning_unlearn.utilities.extras as extras

    real = extras.importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None if name == "peft" else real(name))
    with pytest.raises(ImportError, match=r"pip install 'lightning-unlearn\[peft\]'"):
        SelectiveGradientAscent(make_model(), peft=lora())


def test_lm_eval_scores_the_adapted_model(small_testbed, tmp_path):
    """lm-evaluation-harness takes the peft model as it is: the same numbers as the merged plain model's."""
    pytest.importorskip("lm_eval")
    from lightning_unlearn.evaluation.utility import evaluate_utility, write_record_tasks

    tb = small_testbed
    tasks = write_record_tasks(tb.retain, tmp_path / "tasks")
    model = add_adapter(copy.deepcopy(tb.model), lora(init_lora_weights=False))  # B random: a real update
    merged = copy.deepcopy(tb.model)
    assert merged.load_state_dict(merged_state_dict(model), strict=False).missing_keys == ["lm_head.weight"]  # tied
    names = ["records_fields", "records_perplexity"]
    mode = model.training
    adapted = evaluate_utility(model, tb.tokenizer, names, include_path=tasks, limit=4, progress=False)
    plain = evaluate_utility(merged, tb.tokenizer, names, include_path=tasks, limit=4, progress=False)
    assert adapted.keys() == plain.keys()
    assert all(adapted[task] == pytest.approx(plain[task], rel=1e-5) for task in names)
    assert model.training is mode


def test_task_arithmetic_on_lora_under_bf16_true_reaches_the_rule(small_testbed):
    """bf16 weights, base and adapter (Lightning converts the whole module): the B-only edit still meets the rule."""
    module = TaskArithmetic(copy.deepcopy(small_testbed.model), learning_rate=1e-3, peft=lora())
    trainer = make_trainer(precision="bf16-true")
    trainer.fit(module, unlearning_data(small_testbed))
    assert {p.dtype for p in module.model.parameters()} == {torch.bfloat16}
    assert find(trainer, MemorizationEarlyStopping).rule_met


def test_the_adapter_folder_keeps_the_trained_modules_to_save(tmp_path):
    """merge=False writes what peft's ``modules_to_save`` trained along with the LoRA factors."""
    config = lora(["q_proj"], init_lora_weights=False, modules_to_save=["ln_f"])
    module = SelectiveGradientAscent(make_model(), peft=config)
    module.configure_model()
    with torch.no_grad():
        module.model.base_model.model.transformer.ln_f.modules_to_save["default"].weight.mul_(2.0)
    module.save_pretrained(tmp_path / "adapter", merge=False)
    loaded = peft.PeftModel.from_pretrained(make_model(), tmp_path / "adapter")
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert_close_scaled(loaded(ids).logits, module.model(ids).logits)
