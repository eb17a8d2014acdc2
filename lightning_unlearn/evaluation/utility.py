"""Utility as the field measures it: lm-evaluation-harness tasks on the model in memory, and local tasks for it.

``evaluate_utility(model, tokenizer, tasks)`` runs lm-eval (``pip install 'lightning-unlearn[eval]'``) on the
model as it is in memory: an ``HFLM`` around the model and our tokenizer (nothing is reloaded by name), with no
re-seeding of the global random generators (their states are restored afterwards as well), under
``torch.no_grad()`` and eval mode, the model's mode restored afterwards. It returns ``{task: {metric: value}}``.

Local tasks run offline: ``include_path`` is a folder of lm-eval YAML files, and with it only that folder is
indexed (lm-eval's 14k built-in tasks are indexed only when no ``include_path`` is given, or on request).
``write_record_tasks(records, folder)`` writes two such tasks on records the model should keep: a four-way
multiple choice (which account number completes the record) and a rolling-window perplexity; lm-eval resolves
relative ``data_files`` against the working directory, so the YAML it writes holds absolute paths.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lightning_unlearn.evaluation.scoring import eval_mode
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.files import write_text_atomically

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'lightning-unlearn[eval]'"

#: The tasks of the paper's utility table (Jang et al.'s nine classification tasks), by their lm-eval names.
PAPER_TASKS = (
    "lambada_openai",
    "piqa",
    "hellaswag",
    "arc_easy",
    "arc_challenge",
    "copa",
    "winogrande",
    "mathqa",
    "pubmedqa",
)

Task = str | Mapping[str, Any]
Results = dict[str, dict[str, float]]


def require_lm_eval() -> Any:
    """The ``lm_eval`` module, or an ImportError that names the extra to install."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (needs transformers and accelerate)
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from None
    return lm_eval


def task_manager(include_path: str | os.PathLike | None = None, include_defaults: bool | None = None) -> Any:
    """An lm-eval ``TaskManager`` over ``include_path`` (a folder of task YAML); the built-in tasks are indexed
    when ``include_defaults`` is True, by default only when there is no ``include_path``."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"task folder {include_path} does not exist: give a folder of lm-eval task YAML files")
    defaults = include_path is None if include_defaults is None else include_defaults
    return TaskManager(include_path=None if include_path is None else str(include_path), include_defaults=defaults)


#: dataset_path values that read data_files
LOCAL_DATASETS = ("json", "csv", "parquet", "text", "arrow")


def check_tasks(tasks: Sequence[Task], manager: Any) -> None:
    """Raises a clear error unless every task name is known to ``manager`` and every local data file a task reads
    exists (relative paths from the working directory, as lm-eval reads them)."""
    if isinstance(tasks, str) or not tasks:
        raise ConfigurationError(f"tasks must be a non-empty list of lm-eval task names or config dicts, got {tasks!r}")
    known = set(manager.all_tasks)
    for task in tasks:
        if isinstance(task, Mapping):
            if "task" not in task:
                raise ConfigurationError(f"a task config dict needs a 'task' name: {dict(task)}")
            _check_data_files(task["task"], task)
            continue
        if task not in known:
            close = difflib.get_close_matches(task, known, n=3)
            where = manager.include_path or "lm-eval's built-in tasks"
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigurationError(
                f"unknown lm-eval task {task!r} in {where}: {hint}give a task name found there, a config dict, or "
                f"include_path=<folder of task YAML>"
            )
        entry = manager.task_index[task]
        _check_data_files(task, entry.cfg or {})


def _check_data_files(name: str, config: Mapping[str, Any]) -> None:
    if config.get("dataset_path") not in LOCAL_DATASETS:
        return
    files = (config.get("dataset_kwargs") or {}).get("data_files") or []
    files = files.values() if isinstance(files, Mapping) else [files]
    for entry in files:
        for path in [entry] if isinstance(entry, str) else entry:
            if not any(c in path for c in "*?[") and not Path(path).exists():
                raise FileNotFoundError(
                    f"task {name} reads {path}, which does not exist (lm-eval resolves a relative data_files path "
                    f"against the working directory, {Path.cwd()}, not against the task's YAML: write it absolute)"
                )


def task_name(task: Task) -> str:
    return task["task"] if isinstance(task, Mapping) else task


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restores Python's, NumPy's and torch's (CPU and CUDA) global random states on exit."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval warns on every call that it was given a model instance (as we intend); keep its errors only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate_utility(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[Task],
    include_path: str | os.PathLike | None = None,
    batch_size: int = 16,
    limit: int | float | None = None,
    manager: Any = None,
    progress: bool = True,
) -> Results:
    """lm-eval's metrics of ``model`` on ``tasks``: ``{task: {metric: value}}`` (``acc``, ``acc_norm``,
    ``word_perplexity``, …; a metric under a filter other than lm-eval's ``none`` is named ``metric,filter``).

    Args:
        model: a Hugging Face causal LM, evaluated as it is. With several processes, call this on every process:
            each evaluates the whole tasks (under ZeRO-3 every forward pass gathers parameters from all of them),
            and all return process 0's numbers.
        tokenizer: its tokenizer.
        tasks: lm-eval task names, or config dicts (the same keys as a task YAML).
        include_path: a folder of task YAML files (then only it is indexed).
        batch_size: requests per forward pass.
        limit: at most this many documents per task (a fraction in (0, 1): that share).
        manager: an lm-eval ``TaskManager`` to reuse (default: :func:`task_manager` of ``include_path``).
        progress: show lm-eval's and datasets' progress bars (False: nothing they write to stderr is shown).
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    manager = manager if manager is not None else task_manager(include_path)
    check_tasks(tasks, manager)
    quiet = nullcontext() if progress else redirect_stderr(io.StringIO())  # their bars write to sys.stderr
    with preserved_random_state(), eval_mode(model), torch.no_grad(), _quiet_lm_eval(), quiet:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[dict(task) if isinstance(task, Mapping) else task for task in tasks],
            task_manager=manager,
            limit=limit,
            bootstrap_iters=0,  # no bootstrap standard errors: they draw random numbers and cost minutes
            log_samples=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
            fewshot_random_seed=None,
        )
    results = flatten_results(output["results"]) if output is not None else None  # None on other local ranks
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [results]
        torch.distributed.broadcast_object_list(shared, src=0)  # every process returns process 0's numbers
        results = shared[0]
    return results


