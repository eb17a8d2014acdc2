"""Text in any common form -> tokenized forget / retain / holdout splits, each sample with a stable ``sample_id``."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_gguf

SplitSource = Union[Sequence[str], str, Path, "datasets.Dataset"]  # noqa: F821
SPLITS = ("forget", "retain", "holdout", "relearn")
LongTexts = Literal["truncate", "windows", "error"]
LONG_TEXTS = ("truncate", "windows", "error")
_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def load_tokenizer(source: str | os.PathLike, gguf_file: str | None = None) -> Any:
    """A tokenizer from a hub id or a local folder (``gguf_file``: a GGUF file inside it); a clear error when
    there is none."""
    from transformers import AutoTokenizer

    if gguf_file:
        require_gguf()
    try:
        return AutoTokenizer.from_pretrained(str(source), **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"cannot load a tokenizer from {source!s}: {error}") from None


def load_texts(source: SplitSource, split: str = "data", text_column: str = "text") -> list[str]:
    """The texts of one split: a list of strings, a ``datasets.Dataset``, or a path to .jsonl/.json/.csv/.parquet
    (column ``text_column``) or .txt (one text per line). Errors name the split and the problem."""
    if isinstance(source, (str, Path)):
        texts = _read_file(Path(source), split, text_column)
    elif hasattr(source, "column_names"):  # a datasets.Dataset
        _require_column(list(source.column_names), split, text_column, "dataset")
        texts = list(source[text_column])
    elif isinstance(source, Sequence):
        texts = list(source)
    else:
        raise ConfigurationError(
            f"{split} split: expected a list of strings, a path or a datasets.Dataset, got {type(source)}"
        )
    if not texts:
        raise ConfigurationError(f"{split} split is empty")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise ConfigurationError(f"{split} split: sample {bad[0]} is {type(texts[bad[0]]).__name__}, not a string")
    return texts


def _read_file(path: Path, split: str, text_column: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{split} split: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    elif suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict):  # {"text": [...], ...} column layout
            _require_column(list(records), split, text_column, str(path))
            return list(records[text_column])
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            _require_column(list(reader.fieldnames or []), split, text_column, str(path))
            return [row[text_column] for row in reader]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        _require_column(table.column_names, split, text_column, str(path))
        return table.column(text_column).to_pylist()
    else:
        raise ConfigurationError(
            f"{split} split: unsupported file type {suffix!r} ({path}); use one of {', '.join(_SUFFIXES)}"
        )
    if records and all(isinstance(r, str) for r in records):
        return records
    for record in records:
        _require_column(list(record), split, text_column, str(path))
    return [record[text_column] for record in records]


def _require_column(columns: list[str], split: str, text_column: str, where: str) -> None:
    if text_column not in columns:
        raise ConfigurationError(f"{split} split: {where} has no column {text_column!r}; its columns are {columns}")


class TokenizedSplit(Dataset):
    """One tokenized split; item i is ``{"input_ids": Tensor[L], "sample_id": i}``.

    Texts longer than ``max_length`` tokens are handled by ``long_texts``: ``"truncate"`` keeps the first
    ``max_length`` tokens (with one warning per split, with counts), ``"windows"`` cuts each long text into
    consecutive windows of ``max_length`` tokens, each its own sample (``texts`` then holds each window's text and
    ``documents`` the index of the text it came from), so every part of a long document is scored and unlearned,
    and ``"error"`` refuses them.
    """

    def __init__(
        self, name: str, texts: list[str], tokenizer: Any, max_length: int, long_texts: LongTexts = "truncate"
    ) -> None:
        if long_texts not in LONG_TEXTS:
            raise ConfigurationError(f"long_texts must be one of {', '.join(LONG_TEXTS)}, got {long_texts!r}")
        self.name = name
        encoded = tokenizer(texts, truncation=False)["input_ids"]
        long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
        self.documents = list(range(len(texts)))  # sample -> the index of its text
        if long and long_texts == "error":
            raise ConfigurationError(
                f"{name} split: {len(long)} of {len(texts)} texts are longer than max_length={max_length} tokens "
                f"(text {long[0]}: {len(encoded[long[0]])} tokens): raise max_length, or pass long_texts='windows'"
            )
        if long and long_texts == "truncate":
            warnings.warn(
                f"{name} split: {len(long)} of {len(texts)} texts are longer than max_length={max_length} tokens and "
                f"were truncated (the longest has {max(len(encoded[i]) for i in long)}): their ends are neither "
                "scored nor unlearned. Raise max_length, or pass long_texts='windows'.",
                UserWarning,
                stacklevel=2,
            )
            encoded = [ids[:max_length] for ids in encoded]
        if long and long_texts == "windows":
            windows = [window for d, ids in enumerate(encoded) for window in _windows(d, ids, texts[d], max_length)]
            self.documents = [d for d, _, _ in windows]
            encoded = [ids for _, ids, _ in windows]
            texts = [text if text is not None else tokenizer.decode(ids) for _, ids, text in windows]
        self.texts = texts
        short = [i for i, ids in enumerate(encoded) if len(ids) < 2]
        if short:
            raise ConfigurationError(
                f"{name} split: sample {short[0]} ({texts[short[0]][:40]!r}) tokenizes to fewer than 2 tokens "
                f"({len(short)} such samples); memorization needs at least one predicted token"
            )
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[index], "sample_id": index}

    @property
    def lengths(self) -> list[int]:
        """Tokens per sample."""
        return [len(ids) for ids in self.input_ids]


def _windows(document: int, ids: list[int], text: str, size: int) -> list[tuple[int, list[int], str | None]]:
    """A text's token ids as windows of ``size`` tokens that overlap by one, so that every token but the first is
    predicted in exactly one window: (document, ids, the text when it is whole, else None)."""
    if len(ids) <= size:
        return [(document, ids, text)]
    return [(document, ids[at : at + size], None) for at in range(0, len(ids) - 1, size - 1)]


class PadCollator:
    """Right-pads a list of samples into ``{"input_ids", "attention_mask": Tensor[B, T], "sample_id": Tensor[B]}``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Tensor]:
        width = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            input_ids[row, : len(sample["input_ids"])] = sample["input_ids"]
            attention_mask[row, : len(sample["input_ids"])] = 1
        sample_id = torch.tensor([s["sample_id"] for s in samples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "sample_id": sample_id}


class UnlearningLoader(CombinedLoader):
    """The training loader: ``{"forget": batch, "retain": batch}`` per step (the shorter split cycled).

    Under gradient accumulation (``window`` = the Trainer's ``accumulate_grad_batches`` > 1) it reads the ``window``
    micro-batches that make one optimizer step ahead and gives each split's batch a ``window_ids`` entry
    (``Tensor[W]``: the ``sample_id`` of every sample in that step's micro-batches), so that per-sample weights and
    their normalization are those of one big batch. Windows start with each epoch, as Lightning's do.

    ``batch_sampler`` is the forget loader's, from which a DeepSpeed strategy without a
    ``train_micro_batch_size_per_gpu`` takes its batch size.
    """

    def __init__(self, iterables: dict[str, DataLoader], window: int = 1) -> None:
        super().__init__(iterables, mode="max_size_cycle")
        if window < 1:
            raise ConfigurationError(f"window must be >= 1, got {window}")
        self.window = window
        self._ahead: list[Any] = []

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.flattened[0], "batch_sampler", None)

    def __iter__(self) -> UnlearningLoader:
        self._ahead = []
        return super().__iter__()

    def __next__(self) -> Any:
        if self.window == 1:
            return super().__next__()
        if not self._ahead:
            while len(self._ahead) < self.window:
                try:
                    self._ahead.append(super().__next__())
                except StopIteration:
                    break
            if not self._ahead:
                raise StopIteration
            batches = [batch for batch, _, _ in self._ahead]
            for name in batches[0]:
                window_ids = torch.cat([batch[name]["sample_id"] for batch in batches])
                for batch in batches:
                    batch[name]["window_ids"] = window_ids
        return self._ahead.pop(0)

    def reset(self) -> None:
        self._ahead = []
        super().reset()


