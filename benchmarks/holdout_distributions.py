"""The empirical holdout g that the per-record verdict's simulations draw from (``tests/data/holdout_g.json``).

For testbed seeds 0 and 1 (their original models): each holdout record's g with no attack, after each relearning
protocol of ``robust_forgetting.py`` (retain split or fresh records of the same kind, Adam on the NLL) and after int4
round-to-nearest; for the first seed, the g of its forget records (the most duplicated are memorized) and of 29
fresh records of the same kind, and its exact retrain's forget and holdout g under each attack. The verdict's tests
draw forget and holdout g from these real distributions (the null), plant memorized records in them, and judge the
testbed's own cases.

    python benchmarks/holdout_distributions.py [--seeds 0,1] [--output tests/data/holdout_g.json]
"""

from __future__ import annotations

import argparse
import json

from robust_forgetting import FRESH_SEED, PROTOCOLS  # the robustness table's protocols and fresh records

from lightning_unlearn.evaluation.recovery import quantize, relearn
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.testbed.build import build_testbed
from lightning_unlearn.utilities.files import write_text_atomically


def attacked_scores(model, testbed, splits=("holdout",)) -> dict[str, dict[str, list[float]]]:
    """Per attack (none, each protocol, int4), each split's g on ``model``, in sample order."""
    data = testbed.datamodule()
    data.setup()
    fresh = testbed.datamodule(relearn=testbed.fresh_records(32, seed=FRESH_SEED))
    loaders = {
        "retain": data.scoring_dataloader("retain", batch_size=len(testbed.retain)),
        "fresh": fresh.scoring_dataloader("relearn", batch_size=32),
    }

    def scores(attacked) -> dict[str, list[float]]:
        return {
            split: [
                round(v, 6) for _, v in sorted(score_memorization(attacked, data.scoring_dataloader(split)).items())
            ]
            for split in splits
        }

    out = {"none": scores(model)}
    for name, (source, steps, rate) in PROTOCOLS.items():
        out[name] = scores(relearn(model, loaders[source], steps=steps, learning_rate=rate))
    out["int4"] = scores(quantize(model, bits=4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--output", default="tests/data/holdout_g.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {"holdout_g": {}}
    for seed in seeds:
        testbed = build_testbed(seed=seed, progress=False)
        for attack, splits in attacked_scores(testbed.model.eval(), testbed).items():
            result["holdout_g"][f"seed {seed}, {attack}"] = splits["holdout"]
            print(f"seed {seed}, {attack}: max holdout g {max(splits['holdout']):.3f}")
    testbed = build_testbed(seed=seeds[0], progress=False)
    model = testbed.model.eval()
    forget = score_memorization(model, testbed.datamodule().scoring_dataloader("forget"))
    fresh = testbed.datamodule(forget=testbed.fresh_records(29, seed=FRESH_SEED + 1))
    unseen = score_memorization(model, fresh.scoring_dataloader("forget"))
    result["testbed"] = {
        "seed": seeds[0],
        "forget_g": [round(forget[i], 6) for i in sorted(forget)],
        "duplicates": testbed.duplicates,
        "fresh_g": [round(unseen[i], 6) for i in sorted(unseen)],
        "retrain": attacked_scores(testbed.retrained(progress=False).model.eval(), testbed, ("forget", "holdout")),
    }
    write_text_atomically(args.output, json.dumps(result, indent=None) + "\n")


if __name__ == "__main__":
    main()
