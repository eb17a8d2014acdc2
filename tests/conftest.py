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
from tests.helpers.own_module import WeightedAscent

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
    "your own module": (lambda model: WeightedAscent(model, learning_rate=3e-4), per_sample_control),
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
    from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed

    return build_testbed(seed=0, cache_dir=testbed_cache, progress=False, **SMALL_TESTBED)


@pytest.fixture(scope="session")
def unlearned(small_testbed, tmp_path_factory):
    """The small testbed as files (``testbed/``) and sga-kl's result saved with its takedown record
    (``unlearned/unlearning.json``), in one folder for the session."""
    from lightning_unlearn.unlearning import unlearn

    folder = tmp_path_factory.mktemp("unlearned")
    small_testbed.export(folder / "testbed")
    with pytest.warns(UserWarning, match="the holdout has 16 records"):
        result = unlearn(
            str(folder / "testbed/model"),
            str(folder / "testbed/forget.jsonl"),
            str(folder / "testbed/holdout.jsonl"),
            retain=str(folder / "testbed/retain.jsonl"),
            progress=False,
            accelerator="cpu",
        )
    assert result.rule_met
    result.save(folder / "unlearned")
    return folder


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


# A float64 model of vocabulary VOCAB and sequences it has memorized to different degrees (memorization tests).
VOCAB = 64


def pad(samples: list[list[int]], pad_id: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(samples):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def model64():
    return make_model(VOCAB, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def samples(model64) -> list[list[int]]:
    """Mixed lengths: memorized (the model's own greedy text), corrupted memorized, and random sequences."""
    g = torch.Generator().manual_seed(1)
    memorized = greedy(model64, [3, 17], 20)
    short_memorized = greedy(model64, [40], 13)
    corrupted = list(memorized)
    corrupted[9] = (corrupted[9] + 1) % VOCAB
    twice_corrupted = list(short_memorized)
    twice_corrupted[4] = (twice_corrupted[4] + 7) % VOCAB
    twice_corrupted[11] = (twice_corrupted[11] + 3) % VOCAB
    random = torch.randint(1, VOCAB, (16,), generator=g).tolist()
    random_long = torch.randint(1, VOCAB, (22,), generator=g).tolist()
    return [memorized, corrupted, random, short_memorized, twice_corrupted, random_long]


def greedy(model, prefix: list[int], num_tokens: int) -> list[int]:
    """Reference greedy decoding: no padding, no cache, no stop at EOS."""
    ids = list(prefix)
    for _ in range(num_tokens):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


@pytest.fixture(scope="session")
def small_retrain(small_testbed):
    """The small testbed's exact retrain (trained without its forget records), built once a session."""
    return small_testbed.retrained(progress=False)
