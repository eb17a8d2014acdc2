"""How the retain term's kind and weight move the trade-off: SGA without one, with an NLL and with a KL retain term
at α = 1, 3 and 10, each stopped when every forget record is at or below the holdout's 0.95 quantile of g.

Prints one Markdown table (the README's): steps, holdout NLL against the original model's, retain g at the end
(and as a share of its start), collateral (retain records that lost more than 0.1 of g), forget records below the
5th percentile of the original model's holdout g (pushed below unseen data), and LOSS-attack AUC.

    python benchmarks/retain_weights.py [--small] [--seed 0] [--learning-rate 5e-5]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import lightning as L
import torch

from lightning_unlearn import SelectiveGradientAscent
from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.demo import quiet_trainer
from lightning_unlearn.evaluation.report import memorization_report
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.thresholds import holdout_threshold
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed

VARIANTS = {  # row label -> retain options
    "SGA, no retain term": {},
    "SGA + NLL retain, α = 1 (gradient difference + selection)": {"retain_loss": "nll", "retain_weight": 1.0},
    "SGA + NLL retain, α = 3": {"retain_loss": "nll", "retain_weight": 3.0},
    "SGA + NLL retain, α = 10": {"retain_loss": "nll", "retain_weight": 10.0},
    "SGA + KL retain, α = 1": {"retain_loss": "kl", "retain_weight": 1.0},
    "SGA + KL retain, α = 3": {"retain_loss": "kl", "retain_weight": 3.0},
    "SGA + KL retain, α = 10": {"retain_loss": "kl", "retain_weight": 10.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-steps", type=int, default=400)
    args = parser.parse_args()
    testbed = build_testbed(args.seed, progress=False, **(SMALL_TESTBED if args.small else {}))
    datamodule = testbed.datamodule()
    before = memorization_report(testbed.model, datamodule, el_n=None)
    retain_before = score_memorization(testbed.model, datamodule.scoring_dataloader("retain"))
    holdout_g = torch.tensor(list(score_memorization(testbed.model, datamodule.scoring_dataloader("holdout")).values()))
    floor = holdout_threshold(holdout_g, "quantile", 0.05)
    start = statistics.fmean(retain_before.values())
    print(f"retain g before {start:.3f}; unseen 5th percentile of g {floor:.3f}; learning rate {args.learning_rate:g}")
    print(
        "\n| method (every record ≤ the holdout's 0.95 quantile) | steps | holdout NLL | retain g (kept) | collateral "
        "| below the unseen 5th pct. | LOSS AUC |\n|---|---|---|---|---|---|---|"
    )
    for label, options in VARIANTS.items():
        L.seed_everything(args.seed, verbose=False)
        module = SelectiveGradientAscent(copy.deepcopy(testbed.model), learning_rate=args.learning_rate, **options)
        trainer = quiet_trainer(args.max_steps)
        trainer.fit(module, datamodule)
        stopping = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationEarlyStopping))
        after = memorization_report(
            module.model.eval(), datamodule, el_n=None, threshold=stopping.threshold_value, retain_before=retain_before
        )
        s = after.summary
        steps = stopping.stopped_step if stopping.stopped_step is not None else f"{args.max_steps} (rule not met)"
        below = sum(row["g"] < floor for row in after.rows)
        print(
            f"| {label} | {steps} | {s['holdout_nll'] / before.summary['holdout_nll']:.2f}x | {s['retain_g']:.3f} "
            f"({s['retain_g'] / start:.2f}) | {s['collateral']} | {below} | {s['membership_auc']['loss']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
