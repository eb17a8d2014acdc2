"""Standing in for an 8B model on a GPU: at V = 32,000 (a tiny-depth bf16 Llama), no float32 or float64 tensor of
B·T·V elements is allocated anywhere in scoring, the membership attacks or the recovery attacks. At V = 128,256, a
batch of 64 and 200 tokens, one such copy is 6.6 GB in float32 and 13 GB in float64 beside 3.3 GB of bf16 logits."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_unlearn import UnlearningDataModule
from lightning_unlearn.evaluation.report import memorization_report
from lightning_unlearn.functional import memorization
from tests.helpers.random_data import IdTokenizer, random_texts

VOCABULARY, BATCH, LENGTH = 32_000, 4, 24


class WideFloatTensors(TorchDispatchMode):
    """The shapes of every float32 or float64 tensor of at least ``elements`` elements that an operator returns."""

    def __init__(self, elements: int) -> None:
        super().__init__()
        self.elements, self.found = elements, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            wide = isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.float32, torch.float64)
            if wide and tensor.numel() >= self.elements:
                self.found.append((str(func), tuple(tensor.shape), tensor.dtype))
        return out


def test_scoring_membership_and_recovery_make_no_float_copy_of_the_logits(monkeypatch):
    # The float32 chunks' budget (64 MB: 131 rows at V = 128,256, of a batch's 12,800) scaled to this batch's 96 rows.
    monkeypatch.setattr(memorization, "CHUNK_ELEMENTS", 8 * VOCABULARY)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    tokenizer = IdTokenizer(VOCABULARY)
    data = UnlearningDataModule(
        tokenizer,
        random_texts(BATCH, LENGTH, VOCABULARY, seed=1),
        retain=random_texts(BATCH, LENGTH, VOCABULARY, seed=2),
        holdout=random_texts(BATCH, LENGTH, VOCABULARY, seed=3),
        max_length=LENGTH,
        batch_size=BATCH,
        eval_batch_size=BATCH,
    )
    logits = BATCH * LENGTH * VOCABULARY  # one batch's logits; the float32 masters of the embeddings are 16 · V
    with WideFloatTensors(logits // 2) as probe:
        report = memorization_report(
            model,
            data,
            el_n=None,
            verbatim_lengths=(4, 4),
            recovery_attacks=("relearn", "int4", "sampling"),
            recovery_options={"relearn_steps": 1, "attack_batch_size": 2},
            device=None,
        )
    assert report.summary["verdict"] is not None and "zlib" in report.summary["membership_auc"]
    assert probe.found == [], probe.found[:3]
