"""Where unlearning put its edit: forget and holdout g along the straight line from the original weights θ0 to the
unlearned θ1, for the whole model and for each part alone (a layer, a module type, a layer's module of a type).

Each part is judged twice. **Moved alone**: θ0 with only that part moved to θ1; how many forget records fall to the
threshold or below (the original model's holdout 0.95 quantile of g). **Reverted alone**: θ1 with only that part put
back to θ0; how many forget records come back above the threshold. A part whose revert alone brings most records back
holds the edit that hides them; if no small part does, the edit is spread through the model. The update's share of
each part (its share of ‖θ1 − θ0‖²) and of the parameters say how concentrated it is.

    python benchmarks/where_records_live.py [--seed 0] [--method sga-kl] [--grid 0,0.25,0.5,0.75,1] [--figure FILE]
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import time
from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor

from lightning_unlearn.demo import quiet_trainer, testbed_method
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.thresholds import holdout_threshold
from lightning_unlearn.methods import METHODS
from lightning_unlearn.testbed.build import SMALL_TESTBED, build_testbed
from lightning_unlearn.utilities.files import atomic_file

KINDS = ("embedding", "attention", "mlp", "norm", "head")
#: how a kind reads in a part's label: "layer 0 MLP", and all layers' "every MLP"
KIND_NAMES = {"embedding": "embeddings", "attention": "attention", "mlp": "MLP", "norm": "norm", "head": "head"}


def part_of(name: str) -> tuple[str, str]:
    """(where, kind) of a parameter by its name: ``layer N`` (GPT-2/GPT-Neo's ``h.N``, Llama's ``layers.N``),
    ``embeddings`` or ``final``; and one of :data:`KINDS`."""
    layer = re.search(r"\.(?:h|layers)\.(\d+)\.", name)
    where = "embeddings" if re.search(r"wte|wpe|embed", name) else "final"
    where = f"layer {layer.group(1)}" if layer else where
    if where == "embeddings":
        kind = "embedding"
    elif re.search(r"attn|attention", name):
        kind = "attention"
    elif "mlp" in name:
        kind = "mlp"
    elif re.search(r"ln|norm", name):
        kind = "norm"
    else:
        kind = "head"
    return where, kind


def parts(names: list[str]) -> dict[str, set[str]]:
    """Every part to judge, by label: the whole model, each layer (``layer 0``), each kind over every layer
    (``every MLP``) and each layer's kind (``layer 0 MLP``); one label per set of parameters."""
    found: dict[str, set[str]] = {"whole model": set(names)}
    for name in names:
        where, kind = part_of(name)
        for label in (where, f"every {KIND_NAMES[kind]}", f"{where} {KIND_NAMES[kind]}"):
            found.setdefault(label, set()).add(name)
    unique: dict[str, set[str]] = {}
    for label, members in found.items():  # the first label of a set: "embeddings", not "every embeddings"
        if all(members != seen for seen in unique.values()):
            unique[label] = members
    return unique


