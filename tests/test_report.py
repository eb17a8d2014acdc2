"""The quality report: per-sample table, summary, files that parse, and the histogram plot."""

from __future__ import annotations

import csv
import json

import matplotlib.image
import pytest
import torch

from lightning_unlearn.memorization import score_memorization
from lightning_unlearn.metrics import MemorizationOutliers
from lightning_unlearn.report import memorization_report, plot_histograms, write_report
from tests.conftest import unlearning_data


@pytest.fixture(scope="module")
def report(small_testbed):
    return memorization_report(small_testbed.model, unlearning_data(small_testbed), duplicates=small_testbed.duplicates)


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
    assert s["threshold"] == pytest.approx(small_testbed.summary["holdout_g_mean"], abs=1e-6)
    metric = MemorizationOutliers(lower=0.15, upper=0.60)
    metric.update(torch.tensor([row["g"] for row in report.rows]), torch.arange(len(report.rows)))
    counts = {k: int(v) for k, v in metric.compute().items()}
    assert s["outliers_fixed_band"]["above"] == counts["above"]
    assert s["outliers_fixed_band"]["below"] == counts["below"]
    band = s["outliers_holdout_band"]
    assert band["lower"] < s["threshold"] < band["upper"]
    assert s["attack_auc"]["loss"] >= 0.75  # the original model gives its training records away
    assert s["verbatim_extractable"] == sum(bool(row["verbatim"]) for row in report.rows)
    assert s["ma_max"] == max(row["g"] for row in report.rows)


def test_files_are_written_and_parse(report, tmp_path):
    paths = write_report(report, tmp_path / "report")
    with paths["per_sample.csv"].open() as f:
        assert len(list(csv.DictReader(f))) == len(report.rows)
    assert json.loads(paths["per_sample.json"].read_text()) == report.rows
    assert json.loads(paths["summary.json"].read_text()) == report.summary
    assert "| attack_auc | loss " in paths["summary.md"].read_text()
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(paths)  # no temporary files left


def test_histogram_plot_is_a_png(report, tmp_path):
    g = [row["g"] for row in report.rows]
    path = plot_histograms(g, {"SGA": [v / 3 for v in g]}, threshold=0.3, band=(0.15, 0.6), path=tmp_path / "h.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
