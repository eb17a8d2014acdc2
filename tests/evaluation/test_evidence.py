"""The takedown record's hashes: of texts (UTF-8), of sets (order-free), and of weights (content, not files)."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lightning_unlearn.evaluation.evidence import (
    environment,
    set_sha256,
    state_sha256,
    text_sha256,
    weights_sha256,
)


def test_a_text_hash_is_sha256_of_its_utf8_bytes_and_a_set_hash_ignores_order():
    assert text_sha256("Zoë") == hashlib.sha256("Zoë".encode()).hexdigest()
    assert set_sha256(["a", "b", "c"]) == set_sha256(["c", "a", "b"]) != set_sha256(["a", "b"])
    assert set_sha256(["a", "a"]) != set_sha256(["a"])  # a text given twice counts twice


def test_the_weights_hash_is_the_same_saved_reloaded_in_shards_and_in_another_process(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    digest = weights_sha256(tiny_model)
    tiny_model.save_pretrained(tmp_path / "whole")
    tiny_model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 1
    for folder in ("whole", "shards"):
        assert weights_sha256(AutoModelForCausalLM.from_pretrained(tmp_path / folder)) == digest
    script = (
        "import sys; from transformers import AutoModelForCausalLM; "
        "from lightning_unlearn.evaluation.evidence import weights_sha256; "
        "print(weights_sha256(AutoModelForCausalLM.from_pretrained(sys.argv[1])))"
    )
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path / "shards")], capture_output=True, text=True)
    assert other.stdout.strip() == digest, other.stderr


def test_the_weights_hash_sees_one_changed_weight_and_not_a_tie(tiny_model):
    digest = weights_sha256(tiny_model)
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(changed) != digest
    state = tiny_model.state_dict()
    untied = {name: tensor.clone() for name, tensor in state.items()}  # a gathered state dict: ties are copies
    gathered = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}  # ZeRO-3's: one name a tie
    assert "lm_head.weight" in state and "lm_head.weight" not in gathered
    assert state_sha256(untied) == state_sha256(state) == state_sha256(gathered) == digest


def test_an_adapted_model_hashes_as_its_merged_weights(tiny_model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    adapted = get_peft_model(copy.deepcopy(tiny_model), config)
    merged = copy.deepcopy(adapted).merge_and_unload()
    assert weights_sha256(adapted) == weights_sha256(merged) != weights_sha256(tiny_model)


def test_the_environment_names_the_versions_and_the_time():
    found = environment()
    assert found["packages"]["torch"] == torch.__version__ and found["time"].endswith("+00:00")
    json.dumps(found)  # it goes into unlearning.json as is
    assert {"lightning_unlearn", "python", "platform", "device"} <= set(found)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_every_dtype_hashes(dtype):
    assert len(state_sha256({"w": torch.arange(6).reshape(2, 3).to(dtype)})) == 64
