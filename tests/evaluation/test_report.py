"""The quality report: per-sample table, summary, files that parse, and the histogram plot."""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import statistics

import matplotlib.image
import pytest
import torch

from lightning_unlearn import UnlearningDataModule
from lightning_unlearn.demo import plot_tradeoff
from lightning_unlearn.evaluation.report import memorization_report, plot_histograms, write_report
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.thresholds import holdout_band, holdout_threshold
from lightning_unlearn.functional.verdict import stands_out, tail_p_values
from lightning_unlearn.metrics import MemorizationOutliers
from tests.conftest import unlearning_data


@pytest.fixture(scope="module")
def report(small_testbed):
    return memorization_report(small_testbed.model, unlearning_data(small_testbed), duplicates=small_testbed.duplicates)


def assert_typed(report) -> None:
    """Every key of the report's rows, summary and verdicts is one its TypedDict declares, or one named at run time
    (``el_{n}``, ``{attack}_score``, ``{attack}_above``, …)."""
    from lightning_unlearn.evaluation.report_types import AttackVerdict, ReportRow, ReportSummary

    run_time = re.compile(r"el_\d+(_mean)?|\w+_score|(relearn(_sweep)?|int8|int4|sampling)(_holdout)?_(above|mean)")
    for typed, keys in [(ReportRow, {key for row in report.rows for key in row}), (ReportSummary, set(report.summary))]:
        assert {key for key in keys - set(typed.__annotations__) if not run_time.fullmatch(key)} == set(), typed
    for verdict in (report.summary.get("verdict") or {}).values():
        assert set(verdict) <= set(AttackVerdict.__annotations__)


def test_the_reports_keys_are_its_typed_ones(report):
    assert_typed(report)
    assert {"el_10", "loss_score", "zlib_score", "min_k_score"} <= set(report.rows[0])  # the run-time names


def test_table_matches_the_metrics(report, small_testbed):
    tb = small_testbed
    datamodule = unlearning_data(tb)
    g = score_memorization(tb.model, datamodule.scoring_dataloader("forget"))
    assert [row["sample_id"] for row in report.rows] == list(range(len(tb.forget)))
    assert [row["g"] for row in report.rows] == pytest.approx([g[i] for i in range(len(tb.forget))])
    assert [row["duplicates"] for row in report.rows] == tb.duplicates
    assert {"el_10", "verbatim", "loss_score", "zlib_score", "min_k_score", "text"} <= set(report.rows[0])
    # The 32-copy records are extractable verbatim; the single-copy ones are not.
    by_copies = {d: [row["verbatim"] for row in report.rows if row["duplicates"] == d] for d in (1, 32)}
    assert all(by_copies[32]) and not any(by_copies[1])


def test_summary(report, small_testbed):
    s = report.summary
    holdout = score_memorization(small_testbed.model, unlearning_data(small_testbed).scoring_dataloader("holdout"))
    assert s["threshold"] == pytest.approx(
        holdout_threshold(torch.tensor(list(holdout.values())), "quantile")
    )  # default
    assert s["holdout_g_mean"] == pytest.approx(small_testbed.summary["holdout_g_mean"], abs=1e-6)
    metric = MemorizationOutliers(lower=0.15, upper=0.60)
    metric.update(torch.tensor([row["g"] for row in report.rows]), torch.arange(len(report.rows)))
    counts = {k: int(v) for k, v in metric.compute().items()}
    assert s["outliers_fixed_band"]["above"] == counts["above"]
    assert s["outliers_fixed_band"]["below"] == counts["below"]
    band = s["outliers_holdout_band"]
    assert band["lower"] < s["holdout_g_mean"] < band["upper"]
    assert s["membership_auc"]["loss"] >= 0.75  # the original model gives its training records away
    assert s["verbatim_extractable"] == sum(bool(row["verbatim"]) for row in report.rows)
    assert s["g_max"] == max(row["g"] for row in report.rows)
    # The mean of each record's mean token NLL (nats: its LOSS score negated); memorized records are the likelier.
    assert s["forget_nll"] == pytest.approx(-statistics.fmean(row["loss_score"] for row in report.rows), rel=1e-5)
    assert 0 < s["forget_nll"] < s["holdout_nll"]


