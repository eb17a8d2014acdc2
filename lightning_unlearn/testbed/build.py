"""The embedded default: a small GPT-Neo that has really memorized synthetic personal records, to different degrees.

``build_testbed()`` makes, deterministically from a seed and with no download:

- records (name, email, phone, address, account number, a short note) from Faker;
- a training corpus: each forget record and each retain record repeated its own number of times (the
  ``duplicates`` cycle 1, 2, 4, 8, 16, 32), plus background records seen once, as in real pretraining data;
- holdout records from the same generator, never trained on (they define the unseen-data threshold): 128 by
  default, the first 32 drawn with the corpus and 96 more from a stream of their own, so the corpus is unchanged;
- a byte-level BPE tokenizer trained on the corpus, and a GPT-Neo trained on it with Lightning;
- or, with ``base_model`` (a hub id or a local folder), that pretrained causal LM and its tokenizer, fine-tuned on
  the same corpus: the records are injected into a model that already knows language, as in the paper's setting
  (GPT-Neo 125M: ``build_testbed(base_model="EleutherAI/gpt-neo-125m")``).

The result is cached under ``~/.cache/lightning_unlearn/testbed/<hash of every option>`` (or
``$LIGHTNING_UNLEARN_CACHE``, or ``cache_dir``), written atomically, so a second call loads in seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lightning as L
import torch
from faker import Faker
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from lightning_unlearn.callbacks import UnlearningProgress
from lightning_unlearn.data import PadCollator, TokenizedSplit, UnlearningDataModule
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.memorization import sequence_nll
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.files import atomic_folder

#: Bump when the corpus, tokenizer or training recipe changes, so old cache entries are not reused.
FORMAT_VERSION = 1
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TestbedConfig:
    """Every option of a testbed; its hash names the cache entry. The defaults build in about 2 minutes on 2 cores."""

    __test__ = False  # not a pytest class

    num_forget: int = 32
    num_retain: int = 32
    num_holdout: int = 32
    extra_holdout: int = 96  # more holdout records, from a stream of their own: a precise threshold, the same model
    num_background: int = 512
    duplicates: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_length: int = 128
    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    gradient_clip: float = 1.0
    base_model: str | None = None  # a pretrained causal LM to fine-tune instead of a GPT-Neo from scratch
    retrain: bool = False  # the exact-retrain reference: the same recipe on the corpus without the forget records
    accelerator: str = "cpu"  # where it trains ("cpu", "gpu", …; "auto" is resolved before the key is taken)
    precision: str = "32-true"  # Lightning's precision of its training


#: The seed of the extra holdout records, offset from the testbed's own.
HOLDOUT_SEED_OFFSET = 104729

#: The seed of relearn_records, offset from the testbed's own.
RELEARN_SEED_OFFSET = 7919

#: A pretrained model is fine-tuned more gently than a small one is trained from scratch.
BASE_MODEL_LEARNING_RATE = 1e-4


#: Options for tests and quick experiments: builds in seconds, memorization still spread out.
SMALL_TESTBED: dict[str, Any] = {
    "num_forget": 16,
    "num_retain": 16,
    "num_holdout": 16,
    "extra_holdout": 0,
    "num_background": 64,
    "vocab_size": 768,
    "hidden_size": 64,
    "num_layers": 2,
    "steps": 120,
    "batch_size": 16,
    "learning_rate": 5e-3,
}


@dataclass
class Testbed:
    """A trained model and the records it has (forget, retain) and has not (holdout) seen."""

    __test__ = False  # not a pytest class

    model: PreTrainedModel  # a GPT-Neo trained from scratch, or the fine-tuned base model
    tokenizer: Any
    forget: list[str]
    retain: list[str]
    holdout: list[str]
    duplicates: list[int]  # how many times each forget record was trained on
    retain_duplicates: list[int]
    corpus: list[str]  # the training corpus, one record per entry, repeats included
    config: TestbedConfig
    seed: int
    path: Path  # the cache entry
    summary: dict[str, Any] = field(default_factory=dict)

    def datamodule(self, **options: Any) -> UnlearningDataModule:
        """Its forget, retain and holdout records as an :class:`UnlearningDataModule`, one training batch covering
        the whole forget set (the paper's setting); ``options`` override any argument (``retain=None``, …)."""
        defaults = {
            "forget": self.forget,
            "retain": self.retain,
            "holdout": self.holdout,
            "batch_size": len(self.forget),
            "max_length": self.summary.get("max_length", self.config.max_length),
        }
        return UnlearningDataModule(self.tokenizer, **(defaults | options))

    def fresh_records(self, count: int, seed: int) -> list[str]:
        """``count`` records from the same generator that the model never saw (none of the corpus or the holdout):
        more unseen data, e.g. to test an audit against the holdout. ``seed`` must differ from the testbed's."""
        if seed == self.seed:
            raise ConfigurationError(f"seed {seed} is the testbed's own: its records are the corpus and holdout")
        return _unseen(count, seed, set(self.corpus) | set(self.holdout))

    def relearn_records(self, count: int = 256) -> list[str]:
        """Fresh records (never trained on, none of the holdout) for relearning-aware unlearning's simulated
        attacks: the datamodule's ``relearn`` split. Drawn with their own seed, so an attack on other fresh records
        (``fresh_records(count, seed)`` with any other seed) is not the one trained against."""
        return self.fresh_records(count, seed=self.seed + RELEARN_SEED_OFFSET)

    def retrained(self, progress: bool = True) -> Testbed:
        """The exact-retrain reference of this testbed (``build_testbed(..., retrain=True)``, cached alike)."""
        options = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in ("base_model", "retrain")}
        # (accelerator and precision are kept: the retrain is trained where its testbed was)
        cache_dir = self.path.parent.parent
        return build_testbed(self.seed, cache_dir, progress, self.config.base_model, retrain=True, **options)

    def export(self, folder: str | os.PathLike, overwrite: bool = False, retrain: Testbed | None = None) -> Path:
        """Writes ``model/`` (model and tokenizer, for ``from_pretrained``) and ``forget.jsonl`` (with each
        record's ``duplicates``), ``retain.jsonl`` and ``holdout.jsonl`` to ``folder``, whole or not at all: the
        files that ``examples/*.yaml`` and ``lightning-unlearn audit`` read; with ``retrain`` (:meth:`retrained`),
        its model too, as ``retrain/``: the model that never saw the forget records, for ``--retrain``."""
        if Path(folder).exists() and not overwrite:
            raise FileExistsError(f"{folder} exists already: choose another folder, or overwrite it")
        with atomic_folder(folder) as staging:
            for name, testbed in (("model", self), ("retrain", retrain)):
                if testbed is not None:
                    testbed.model.save_pretrained(staging / name)
                    testbed.tokenizer.save_pretrained(staging / name)
            splits = {
                "forget": [{"text": t, "duplicates": d} for t, d in zip(self.forget, self.duplicates, strict=True)],
                "retain": [{"text": t} for t in self.retain],
                "holdout": [{"text": t} for t in self.holdout],
            }
            for name, records in splits.items():
                (staging / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return Path(folder)


def build_testbed(
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    base_model: str | os.PathLike | None = None,
    retrain: bool = False,
    **size_options: Any,
) -> Testbed:
    """The testbed for ``seed`` and ``size_options`` (fields of :class:`TestbedConfig`): loaded from the cache, or
    built (and cached) when missing. A corrupt cache entry is rebuilt with a warning.

    ``base_model`` (a hub id or a local folder of a causal LM and its tokenizer) injects the records into that
    pretrained model by fine-tuning (learning rate ``BASE_MODEL_LEARNING_RATE`` unless given; the model's own
    context length caps ``max_length``; on a GPU when there is one) instead of training a GPT-Neo from scratch; the
    size options of the small model (``vocab_size``, ``hidden_size``, …) then do not apply.

    ``accelerator`` and ``precision`` (size options too) train it elsewhere than on the CPU in float32: a testbed
    trained on a GPU is another testbed, cached under its own key.

    ``retrain=True`` gives the **exact-retrain reference** of the same testbed: the same records, tokenizer,
    initialization and training recipe, on the corpus without the forget records (every copy of them). It is the
    model that never saw the forget set, which unlearning tries to match (TOFU and MUSE compare against one).
    """
    if base_model is not None:
        defaults = {"learning_rate": BASE_MODEL_LEARNING_RATE, "accelerator": "auto"}
        size_options = defaults | size_options | {"base_model": str(base_model)}
    if size_options.get("accelerator") == "auto":  # resolved here: the cache key names the machine's choice
        size_options["accelerator"] = "gpu" if torch.cuda.is_available() else "cpu"
    size_options["retrain"] = retrain
    config = TestbedConfig(**{k: tuple(v) if k == "duplicates" else v for k, v in size_options.items()})
    _check(config)
    root = Path(cache_dir or os.environ.get("LIGHTNING_UNLEARN_CACHE") or Path.home() / ".cache/lightning_unlearn")
    entry = root / "testbed" / cache_key(config, seed)
    if entry.is_dir():
        try:
            return _load(entry, config, seed)
        except Exception as error:  # anything unreadable: rebuild rather than crash
            warnings.warn(f"testbed cache entry {entry} is unreadable ({error!r}); rebuilding it", stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
    with atomic_folder(entry, overwrite=False) as staging:  # another process may finish it first: use theirs
        _build(staging, config, seed, progress)
    testbed = _load(entry, config, seed)
    rank_zero_info(describe(testbed))
    return testbed


def cache_key(config: TestbedConfig, seed: int) -> str:
    """Hash of every option, the seed, the recipe version and the Faker version (it decides the texts); with a
    base model, also of what identifies it (a local folder: its files' names, sizes and times)."""
    options = dataclasses.asdict(config)
    for name in ("accelerator", "precision"):  # the default testbed's key is what it was before they existed
        if options[name] == TestbedConfig.__dataclass_fields__[name].default:
            del options[name]
    if not config.retrain:
        del options["retrain"]  # the default testbed's key is what it was before the retrain reference
    if config.base_model is None:
        del options["base_model"]  # the default testbed's key is what it was before base models
    else:
        options["base_model"] = _identity(config.base_model)
    blob = json.dumps(
        {"config": options, "seed": seed, "format": FORMAT_VERSION, "faker": version("faker")}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _identity(base_model: str) -> Any:
    """A hub id as it is; a local folder as its absolute path and each file's name, size and modification time."""
    folder = Path(base_model)
    if not folder.is_dir():
        return base_model
    files = [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")]
    return [str(folder.resolve()), sorted(files)]


def describe(testbed: Testbed) -> str:
    """A short summary: sizes, training time, and memorization g of forget, retain and holdout."""
    s = testbed.summary
    return (
        f"testbed seed={testbed.seed}: {len(testbed.forget)} forget / {len(testbed.retain)} retain / "
        f"{len(testbed.holdout)} holdout records, corpus of {len(testbed.corpus)} ({s['corpus_tokens']} tokens), "
        f"{s['parameters'] / 1e6:.2f}M-parameter {testbed.config.base_model or 'GPT-Neo'} "
        f"{'retrained without the forget records ' if testbed.config.retrain else ''}trained in "
        f"{s['train_seconds']:.0f}s; "
        f"g forget min/median/max {s['forget_g_min']:.2f}/{s['forget_g_median']:.2f}/{s['forget_g_max']:.2f}, "
        f"retain mean {s['retain_g_mean']:.2f}, holdout mean {s['holdout_g_mean']:.2f}  [{testbed.path}]"
    )


def _check(config: TestbedConfig) -> None:
    if min(config.num_forget, config.num_retain, config.num_holdout) < 1 or not config.duplicates:
        raise ConfigurationError(
            f"a testbed needs at least one forget, retain and holdout record, and duplicates: {config}"
        )
    if min(config.duplicates) < 1 or config.steps < 1:
        raise ConfigurationError(f"duplicates and steps must be >= 1: {config}")


def make_records(count: int, seed: int) -> list[str]:
    """``count`` distinct synthetic personal records, deterministic for ``seed``."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    records: list[str] = []
    seen: set[str] = set()
    while len(records) < count:
        record = (
            f"Name: {fake.name()}; Email: {fake.email()}; Phone: {fake.phone_number()}; "
            f"Address: {fake.address().replace(chr(10), ', ')}; Account: {fake.bban()}; "
            f"Note: {fake.sentence(nb_words=8)}"
        )
        if record not in seen:
            seen.add(record)
            records.append(record)
    return records


def _unseen(count: int, seed: int, seen: set[str]) -> list[str]:
    """``count`` records of the generator's ``seed`` that are not in ``seen``."""
    records: list[str] = []
    pool = count
    while len(records) < count:
        records = [r for r in make_records(pool, seed) if r not in seen][:count]
        pool *= 2
    return records


def _train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def _small_model(tokenizer: PreTrainedTokenizerFast, c: TestbedConfig) -> GPTNeoForCausalLM:
    return GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=len(tokenizer),
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            attention_types=[[["global"], c.num_layers]],
            max_position_embeddings=c.max_length,
            embed_dropout=0.0,
            attention_dropout=0.0,
            resid_dropout=0.0,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _base_model(source: str) -> tuple[Any, PreTrainedModel]:
    """A pretrained causal LM and its tokenizer (padding with end-of-text when it has no pad token)."""
    from lightning_unlearn.data import load_tokenizer
    from lightning_unlearn.integrations.huggingface import check_causal_lm, load_causal_lm

    tokenizer = load_tokenizer(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_causal_lm(source, dtype=torch.float32)  # trained in float32, whatever it was saved in
    check_causal_lm(model)
    return tokenizer, model.train()  # from_pretrained gives eval mode; fine-tuning keeps the model's dropout


class _CorpusLM(L.LightningModule):
    """Plain next-token training with linear warmup, then cosine decay to a tenth of the peak rate."""

    def __init__(self, model: GPTNeoForCausalLM, config: TestbedConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = sequence_nll(logits, batch["input_ids"], batch["attention_mask"]).mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        c = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=c.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)

        def rate(step: int) -> float:
            warmup = min(1.0, (step + 1) / max(1, c.warmup_steps))
            return warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, c.steps) / c.steps)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _build(folder: Path, config: TestbedConfig, seed: int, progress: bool) -> None:
    c = config
    records = make_records(c.num_forget + c.num_retain + c.num_holdout + c.num_background, seed)
    forget, rest = records[: c.num_forget], records[c.num_forget :]
    retain, rest = rest[: c.num_retain], rest[c.num_retain :]
    holdout, background = rest[: c.num_holdout], rest[c.num_holdout :]
    holdout += _unseen(c.extra_holdout, seed + HOLDOUT_SEED_OFFSET, set(records))
    duplicates = [c.duplicates[i % len(c.duplicates)] for i in range(len(forget))]
    retain_duplicates = [c.duplicates[i % len(c.duplicates)] for i in range(len(retain))]
    forget_copies = [r for r, d in zip(forget, duplicates, strict=True) for _ in range(d)]
    corpus = [r for r, d in zip(retain, retain_duplicates, strict=True) for _ in range(d)] + background
    if c.retrain:  # the same number of epochs over what is left
        c = dataclasses.replace(c, steps=max(1, round(c.steps * len(corpus) / (len(corpus) + len(forget_copies)))))
    else:
        corpus = forget_copies + corpus

    L.seed_everything(seed, verbose=False)
    if c.base_model is None:
        tokenizer = _train_tokenizer(forget + retain + background, c.vocab_size)
        model = _small_model(tokenizer, c)
        max_length = c.max_length
    else:
        tokenizer, model = _base_model(c.base_model)
        max_length = min(c.max_length, getattr(model.config, "max_position_embeddings", None) or c.max_length)
    loader = DataLoader(
        TokenizedSplit("corpus", corpus, tokenizer, max_length),
        batch_size=c.batch_size,
        shuffle=True,
        collate_fn=PadCollator(tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = L.Trainer(
        max_steps=c.steps,
        accelerator=c.accelerator,
        precision=c.precision,
        devices=1,
        gradient_clip_val=c.gradient_clip,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,  # Lightning's bar counts epochs of an unknown number: ours counts the steps
        callbacks=[UnlearningProgress(f"training the {'retrain' if c.retrain else 'testbed'}", progress, c.steps)],
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(_CorpusLM(model, c), loader)
    train_seconds = time.perf_counter() - start

    summary = {
        "train_seconds": train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_tokens": sum(loader.dataset.lengths),
        "max_length": max_length,
    }
    for name, texts in (("forget", forget), ("retain", retain), ("holdout", holdout)):
        split = TokenizedSplit(name, texts, tokenizer, max_length)
        g = list(score_memorization(model, DataLoader(split, batch_size=64, collate_fn=loader.collate_fn)).values())
        summary |= {f"{name}_g_mean": statistics.fmean(g), f"{name}_g_min": min(g), f"{name}_g_max": max(g)}
        summary |= {f"{name}_g_median": statistics.median(g), f"{name}_g_std": statistics.pstdev(g)}
    model.cpu().save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "tokenizer")
    data = {
        "forget": forget,
        "retain": retain,
        "holdout": holdout,
        "duplicates": duplicates,
        "retain_duplicates": retain_duplicates,
        "corpus": corpus,
        "summary": summary,
    }
    (folder / "records.json").write_text(json.dumps(data, indent=1))


def _load(entry: Path, config: TestbedConfig, seed: int) -> Testbed:
    data = json.loads((entry / "records.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(entry / "model")
    tokenizer = AutoTokenizer.from_pretrained(entry / "tokenizer")
    return Testbed(
        model=model.eval(),
        tokenizer=tokenizer,
        forget=data["forget"],
        retain=data["retain"],
        holdout=data["holdout"],
        duplicates=data["duplicates"],
        retain_duplicates=data["retain_duplicates"],
        corpus=data["corpus"],
        config=config,
        seed=seed,
        path=entry,
        summary=data["summary"],
    )
