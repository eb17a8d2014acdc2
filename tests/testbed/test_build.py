"""The embedded testbed: memorization spread, determinism, the cache (reuse, atomic write, corruption)."""

from __future__ import annotations

import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.testbed import build as testbed_module
from lightning_unlearn.testbed.build import SMALL_TESTBED, TestbedConfig, build_testbed, cache_key, describe


def forget_and_holdout_scores(tb):
    dm = tb.datamodule(retain=None)
    forget = score_memorization(tb.model, dm.scoring_dataloader("forget"))
    holdout = score_memorization(tb.model, dm.scoring_dataloader("holdout"))
    return [forget[i] for i in range(len(tb.forget))], list(holdout.values())


def test_small_testbed_memorizes_to_different_degrees(small_testbed):
    tb = small_testbed
    assert len(tb.forget) == len(tb.retain) == len(tb.holdout) == 16
    assert not set(tb.holdout) & set(tb.corpus)
    assert all(tb.corpus.count(r) == d for r, d in zip(tb.forget, tb.duplicates, strict=True))
    forget, holdout = forget_and_holdout_scores(tb)
    assert max(forget) - min(forget) >= 0.3
    assert statistics.pstdev(forget) >= 0.1
    assert sum(g >= 0.7 for g in forget) >= len(forget) / 4
    assert statistics.fmean(holdout) < 0.7
    # More duplicates, more memorization: the mean g per duplication count rises with the count.
    by_count = {d: statistics.fmean(g for g, dd in zip(forget, tb.duplicates, strict=True) if dd == d) for d in (1, 32)}
    assert by_count[32] > by_count[1] + 0.3
    assert tb.summary["forget_g_max"] == pytest.approx(max(forget))
    assert "16 forget / 16 retain / 16 holdout" in describe(tb)


def test_same_seed_gives_identical_texts_and_weights(small_testbed, tmp_path):
    again = build_testbed(seed=0, cache_dir=tmp_path, progress=False, **SMALL_TESTBED)
    assert again.path != small_testbed.path  # really built twice
    assert (again.forget, again.retain, again.holdout, again.corpus) == (
        small_testbed.forget,
        small_testbed.retain,
        small_testbed.holdout,
        small_testbed.corpus,
    )
    ours, theirs = small_testbed.model.state_dict(), again.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_cached_testbed_is_loaded_not_rebuilt(small_testbed, testbed_cache, monkeypatch):
    monkeypatch.setattr(testbed_module, "_build", lambda *a: pytest.fail("rebuilt a cached testbed"))
    loaded = build_testbed(seed=0, cache_dir=testbed_cache, progress=False, **SMALL_TESTBED)
    assert loaded.path == small_testbed.path
    assert loaded.forget == small_testbed.forget


def test_cache_dir_from_environment(monkeypatch, tmp_path, small_testbed, testbed_cache):
    monkeypatch.setenv("LIGHTNING_UNLEARN_CACHE", str(testbed_cache))
    assert build_testbed(seed=0, progress=False, **SMALL_TESTBED).path == small_testbed.path


@pytest.mark.parametrize("interruption", [RuntimeError("power cut"), KeyboardInterrupt()])
def test_interrupted_build_leaves_no_entry(tmp_path, monkeypatch, interruption):
    def interrupted_step(self, batch, batch_idx):
        if batch_idx == 3:
            raise interruption
        return original(self, batch, batch_idx)

    original = testbed_module._CorpusLM.training_step
    monkeypatch.setattr(testbed_module._CorpusLM, "training_step", interrupted_step)
    # Lightning turns Ctrl-C into a graceful shutdown and SystemExit.
    with pytest.raises((RuntimeError, SystemExit)):
        build_testbed(seed=1, cache_dir=tmp_path, progress=False, **SMALL_TESTBED)
    assert list((tmp_path / "testbed").iterdir()) == []


