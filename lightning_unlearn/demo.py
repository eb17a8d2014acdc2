"""The demo: unlearn the testbed's forget set with each method from the same model, and compare them.

``run_demo()`` builds (or loads) the embedded testbed, measures the original model, runs each method of the registry
(:data:`~lightning_unlearn.methods.METHODS`, by the same names as ``lightning-unlearn unlearn --method``) from a copy
of it under a Lightning Trainer, measures each result the same way, prints a table that fits a terminal and writes
``summary.json``, ``summary.md`` (every column), ``per_sample.csv`` (every forget record's g before and after each
method), ``forget_g.png`` (the histograms), ``tradeoff.png`` (utility cost against records left above the threshold
and retain g lost) and ``verdict.png`` (each method's forget g under each attack beside the exact retrain's). With
lm-eval installed (``[eval]``), each model is also run on two lm-eval tasks written to ``utility_tasks/`` from the
retain records: a four-way multiple choice (``MC acc``) and a perplexity (``byte ppl``). ``ga-mean`` stops by Jang et
al.'s mean rule (the holdout mean g); every other method by the per-sample rule: every forget record at or below the
holdout's 0.95 quantile of g.

Every model is also attacked (:mod:`lightning_unlearn.evaluation.recovery`, each on a copy): 20 Adam steps (lr 1e-4)
of relearning on the retain records, int8 and int4 round-to-nearest, and (100, 0.5)-discoverable sampling. The
exact-retrain reference (the testbed trained without the forget records) is measured the same way, and each method is
judged against it under the same attack (:func:`retrain_ks`: records above the threshold for each, and a two-sample
KS test of their forget g); each model's own per-record verdict against the holdout under each attack is in its
summary (``verdict``, :func:`~lightning_unlearn.evaluation.report.attack_verdicts`). Relearning-aware methods
(``sga-kl-ra``) simulate their attacks on fresh records of the same kind (``Testbed.relearn_records``), never on the
retain records that the relearning attack uses.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import statistics
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel

from lightning_unlearn.callbacks import MemorizationEarlyStopping, UnlearningProgress
from lightning_unlearn.data import UnlearningDataModule
from lightning_unlearn.evaluation.membership import NeighbourhoodAttack
from lightning_unlearn.evaluation.recovery import DISCOVERY, RECOVERY_ATTACKS
from lightning_unlearn.evaluation.report import (
    ATTACK_COLUMNS,
    Report,
    memorization_report,
    plot_histograms,
)
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.evaluation.utility import evaluate_utility, require_lm_eval, write_record_tasks
from lightning_unlearn.functional.membership import membership_auc
from lightning_unlearn.functional.verdict import retrain_verdict
from lightning_unlearn.methods import METHODS, check_method
from lightning_unlearn.modules import UnlearningModule
from lightning_unlearn.testbed.build import Testbed, build_testbed
from lightning_unlearn.testbed.settings import TESTBED_SETTINGS
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_demo
from lightning_unlearn.utilities.files import atomic_file, write_text_atomically

#: what write_record_tasks(prefix="testbed") writes
UTILITY_TASKS = ("testbed_fields", "testbed_perplexity")
#: what the demo runs unless told
DEFAULT_METHODS = ("sga-kl", "sga", "npo-kl", "ta", "tau", "ga-mean")

#: The table printed to the terminal: summary key -> heading (every column of COLUMNS is in summary.md).
TERMINAL_COLUMNS = {
    "steps": "steps",
    "above_threshold": "above",
    "holdout_nll_ratio": "holdout NLL",
    "retain_g": "retain g",
    "loss_auc": "LOSS AUC",
    "relearn_above": "relearn",
    "int4_above": "int4",
    "ks_not_rejected": "KS not rejected",
}
COLUMNS = {  # summary key -> table heading
    "steps": "steps",
    "seconds": "seconds",
    "g_mean": "mean g",
    "g_max": "max g",
    "above_threshold": "above thr.",
    "over_forgotten": "over-forgotten",
    "outliers": "c(D_f)",
    "verbatim_extractable": "verbatim",
    "holdout_nll_ratio": "holdout NLL",
    "forget_holdout_nll": "forget / holdout NLL",
    "retain_g": "retain g",
    "collateral": "collateral",
    "mc_acc": "MC acc",
    "byte_perplexity": "byte ppl",
    "loss_auc": "LOSS AUC",
    "miau_auc": "MIAU AUC",
    "relearn_above": "above after relearn",
    "relearn_holdout_above": "holdout above after relearn",
    "int4_above": "above after int4",
    "sampling_above": "discoverable",
    "retrain_distance": "distance to retrain g",
    "ks_not_rejected": "KS not rejected (p ≥ 0.05)",
}


def testbed_method(name: str) -> Callable[..., UnlearningModule]:
    """``make(model, **options)`` of registry method ``name`` with the testbed's settings
    (:data:`~lightning_unlearn.testbed.settings.TESTBED_SETTINGS`) applied; ``options`` override them in turn."""
    method = check_method(name)
    return lambda model, **options: method.make(model, **{**TESTBED_SETTINGS.get(name, {}), **options})


def measure(
    model: PreTrainedModel,
    testbed: Testbed,
    datamodule: UnlearningDataModule,
    miau: NeighbourhoodAttack,
    threshold: float | str = "holdout_quantile",
    retain_before: dict[int, float] | None = None,
    utility_tasks: Path | None = None,
    recovery_attacks: Sequence[str] = RECOVERY_ATTACKS,
) -> Report:
    """The demo's measures of one model: the report (per-sample rows and summary, retain g and collateral) and
    MIAU AUC; ``threshold``: the original model's (default: this model's holdout 0.95 quantile of g);
    ``retain_before``: the original model's retain g by sample, for ``collateral``; ``utility_tasks``: the folder
    of :data:`UTILITY_TASKS`, to run them (``summary["utility"]``, ``mc_acc`` and ``byte_perplexity``); MIAU
    against as many holdout records as forget records;
    ``recovery_attacks``: :mod:`~lightning_unlearn.evaluation.recovery` attacks, relearning on the retain split."""
    report = memorization_report(
        model,
        datamodule,
        duplicates=testbed.duplicates,
        threshold=threshold,
        retain_before=retain_before,
        recovery_attacks=recovery_attacks,
    )
    summary = report.summary
    unseen = testbed.holdout[: len(testbed.forget)]  # as many non-members as members: MIAU scores 10 neighbours each
    summary["miau_auc"] = membership_auc(
        miau.score(model, testbed.tokenizer, testbed.forget), miau.score(model, testbed.tokenizer, unseen)
    )
    summary["loss_auc"] = summary["membership_auc"]["loss"]
    summary["outliers"] = summary["outliers_fixed_band"]["outliers"]
    if utility_tasks is not None:
        utility = evaluate_utility(model, testbed.tokenizer, UTILITY_TASKS, include_path=utility_tasks, progress=False)
        summary["utility"] = utility
        summary["mc_acc"] = utility["testbed_fields"]["acc"]
        summary["byte_perplexity"] = utility["testbed_perplexity"]["byte_perplexity"]
    return report


def quiet_trainer(
    max_steps: int, callbacks: Sequence[Callback] = (), accelerator: str = "cpu", precision: str = "32-true"
) -> L.Trainer:
    """A one-device Trainer (the CPU unless told otherwise) for at most ``max_steps`` epochs (one optimizer step
    each when a batch holds the whole forget set), without logger, checkpoints, progress bar or model summary."""
    return L.Trainer(
        max_epochs=max_steps,
        accelerator=accelerator,
        precision=precision,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def check_methods(methods: Sequence[str]) -> None:
    """Raises a clear error unless ``methods`` are names from :data:`~lightning_unlearn.methods.METHODS` (at least
    one)."""
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise ConfigurationError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
        )


def run_demo(
    output: str | os.PathLike = "demo-output",
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    testbed: Testbed | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_steps: int = 600,
    num_neighbours: int = 10,
    progress: bool = True,
    retrain: bool = True,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> dict[str, Any]:
    """Runs the demo and writes its files to ``output``; returns ``summary.json``'s content.

    Args:
        methods: names from :data:`~lightning_unlearn.methods.METHODS`, run in this order from the same original
            model (default: :data:`DEFAULT_METHODS`).
        testbed: a built testbed (default: ``build_testbed(seed, cache_dir)``, cached after the first build).
        max_steps: optimizer steps at most per method (a method that reaches it has not met its rule).
        num_neighbours: MIAU neighbours per text.
        retrain: add the exact-retrain reference (the testbed trained without the forget records; built once, then
            cached) as a row, judge every row against it under each attack (``retrain_ks``, ``ks_not_rejected``)
            and give its distance to it: the mean ``|g − g_retrain|`` over the forget records.
        accelerator, precision: the unlearning runs' (Lightning's names; the measurements use the GPU when there
            is one).
    """
    check_methods(methods)
    output = Path(output)
    if testbed is None:
        testbed = build_testbed(seed=seed, cache_dir=cache_dir, progress=progress)
    datamodule = testbed.datamodule()
    training_data = testbed.datamodule(relearn=testbed.relearn_records())  # relearning-aware methods train on it
    miau = NeighbourhoodAttack(num_neighbours=num_neighbours, seed=seed)
    original = testbed.model.eval()
    retain_before = score_memorization(original, datamodule.scoring_dataloader("retain"))
    utility_tasks = _utility_tasks(output, testbed)
    reports = {
        "original": measure(original, testbed, datamodule, miau, "holdout_quantile", retain_before, utility_tasks)
    }
    rows = {"original": {"method": "original model", "steps": 0, "seconds": 0.0, **reports["original"].summary}}
    before_nll, threshold = rows["original"]["holdout_nll"], rows["original"]["threshold"]
    rows["original"]["holdout_nll_ratio"] = 1.0
    if retrain:
        model = testbed.retrained(progress).model.eval()
        reports["retrain"] = measure(model, testbed, datamodule, miau, threshold, retain_before, utility_tasks)
        summary = reports["retrain"].summary
        rows["retrain"] = {"method": "exact retrain (never saw the forget set)", "steps": 0, "seconds": 0.0, **summary}
        rows["retrain"]["holdout_nll_ratio"] = summary["holdout_nll"] / before_nll
    for name in methods:
        L.seed_everything(seed, verbose=False)
        model, rows[name] = _unlearned(name, original, training_data, max_steps, progress, accelerator, precision)
        reports[name] = measure(model, testbed, datamodule, miau, threshold, retain_before, utility_tasks)
        rows[name] |= {**reports[name].summary, "holdout_nll_ratio": reports[name].summary["holdout_nll"] / before_nll}
    for row in rows.values():  # below 1: forget records likelier than unseen ones, what the LOSS attack sees
        row["forget_holdout_nll"] = row["forget_nll"] / row["holdout_nll"]
    if retrain:
        for name, row in rows.items():
            row["retrain_distance"] = _distance(reports[name].rows, reports["retrain"].rows)
            verdicts = retrain_ks(reports[name].rows, reports["retrain"].rows, threshold)
            row["retrain_ks"] = verdicts
            row["ks_not_rejected"] = f"{sum(v['indistinguishable'] for v in verdicts.values())}/{len(verdicts)}"
    result = {
        "testbed": testbed.summary,
        "base_model": testbed.config.base_model,
        "seed": seed,
        "threshold": threshold,
        "rows": rows,
    }
    _write(output, result, reports)
    _print_demo(output, rows, threshold, retrain)
    return result


def _unlearned(
    name: str,
    original: PreTrainedModel,
    training_data: UnlearningDataModule,
    max_steps: int,
    progress: bool,
    accelerator: str,
    precision: str,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Method ``name`` (with the testbed's settings) run on a copy of ``original``: the unlearned model, in eval mode,
    and its row's run columns (description, steps, whether the rule was met, seconds)."""
    module = testbed_method(name)(copy.deepcopy(original))
    with _quiet():
        shown = UnlearningProgress(name, progress, total=max_steps)
        trainer = quiet_trainer(max_steps, [*METHODS[name].callbacks(), shown], accelerator, precision)
        start = time.perf_counter()
        trainer.fit(module, training_data)
        seconds = time.perf_counter() - start
    stopping = [cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping)]
    stopped, rule_met = (stopping[0].stopped_step, bool(stopping[0].rule_met)) if stopping else (None, False)
    steps = stopped if stopped is not None else trainer.global_step
    row = {"method": METHODS[name].description, "steps": steps, "rule_met": rule_met, "seconds": seconds}
    return module.model.eval(), row


