"""UnlearningDataModule: every input kind, stable sample ids, batches, and every bad-input error."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lightning_unlearn import UnlearningDataModule
from lightning_unlearn.data import UnlearningLoader, load_texts
from lightning_unlearn.utilities.errors import ConfigurationError
from tests.conftest import TEXTS


def write_all_kinds(tmp_path, texts):
    paths = {}
    paths["jsonl"] = tmp_path / "d.jsonl"
    paths["jsonl"].write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    paths["json"] = tmp_path / "d.json"
    paths["json"].write_text(json.dumps([{"text": t} for t in texts]))
    paths["json_columns"] = tmp_path / "columns.json"
    paths["json_columns"].write_text(json.dumps({"text": texts}))
    paths["csv"] = tmp_path / "d.csv"
    with paths["csv"].open("w", newline="") as f:
        import csv

        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts))
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": texts}), paths["parquet"])
    paths["txt"] = tmp_path / "d.txt"
    paths["txt"].write_text("\n".join(texts) + "\n\n")
    return paths


def test_every_input_kind_gives_the_same_texts(tmp_path):
    paths = write_all_kinds(tmp_path, TEXTS)
    for kind, path in paths.items():
        assert load_texts(path, "forget") == TEXTS, kind
        assert load_texts(str(path), "forget") == TEXTS, kind
    assert load_texts(datasets.Dataset.from_dict({"text": TEXTS}), "forget") == TEXTS
    assert load_texts(TEXTS, "forget") == TEXTS


def test_custom_text_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    assert load_texts(path, "retain", text_column="body") == TEXTS


@pytest.mark.parametrize(
    ("make_source", "error", "message"),
    [
        (lambda tmp: [], ConfigurationError, "forget split is empty"),
        (lambda tmp: tmp / "missing.jsonl", FileNotFoundError, "forget split: no such file"),
        (lambda tmp: tmp / "d.xlsx", ConfigurationError, "unsupported file type '.xlsx'"),
        (lambda tmp: [1, 2], ConfigurationError, "sample 0 is int"),
    ],
)
def test_bad_sources(tmp_path, make_source, error, message):
    source = make_source(tmp_path)
    if str(source).endswith(".xlsx"):
        source.write_text("x")
    with pytest.raises(error, match=message):
        load_texts(source, "forget")


def test_missing_column_lists_columns(tmp_path):
    paths = write_all_kinds(tmp_path, TEXTS)
    for kind in ("jsonl", "csv", "parquet", "json", "json_columns"):
        no_column = r"holdout split: .* has no column 'body'; its columns are \[.*'text'"
        with pytest.raises(ConfigurationError, match=no_column):
            load_texts(paths[kind], "holdout", text_column="body")
    with pytest.raises(ConfigurationError, match="its columns are \\['text'\\]"):
        load_texts(datasets.Dataset.from_dict({"text": TEXTS}), "holdout", text_column="body")


def test_datamodule_batches_carry_stable_sample_ids(tokenizer):
    forget = TEXTS * 3  # 12 samples
    dm = UnlearningDataModule(tokenizer, forget=forget, retain=TEXTS[:2], holdout=TEXTS, batch_size=5, max_length=12)
    dm.setup("fit")
    assert tokenizer.pad_token is None and dm.collate.pad_token_id == tokenizer.eos_token_id
    loader = dm.train_dataloader()
    seen = []
    for batch, _, _ in loader:
        forget_batch = batch["forget"]
        assert set(batch) == {"forget", "retain"}
        assert forget_batch["input_ids"].shape[1] <= 12
        for row, sample_id in enumerate(forget_batch["sample_id"].tolist()):
            length = int(forget_batch["attention_mask"][row].sum())
            assert torch.equal(forget_batch["input_ids"][row, :length], dm.split("forget").input_ids[sample_id])
            assert forget_batch["attention_mask"][row, length:].sum() == 0  # right padding
        seen += forget_batch["sample_id"].tolist()
    assert sorted(seen) == list(range(12))


def test_accumulation_windows_carry_every_micro_batch_ids(tokenizer):
    """Under accumulate_grad_batches=3 each batch names the samples of its optimizer step's micro-batches; windows
    restart with each epoch (the last one short, as Lightning's last step of an epoch)."""
    dm = UnlearningDataModule(tokenizer, forget=TEXTS * 4, retain=TEXTS, batch_size=2)  # 8 forget batches
    dm.setup("fit")
    loader = UnlearningLoader(dm.train_dataloader().iterables, window=3)
    assert loader.batch_sampler.batch_size == 2  # the forget loader's, for DeepSpeed's batch-size guess
    for _ in range(2):  # two epochs
        batches = [batch for batch, _, _ in loader]
        assert len(batches) == 8
        for start in range(0, 8, 3):
            window = batches[start : start + 3]
            for name in ("forget", "retain"):
                expected = torch.cat([batch[name]["sample_id"] for batch in window])
                assert all(torch.equal(batch[name]["window_ids"], expected) for batch in window)
        assert len(batches[-1]["forget"]["window_ids"]) == 4  # the short last window: two batches
    assert "window_ids" not in next(iter(dm.train_dataloader()))[0]["forget"]  # no accumulation, no window


def test_scoring_loader_is_deterministic_complete_and_length_sorted(tokenizer):
    dm = UnlearningDataModule(tokenizer, forget=TEXTS * 2, holdout=TEXTS, eval_batch_size=3)
    first = [b["sample_id"].tolist() for b in dm.scoring_dataloader("forget")]
    second = [b["sample_id"].tolist() for b in dm.scoring_dataloader("forget")]
    assert first == second
    order = [i for batch in first for i in batch]
    assert sorted(order) == list(range(8))
    lengths = [dm.split("forget").lengths[i] for i in order]
    assert lengths == sorted(lengths)
    assert [len(b) for b in first] == [3, 3, 2]


def test_forget_only_training_batches(tokenizer):
    dm = UnlearningDataModule(tokenizer, forget=TEXTS, batch_size=4)
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"forget"}


