"""GGUF models (``gguf_file=``, the ``[gguf]`` extra): a tiny Llama written with the ``gguf`` package's writer is
unlearned by name; without the extra, a one-line error naming it before any work."""

from __future__ import annotations

import importlib.util

import lightning as L
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lightning_unlearn import SelectiveGradientAscent, UnlearningDataModule
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor
from lightning_unlearn.data import load_tokenizer
from tests.conftest import assert_close_scaled, find, lora, make_trainer

gguf = pytest.importorskip("gguf")

HEADS = 2


def write_gguf(model: LlamaForCausalLM, path) -> None:
    """``model`` as a float32 GGUF file, with llama.cpp's tensor names and its rotary layout of q and k."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # llama.cpp interleaves the rotary halves
            array = array.reshape(HEADS, 2, -1, array.shape[1]).swapaxes(1, 2).reshape(array.shape)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_folder(small_testbed, tmp_path_factory):
    """A tiny Llama that memorized the small testbed's forget records, as ``model.gguf`` in a folder."""
    tb = small_testbed
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tb.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    batch = next(iter(tb.datamodule().scoring_dataloader("forget", batch_size=len(tb.forget))))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("gguf")
    write_gguf(model.eval(), folder / "model.gguf")
    return folder, model


def test_a_gguf_model_loads_exactly_and_is_unlearned_by_name(small_testbed, gguf_folder, tmp_path):
    folder, written = gguf_folder
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
    ids = torch.randint(0, written.config.vocab_size, (2, 12))
    assert_close_scaled(loaded(ids).logits, written(ids).logits)

    tb = small_testbed
    module = SelectiveGradientAscent(str(folder), gguf_file="model.gguf", learning_rate=1e-3)
    datamodule = UnlearningDataModule(tb.tokenizer, tb.forget, holdout=tb.holdout, batch_size=len(tb.forget))
    L.seed_everything(0, verbose=False)
    trainer = make_trainer()
    trainer.fit(module, datamodule)
    stopping = find(trainer, MemorizationEarlyStopping)
    start = find(trainer, MemorizationMonitor).start_values
    assert start.mean() > 0.5 and start.max() > stopping.threshold_value  # it had memorized the records
    assert stopping.rule_met  # and forgot them
    module.save_pretrained(tmp_path / "unlearned")
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "unlearned"), LlamaForCausalLM)


def test_a_gguf_base_takes_an_adapter_and_merges_into_a_plain_folder(gguf_folder, tmp_path):
    """GGUF weights are unpacked into dense ones, so they are no quantized base: merge=True works."""
    pytest.importorskip("peft")
    folder, _ = gguf_folder
    config = lora(["q_proj", "v_proj"], init_lora_weights=False)  # B random: a real update
    module = SelectiveGradientAscent(str(folder), gguf_file="model.gguf", peft=config)
    module.save_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.randint(0, merged.config.vocab_size, (2, 12))
    with torch.no_grad():  # W·x + B·(A·x) against (W + B·A)·x: float32 rounding, grown by this sharp model to 1e-5
        assert_close_scaled(merged(ids).logits, module.model(ids).logits)


def test_without_the_gguf_extra_a_one_line_error_names_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs gguf, .*pip install 'lightning-unlearn\[gguf\]'"):
        SelectiveGradientAscent(str(tmp_path), gguf_file="model.gguf")  # before the folder is even looked at
    with pytest.raises(ImportError, match=r"lightning-unlearn\[gguf\]"):
        load_tokenizer(tmp_path, gguf_file="model.gguf")
