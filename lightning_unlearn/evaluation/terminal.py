"""The report in a terminal (``lightning-unlearn audit``): one line per record, the summary, what the holdout test
can find, a line per recovery attack and the verdict. The report's other renderers: Markdown
(:func:`~lightning_unlearn.evaluation.report.summary_markdown`), CSV and JSON
(:func:`~lightning_unlearn.evaluation.report.write_report`), HTML (:mod:`lightning_unlearn.evaluation.html`)."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_unlearn.evaluation.recovery import DISCOVERY, DISCOVERY_SAMPLES
from lightning_unlearn.evaluation.report import Report, untyped, verdict_text
from lightning_unlearn.evaluation.report_types import ReportSummary

#: holdout records below which the text warns that the holdout's tail model is loose
SMALL_HOLDOUT = 32
#: how ``threshold=`` names read in the text
THRESHOLD_NAMES = {"holdout_mean": " (holdout mean)", "holdout_quantile": " (holdout 0.95 quantile)"}


def report_text(
    report: Report,
    threshold: str | float = "holdout_quantile",
    attacks: Sequence[str] = (),
    relearning: tuple[int, float] | None = None,
) -> str:
    """``report`` as lines for a terminal.

    Args:
        report: a :func:`~lightning_unlearn.evaluation.report.memorization_report`.
        threshold: what was asked for (a name or a fraction), to say where the threshold came from.
        attacks: the recovery attacks it ran, a line each.
        relearning: the relearning attack's (steps, learning rate), to say what it did.
    """
    s, tested = report.summary, "holdout_size" in report.summary
    el = next((key for key in report.rows[0] if key.startswith("el_")), None) if report.rows else None
    heading = f"{'id':>5}  {'g':>6}{' EL_' + el[3:] if el else ''}  verbatim  above"
    lines = [heading + ("  p-value  flagged" if tested else "") + "  text"]
    for row in report.rows:
        el_cell = f"  {untyped(row)[el]:5.3f}" if el else ""
        flags = f"{'yes' if row['verbatim'] else '':>8}  {'yes' if row['above_threshold'] else '':>5}"
        if tested:
            flags += f"  {row['p_value']:7.4f}  {'yes' if row['flagged'] else '':>7}"
        lines.append(f"{row['sample_id']:>5}  {row['g']:6.3f}{el_cell}  {flags}  {row['text'][:70]}")
    name = THRESHOLD_NAMES.get(threshold, "") if isinstance(threshold, str) else ""
    lines.append(
        f"{s['forget_samples']} samples: g mean {s['g_mean']:.3f}, max {s['g_max']:.3f}; {s['above_threshold']} "
        f"above the threshold {s['threshold']:.3f}{name}; {s['verbatim_extractable']} verbatim-extractable"
    )
    if tested:
        lines += _holdout_lines(s)
    lines += [_attack_line(attack, s, tested, relearning) for attack in attacks]
    lines.append(verdict_text(s.get("verdict")))
    return "\n".join(lines)


def _holdout_lines(s: ReportSummary) -> list[str]:
    """What the test against the holdout found, and a warning when the holdout is too small for its tail model."""
    low, high = s["threshold_interval"] or (float("nan"), float("nan"))
    lines = [
        f"against {s['holdout_size']} holdout records: {s['flagged']} flagged as more memorized than unseen data "
        f"(tail p-value below alpha {s['alpha']:g} after Benjamini–Hochberg over {s['forget_samples']} records; "
        f"any record at g >= {s['detectable_at']:.3f} is found); {s['over_forgotten_records']} stand out below "
        f"unseen data in g or NLL (over-forgotten); threshold 95% bootstrap interval {low:.3f}–{high:.3f}"
    ]
    if s["holdout_size"] < SMALL_HOLDOUT:
        lines.append(
            f"warning: the holdout's tail is fitted to {s['holdout_size']} records, so only records far above "
            f"them are found: give at least {SMALL_HOLDOUT} holdout records"
        )
    return lines


def _attack_line(attack: str, s: ReportSummary, tested: bool, relearning: tuple[int, float] | None) -> str:
    """Records above the threshold (discoverable, for sampling) after ``attack``, forget and holdout."""
    if attack == "sampling":
        what = f"(n={DISCOVERY_SAMPLES}, p={DISCOVERY:g})-discoverable by sampling (second half from the first)"
    elif attack == "relearn" and relearning is not None:
        what = f"above the threshold after {relearning[0]} relearning steps (lr {relearning[1]:g}) on --relearn-data"
    elif attack == "relearn_sweep" and "relearn_sweep_worst" in s:
        worst = s["relearn_sweep_worst"]
        what = (
            f"above the threshold at the relearning sweep's worst point ({worst['steps']} steps at lr "
            f"{worst['learning_rate']:g}, of {len(worst['grid'])}; {worst['back']} back there)"
        )
    else:
        what = f"above the threshold after {attack} round-to-nearest (groups of 64)"
    counts = untyped(s)
    control = f"; holdout: {counts[f'{attack}_holdout_above']} of {s['holdout_size']}" if tested else ""
    return f"{attack}: {counts[f'{attack}_above']} of {s['forget_samples']} records {what}{control}"