def test_too_short_text_is_rejected_with_its_split(tokenizer):
    dm = UnlearningDataModule(tokenizer, forget=TEXTS, retain=["fine text here", "a"])
    with pytest.raises(ValueError, match="retain split: sample 1 \\('a'\\) tokenizes to fewer than 2 tokens"):
        dm.setup("fit")


def test_missing_split_and_unknown_split(tokenizer):
    dm = UnlearningDataModule(tokenizer, forget=TEXTS)
    with pytest.raises(ValueError, match="no holdout split was given"):
        dm.scoring_dataloader("holdout")
    with pytest.raises(ConfigurationError, match="unknown split 'test'"):
        dm.split("test")
    with pytest.raises(ValueError, match="forget split is required"):
        UnlearningDataModule(tokenizer, forget=None)


def test_tokenizer_without_pad_or_eos_is_rejected(tokenizer):
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        UnlearningDataModule(tokenizer, forget=TEXTS)


def test_long_texts_are_truncated_with_one_warning_that_counts_them(tokenizer):
    long_text = " ".join(TEXTS * 4)
    with pytest.warns(UserWarning, match=r"forget split: 1 of 3 texts are longer than max_length=16 tokens") as caught:
        dm = UnlearningDataModule(tokenizer, [long_text, "a b c", "d e f"], max_length=16)
        dm.setup()
    assert len([w for w in caught if "longer than max_length" in str(w.message)]) == 1
    assert dm.split("forget").lengths[0] == 16 and len(dm.split("forget")) == 3


def test_long_texts_can_be_refused(tokenizer):
    dm = UnlearningDataModule(tokenizer, [" ".join(TEXTS * 4)], max_length=16, long_texts="error")
    with pytest.raises(ValueError, match=r"forget split: 1 of 1 texts are longer than max_length=16 tokens"):
        dm.setup()
    with pytest.raises(ValueError, match="long_texts must be one of truncate, windows, error"):
        UnlearningDataModule(tokenizer, ["a b"], long_texts="split")


def test_long_texts_as_windows_cover_every_token_once(tokenizer):
    """Windows of max_length overlapping by one token: every token but a text's first is predicted in exactly one
    window, so the whole text is scored and unlearned; short texts stay whole."""
    long_text = " ".join(TEXTS * 4)
    texts = ["a b c", long_text]
    dm = UnlearningDataModule(tokenizer, texts, max_length=16, long_texts="windows")
    split = dm.split("forget")
    full = tokenizer(long_text)["input_ids"]
    windows = [ids.tolist() for ids, d in zip(split.input_ids, split.documents, strict=True) if d == 1]
    assert len(windows) == -(-(len(full) - 1) // 15) and all(2 <= len(w) <= 16 for w in windows)
    assert windows[0] + [t for w in windows[1:] for t in w[1:]] == full
    assert split.documents[0] == 0 and split.texts[0] == "a b c" and set(split.documents[1:]) == {1}
    assert split.texts[1] == tokenizer.decode(windows[0])