def flatten_results(results: Mapping[str, Mapping[str, Any]]) -> Results:
    """lm-eval's ``results`` section as ``{task: {metric: float}}``, without aliases, sizes and standard errors."""
    flat: Results = {}
    for task, metrics in results.items():
        values = {}
        for key, value in metrics.items():
            metric, _, kind = key.partition(",")
            if metric in ("alias", "sample_len") or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            values[metric if kind in ("", "none") else key] = float(value)
        flat[task] = values
    return flat


def write_record_tasks(
    records: Sequence[str], folder: str | os.PathLike, prefix: str = "records", seed: int = 0
) -> Path:
    """Writes two lm-eval tasks on ``records`` (texts the model should keep) to ``folder``; returns the folder,
    the ``include_path`` to run them with.

    - ``{prefix}_fields`` (multiple choice, ``acc``): each record up to ``Account:``, then its own account number
      against those of three other records. Records without ``Account:`` are skipped.
    - ``{prefix}_perplexity`` (``loglikelihood_rolling``: ``word_perplexity``, ``byte_perplexity``,
      ``bits_per_byte``): every record.

    The JSONL data and the YAML that reads it (with absolute paths) are written atomically, so the folder can be
    reused across runs; ``seed`` decides the distractors and the answer positions.
    """
    if not records:
        raise ConfigurationError("no records to make utility tasks from")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    parts = [m for m in (re.match(r"(.*Account:) (\S+)(.*)", text, re.DOTALL) for text in records) if m]
    accounts = sorted({m.group(2) for m in parts})
    if len(accounts) < 4:
        raise ConfigurationError("the multiple-choice task needs at least four records with distinct 'Account:' fields")
    choices = []
    for m in parts:
        options = [m.group(2), *rng.sample([a for a in accounts if a != m.group(2)], 3)]
        rng.shuffle(options)
        choices.append({"context": m.group(1), "choices": options, "answer": options.index(m.group(2))})
    data = {"fields": choices, "perplexity": [{"text": text} for text in records]}
    configs = {
        "fields": {
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
        "perplexity": {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
        },
    }
    for name, rows in data.items():
        data_file = folder / f"{prefix}_{name}.jsonl"
        write_text_atomically(data_file, "".join(json.dumps(r) + "\n" for r in rows))
        config = {
            "task": f"{prefix}_{name}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test",
            **configs[name],
        }
        write_text_atomically(folder / f"{prefix}_{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder
