"""lm-eval on the model in memory: numbers equal to our own forward passes, no side effects, clear errors."""

from __future__ import annotations

import json
import math
import random
import re
import sys

import numpy as np
import pytest
import torch

from lightning_unlearn.evaluation.utility import (
    PAPER_TASKS,
    check_tasks,
    evaluate_utility,
    flatten_results,
    task_manager,
    write_record_tasks,
)

pytest.importorskip("lm_eval")

TASKS = ["records_fields", "records_perplexity"]


@pytest.fixture(scope="module")
def tasks_folder(small_testbed, tmp_path_factory):
    return write_record_tasks(small_testbed.retain, tmp_path_factory.mktemp("tasks"))


def log_likelihood(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one forward pass of our own."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits.double().log_softmax(-1)[0]
    positions = range(len(context) - 1, len(context) + len(continuation) - 1)
    return sum(logprobs[p, t].item() for p, t in zip(positions, continuation, strict=True))


def brute_force(model, tokenizer, folder):
    """The two tasks computed directly: accuracy of the most likely choice, and perplexities of each record
    scored from the end-of-text token (each record fits in one window of the model's context)."""
    hits = []
    for line in (folder / "records_fields.jsonl").read_text().splitlines():
        doc = json.loads(line)
        context = tokenizer(doc["context"])["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["context"] + " " + choice)["input_ids"]
            assert whole[: len(context)] == context
            scores.append(log_likelihood(model, context, whole[len(context) :]))
        hits.append(int(np.argmax(scores)) == doc["answer"])
    total_ll, words, characters = 0.0, 0, 0
    for line in (folder / "records_perplexity.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        total_ll += log_likelihood(model, [tokenizer.eos_token_id], tokenizer(text)["input_ids"])
        words += len(re.split(r"\s+", text))
        characters += len(text.encode("utf-8"))
    return {
        "records_fields": {"acc": sum(hits) / len(hits)},
        "records_perplexity": {
            "word_perplexity": math.exp(-total_ll / words),
            "byte_perplexity": math.exp(-total_ll / characters),
            "bits_per_byte": -total_ll / characters / math.log(2),
        },
    }


def test_numbers_equal_our_own_forward_passes(small_testbed, tasks_folder):
    model = small_testbed.model
    expected = brute_force(model, small_testbed.tokenizer, tasks_folder)
    results = evaluate_utility(model, small_testbed.tokenizer, TASKS, include_path=tasks_folder, batch_size=5)
    assert results.keys() == expected.keys()
    for task, metrics in expected.items():
        assert results[task].keys() == metrics.keys()
        for metric, value in metrics.items():
            assert results[task][metric] == pytest.approx(value, rel=1e-4), (task, metric)
    assert 0.25 < results["records_fields"]["acc"] < 1.0  # above chance, and not a ceiling: it can move


def test_evaluation_leaves_random_state_and_mode_as_they_were(small_testbed, tasks_folder):
    model = small_testbed.model.train()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    evaluate_utility(model, small_testbed.tokenizer, TASKS[:1], include_path=tasks_folder, limit=4)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert model.training
    model.eval()


def test_progress_false_shows_no_bars(small_testbed, tasks_folder, capsys):
    evaluate_utility(small_testbed.model, small_testbed.tokenizer, TASKS, include_path=tasks_folder, limit=2)
    assert "Running loglikelihood requests" in capsys.readouterr().err
    evaluate_utility(
        small_testbed.model, small_testbed.tokenizer, TASKS, include_path=tasks_folder, limit=2, progress=False
    )
    assert capsys.readouterr().err == ""


def test_task_configs_as_dicts(small_testbed, tasks_folder):
    import yaml

    config = yaml.safe_load((tasks_folder / "records_fields.yaml").read_text())
    by_name = evaluate_utility(small_testbed.model, small_testbed.tokenizer, TASKS[:1], include_path=tasks_folder)
    by_dict = evaluate_utility(small_testbed.model, small_testbed.tokenizer, [config], include_path=tasks_folder)
    assert by_dict == by_name


def test_bad_tasks_fail_with_the_fix(tasks_folder, tmp_path):
    manager = task_manager(tasks_folder)
    assert sorted(manager.all_tasks) == TASKS  # only the given folder is indexed, not lm-eval's built-in tasks
    with pytest.raises(ValueError, match=r"unknown lm-eval task 'records_field'.*did you mean records_fields"):
        check_tasks(["records_field"], manager)
    with pytest.raises(ValueError, match="non-empty list"):
        check_tasks("records_fields", manager)
    with pytest.raises(ValueError, match="needs a 'task' name"):
        check_tasks([{"dataset_path": "json"}], manager)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task_manager(tmp_path / "missing")
    moved = (tasks_folder / "records_fields.yaml").read_text().replace(str(tasks_folder), "data")
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "moved.yaml").write_text(moved.replace("task: records_fields", "task: moved"))
    with pytest.raises(FileNotFoundError, match=r"task moved reads data/records_fields.jsonl, which does not exist"):
        check_tasks(["moved"], task_manager(tmp_path / "moved"))  # relative: from the working directory
    with pytest.raises(ValueError, match="no records"):
        write_record_tasks([], tmp_path / "none")
    with pytest.raises(ValueError, match="four records"):
        write_record_tasks(["Account: 1", "Account: 2"], tmp_path / "few")


def test_lm_eval_missing_names_the_extra(monkeypatch, small_testbed, tasks_folder):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'lightning-unlearn\[eval\]'"):
        evaluate_utility(small_testbed.model, small_testbed.tokenizer, TASKS, include_path=tasks_folder)


def test_flatten_keeps_metrics_only():
    results = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "sample_len": 3, "exact,strict": 1}}
    assert flatten_results(results) == {"t": {"acc": 0.5, "exact,strict": 1.0}}


def test_paper_task_list_names_lm_eval_tasks():
    """examples/utility/paper_tasks.txt is PAPER_TASKS, and each is defined by one of lm-eval's task YAML files
    (read as text: lm-eval's index of its 14k tasks is never built in tests)."""
    from pathlib import Path

    import lm_eval

    listed = Path(__file__).parents[2] / "examples" / "utility" / "paper_tasks.txt"
    assert tuple(listed.read_text().split()) == PAPER_TASKS
    defined = set()
    for path in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml"):
        defined |= set(re.findall(r"^task: *(\S+)", path.read_text(errors="ignore"), re.MULTILINE))
    assert set(PAPER_TASKS) <= defined