def test_files_are_written_and_parse(report, tmp_path):
    paths = write_report(report, tmp_path / "report")
    with paths["per_sample.csv"].open() as f:
        assert len(list(csv.DictReader(f))) == len(report.rows)
    assert json.loads(paths["per_sample.json"].read_text()) == report.rows
    assert json.loads(paths["summary.json"].read_text()) == report.summary
    assert "| membership_auc | loss " in paths["summary.md"].read_text()
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(paths)  # no temporary files left


def test_histogram_plot_is_a_png(report, tmp_path):
    g = [row["g"] for row in report.rows]
    path = plot_histograms(g, {"SGA": [v / 3 for v in g]}, threshold=0.3, band=(0.15, 0.6), path=tmp_path / "h.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100


def test_each_record_is_tested_against_the_holdout(report, small_testbed):
    tb = small_testbed
    holdout = score_memorization(tb.model, unlearning_data(tb).scoring_dataloader("holdout"))
    h = list(holdout.values())
    g = torch.tensor([row["g"] for row in report.rows])
    assert [row["p_value"] for row in report.rows] == pytest.approx(tail_p_values(g, torch.tensor(h)).tolist())
    expected = stands_out(g, torch.tensor(h))
    assert [row["flagged"] for row in report.rows] == expected.tolist()
    memorized = [row["flagged"] for row, d in zip(report.rows, tb.duplicates, strict=True) if d >= 16]
    assert memorized and all(memorized)  # far above 16 unseen records: found, where empirical p-values cannot
    s = report.summary
    q_low, q_high = holdout_band(torch.tensor(h))
    assert s["outliers_holdout_quantiles"]["lower"] == pytest.approx(q_low)
    assert s["outliers_holdout_quantiles"]["upper"] == pytest.approx(q_high)
    assert s["over_forgotten"] == sum(row["g"] < q_low for row in report.rows)
    assert s["holdout_size"] == len(h) and s["flagged"] == int(expected.sum())
    low, high = s["threshold_interval"]
    assert low <= s["threshold"] <= high


def test_audit_of_never_seen_records_flags_at_most_alpha_and_every_memorized_one(small_testbed):
    """Unseen records tested against the holdout are flagged at most alpha of the time (rounded up); every forget
    record memorized at g >= 0.7 is flagged. The holdout is enlarged with more never-seen records, as 16 could
    not show p < 0.05 at all."""
    tb = small_testbed
    holdout = tb.holdout + tb.fresh_records(48, seed=101)
    unseen = tb.fresh_records(40, seed=202)
    assert not set(unseen) & set(holdout)
    length = tb.config.max_length
    audit = UnlearningDataModule(tb.tokenizer, unseen, holdout=holdout, max_length=length)
    audit = memorization_report(tb.model, audit, el_n=None)
    assert audit.summary["flagged"] <= math.ceil(0.05 * len(unseen))
    forget = UnlearningDataModule(tb.tokenizer, tb.forget, holdout=holdout, max_length=length)
    forget = memorization_report(tb.model, forget, el_n=None)
    memorized = [row for row in forget.rows if row["g"] >= 0.7]
    assert memorized and all(row["flagged"] for row in memorized)


def test_report_counts_retain_records_that_lost_memorization(small_testbed):
    tb = small_testbed
    datamodule = unlearning_data(tb)
    before = score_memorization(tb.model, datamodule.scoring_dataloader("retain"))
    damaged = copy.deepcopy(tb.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = score_memorization(damaged, datamodule.scoring_dataloader("retain"))
    s = memorization_report(damaged, datamodule, el_n=None, retain_before=before).summary
    assert s["collateral"] == sum(before[i] - after[i] > 0.1 for i in before) > 0
    assert s["retain_g"] == pytest.approx(sum(after.values()) / len(after))
    assert s["retain_g_before"] == pytest.approx(sum(before.values()) / len(before))


def test_the_relearning_sweep_judges_the_retrain_at_the_models_worst_point(small_testbed, small_retrain):
    """The report keeps the sweep's worst point and grid, judges the records at that point against the holdout
    relearned alike, and attacks the retrain at that same point (the identical attack)."""
    from lightning_unlearn.evaluation.recovery import relearn
    from lightning_unlearn.evaluation.terminal import report_text
    from lightning_unlearn.functional.verdict import ks_test

    data = unlearning_data(small_testbed)
    grid = ((1e-4, 3e-3), (2, 4))
    report = memorization_report(
        small_testbed.model,
        data,
        el_n=None,
        recovery_attacks=("relearn_sweep",),
        recovery_options={"relearn_sweep_grid": grid},
        retrain=small_retrain.model,
    )
    worst = report.summary["relearn_sweep_worst"]
    assert len(worst["grid"]) == 4 and worst["back"] == max(point["back"] for point in worst["grid"])
    assert report.summary["verdict"]["relearn_sweep"]["back"] == worst["back"]
    loader = data.scoring_dataloader("retain", batch_size=len(small_testbed.retain))
    retrain = relearn(small_retrain.model, loader, steps=worst["steps"], learning_rate=worst["learning_rate"])
    retrain_forget_g = score_memorization(retrain, data.scoring_dataloader("forget"))
    expected = ks_test([row["relearn_sweep_g"] for row in report.rows], list(retrain_forget_g.values()))
    assert report.summary["verdict"]["relearn_sweep"]["ks"] == expected.statistic
    assert "the relearning sweep's worst point" in report_text(report, attacks=("relearn_sweep",))
    assert_typed(report)


def test_tradeoff_plot_is_a_png(tmp_path):
    rows = {
        "SGA": {"holdout_nll_ratio": 1.6, "above_threshold": 0, "retain_g": 0.3, "retain_g_before": 0.7},
        "GA": {"holdout_nll_ratio": 1.7, "above_threshold": 12, "retain_g": 0.3, "retain_g_before": 0.7},
    }
    image = matplotlib.image.imread(plot_tradeoff(rows, tmp_path / "t.png"))
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100


def test_the_report_judges_each_record_against_the_holdout_and_the_retrain_under_each_attack(
    small_testbed, small_retrain
):
    """Per attack (none and each recovery attack, run on both models alike): the forget records that stand out
    above the holdout scored on the same attacked model, and with a retrain the KS test of the forget g against its
    forget g and its own records back; without a holdout, no verdict."""
    from lightning_unlearn.evaluation.report import verdict_text
    from lightning_unlearn.evaluation.scoring import score_memorization
    from lightning_unlearn.functional.verdict import ks_test

    data = unlearning_data(small_testbed)
    report = memorization_report(
        small_testbed.model, data, el_n=None, recovery_attacks=("int4",), retrain=small_retrain.model
    )
    verdict = report.summary["verdict"]
    assert list(verdict) == ["none", "int4"]
    retrain_g = score_memorization(small_retrain.model, data.scoring_dataloader("forget"))
    assert [row["retrain_g"] for row in report.rows] == pytest.approx([retrain_g[r["sample_id"]] for r in report.rows])
    flagged = [row["sample_id"] for row in report.rows if row["flagged"]]
    assert verdict["none"]["back_ids"] == flagged and verdict["none"]["back"] == report.summary["flagged"] > 0
    holdout_int4 = torch.tensor(list(report.holdout["int4_g"].values()))
    int4 = stands_out(torch.tensor([row["int4_g"] for row in report.rows]), holdout_int4)
    assert verdict["int4"]["back"] == int(int4.sum()) and not verdict["int4"]["passed"]
    expected = ks_test([row["g"] for row in report.rows], list(retrain_g.values()))
    assert verdict["none"]["ks"] == expected.statistic and verdict["none"]["p_value"] == expected.p_value
    assert not verdict["none"]["passed"]  # the original model memorized them
    assert verdict["none"]["retrain_back"] == 0  # the control is sound: the retrain never saw them
    assert verdict["none"]["holdout_records"] == len(small_testbed.holdout)
    text = verdict_text(verdict)
    assert "none: FAILED" in text and "is found" in text and "against the retrain: KS" in text
    plain = memorization_report(small_testbed.model, unlearning_data(small_testbed, holdout=None), threshold=0.5)
    assert plain.summary["verdict"] is None and "no verdict" in verdict_text(None)
    assert_typed(report), assert_typed(plain)
