"""Does forgetting stay forgotten, like in the model that never saw the records? Each method under several recovery
attacks, judged against the exact retrain under the same attack; then sequential requests.

Prints two tables for the testbed of each seed (the threshold: the original model's holdout 0.95 quantile of g, as
the demo and the stop rule take it):

1. **Attacks.** Per model (the original, each method as the registry runs it; the exact retrain is the reference):
   under each protocol (none; relearning with Adam, full batch, NLL, on the retain split or on 32 fresh records of
   the same kind that no method trained against; int4 round-to-nearest), the forget records above the threshold,
   the retrain's under the same protocol, and the two-sample KS p-value of their forget g (✗: KS rejects at
   0.05; a weak test at this many records, which the reports' per-record verdict complements); holdout NLL and
   retain g against the original, seconds and steps.
2. **Sequential requests** (``--sequential``): 4 requests of 8 forget records each, run one after another from the
   previous request's model, carrying the records already forgotten forward in the forget split (the per-sample rule
   then watches them too); after each request, earlier records above the threshold, the request's own, the same
   after relearning, and the holdout NLL ratio.

``--figure FILE`` draws each method's forget g under each protocol beside the retrain's (an ECDF panel each).

    python benchmarks/robust_forgetting.py [--seeds 0] [--methods sga-kl,sga-kl-ra,ta] [--sequential] [--small]
"""

from __future__ import annotations

import argparse
import ast
import copy
import statistics
import time

import lightning as L
import torch

from lightning_unlearn.demo import plot_verdict, quiet_trainer, testbed_method
from lightning_unlearn.evaluation.membership import loss_attack
from lightning_unlearn.evaluation.recovery import quantize, relearn
from lightning_unlearn.evaluation.report import memorization_report
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.verdict import retrain_verdict
from lightning_unlearn.methods import METHODS
from lightning_unlearn.testbed.build import SMALL_TESTBED, Testbed, build_testbed

# name -> (relearning data, steps, learning rate); "none" and "int4" are the model as it is and quantized
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


def unlearn(name: str, model: torch.nn.Module, datamodule, max_steps: int) -> tuple[torch.nn.Module, int]:
    """A registry method's result and its steps: ``NAME``, ``NAME(key=value/...)`` with module options (values as
    Python literals), or either followed by ``+undo[:key=value/...]`` (then :func:`noise_and_distill`)."""
    name, _, then = name.partition("+")
    name, _, given = name.partition("(")
    options = {k: ast.literal_eval(v) for k, v in (item.split("=") for item in given.rstrip(")").split("/") if item)}
    module = testbed_method(name)(copy.deepcopy(model), **options)
    trainer = quiet_trainer(max_steps, METHODS[name].callbacks())
    trainer.fit(module, datamodule)
    result = module.get_model().eval()
    if then:
        options = dict(item.split("=") for item in then.removeprefix("undo").strip(":").split("/") if item)
        result = noise_and_distill(result, datamodule, **{k: float(v) for k, v in options.items()})
    return result, trainer.global_step


def noise_and_distill(
    teacher: torch.nn.Module, datamodule, alpha: float = 0.3, steps: float = 200, learning_rate: float = 3e-4
) -> torch.nn.Module:
    """UNDO (Lee et al., NeurIPS 2025, "Distillation Robustifies Unlearning"), as an attempt: a student that is the
    unlearned model shrunk towards a fresh initialization, θ_s = (1 − α) θ_t + α θ_init, distilled for ``steps`` Adam
    steps on the teacher's next-token distributions (token KL) over texts that are not the forget records (the retain
    split and the relearn split's fresh records, in batches of 32)."""
    from torch.utils.data import ConcatDataset, DataLoader

    from lightning_unlearn.functional.losses import token_kl

    student = copy.deepcopy(teacher)
    fresh = copy.deepcopy(teacher)
    fresh.init_weights() if hasattr(fresh, "init_weights") else fresh.apply(fresh._init_weights)
    with torch.no_grad():
        for mine, random in zip(student.parameters(), fresh.parameters(), strict=True):
            mine.mul_(1 - alpha).add_(random, alpha=alpha)
    texts = ConcatDataset([datamodule.split("retain"), datamodule.split("relearn")])
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(texts, batch_size=32, shuffle=True, collate_fn=datamodule.collate, generator=generator)
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    student.train(), teacher.eval()
    done = 0
    while done < steps:
        for batch in loader:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with torch.no_grad():
                target = teacher(input_ids=ids, attention_mask=mask).logits
            loss = token_kl(student(input_ids=ids, attention_mask=mask).logits, target, mask).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    return student.eval()


def attacked(model: torch.nn.Module, data, loaders, protocols) -> dict[str, dict[int, float]]:
    """Each protocol's forget g (and the first relearning protocol's holdout g, the control, as ``"holdout"``)."""
    scores = {"none": g(model, data)}
    for protocol in protocols:
        source, count, rate = PROTOCOLS[protocol]
        relearned = relearn(model, loaders[source], steps=count, learning_rate=rate)
        scores[protocol] = g(relearned, data)
        if "holdout" not in scores:
            scores["holdout"] = g(relearned, data, "holdout")
    scores["int4"] = g(quantize(model, bits=4), data)
    return scores