def interpolated(
    model: torch.nn.Module, start: Mapping[str, Tensor], end: Mapping[str, Tensor], alpha: Mapping[str, float]
) -> torch.nn.Module:
    """``model`` with each parameter at start + alpha[name] · (end − start)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.lerp(start[name], end[name], alpha[name]))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="sga-kl", help="a registry name, run with the testbed's settings")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--grid", default="0,0.25,0.5,0.75,1", help="the α of the straight line, θ0 + α(θ1 − θ0)")
    parser.add_argument("--small", action="store_true", help="the small testbed (seconds to build)")
    parser.add_argument("--figure", help="a PNG of the forget records above the threshold along the line, per part")
    args = parser.parse_args()
    grid = [float(a) for a in args.grid.split(",")]
    testbed = build_testbed(args.seed, progress=False, **(SMALL_TESTBED if args.small else {}))
    data = testbed.datamodule()
    data.setup()
    original = testbed.model.eval()
    threshold = holdout_threshold(torch.tensor(list(g(original, data, "holdout").values())), "quantile", 0.95)
    L.seed_everything(args.seed, verbose=False)
    start_time = time.perf_counter()
    module = testbed_method(args.method)(copy.deepcopy(original))
    trainer = quiet_trainer(args.max_steps, METHODS[args.method].callbacks())
    trainer.fit(module, data)
    unlearned = module.get_model().eval()
    print(
        f"testbed seed {args.seed}: {args.method} in {trainer.global_step} steps "
        f"({time.perf_counter() - start_time:.0f} s); threshold {threshold:.3f}"
    )
    start = {name: p.detach().clone() for name, p in original.named_parameters()}
    end = {name: p.detach().clone() for name, p in unlearned.named_parameters()}
    print("\n".join(line_table(original, start, end, data, threshold, grid)))
    rows, curves = parts_table(original, start, end, data, threshold, grid)
    print("\n".join(rows))
    if args.figure:
        plot(curves, grid, len(testbed.forget), args.figure)
        print(f"figure: {args.figure}")


def g(model: torch.nn.Module, data, split: str) -> dict[int, float]:
    return score_memorization(model, data.scoring_dataloader(split))


def judged(model: torch.nn.Module, data, threshold: float) -> tuple[int, float, float]:
    """Forget records above ``threshold``, forget mean g, holdout mean g."""
    forget, holdout = g(model, data, "forget"), g(model, data, "holdout")
    return (
        sum(v > threshold for v in forget.values()),
        statistics.fmean(forget.values()),
        statistics.fmean(holdout.values()),
    )


def line_table(model, start, end, data, threshold: float, grid: list[float]) -> list[str]:
    """The whole model along the line: forget above, forget and holdout mean g at each α."""
    work = copy.deepcopy(model)
    lines = ["| α | forget above | forget mean g | holdout mean g |", "|---|---|---|---|"]
    for alpha in grid:
        above, forget, holdout = judged(interpolated(work, start, end, dict.fromkeys(start, alpha)), data, threshold)
        lines.append(f"| {alpha:g} | {above} | {forget:.3f} | {holdout:.3f} |")
    return lines


def parts_table(model, start, end, data, threshold: float, grid: list[float]) -> tuple[list[str], dict]:
    """Per part: its share of the parameters and of the update, forget above with it moved alone (each α of the
    grid) and with it reverted alone, and the holdout's mean g with it moved alone to the grid's last α."""
    work, names = copy.deepcopy(model), list(start)
    update = {name: float((end[name] - start[name]).pow(2).sum()) for name in names}
    total_update, total_size = sum(update.values()), sum(start[name].numel() for name in names)
    header = "| part | parameters | update | moved alone: forget above at α = " + ", ".join(f"{a:g}" for a in grid)
    lines = [header + " | moved alone: holdout mean g | reverted alone: forget above |", "|---" * 6 + "|"]
    curves = {}
    for label, members in parts(names).items():
        moved = []
        for alpha in grid:
            only = {name: alpha if name in members else 0.0 for name in names}
            above, _, holdout = judged(interpolated(work, start, end, only), data, threshold)
            moved.append(above)
        but = {name: 0.0 if name in members else 1.0 for name in names}
        back, _, _ = judged(interpolated(work, start, end, but), data, threshold)
        curves[label] = moved
        size = sum(start[name].numel() for name in members) / total_size
        share = sum(update[name] for name in members) / total_update
        cells = [label, f"{size:.1%}", f"{share:.1%}", ", ".join(map(str, moved)), f"{holdout:.3f}", str(back)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, curves


def plot(curves: dict[str, list[int]], grid: list[float], records: int, path: str) -> None:
    """Forget records above the threshold against α, each part moved alone (kinds and layers; the whole model)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4))
    axes = figure.subplots(1, 2, sharey=True)
    for axis, title, pick in (
        (axes[0], "each module type moved alone", lambda label: label.startswith("every ") or label == "embeddings"),
        (axes[1], "each layer moved alone", lambda label: re.fullmatch(r"layer \d+", label)),
    ):
        for label, counts in curves.items():
            whole = label == "whole model"
            if whole or pick(label):
                axis.plot(grid, counts, marker="o", label=label, linestyle="--" if whole else "-")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("α (θ0 + α(θ1 − θ0), that part only)")
        axis.legend(fontsize=7)
    axes[0].set_ylabel(f"forget records above the threshold (of {records})")
    figure.tight_layout()
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")


if __name__ == "__main__":
    main()