def _print_demo(output: Path, rows: dict[str, dict[str, Any]], threshold: float, retrain: bool) -> None:
    """The demo's table as it fits a terminal, its legend and the files written."""
    print(table(rows, TERMINAL_COLUMNS))
    legend = (
        f"threshold {threshold:.3f}: the holdout's 0.95 quantile of g; relearn, int4: forget records above it after "
        "each attack; KS not rejected: attacks under which a KS test of the forget g against the exact retrain's "
        "does not reject at 0.05, a weak test at this many records, not a proof of forgetting"
    )
    detectable = rows["original"].get("detectable_at")
    if detectable is not None:
        legend += (
            f"; each row's per-record verdict against the holdout (summary.json, verdict.png) finds any record at "
            f"g ≥ {detectable:.3f} with no attack"
        )
    print("\n" + textwrap.fill(legend, width=100))
    print(
        f"written to {output}/: summary.json, summary.md (every column), per_sample.csv, forget_g.png, tradeoff.png"
        + (", verdict.png" if retrain else "")
    )


def _distance(rows: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> float:
    """The mean |g − g_reference| over the forget records (rows keyed alike by ``sample_id``)."""
    g = {row["sample_id"]: row["g"] for row in reference}
    return statistics.fmean(abs(row["g"] - g[row["sample_id"]]) for row in rows)


def _utility_tasks(output: Path, testbed: Testbed) -> Path | None:
    """The demo's lm-eval tasks, written to ``output/utility_tasks``; None (with a note) without lm-eval."""
    try:
        require_lm_eval()
    except ImportError as error:
        print(f"note: no utility columns: {error}")
        return None
    return write_record_tasks(testbed.retain, output / "utility_tasks", prefix="testbed")


def run_seeds(
    output: str | os.PathLike = "demo-output",
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    cache_dir: str | os.PathLike | None = None,
    max_steps: int = 600,
    num_neighbours: int = 10,
    progress: bool = True,
    retrain: bool = True,
    **testbed_options: Any,
) -> dict[str, Any]:
    """Runs the demo once per seed and summarizes the runs; returns ``summary.json``'s content.

    Each seed has its own testbed (records, tokenizer and model; built once, then cached; ``testbed_options`` go to
    :func:`~lightning_unlearn.testbed.build.build_testbed`, and the unlearning runs where the testbed trained) and
    its own MIAU neighbours, so the spread over seeds is how much a result depends on the data and the model rather
    than on one lucky run. Each run is written to ``output/seed<N>/`` as :func:`run_demo` writes it;
    ``output/summary.json`` holds every seed's rows and, per method and column, the median, min and max over seeds
    and how many seeds met the method's rule; ``output/summary.md`` the table of medians and ranges.
    """
    check_methods(methods)
    if not seeds:
        raise ConfigurationError("no seeds given")
    output = Path(output)
    per_seed = {}
    for seed in seeds:
        testbed = build_testbed(seed=seed, cache_dir=cache_dir, progress=progress, **testbed_options)
        run = run_demo(
            output / f"seed{seed}",
            methods,
            seed,
            testbed,
            max_steps=max_steps,
            num_neighbours=num_neighbours,
            progress=progress,
            retrain=retrain,
            accelerator=testbed.config.accelerator,
            precision=testbed.config.precision,
        )
        per_seed[seed] = run
    rows = {seed: run["rows"] for seed, run in per_seed.items()}
    result = {
        "seeds": list(seeds),
        "thresholds": {seed: run["threshold"] for seed, run in per_seed.items()},
        "aggregate": aggregate(rows),
        "per_seed": rows,
    }
    text = seeds_table(result["aggregate"])
    write_text_atomically(output / "summary.json", json.dumps(result, indent=1))
    write_text_atomically(
        output / "summary.md", f"Median [min, max] over seeds {', '.join(map(str, seeds))}\n\n{text}\n"
    )
    print(f"\nmedian [min, max] over seeds {', '.join(map(str, seeds))}:\n{text}")
    print(f"\nwritten to {output}/: summary.json, summary.md, and each seed's run in seed<N>/")
    return result


def aggregate(runs: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method (the rows of each run, keyed alike): each numeric column's median, min and max over the runs,
    ``rule_met`` (how many runs met the rule; None for the models that have none) and ``ks_not_rejected`` (in how
    many runs KS against the retrain did not reject under any attack; None without a retrain) of ``runs``
    (``{seed: rows}``)."""
    first = next(iter(runs.values()))
    summary: dict[str, dict[str, Any]] = {}
    for name, row in first.items():
        rows = [run[name] for run in runs.values()]
        columns = {}
        for key in [*COLUMNS, "holdout_nll", "threshold"]:
            values = [r[key] for r in rows if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)]
            if len(values) == len(rows):
                columns[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        met = sum(bool(r["rule_met"]) for r in rows) if all("rule_met" in r for r in rows) else None
        alike = None
        if all(r.get("retrain_ks") for r in rows):
            alike = sum(all(v["indistinguishable"] for v in r["retrain_ks"].values()) for r in rows)
        counts = {"rule_met": met, "ks_not_rejected": alike}
        summary[name] = {"method": row["method"], "runs": len(rows), **counts, **columns}
    return summary


def seeds_table(summary: dict[str, dict[str, Any]]) -> str:
    """The aggregate as a Markdown table: each cell the median [min, max]; ``met`` how many runs met the rule,
    ``KS not rejected`` in how many KS against the exact retrain did not reject under any attack."""
    columns = [key for key in COLUMNS if key != "ks_not_rejected" and all(key in row for row in summary.values())]
    headings = ["method", "met", "KS not rejected", *(COLUMNS[k] for k in columns)]
    lines = ["| " + " | ".join(headings) + " |", "|---" * len(headings) + "|"]
    for name, row in summary.items():
        cells = [name]
        for count in ("rule_met", "ks_not_rejected"):  # the original and the retrain have no rule
            cells.append(f"{row[count]}/{row['runs']}" if row[count] is not None else "—")
        for key in columns:
            spread = row[key]
            digits = 0 if key in ("steps", "seconds") or all(float(v).is_integer() for v in spread.values()) else 3
            suffix = "x" if key == "holdout_nll_ratio" else ""
            median, low, high = (f"{spread[k]:.{2 if suffix else digits}f}" for k in ("median", "min", "max"))
            cells.append(f"{median}{suffix} [{low}, {high}]" if low != high else f"{median}{suffix}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's start-up notes and library warnings would break the progress bars: the table says it all."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def table(rows: dict[str, dict[str, Any]], columns: Mapping[str, str] = COLUMNS) -> str:
    """The demo's rows (keyed by method name) as a Markdown table of ``columns`` (summary key -> heading; those
    that every row has)."""
    keys = [key for key in columns if all(key in row for row in rows.values())]
    lines = ["| method | " + " | ".join(columns[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for key in keys:
            value = row[key]
            if key == "holdout_nll_ratio":
                cells.append(f"{value:.2f}x")
            elif key == "steps" and row.get("rule_met") is False:
                cells.append(f"{value} (unmet)")
            elif key == "steps" and name in ("original", "retrain"):
                cells.append("—")
            elif isinstance(value, str):
                cells.append(value)
            else:
                cells.append(f"{value:.3f}" if isinstance(value, float) and key != "seconds" else f"{value:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(output: Path, result: dict[str, Any], reports: dict[str, Any]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output / "summary.json", json.dumps(result, indent=1))
    legend = "\n".join(f"- **{name}**: {row['method']}" for name, row in result["rows"].items())
    write_text_atomically(
        output / "summary.md",
        f"Threshold (holdout 0.95 quantile of g): {result['threshold']:.3f}\n\n{legend}\n\n{table(result['rows'])}\n",
    )
    base = reports["original"].rows
    names = [name for name in reports if name != "original"]
    per_sample = io.StringIO()
    writer = csv.writer(per_sample)
    writer.writerow(["sample_id", "duplicates", "g_before", *(f"g_{name}" for name in names), "text"])
    for i, row in enumerate(base):
        after = [f"{reports[name].rows[i]['g']:.4f}" for name in names]
        writer.writerow([row["sample_id"], row.get("duplicates", ""), f"{row['g']:.4f}", *after, row["text"]])
    write_text_atomically(output / "per_sample.csv", per_sample.getvalue())
    band = reports["original"].summary["outliers_holdout_quantiles"]
    plot_histograms(
        [row["g"] for row in base],
        {name: [row["g"] for row in reports[name].rows] for name in names},
        result["threshold"],
        (band["lower"], band["upper"]),
        output / "forget_g.png",
    )
    plot_tradeoff({name: result["rows"][name] for name in names}, output / "tradeoff.png")
    if "retrain" in reports:
        methods = {name: reports[name].rows for name in names if name != "retrain"}
        plot_verdict(methods, reports["retrain"].rows, result["threshold"], output / "verdict.png")


MARKERS = "osD^vP*Xhp<>"


def plot_tradeoff(rows: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """A PNG of the forgetting/utility trade-off, one point per method (a marker each, named in the legend, so
    that no two labels overlap): utility cost (holdout NLL ratio, x) against forget records left above the threshold
    (left) and retain g lost (right, before − after).

    ``rows``: per method, a summary with ``holdout_nll_ratio``, ``above_threshold``, ``retain_g`` and
    ``retain_g_before`` (as the demo's rows have them).
    """
    require_demo("plotting")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    panels = (
        (left, "forget records above the threshold", lambda row: row["above_threshold"]),
        (right, "retain g lost (before − after)", lambda row: row["retain_g_before"] - row["retain_g"]),
    )
    for axis, label, value in panels:
        for i, (name, row) in enumerate(rows.items()):
            axis.scatter([row["holdout_nll_ratio"]], [value(row)], s=55, marker=MARKERS[i % len(MARKERS)], label=name)
        axis.axvline(1.0, color="grey", linewidth=0.8)
        axis.set_xlabel("holdout NLL, after / before (utility cost)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    left.set_title("left unlearned: lower is better", fontsize=10)
    right.set_title("collateral damage: lower is better", fontsize=10)
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 0.86, 1))
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=110)
    return Path(path)


def retrain_ks(
    rows: Sequence[Mapping[str, Any]], retrain_rows: Sequence[Mapping[str, Any]], threshold: float, alpha: float = 0.05
) -> dict[str, dict[str, Any]]:
    """The distribution-level comparison with the exact retrain under each attack that both row sets carry
    (:data:`~lightning_unlearn.evaluation.report.ATTACK_COLUMNS`, ``"none"`` first): per attack,
    :func:`~lightning_unlearn.functional.verdict.retrain_verdict` of the forget records' scores (g against
    ``threshold``; for sampling, the discovery probability against p = 0.5)."""
    verdicts = {}
    for attack, column in ATTACK_COLUMNS.items():
        if rows and retrain_rows and column in rows[0] and column in retrain_rows[0]:
            sampling = attack == "sampling"
            verdicts[attack] = retrain_verdict(
                [row[column] for row in rows],
                [row[column] for row in retrain_rows],
                DISCOVERY if sampling else threshold,
                alpha,
                inclusive=sampling,
            )
    return verdicts


def plot_verdict(
    methods: Mapping[str, Sequence[Mapping[str, Any]]],
    retrain: Sequence[Mapping[str, Any]],
    threshold: float,
    path: str | os.PathLike,
    columns: Mapping[str, str] | None = None,
) -> Path:
    """A PNG of the retrain verdict: a row per method (named on its left), a column per attack, each panel the
    empirical CDF of the method's forget g beside the exact retrain's under the same attack, the threshold marked, and
    the attack, the KS statistic and its p-value in its title.

    Args:
        methods: per method, its rows (one per forget record, keyed by ``sample_id``: a report's rows).
        retrain: the retrain's rows, keyed alike.
        columns: attack -> the row key of its g (default: :data:`~lightning_unlearn.evaluation.report.ATTACK_COLUMNS`
            that the rows carry, but sampling, whose score is not a g).
    """
    require_demo("plotting")
    from matplotlib.figure import Figure

    if columns is None:
        columns = {a: c for a, c in ATTACK_COLUMNS.items() if c in retrain[0] and a != "sampling"}
    attacks = list(columns)
    figure = Figure(figsize=(2.9 * len(attacks), 2.5 * len(methods) + 0.6))
    axes = figure.subplots(len(methods), len(attacks), squeeze=False, sharex=True, sharey=True)
    for row_axes, (name, rows) in zip(axes, methods.items(), strict=True):
        for axis, attack in zip(row_axes, attacks, strict=True):
            column = columns[attack]
            for values, label, colour in (
                ([r[column] for r in rows], "model", "tab:blue"),
                ([r[column] for r in retrain], "retrain", "tab:orange"),
            ):
                ordered = sorted(values)
                axis.step(
                    ordered,
                    [(i + 1) / len(ordered) for i in range(len(ordered))],
                    where="post",
                    color=colour,
                    label=label,
                )
            axis.axvline(threshold, color="tab:red", linestyle="--", linewidth=0.8)
            verdict = retrain_verdict([r[column] for r in rows], [r[column] for r in retrain], threshold)
            mark = "" if verdict["indistinguishable"] else " ✗"
            axis.set_title(f"{attack}\nKS {verdict['ks']:.2f}, p {verdict['p_value']:.2g}{mark}", fontsize=8)
            axis.grid(alpha=0.3)
        row_axes[0].set_ylabel(f"{textwrap.fill(name, 30)}\nshare of forget records", fontsize=8)
        row_axes[0].legend(fontsize=7, loc="lower right")
    for axis in axes[-1]:
        axis.set_xlabel("g after the attack")
    figure.suptitle(
        f"forget g beside the exact retrain's under the same attack (threshold {threshold:.3f}; ✗: p < 0.05)",
        fontsize=10,
    )
    figure.tight_layout()
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=100)
    return Path(path)