def attacks_table(testbed: Testbed, methods: list[str], max_steps: int, protocols: list[str], figure: str | None):
    data = testbed.datamodule(relearn=testbed.relearn_records())
    data.setup()
    fresh = testbed.datamodule(relearn=testbed.fresh_records(32, seed=FRESH_SEED))
    loaders = {
        "retain": data.scoring_dataloader("retain", batch_size=len(testbed.retain)),
        "fresh": fresh.scoring_dataloader("relearn", batch_size=32),
    }
    original = testbed.model.eval()
    threshold = memorization_report(original, data, el_n=None).summary["threshold"]  # as the demo takes it
    nll_before, retain_before = holdout_nll(original, data), statistics.fmean(g(original, data, "retain").values())
    retrain = attacked(testbed.retrained(progress=False).model.eval(), data, loaders, protocols)
    models = {"original": (original, 0, 0.0)}
    for name in methods:
        L.seed_everything(testbed.seed, verbose=False)
        start = time.perf_counter()
        model, steps = unlearn(name, original, data, max_steps)
        models[name] = (model, steps, time.perf_counter() - start)
    columns = ["none", *protocols, "int4"]
    header = ["seed", "model", "steps", "seconds", *columns, "holdout above (relearned)", "holdout NLL", "retain g"]
    lines, panels = [], {}
    for name, (model, steps, seconds) in models.items():
        scores = attacked(model, data, loaders, protocols)
        cells = [str(testbed.seed), name, str(steps), f"{seconds:.0f}"]
        for column in columns:
            v = retrain_verdict(scores[column], retrain[column], threshold)
            cells.append(
                f"{v['above']} / {v['retrain_above']} ({v['p_value']:.2f}{'' if v['indistinguishable'] else ' ✗'})"
            )
        cells.append(str(sum(value > threshold for value in scores["holdout"].values())))
        cells.append(f"{holdout_nll(model, data) / nll_before:.2f}x")
        cells.append(f"{statistics.fmean(g(model, data, 'retain').values()) / retain_before:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
        panels[name] = [{"sample_id": i, **{c: scores[c][i] for c in columns}} for i in scores["none"]]
    if figure:
        retrain_rows = [{"sample_id": i, **{c: retrain[c][i] for c in columns}} for i in retrain["none"]]
        plot_verdict(panels, retrain_rows, threshold, figure, columns={c: c for c in columns})
    print(f"seed {testbed.seed}: threshold {threshold:.3f} (the original model's holdout 0.95 quantile of g)")
    table_header = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return table_header, lines


def sequential_table(testbed: Testbed, method: str, requests: int, size: int, max_steps: int) -> list[str]:
    original = testbed.model.eval()
    reference = testbed.datamodule()
    threshold = memorization_report(original, reference, el_n=None).summary["threshold"]
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
        model, steps = unlearn(method, model, data, max_steps)
        scores = g(model, data)
        old = [v for i, v in scores.items() if i < len(earlier)]
        new = [v for i, v in scores.items() if i >= len(earlier)]
        relearned = g(relearn(model, retain, steps=20, learning_rate=1e-4), data)
        cells = [
            str(request + 1),
            str(testbed.seed),
            str(steps),
            f"{sum(v > threshold for v in old)} of {len(old)}",
            f"{sum(v > threshold for v in new)} of {len(new)}",
            f"{sum(v > threshold for v in relearned.values())} of {len(relearned)}",
            f"{holdout_nll(model, data) / nll_before:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [f"{method}, {requests} requests of {size} records, threshold {threshold:.3f}", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated testbed seeds")
    parser.add_argument(
        "--methods",
        default="sga-kl,sga-kl-ra,ta",
        help="comma-separated names from the registry; NAME(key=value/...) sets module options; "
        "NAME+undo[:alpha=0.3/steps=200/learning_rate=3e-4] distils NAME's result into a noised copy of itself (UNDO)",
    )
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated relearning protocols")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--figure", help="a PNG of the first seed's forget g beside the retrain's, per protocol")
    parser.add_argument("--sequential", action="store_true", help="also run the sequential requests")
    parser.add_argument("--only-sequential", action="store_true", help="run the sequential requests alone")
    parser.add_argument("--sequential-method", default="sga-kl")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--request-size", type=int, default=8)
    parser.add_argument("--small", action="store_true", help="the small testbed (a smoke run)")
    args = parser.parse_args()
    methods, protocols = args.methods.split(","), args.protocols.split(",")
    unknown = [m for m in methods if m.partition("+")[0].partition("(")[0] not in METHODS]
    unknown += [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        parser.error(f"unknown method(s) or protocol(s): {', '.join(unknown)}")
    options = SMALL_TESTBED if args.small else {}
    attacks, sequential = [], []
    for index, seed in enumerate(int(s) for s in args.seeds.split(",")):
        testbed = build_testbed(seed=seed, progress=False, **options)
        if not args.only_sequential:
            figure = args.figure if index == 0 else None
            header, rows = attacks_table(testbed, methods, args.max_steps, protocols, figure)
            attacks = [*(attacks or header), *rows]
            print("\n".join(attacks), flush=True)  # so far: a run cut short keeps its seeds
        if args.sequential or args.only_sequential:
            lines = sequential_table(testbed, args.sequential_method, args.requests, args.request_size, args.max_steps)
            sequential = [*(sequential or lines[1:3]), *lines[3:]]
            print(lines[0], flush=True)
    if attacks:
        print(
            "\n1. attacks: forget records above the threshold, model / exact retrain under the same attack (KS p-value)"
        )
        print("\n".join(attacks))
    if sequential:
        print("\n2. sequential requests\n" + "\n".join(sequential))


if __name__ == "__main__":
    main()
