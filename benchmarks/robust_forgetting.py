"""Does forgetting stay forgotten? Each method against the relearning attack under several protocols, quantization,
and the exact-retrain reference; then sequential requests.

Prints two tables for the testbed of each seed (level: the 0.95 quantile of the original model's holdout g):

1. **Attacks.** Per model (the original, the exact retrain, each method as the demo runs it): forget records above
   the level with no attack, after relearning under each protocol (Adam, full batch, NLL; on the retain split, or on
   32 fresh records of the same kind that no method trained against), after int4 round-to-nearest; the holdout's
   count after the first protocol (the control); holdout NLL and retain g against the original.
2. **Sequential requests** (``--sequential``): 4 requests of 8 forget records each, run one after another from the
   previous request's model with relearning-aware SGA + KL, carrying the records already forgotten forward in the
   forget split (the per-sample rule then watches them too); after each request, earlier records above the level,
   the request's own, the same after relearning, and the holdout NLL ratio.

    python benchmarks/robust_forgetting.py [--seeds 0] [--methods SGA+KL,SGA+KL+RA,TA] [--sequential] [--small]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import torch

from lightning_unlearn.attacks import loss_attack
from lightning_unlearn.demo import METHODS, quiet_trainer
from lightning_unlearn.memorization import score_memorization
from lightning_unlearn.robustness import above, quantize, relearn
from lightning_unlearn.testbed import SMALL_TESTBED, Testbed, build_testbed
from lightning_unlearn.thresholds import holdout_level

# name -> (relearning data, steps, learning rate)
PROTOCOLS = {
    "retain 20 @ 1e-4": ("retain", 20, 1e-4),
    "retain 50 @ 3e-4": ("retain", 50, 3e-4),
    "fresh 20 @ 1e-4": ("fresh", 20, 1e-4),
    "fresh 100 @ 1e-4": ("fresh", 100, 1e-4),
}
FRESH_SEED = 424242  # the attacker's fresh records: never a method's relearn split


def holdout_nll(model: torch.nn.Module, datamodule) -> float:
    return -statistics.fmean(
        score_memorization(model, datamodule.scoring_dataloader("holdout"), measure=loss_attack).values()
    )


def g(model: torch.nn.Module, datamodule, split: str = "forget") -> dict[int, float]:
    return score_memorization(model, datamodule.scoring_dataloader(split))


def unlearn(
    name: str, model: torch.nn.Module, testbed: Testbed, datamodule, max_steps: int
) -> tuple[torch.nn.Module, int]:
    method = METHODS[name]
    module = method.make(copy.deepcopy(model))
    trainer = quiet_trainer(max_steps, method.callbacks())
    trainer.fit(module, datamodule)
    return module.model.eval(), trainer.global_step


def attacks_table(testbed: Testbed, methods: list[str], max_steps: int, retrain: bool) -> list[str]:
    data = testbed.datamodule(relearn=testbed.relearn_records())
    data.setup()
    fresh = testbed.datamodule(relearn=testbed.fresh_records(32, seed=FRESH_SEED))
    loaders = {
        "retain": data.scoring_dataloader("retain", batch_size=len(testbed.retain)),
        "fresh": fresh.scoring_dataloader("relearn", batch_size=32),
    }
    original = testbed.model.eval()
    level = holdout_level(torch.tensor(list(g(original, data, "holdout").values())), "quantile")
    nll_before, retain_before = holdout_nll(original, data), statistics.fmean(g(original, data, "retain").values())
    models = {"original": (original, 0, 0.0)}
    if retrain:
        models["exact retrain"] = (testbed.retrained(progress=False).model.eval(), 0, 0.0)
    for name in methods:
        L.seed_everything(testbed.seed, verbose=False)
        start = time.perf_counter()
        model, steps = unlearn(name, original, testbed, data, max_steps)
        models[name] = (model, steps, time.perf_counter() - start)
    header = ["seed", "model", "steps", "seconds", "above", *(f"after relearn {p}" for p in PROTOCOLS)]
    header += ["holdout after relearn (retain 20 @ 1e-4)", "after int4", "holdout NLL", "retain g"]
    lines = []
    for name, (model, steps, seconds) in models.items():
        cells = [str(testbed.seed), name, str(steps), f"{seconds:.0f}", str(above(g(model, data), level))]
        for protocol, (source, count, rate) in PROTOCOLS.items():
            attacked = relearn(model, loaders[source], steps=count, learning_rate=rate)
            cells.append(str(above(g(attacked, data), level)))
            if protocol == next(iter(PROTOCOLS)):
                control = str(above(g(attacked, data, "holdout"), level))
        cells.append(control)
        cells.append(str(above(g(quantize(model, bits=4), data), level)))
        cells.append(f"{holdout_nll(model, data) / nll_before:.2f}x")
        cells.append(f"{statistics.fmean(g(model, data, 'retain').values()) / retain_before:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    print(f"seed {testbed.seed}: level {level:.3f} (0.95 quantile of the original model's holdout g)")
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"], lines


def sequential_table(testbed: Testbed, method: str, requests: int, size: int, max_steps: int) -> list[str]:
    original = testbed.model.eval()
    reference = testbed.datamodule()
    level = holdout_level(torch.tensor(list(g(original, reference, "holdout").values())), "quantile")
    nll_before = holdout_nll(original, reference)
    retain = reference.scoring_dataloader("retain", batch_size=len(testbed.retain))
    lines = [
        "| request | seed | steps | earlier records above | this request's above | all above after relearn | "
        "holdout NLL |",
        "|---|---|---|---|---|---|---|",
    ]
    model = original
    for request in range(requests):
        earlier, current = testbed.forget[: request * size], testbed.forget[request * size : (request + 1) * size]
        data = testbed.datamodule(
            forget=earlier + current, relearn=testbed.relearn_records(), batch_size=len(earlier) + size
        )
        L.seed_everything(testbed.seed + request, verbose=False)
        model, steps = unlearn(method, model, testbed, data, max_steps)
        scores = g(model, data)
        old = {i: v for i, v in scores.items() if i < len(earlier)}
        new = {i: v for i, v in scores.items() if i >= len(earlier)}
        relearned = g(relearn(model, retain, steps=20, learning_rate=1e-4), data)
        cells = [
            str(request + 1),
            str(testbed.seed),
            str(steps),
            f"{above(old, level)} of {len(old)}",
            f"{above(new, level)} of {len(new)}",
            f"{above(relearned, level)} of {len(relearned)}",
            f"{holdout_nll(model, data) / nll_before:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [f"{method}, {requests} requests of {size} records, level {level:.3f}", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated testbed seeds")
    parser.add_argument("--methods", default="SGA+KL,SGA+KL+RA,TA", help="comma-separated names from the demo")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--sequential", action="store_true", help="also run the sequential requests")
    parser.add_argument("--only-sequential", action="store_true", help="run the sequential requests alone")
    parser.add_argument("--sequential-method", default="SGA+KL+RA")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--request-size", type=int, default=8)
    parser.add_argument("--no-retrain", action="store_true", help="skip the exact-retrain reference")
    parser.add_argument("--small", action="store_true", help="the small testbed (a smoke run)")
    args = parser.parse_args()
    options = SMALL_TESTBED if args.small else {}
    attacks, sequential = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        testbed = build_testbed(seed=seed, progress=False, **options)
        if not args.only_sequential:
            header, rows = attacks_table(testbed, args.methods.split(","), args.max_steps, not args.no_retrain)
            attacks = [*(attacks or header), *rows]
            print("\n".join(attacks), flush=True)  # so far: a run cut short keeps its seeds
        if args.sequential or args.only_sequential:
            lines = sequential_table(testbed, args.sequential_method, args.requests, args.request_size, args.max_steps)
            sequential = [*(sequential or lines[1:3]), *lines[3:]]
            print(lines[0], flush=True)
    if attacks:
        print("\n1. attacks\n" + "\n".join(attacks))
    if sequential:
        print("\n2. sequential requests\n" + "\n".join(sequential))


if __name__ == "__main__":
    main()
