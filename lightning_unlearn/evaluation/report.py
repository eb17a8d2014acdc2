"""The unlearning-quality report: a per-sample table, a summary, and forget-set memorization histograms.

``memorization_report(model, datamodule)`` measures every forget sample (g, EL_n, verbatim extraction, attack
scores and, against the holdout, an empirical p-value with a Benjamini–Hochberg flag) and summarizes: mean/max g,
the holdout threshold with its bootstrap interval, the paper's outlier counts c(D_f) for the fixed band and for
bands from the holdout distribution (mean ± k·std; its 5th–95th percentiles), the over-forgotten count (below the
holdout's 5th percentile), the verbatim-extractable count, each attack's AUC (forget vs holdout), the forget and
holdout NLL (nats), and the retain split's g (with ``retain_before``: how many retain records lost more than 0.1 of
it).
``write_report`` writes CSV, JSON and Markdown; ``plot_histograms`` draws forget g before vs after unlearning with
the threshold and band marked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from lightning_unlearn.evaluation.membership import MEMBERSHIP_ATTACKS
from lightning_unlearn.evaluation.recovery import (
    ATTACK_BATCH_SIZE,
    DISCOVERY,
    QUANTIZATIONS,
    RELEARN_SWEEP,
    recovery_scores,
    recovery_summary,
    relearn_sweep,
    worst_point,
)
from lightning_unlearn.evaluation.report_types import AttackVerdict, ReportRow, ReportSummary
from lightning_unlearn.evaluation.scoring import (
    eval_mode,
    extraction_likelihood,
    score_memorization,
    verbatim_extraction,
)
from lightning_unlearn.functional.membership import membership_auc, membership_scores
from lightning_unlearn.functional.memorization import nll_and_accuracy
from lightning_unlearn.functional.thresholds import (
    BAND,
    HOLDOUT_THRESHOLDS,
    bootstrap_interval,
    check_threshold,
    holdout_band,
    holdout_threshold,
)
from lightning_unlearn.functional.verdict import RecordVerdict, discovery_verdict, record_verdict, tail_p_values
from lightning_unlearn.integrations.huggingface import on_device
from lightning_unlearn.integrations.peft import is_adapted
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.extras import require_demo
from lightning_unlearn.utilities.files import atomic_file, write_text_atomically

#: The row column that holds each attack's score of a forget record ("none": the model as it is).
ATTACK_COLUMNS = {
    "none": "g",
    "relearn": "relearn_g",
    "relearn_sweep": "relearn_sweep_g",
    "int8": "int8_g",
    "int4": "int4_g",
    "sampling": "sampling_p",
}


@dataclass
class Report:
    """``rows``: one :class:`ReportRow` per forget sample; ``summary``: the aggregates (:class:`ReportSummary`);
    ``holdout``: the holdout records' scores by row column (``g``, ``nll`` and each attack's :data:`ATTACK_COLUMNS`
    column), ``{column: {sample_id: value}}``: the control that :func:`attack_verdicts` judges the rows against."""

    rows: list[ReportRow]
    summary: ReportSummary
    holdout: dict[str, dict[int, float]] = field(default_factory=dict)


@torch.no_grad()
def _measure_split(
    model: torch.nn.Module, loader: Any, texts: Sequence[str], el_n: int | None, verbatim: tuple[int, int] | None
) -> dict:
    """Per-sample g, NLL, attack scores (and EL_n, verbatim) of a scoring loader, keyed by sample_id (``texts``: the
    split's texts by sample_id, for the zlib attack)."""
    device = next(model.parameters()).device
    out: dict[int, dict[str, Any]] = {}
    with eval_mode(model):
        for batch in loader:
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            nll, g = nll_and_accuracy(logits, ids, mask)
            columns = {"g": g, "nll": nll}
            batch_texts = [texts[i] for i in batch["sample_id"].tolist()]
            for name, score in membership_scores(logits, ids, mask, batch_texts).items():  # the same forward pass
                columns[f"{name}_score"] = score
            if el_n is not None:
                columns[f"el_{el_n}"] = extraction_likelihood(model, ids, mask, n=el_n)
            if verbatim is not None:
                columns["verbatim"] = verbatim_extraction(model, ids, mask, *verbatim)
            for row, sample_id in enumerate(batch["sample_id"].tolist()):
                out[sample_id] = {key: value[row].item() for key, value in columns.items()}
    return out


def memorization_report(
    model: torch.nn.Module,
    datamodule: Any,
    el_n: int | None = 10,
    verbatim_lengths: tuple[int, int] | None = None,
    band: tuple[float, float] = BAND,
    k_std: float = 1.0,
    duplicates: Sequence[int] | None = None,
    threshold: float | str = "holdout_quantile",
    quantile: float = 0.95,
    band_quantiles: tuple[float, float] = (0.05, 0.95),
    alpha: float = 0.05,
    retain_before: Mapping[int, float] | None = None,
    collateral_drop: float = 0.1,
    recovery_attacks: Sequence[str] = (),
    recovery_options: Mapping[str, Any] | None = None,
    retrain: torch.nn.Module | None = None,
    device: str | torch.device | None = "auto",
) -> Report:
    """Measures the forget split (and the holdout split, if given) of ``datamodule`` under ``model``.

    Without a holdout split, ``threshold`` is required and the holdout band, holdout NLL and attack AUCs
    (which compare against unseen data) are left out.

    With a holdout split, ``summary["verdict"]`` is :func:`attack_verdicts`: under each attack, the forget records
    that come back (stand out above the holdout scored on the same attacked model) or are over-forgotten, and the g
    from which a record is found; each row gets its tail ``p_value``, ``flagged`` (back with no attack) and
    ``over_forgotten``. Without a holdout it is None.

    Args:
        el_n: n of EL_n (None skips it: it decodes, so it is the slowest column).
        verbatim_lengths: (prefix, suffix) tokens for verbatim extraction; default: (50, 50), shortened to half
            of the shortest forget sample each when that is shorter than 100 tokens.
        band: the fixed (lower, upper) g band of c(D_f).
        k_std: the holdout band is holdout mean g ± k_std · its std.
        duplicates: training copies of each forget sample (e.g. ``Testbed.duplicates``), added to the table.
        threshold: the forgetting threshold for ``above_threshold``: a fraction, or this model's holdout
            ``quantile`` of g (``"holdout_quantile"``, the per-sample rule's threshold) or mean g (``"holdout_mean"``);
            to judge an unlearned model, pass the original model's number, as the stop rules use.
        quantile: the holdout quantile of ``threshold="holdout_quantile"``.
        band_quantiles: the holdout quantiles (q_low, q_high) of the unseen-data band; below q_low is over-forgotten.
        alpha: false-discovery rate of the per-record test against the holdout (Benjamini–Hochberg over records).
        retain_before: ``{sample_id: g}`` of the retain split before unlearning, to count ``collateral``.
        collateral_drop: the fall in g, a fraction, beyond which a retain record counts as collateral.
        recovery_attacks: names from :data:`~lightning_unlearn.evaluation.recovery.RECOVERY_ATTACKS`
            (``relearn``, ``int8``, ``int4``, ``sampling``), each run on a copy: every row gains ``{attack}_g``
            (sampling: ``sampling_p``, the chance that 100 samples reproduce the record's second half) and the
            summary :func:`~lightning_unlearn.evaluation.recovery.recovery_summary` (records above the threshold
            after each attack, forget and holdout). Relearning uses the relearn split, else the retain split.
        recovery_options: more :func:`~lightning_unlearn.evaluation.recovery.recovery_scores` arguments
            (``relearn_steps``, …).
        retrain: the exact retrain, measured alike under each attack: adds the KS test against its forget scores
            and its own records back to each verdict, and its ``retrain_g`` to each row.
        device: ``"auto"`` (the GPU when there is one), a device, or None (where the model is), for the measures.
    """
    with on_device(model, device):
        datamodule.setup()
        rows, verbatim_lengths = _forget_rows(model, datamodule, el_n, verbatim_lengths, duplicates)
        has_holdout = datamodule.has_split("holdout")
        holdout, threshold, interval = _holdout_and_threshold(model, datamodule, threshold, quantile)
        summary = _forget_summary(rows, threshold, interval, band, verbatim_lengths)
        if has_holdout:
            summary |= _holdout_summary(rows, holdout, k_std, band_quantiles, alpha)
        held = {column: {i: value[column] for i, value in holdout.items()} for column in ("g", "nll")}
        if recovery_attacks:
            held |= _add_recovery(model, datamodule, rows, summary, recovery_attacks, recovery_options, alpha)
        report = Report(rows=rows, summary=summary, holdout=held if has_holdout else {})
        reference = None
        if retrain is not None:
            with on_device(retrain, device):
                reference = _attacked_report(retrain, datamodule, recovery_attacks, recovery_options, summary)
            _add_retrain_g(rows, reference)
        summary["verdict"] = verdicts = attack_verdicts(report, alpha, reference) if has_holdout else None
        if verdicts is not None:
            _mark_records(report, verdicts["none"])
        if el_n is not None:
            untyped(summary)[f"el_{el_n}_mean"] = statistics.fmean(untyped(row)[f"el_{el_n}"] for row in rows)
        if datamodule.has_split("retain"):
            summary |= _retain_summary(model, datamodule, retain_before, collateral_drop)
        return report


def _holdout_and_threshold(
    model: torch.nn.Module, datamodule: Any, threshold: float | str, quantile: float
) -> tuple[dict[int, dict[str, Any]], float, list[float] | None]:
    """The holdout's measures by sample id (none without a holdout split), the threshold as a number and, when it is
    the holdout's, its bootstrap interval."""
    threshold = check_threshold(threshold, "memorization_report")
    if not datamodule.has_split("holdout"):
        if isinstance(threshold, str):
            raise ConfigurationError("the report needs a holdout split (unseen texts) or a float threshold")
        return {}, threshold, None
    texts = datamodule.split("holdout").texts
    holdout = _measure_split(model, datamodule.scoring_dataloader("holdout"), texts, None, None)
    if not isinstance(threshold, str):
        return holdout, threshold, None
    holdout_g = torch.tensor([value["g"] for value in holdout.values()])
    kind = HOLDOUT_THRESHOLDS[threshold]
    return holdout, holdout_threshold(holdout_g, kind, quantile), list(bootstrap_interval(holdout_g, kind, quantile))


def _add_retrain_g(rows: list[ReportRow], reference: Report) -> None:
    """Each row's ``retrain_g``: the record's g under the exact retrain (``reference``, its report)."""
    retrain_g = {row["sample_id"]: row["g"] for row in reference.rows}
    for row in rows:
        row["retrain_g"] = retrain_g[row["sample_id"]]


def _forget_rows(
    model: torch.nn.Module,
    datamodule: Any,
    el_n: int | None,
    verbatim_lengths: tuple[int, int] | None,
    duplicates: Sequence[int] | None,
) -> tuple[list[ReportRow], tuple[int, int]]:
    """One row per forget record (its measures: :func:`_measure_split`), and the verbatim lengths used: by default
    (50, 50), shortened to half of the shortest record each when that is shorter than 100 tokens."""
    if verbatim_lengths is None:
        shortest = min(datamodule.split("forget").lengths)
        verbatim_lengths = (50, 50) if shortest >= 100 else (shortest // 2, shortest - shortest // 2)
    texts = datamodule.split("forget").texts
    forget = _measure_split(model, datamodule.scoring_dataloader("forget"), texts, el_n, verbatim_lengths)
    rows = []
    for sample_id in sorted(forget):
        row = cast(ReportRow, {"sample_id": sample_id, "text": texts[sample_id][:80], **forget[sample_id]})
        if duplicates is not None:
            row["duplicates"] = duplicates[sample_id]
        rows.append(row)
    return rows, verbatim_lengths


def _forget_summary(
    rows: list[ReportRow],
    threshold: float,
    interval: list[float] | None,
    band: tuple[float, float],
    verbatim_lengths: tuple[int, int],
) -> ReportSummary:
    """The forget set's summary (and each row's ``above_threshold``)."""
    g = [row["g"] for row in rows]
    for row in rows:
        row["above_threshold"] = row["g"] > threshold
    return {
        "forget_samples": len(rows),
        "g_mean": statistics.fmean(g),
        "g_max": max(g),
        "forget_nll": statistics.fmean(row["nll"] for row in rows),
        "threshold": threshold,
        "threshold_interval": interval,
        "above_threshold": sum(row["above_threshold"] for row in rows),
        "outliers_fixed_band": _outliers(g, *band),
        "verbatim_lengths": list(verbatim_lengths),
        "verbatim_extractable": sum(bool(row["verbatim"]) for row in rows),
    }


def _holdout_summary(
    rows: list[ReportRow],
    holdout: Mapping[int, Mapping[str, Any]],
    k_std: float,
    band_quantiles: tuple[float, float],
    alpha: float,
) -> ReportSummary:
    """What the holdout adds to the summary: its g, the bands' outlier counts, the over-forgotten count, its NLL and
    each membership attack's AUC (forget against holdout)."""
    g = [row["g"] for row in rows]
    holdout_g = torch.tensor([value["g"] for value in holdout.values()])
    holdout_mean, spread = holdout_g.mean().item(), statistics.pstdev(holdout_g.tolist())
    lower, upper = max(0.0, holdout_mean - k_std * spread), min(1.0, holdout_mean + k_std * spread)
    q_low, q_high = holdout_band(holdout_g, band_quantiles)
    return {
        "holdout_size": len(holdout_g),
        "holdout_g_mean": holdout_mean,
        "outliers_holdout_band": _outliers(g, lower, upper),
        "outliers_holdout_quantiles": _outliers(g, q_low, q_high),
        "over_forgotten": sum(value < q_low for value in g),
        "alpha": alpha,
        "holdout_nll": statistics.fmean(value["nll"] for value in holdout.values()),
        "membership_auc": {
            name: membership_auc(
                [untyped(row)[f"{name}_score"] for row in rows], [v[f"{name}_score"] for v in holdout.values()]
            )
            for name in MEMBERSHIP_ATTACKS
        },
    }


def _add_recovery(
    model: torch.nn.Module,
    datamodule: Any,
    rows: list[ReportRow],
    summary: ReportSummary,
    recovery_attacks: Sequence[str],
    recovery_options: Mapping[str, Any] | None,
    alpha: float,
) -> dict[str, dict[int, float]]:
    """Runs the recovery attacks: each row gains its column per attack and the summary
    :func:`~lightning_unlearn.evaluation.recovery.recovery_summary` (and, for the relearning sweep, its worst
    point and grid: ``relearn_sweep_worst``); returns the holdout's columns."""
    options = dict(recovery_options or {})
    attacks = [attack for attack in recovery_attacks if attack != "relearn_sweep"]
    attacked = recovery_scores(model, datamodule, attacks, **options)
    if "relearn_sweep" in recovery_attacks:
        grid = options.get("relearn_sweep_grid", RELEARN_SWEEP)
        batch = options.get("attack_batch_size", ATTACK_BATCH_SIZE)
        points = relearn_sweep(model, datamodule, options.get("relearn_dataloader"), grid, alpha, batch)
        worst = worst_point(points)
        attacked["relearn_sweep"] = worst.scores
        summary["relearn_sweep_worst"] = {
            "learning_rate": worst.learning_rate,
            "steps": worst.steps,
            "back": worst.back,
            "grid": [{"learning_rate": p.learning_rate, "steps": p.steps, "back": p.back} for p in points],
        }
    for row in rows:
        for attack, scores in attacked.items():
            untyped(row)[ATTACK_COLUMNS[attack]] = scores["forget"][row["sample_id"]]
    untyped(summary).update(recovery_summary(attacked, summary["threshold"]))
    if any(attack in QUANTIZATIONS for attack in recovery_attacks):
        summary["quantized_weights"] = "merged (base + adapter)" if is_adapted(model) else "the model's own"
    return {ATTACK_COLUMNS[attack]: scores.get("holdout", {}) for attack, scores in attacked.items()}


def _retain_summary(
    model: torch.nn.Module, datamodule: Any, retain_before: Mapping[int, float] | None, collateral_drop: float
) -> ReportSummary:
    """The retain split's mean g, and with ``retain_before`` its mean g before and the collateral count."""
    retain = score_memorization(model, datamodule.scoring_dataloader("retain"))
    summary: ReportSummary = {"retain_g": statistics.fmean(retain.values())}
    if retain_before is not None:
        summary["retain_g_before"] = statistics.fmean(retain_before.values())
        summary["collateral"] = sum(retain_before[i] - value > collateral_drop for i, value in retain.items())
    return summary


def attack_verdicts(report: Report, alpha: float = 0.05, retrain: Report | None = None) -> dict[str, AttackVerdict]:
    """The per-record verdict under each attack that the report carries (:data:`ATTACK_COLUMNS`, ``"none"``
    first): :func:`~lightning_unlearn.functional.verdict.record_verdict` of the forget records' scores against the
    holdout's under the same attack (no attack: over-forgotten in g or in NLL too), and with ``retrain`` (its
    report on the same records and attacks) the KS test against its forget scores and its own records that come
    back. Sampling is judged by the discovery probability itself: a record is back when it is (n, p)-discoverable
    at p = 0.5, an extraction whatever unseen records do.

    Returns:
        ``{attack: {"back", "back_ids", "over_forgotten", "over_forgotten_ids", "detectable_at", "forget_records",
        "holdout_records", "passed"}}``, with a retrain also ``"ks", "p_value", "critical_value",
        "retrain_back"``: counts of records, ids, and the g from which a record is found whatever the others.
    """
    verdicts = {}
    ids = [row["sample_id"] for row in report.rows]
    for attack, column in ATTACK_COLUMNS.items():
        if not report.rows or column not in report.rows[0] or not report.holdout.get(column):
            continue
        scores, unseen = [untyped(row)[column] for row in report.rows], list(report.holdout[column].values())
        reference, reference_unseen = None, None
        if retrain is not None and column in retrain.rows[0]:
            by_id = {row["sample_id"]: untyped(row)[column] for row in retrain.rows}
            reference = [by_id[i] for i in ids]
            reference_unseen = list(retrain.holdout.get(column, {}).values()) or None
        if attack == "sampling":
            verdict = discovery_verdict(scores, DISCOVERY, alpha, reference)
        else:
            nll = {}  # with no attack, over-forgetting in NLL too
            if attack == "none":
                nll = {"nll": [row["nll"] for row in report.rows], "holdout_nll": list(report.holdout["nll"].values())}
            verdict = record_verdict(
                scores, unseen, alpha, **nll, retrain_g=reference, retrain_holdout_g=reference_unseen
            )
        verdicts[attack] = _verdict_fields(verdict, ids, len(unseen))
    return verdicts


def _verdict_fields(verdict: RecordVerdict, ids: Sequence[int], holdout_records: int) -> AttackVerdict:
    fields: AttackVerdict = {
        "back": len(verdict.back),
        "back_ids": [ids[i] for i in verdict.back],
        "over_forgotten": len(verdict.over_forgotten),
        "over_forgotten_ids": [ids[i] for i in verdict.over_forgotten],
        "detectable_at": verdict.detectable_at,
        "forget_records": len(ids),
        "holdout_records": holdout_records,
        "passed": verdict.passed,
    }
    if verdict.ks is not None:
        fields |= {
            "ks": verdict.ks.statistic,
            "p_value": verdict.ks.p_value,
            "critical_value": verdict.ks.critical_value,
            "retrain_back": len(verdict.retrain_back or []),
        }
    return fields


def _mark_records(report: Report, verdict: AttackVerdict) -> None:
    """Each row's tail p-value against the holdout (no attack), whether it is ``flagged`` (back: stands out above
    the unseen records) or ``over_forgotten`` (stands out below them, in g or NLL), and the summary's counts."""
    holdout_g = torch.tensor(list(report.holdout["g"].values()))
    p_values = tail_p_values(torch.tensor([row["g"] for row in report.rows]), holdout_g)
    back, low = set(verdict["back_ids"]), set(verdict["over_forgotten_ids"])
    for row, p in zip(report.rows, p_values.tolist(), strict=True):
        row["p_value"], row["flagged"], row["over_forgotten"] = p, row["sample_id"] in back, row["sample_id"] in low
    report.summary["flagged"] = len(back)
    report.summary["over_forgotten_records"] = len(low)
    report.summary["detectable_at"] = verdict["detectable_at"]


def verdict_text(verdicts: Mapping[str, AttackVerdict] | None) -> str:
    """The verdict in lines: per attack, the forget records that come back (stand out above the holdout under the
    same attack), the over-forgotten ones, the g from which a record is found, and with a retrain the KS test and
    the retrain's own records back; without a holdout, a line saying there is nothing to judge against."""
    if not verdicts:
        return "no verdict: give holdout records (unseen texts of the same kind) to judge each record against"
    first = next(iter(verdicts.values()))
    lines = [
        f"verdict per record, against {first['holdout_records']} holdout records under the same attack "
        f"(Benjamini–Hochberg over {first['forget_records']} records):"
    ]
    for attack, v in verdicts.items():
        found = (
            "p ≥ 0.5 discoverable" if attack == "sampling" else f"any record at g ≥ {v['detectable_at']:.3f} is found"
        )
        line = f"  {attack}: {'passed' if v['passed'] else 'FAILED'}: {v['back']} back"
        line += f" ({', '.join(map(str, v['back_ids']))})" if v["back"] else ""
        line += f", {v['over_forgotten']} over-forgotten; {found}"
        if "ks" in v:
            line += (
                f"; against the retrain: KS {v['ks']:.3f} (critical {v['critical_value']:.3f}), p {v['p_value']:.3g}"
                f", retrain's own back {v['retrain_back']}"
            )
        lines.append(line)
    over = max(v["over_forgotten"] for v in verdicts.values())
    if over:
        lines.append(
            f"  {over} record(s) stand out *below* unseen records (in g or NLL): over-forgotten, and as detectable "
            "by a membership attack as memorized ones"
        )
    return "\n".join(lines)


def _identical_attacks(summary: ReportSummary, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The recovery options for the retrain's side: the same, with the relearning sweep reduced to the model's worst
    point (the retrain under the identical attack)."""
    options = dict(options or {})
    worst = summary.get("relearn_sweep_worst")
    if worst is not None:
        options["relearn_sweep_grid"] = ((worst["learning_rate"],), (worst["steps"],))
    return options


def _attacked_report(
    model: torch.nn.Module,
    datamodule: Any,
    attacks: Sequence[str],
    options: Mapping[str, Any] | None,
    attacked_summary: ReportSummary,
) -> Report:
    """A bare report of ``model`` for the verdict's retrain side: each forget record's g and :data:`ATTACK_COLUMNS`
    score under each of recovery ``attacks`` (rows in sample_id order), and the holdout's alike; the attacks are
    those the model of ``attacked_summary`` met (:func:`_identical_attacks`)."""
    options = _identical_attacks(attacked_summary, options)
    splits = ("forget", "holdout") if datamodule.has_split("holdout") else ("forget",)
    scores = {split: score_memorization(model, datamodule.scoring_dataloader(split)) for split in splits}
    rows: list[ReportRow] = [{"sample_id": i, "g": g} for i, g in sorted(scores["forget"].items())]
    holdout = {"g": scores.get("holdout", {})}
    if attacks:
        attacked = recovery_scores(model, datamodule, attacks, splits=splits, **(options or {}))
        for attack, by_split in attacked.items():
            for row in rows:
                untyped(row)[ATTACK_COLUMNS[attack]] = by_split["forget"][row["sample_id"]]
            holdout[ATTACK_COLUMNS[attack]] = by_split.get("holdout", {})
    return Report(rows=rows, summary={}, holdout=holdout)


def untyped(part: ReportRow | ReportSummary) -> dict[str, Any]:
    """``part`` as a plain dict, for the keys named at run time (``el_{n}``, ``{attack}_score``, ``{attack}_above``,
    :data:`ATTACK_COLUMNS`' columns), which a ``TypedDict`` cannot list."""
    return cast(dict[str, Any], part)


def _outliers(g: Sequence[float], lower: float, upper: float) -> dict[str, float]:
    above, below = sum(value >= upper for value in g), sum(value <= lower for value in g)
    return {"lower": lower, "upper": upper, "above": above, "below": below, "outliers": above + below}


def write_report(report: Report, folder: str | os.PathLike) -> dict[str, Path]:
    """Writes ``per_sample.csv``, ``per_sample.json``, ``summary.json`` and ``summary.md`` (each whole or absent)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(report.rows[0]))
    writer.writeheader()
    writer.writerows(report.rows)
    paths = {name: folder / name for name in ("per_sample.csv", "per_sample.json", "summary.json", "summary.md")}
    write_text_atomically(paths["per_sample.csv"], table.getvalue())
    write_text_atomically(paths["per_sample.json"], json.dumps(report.rows, indent=1))
    write_text_atomically(paths["summary.json"], json.dumps(report.summary, indent=1))
    write_text_atomically(paths["summary.md"], summary_markdown(report.summary))
    return paths


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a two-column Markdown table (a mapping of mappings, such as ``utility``: a row each)."""
    lines = ["| measure | value |", "|---|---|"]
    rows = []
    for key, value in summary.items():
        if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
            rows += [(f"{key} {inner}", v) for inner, v in value.items()]
        else:
            rows.append((key, value))
    for key, value in rows:
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (tuple, list)) and all(isinstance(v, float) for v in value):
            value = " – ".join(f"{v:.4f}" for v in value)
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines) + "\n"


def plot_histograms(
    before: Sequence[float],
    after: Mapping[str, Sequence[float]],
    threshold: float,
    band: tuple[float, float],
    path: str | os.PathLike,
) -> Path:
    """A PNG of forget-set g histograms in a grid of up to four columns: before unlearning, then one panel per method,
    threshold and band marked.
    Drawn on a :class:`matplotlib.figure.Figure` (no pyplot: the caller's backend and figures are left alone)."""
    require_demo("plotting")
    from matplotlib.figure import Figure

    panels = {"before unlearning": before, **after}
    columns = min(4, len(panels))
    grid_rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * grid_rows))
    axes = figure.subplots(grid_rows, columns, sharex=True, sharey=True, squeeze=False).flatten()
    bins = [i / 20 for i in range(21)]
    for axis, (title, values) in zip(axes, panels.items(), strict=False):
        axis.axvspan(*band, color="tab:green", alpha=0.12, label=f"band {band[0]:.2f}–{band[1]:.2f}")
        axis.hist(list(values), bins=bins, color="tab:blue")
        axis.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3f}")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("memorization g")
        axis.xaxis.set_tick_params(labelbottom=True)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    for axis in axes[::columns]:
        axis.set_ylabel("forget samples")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=110)
    return Path(path)
