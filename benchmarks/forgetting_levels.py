"""Which forgetting level pairs with which rule: the holdout's mean g against its 0.95 quantile, measured.

Prints three tables for the testbed:

1. **The audit on unseen records.** The original model, audited on records from the testbed's generator that it
   never saw (another seed than the holdout) with the holdout as reference: how many are flagged (should be at most
   alpha of them, rounded up), against how many above the mean and above the quantile; and how many forget records
   with g >= 0.7 are flagged (should be all).
2. **How big a holdout must be.** The 95% bootstrap interval of each level for holdout sizes 16 to 256 (never-seen
   records from the generator).
3. **The per-sample rule at each level.** SGA and gradient difference with SGA's selection (SGA with an NLL retain
   term), stopped when every forget record is at or below the level: steps, holdout NLL ratio, retain g, LOSS-attack
   AUC and records over-forgotten (below the holdout's 5th percentile).

    python benchmarks/forgetting_levels.py [--small] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics

import lightning as L
import torch

from lightning_unlearn import SelectiveGradientAscent, UnlearningDataModule
from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.demo import quiet_trainer
from lightning_unlearn.evaluation.report import memorization_report
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.thresholds import bootstrap_interval, holdout_threshold
from lightning_unlearn.testbed.build import SMALL_TESTBED, Testbed, build_testbed

LEVELS = {"mean": "holdout_mean", "0.95 quantile": "holdout_quantile"}
METHODS = {"SGA": {}, "gradient difference + selection": {"retain_loss": "nll", "retain_weight": 1.0}}


def scores(model: torch.nn.Module, testbed: Testbed, texts: list[str]) -> torch.Tensor:
    datamodule = UnlearningDataModule(testbed.tokenizer, texts, max_length=testbed.config.max_length)
    return torch.tensor(list(score_memorization(model, datamodule.scoring_dataloader("forget")).values()))


def audit(testbed: Testbed, seed: int, alpha: float = 0.05) -> None:
    unseen = testbed.fresh_records(len(testbed.holdout), seed=seed + 1)
    length = testbed.config.max_length
    print(f"\n1. audit of the original model, {len(testbed.holdout)} holdout records as reference (alpha {alpha:g})\n")
    print("| audited records | count | above the mean | above the 0.95 quantile | flagged (BH p-values) | allowed |")
    print("|---|---|---|---|---|---|")
    for name, texts in (("never seen (another seed)", unseen), ("forget, g >= 0.7", testbed.forget)):
        datamodule = UnlearningDataModule(testbed.tokenizer, texts, holdout=testbed.holdout, max_length=length)
        report = memorization_report(testbed.model, datamodule, el_n=None, alpha=alpha)
        rows = [row for row in report.rows if name.startswith("never") or row["g"] >= 0.7]
        holdout_g = scores(testbed.model, testbed, testbed.holdout)
        mean, quantile = holdout_threshold(holdout_g, "mean"), holdout_threshold(holdout_g, "quantile")
        above_mean = sum(row["g"] > mean for row in rows)
        above_quantile = sum(row["g"] > quantile for row in rows)
        flagged = sum(row["flagged"] for row in rows)
        allowed = f"<= {math.ceil(alpha * len(rows))}" if name.startswith("never") else f"{len(rows)} (all)"
        print(f"| {name} | {len(rows)} | {above_mean} | {above_quantile} | {flagged} | {allowed} |")


def holdout_sizes(testbed: Testbed, seed: int) -> None:
    print("\n2. 95% bootstrap interval of the level, by holdout size (never-seen records)\n")
    print("| holdout records | mean | interval | 0.95 quantile | interval |")
    print("|---|---|---|---|---|")
    pool = scores(testbed.model, testbed, testbed.fresh_records(256, seed=seed + 2))
    for size in (16, 32, 64, 128, 256):
        g = pool[:size]
        cells = []
        for kind in ("mean", "quantile"):
            low, high = bootstrap_interval(g, kind)
            cells += [f"{holdout_threshold(g, kind):.3f}", f"{low:.3f}–{high:.3f} (±{(high - low) / 2:.3f})"]
        print(f"| {size} | " + " | ".join(cells) + " |")


def per_sample_rule(testbed: Testbed, learning_rate: float, max_steps: int) -> None:
    datamodule = testbed.datamodule()
    before = memorization_report(testbed.model, datamodule, el_n=None)
    retain_before = statistics.fmean(
        score_memorization(testbed.model, datamodule.scoring_dataloader("retain")).values()
    )
    print(f"\n3. the per-sample rule (every forget record at or below the level), learning rate {learning_rate:g}\n")
    print("| method | level | steps | holdout NLL | retain g | LOSS AUC | over-forgotten |")
    print("|---|---|---|---|---|---|---|")
    for method, options in METHODS.items():
        for level, threshold in LEVELS.items():
            L.seed_everything(0, verbose=False)
            module = SelectiveGradientAscent(
                copy.deepcopy(testbed.model), learning_rate=learning_rate, threshold=threshold, **options
            )
            trainer = quiet_trainer(max_steps)
            trainer.fit(module, datamodule)
            stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
            after = memorization_report(module.model.eval(), datamodule, el_n=None, threshold=stopping.threshold_value)
            s = after.summary
            steps = stopping.stopped_step if stopping.stopped_step is not None else f"{max_steps} (not met)"
            print(
                f"| {method} | {level} ({stopping.threshold_value:.3f}) | {steps} | "
                f"{s['holdout_nll'] / before.summary['holdout_nll']:.2f}x | {s['retain_g']:.3f} (from "
                f"{retain_before:.3f}) | {s['membership_auc']['loss']:.3f} | {s['over_forgotten']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--skip-training", action="store_true", help="tables 1 and 2 only")
    args = parser.parse_args()
    testbed = build_testbed(seed=args.seed, progress=False, **(SMALL_TESTBED if args.small else {}))
    audit(testbed, args.seed)
    holdout_sizes(testbed, args.seed)
    if not args.skip_training:
        per_sample_rule(testbed, 3e-4 if args.small else 5e-5, args.max_steps)


if __name__ == "__main__":
    main()
