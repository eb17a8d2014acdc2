"""Tiny models and tokenizers built from configs: no downloads, milliseconds to make."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerFast

from lightning_unlearn import NPO, SelectiveGradientAscent
from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, per_sample_control

TEXTS = [
    "Alice Smith lives at 12 Oak Street and her phone is 555-0101.",
    "Bob Jones, account 88-1234-77, email bob.jones@example.com.",
    "Carol White was born in 1984 in Springfield.",
    "The quick brown fox jumps over the lazy dog.",
]


def make_tokenizer(texts: list[str] = TEXTS, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``, with an EOS token and no pad token (as GPT-2's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def make_model(
    vocab_size: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32, max_positions: int = 128
) -> GPTNeoForCausalLM:
    """A 2-layer GPT-Neo with random weights, in eval mode."""
    torch.manual_seed(seed)
    config = GPTNeoConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        window_size=16,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTNeoForCausalLM(config).to(dtype).eval()


# The methods that must give the same result on 1 and N processes: (module factory, extra
# Trainer callbacks).
DISTRIBUTED_METHODS = {
    "SGA": (lambda model: SelectiveGradientAscent(model, learning_rate=3e-4), list),
    "SGA + KL retain": (
        lambda model: SelectiveGradientAscent(
            model, learning_rate=3e-4, retain_loss="kl", retain_weight=1.0, cache_reference=True
        ),
        list,
    ),
    "selective NPO + KL retain": (
        lambda model: NPO(model, beta=0.02, learning_rate=1e-3, retain_loss="kl", retain_weight=0.5),
        per_sample_control,
    ),
}


GPT_NEO_LAYERS = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]  # every linear layer of GPT-Neo


def lora(targets: list[str] = GPT_NEO_LAYERS, r: int = 8, **kwargs):
    """A ``peft.LoraConfig`` (α = 2r, no dropout) for the test models."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, **kwargs)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def tiny_model() -> GPTNeoForCausalLM:
    return make_model()


@pytest.fixture(scope="session")
def testbed_cache(tmp_path_factory):
    """One testbed cache for the whole session, so each small testbed is trained once."""
    return tmp_path_factory.mktemp("testbed-cache")


@pytest.fixture(scope="session")
def small_testbed(testbed_cache):
    from lightning_unlearn.testbed import SMALL_TESTBED, build_testbed

    return build_testbed(seed=0, cache_dir=testbed_cache, progress=False, **SMALL_TESTBED)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Tensors computed along two float32 paths (merged vs adapter, saved vs in memory) agree to ``rel`` times the
    largest magnitude compared: rounding grows with the values' size and the summation order, which differ between
    CPUs; a real bug's error does not shrink with them."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    error = (actual - expected).abs().max()
    assert error <= rel * scale, f"logits differ by {error:.3g}, more than {rel:g} x {scale:.3g}"


def find(trainer, kind):
    """The trainer's callback of type ``kind`` (the first, when there are several)."""
    return next(cb for cb in trainer.callbacks if isinstance(cb, kind))


def make_trainer(**kwargs):
    """A quiet CPU Trainer for tests."""
    import lightning as L

    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "max_epochs": 200,
    }
    return L.Trainer(**(options | kwargs))


def unlearning_data(tb, **kwargs):
    """The testbed's splits, one batch covering the whole forget set (the paper's setting)."""
    return tb.datamodule(**kwargs)


class RankReport(L.Callback):
    """Each process's view of a run, written after fit (after task arithmetic's final edit) to
    ``folder/rank{r}.json``: the stop step and the per-sample scores."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def on_fit_end(self, trainer, pl_module):
        report = {
            "stopped_step": find(trainer, MemorizationEarlyStopping).stopped_step,
            "scores": find(trainer, MemorizationMonitor).values.tolist(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))

    def read(self, processes: int) -> list[dict]:
        """Every process's report, by rank."""
        return [json.loads((self.folder / f"rank{rank}.json").read_text()) for rank in range(processes)]