def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path):
    options = {**SMALL_TESTBED, "steps": 20}
    first = build_testbed(seed=2, cache_dir=tmp_path, progress=False, **options)
    (first.path / "model" / "config.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        rebuilt = build_testbed(seed=2, cache_dir=tmp_path, progress=False, **options)
    assert rebuilt.forget == first.forget
    assert rebuilt.path == first.path


def test_options_change_the_cache_key_and_bad_options_fail():
    config = testbed_module.TestbedConfig()
    assert cache_key(config, 0) != cache_key(config, 1)
    assert cache_key(config, 0) != cache_key(testbed_module.TestbedConfig(steps=10), 0)
    with pytest.raises(TypeError, match="hidden_sise"):
        build_testbed(hidden_sise=3)
    with pytest.raises(ValueError, match="at least one forget"):
        build_testbed(num_forget=0)


def test_model_and_tokenizer_round_trip_through_save_pretrained(small_testbed, tmp_path):
    small_testbed.model.save_pretrained(tmp_path / "m")
    small_testbed.tokenizer.save_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    text = small_testbed.forget[0]
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == small_testbed.tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids[0]) == text
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None
    with torch.no_grad():
        assert torch.equal(model(ids).logits, small_testbed.model(ids).logits)


def test_a_pretrained_base_model_from_a_folder(small_testbed, tmp_path, monkeypatch):
    """Records injected into an existing model (here: the small testbed's, pretrained on other records) by
    fine-tuning, with its own tokenizer: memorization spreads with duplication, and the result is cached."""
    base = small_testbed.export(tmp_path / "base") / "model"
    options = SMALL_TESTBED | {"learning_rate": 3e-3}
    tb = build_testbed(seed=1, cache_dir=tmp_path / "cache", progress=False, base_model=base, **options)
    assert tb.config.base_model == str(base) and str(base) in describe(tb)
    assert tb.tokenizer.get_vocab() == small_testbed.tokenizer.get_vocab()  # the base's own tokenizer
    assert not set(tb.forget) & set(small_testbed.corpus)
    forget, holdout = forget_and_holdout_scores(tb)
    assert max(forget) - min(forget) >= 0.3
    assert statistics.fmean(holdout) < 0.7
    by_count = {d: statistics.fmean(g for g, dd in zip(forget, tb.duplicates, strict=True) if dd == d) for d in (1, 32)}
    assert by_count[32] > by_count[1] + 0.3
    monkeypatch.setattr(testbed_module, "_build", lambda *a: pytest.fail("rebuilt a cached testbed"))
    again = build_testbed(seed=1, cache_dir=tmp_path / "cache", progress=False, base_model=base, **options)
    assert again.path == tb.path
    default = TestbedConfig(**{k: tuple(v) if k == "duplicates" else v for k, v in options.items()})
    assert cache_key(default, 1) != tb.path.name  # the base model is part of the key


def test_a_base_model_that_is_not_there_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a tokenizer"):
        build_testbed(cache_dir=tmp_path, progress=False, base_model=tmp_path / "missing", **SMALL_TESTBED)


def test_the_exact_retrain_reference_is_the_same_recipe_without_the_forget_records(small_testbed):
    tb = small_testbed
    retrained = tb.retrained(progress=False)
    assert retrained.config.retrain and retrained.path != tb.path
    assert (retrained.forget, retrained.retain, retrained.holdout) == (tb.forget, tb.retain, tb.holdout)
    assert sorted(retrained.corpus) == sorted(r for r in tb.corpus if r not in set(tb.forget))
    assert retrained.tokenizer.get_vocab() == tb.tokenizer.get_vocab()  # the same token ids: comparable models
    forget, holdout = forget_and_holdout_scores(retrained)
    original, _ = forget_and_holdout_scores(tb)
    # Never seen: its forget records score like its unseen ones, far below the original model's.
    assert abs(statistics.fmean(forget) - statistics.fmean(holdout)) < 0.1 < statistics.fmean(original) - max(forget)
    assert tb.retrained(progress=False).path == retrained.path  # cached


def test_where_it_trains_names_another_cache_entry_and_auto_resolves():
    """A testbed trained elsewhere than on the CPU in float32 is another testbed; the default's key is unchanged,
    and "auto" is resolved to the machine's choice before the key is taken."""
    default = cache_key(TestbedConfig(), 0)
    assert cache_key(TestbedConfig(accelerator="cpu", precision="32-true"), 0) == default
    assert cache_key(TestbedConfig(accelerator="gpu"), 0) != default
    assert cache_key(TestbedConfig(precision="bf16-mixed"), 0) != default


def test_auto_accelerator_builds_where_a_gpu_is_or_the_cpu(small_testbed, testbed_cache):
    tb = build_testbed(seed=0, cache_dir=testbed_cache, progress=False, accelerator="auto", **SMALL_TESTBED)
    assert tb.config.accelerator == ("gpu" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert tb.path == small_testbed.path  # the same cache entry: nothing was built again