class UnlearningDataModule(L.LightningDataModule):
    """Forget, retain and holdout texts, tokenized, as Lightning dataloaders.

    Each split is a list of strings, a path (.jsonl/.json/.csv/.parquet with a ``text_column``, or .txt with one
    text per line) or a ``datasets.Dataset``. Sample ``i`` of a split has ``sample_id == i`` for the whole run.

    Training batches are ``{"forget": batch, "retain": batch}`` (retain only when given; the shorter split is
    cycled; see :class:`UnlearningLoader`). :meth:`scoring_dataloader` gives any split unshuffled, in
    length-sorted batches, for scoring.

    Args:
        tokenizer: a Hugging Face tokenizer, or a hub id / local folder to load one from; without a pad token,
            EOS pads.
        forget: the sequences to unlearn (required).
        retain: sequences whose memorization must be kept (gradient difference, utility checks).
        holdout: unseen sequences of the same distribution (the forgetting threshold).
        max_length: tokens per sample; longer texts are handled by ``long_texts``.
        batch_size: training batch size per process, for forget and retain alike.
        eval_batch_size: scoring batch size (default: ``2 * batch_size``).
        text_column: the column holding the text in tabular files and datasets.
        shuffle: shuffle training batches.
        num_workers: dataloader workers.
        relearn: texts of the same kind that the model has not memorized, for relearning-aware unlearning's
            simulated attacks (``adversary_steps``) and the relearning attack; never the holdout, which is the control.
        long_texts: texts longer than ``max_length``: ``"truncate"`` (with a warning that counts them),
            ``"windows"`` (every part of a long text becomes a sample of its own, so all of it is scored and
            unlearned; ``split(name).documents`` maps samples to texts) or ``"error"`` (see :class:`TokenizedSplit`).
    """

    def __init__(
        self,
        tokenizer: Any,
        forget: SplitSource,
        retain: SplitSource | None = None,
        holdout: SplitSource | None = None,
        max_length: int = 200,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        text_column: str = "text",
        shuffle: bool = True,
        num_workers: int = 0,
        relearn: SplitSource | None = None,
        long_texts: LongTexts = "truncate",
    ) -> None:
        super().__init__()
        if forget is None:
            raise ConfigurationError("forget split is required: the sequences to unlearn")
        if batch_size < 1 or max_length < 2:
            raise ConfigurationError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.sources = {"forget": forget, "retain": retain, "holdout": holdout, "relearn": relearn}
        if long_texts not in LONG_TEXTS:
            raise ConfigurationError(f"long_texts must be one of {', '.join(LONG_TEXTS)}, got {long_texts!r}")
        self.max_length = max_length
        self.long_texts = long_texts
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.text_column = text_column
        self.shuffle = shuffle
        self.num_workers = num_workers
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ConfigurationError("the tokenizer has neither a pad token nor an EOS token to pad with")
        self.collate = PadCollator(pad)
        self.splits: dict[str, TokenizedSplit] = {}

    def setup(self, stage: str | None = None) -> None:
        """Loads and tokenizes every given split once; raises on bad input, naming the split."""
        for name, source in self.sources.items():
            if source is not None and name not in self.splits:
                texts = load_texts(source, name, self.text_column)
                self.splits[name] = TokenizedSplit(name, texts, self.tokenizer, self.max_length, self.long_texts)

    def has_split(self, name: str) -> bool:
        """Whether the split was given."""
        return self.sources.get(name) is not None

    def split(self, name: str) -> TokenizedSplit:
        """The tokenized split ``name`` (``forget``, ``retain`` or ``holdout``)."""
        if name not in SPLITS:
            raise ConfigurationError(f"unknown split {name!r}; splits are {SPLITS}")
        if not self.has_split(name):
            raise ConfigurationError(f"no {name} split was given to the UnlearningDataModule")
        self.setup()
        return self.splits[name]

    def check_fits(self, model: torch.nn.Module) -> None:
        """Raises a clear error unless every given split fits ``model``: no sample longer than its positions, no
        token id beyond its vocabulary (a tokenizer that is not the model's)."""
        vocabulary = model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocabulary:
            raise ConfigurationError(
                f"the tokenizer does not fit the model: it has {len(self.tokenizer)} tokens, the model's vocabulary "
                f"{vocabulary} entries. Use the model's own tokenizer."
            )
        positions = getattr(model.config, "max_position_embeddings", None)
        for name in SPLITS:
            if self.has_split(name):
                longest = max(self.split(name).lengths)
                if positions is not None and longest > positions:
                    raise ConfigurationError(
                        f"the {name} split has a {longest}-token sample but the model takes at most {positions} "
                        f"positions: set the datamodule's max_length to {positions} or less"
                    )
                top = max(int(ids.max()) for ids in self.split(name).input_ids)
                if top >= vocabulary:
                    raise ConfigurationError(
                        f"the tokenizer does not fit the model: the {name} split has token id {top}, but the model's "
                        f"vocabulary has {vocabulary} entries. Use the model's own tokenizer."
                    )

    def train_dataloader(self) -> UnlearningLoader:
        loaders = {
            name: DataLoader(
                self.split(name),
                batch_size=self.batch_size,
                shuffle=self.shuffle,
                collate_fn=self.collate,
                num_workers=self.num_workers,
            )
            for name in ("forget", "retain")
            if self.has_split(name)
        }
        window = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return UnlearningLoader(loaders, window=window)

    def scoring_dataloader(
        self, name: str = "forget", batch_size: int | None = None, sample_ids: Sequence[int] | None = None
    ) -> DataLoader:
        """Every sample of split ``name`` (or only ``sample_ids``) once, in a fixed order: batches of similar
        length cut padding."""
        split = self.split(name)
        batch_size = batch_size or self.eval_batch_size
        chosen = range(len(split)) if sample_ids is None else sample_ids
        order = sorted(chosen, key=lambda i: (split.lengths[i], i))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        # Its own generator: iterating a DataLoader draws a seed, which must not come from (and so shift) the
        # global RNG that shuffles the training batches; scoring passes leave a run's batches as they were.
        generator = torch.Generator().manual_seed(0)
        return DataLoader(
            split, batch_sampler=batches, collate_fn=self.collate, num_workers=self.num_workers, generator=generator
        )


def relearn_split(datamodule: Any, who: str) -> str:
    """The split a relearning attacker fine-tunes on: the datamodule's relearn split, else its retain split; a clear
    error naming ``who`` needs it when there is neither."""
    names = [name for name in ("relearn", "retain") if datamodule is not None and datamodule.has_split(name)]
    if not names:
        raise ConfigurationError(
            f"{who} needs texts to relearn on: give the UnlearningDataModule a relearn or a retain split (a relearn "
            "split: texts of the same kind that the model has not memorized)"
        )
    return names[0]
